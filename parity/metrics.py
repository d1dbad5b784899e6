"""Per-probe error metrics, computed in ONE chunked pass over (reference, subject).

``compute_metrics(ref, sub, atol=..., rtol=...)`` reads both arrays (ndarrays or ``np.memmap``s of any
real dtype, same shape) chunk by chunk (default 128Ki elements, so a chunk and its work buffers stay in
cache), reusing chunk-sized buffers: no full-size temporary is ever made, and nothing is read twice
(except in the rare fallbacks named below). Per chunk without NaN/Inf (the fast path):

* |Δ| = |sub − ref| into the chunk buffer, the sums Σ Δ·ref, Σ ref², Σ Δ², Σ |Δ| (working-dtype partials,
  accumulated in float64) and max |ref| (for the default rel floor, see ``max_rel``), all from one read of
  ref and sub (``parity.fused.chunk_sums``: one compiled loop with numba, numpy calls without). The sums'
  finiteness doubles as the NaN/Inf detector: a chunk whose sums are not finite takes the masked path.
* one comparison |Δ| > θ: the elements above θ = min(max_abs, max(0, max_e), atol, θ_rel) are the only ones
  that can still change max |Δ|, the min passing atol, the tolerance count or max rel. They are located
  word by word (8 bools at a time: numpy's nonzero/boolean indexing cost ~0.15 ns per mask byte plus
  ~20 ns per hit) and queued; the queue is worked on in batches with plain array formulas, reading ref
  and sub again only at the candidates' positions.
* p99: |Δ| > hi is counted, and the few |Δ| in a narrow band [lo, hi] around the predicted p99 are kept
  (two comparisons, one count, one word scan).

Measured on the 2-core dev box (2 × 50M float32, passing probe, alternating rounds, nothing else running):
0.56 of the throughput of ``read_bandwidth_probe`` (``a.sum()``) with the compiled chunk loop (12.1 vs
21.6 GB/s), ~0.35 with numpy calls only (a subtraction, an abs, four BLAS dots and max/min of ref already
cost ~0.55 of it). The rest is the candidate screening and the p99 band: a few comparisons and word scans
per chunk. Cutting probes into segments passed on two threads gained only 3% here (the screening holds
the GIL between its numpy calls), so the pass is single-threaded.

Definitions (Δ = sub − ref, computed in the *working dtype*: float32 when both inputs are at most 32-bit
floats or small ints/bools, else float64 — the arithmetic ``numpy.isclose`` uses for float32/float64):

* ``n``            number of elements (1 for a 0-d array); ``n_compared``: positions where both are finite.
* ``max_abs``      max |Δ| over compared positions; ``argmax_abs`` its multi-index (first occurrence in C
                   order), ``ref_at_max`` / ``sub_at_max`` the two values there.
* ``mean_abs``     mean |Δ| over compared positions.
* ``max_rel``      max |Δ| / max(|ref|, rel_floor). Default ``rel_floor`` = 1e-3 · max|ref| over the finite
                   reference values, or 1e-12 when that is 0 (all-zero reference), rounded to the working
                   dtype. The floor keeps near-zero reference entries from dominating. It is global, so it
                   is only known at the end of the pass: max_rel candidates are screened with a running
                   lower bound of the floor, keeping every element that could still be the maximum for some
                   final floor (exact; see ``_Acc._rel_theta`` / ``_Acc._rel``). ``rel_floor=`` or
                   ``ref_absmax=`` (max|ref|, if already known) fix it up front and spare the max/min of
                   ref. When the candidates pile up (e.g. pure relative errors), the rest of ``ref`` is
                   scanned once for its max|ref| and the floor is fixed from there on; a floor that
                   underflows to 0 (plain |Δ|/|ref|, as in the formula) costs one extra pass.
* ``cosine``       cos(ref, sub) in float64; 1 when both are all-zero, 0 when exactly one is. Evaluated as
                   1 − (‖Δ‖² − (‖sub‖−‖ref‖)²) / (2‖ref‖‖sub‖) from Σ Δ², Σ Δ·ref and Σ ref², so 1 − cos
                   keeps its relative precision even at 1e-14 (a plain dot/norm product would not).
* ``rel_fro``      ‖Δ‖₂ / ‖ref‖₂; when ‖ref‖ = 0 it is 0 if Δ = 0 and +inf otherwise.
* ``p99_abs``      99th percentile of |Δ|, nearest rank: the smallest value v with at least 99% of the
                   compared |Δ| <= v. EXACT (no histogram binning): values above a threshold hi are only
                   counted, those in a band [lo, hi] are kept. The band is placed from a sample of the first
                   chunk and narrowed as data comes in (±6 standard deviations of the predicted final rank;
                   ~1e-3..1e-5 of the values are kept); if the final rank falls outside it (strongly
                   non-stationary data), one extra pass finds the exact value above hi / below lo.
* ``n_outside``    elements that are not close in ``numpy.isclose(sub, ref, rtol, atol, equal_nan=True)``
                   sense: finite pairs with |Δ| > atol + rtol·|ref| (same float arithmetic as numpy), plus
                   positions where the non-finite values disagree (NaN vs number, Inf vs anything but the
                   same Inf). ``frac_outside`` = n_outside / n.
* ``min_passing_atol`` max(0, max(|Δ| − rtol·|ref|)) over compared positions: the smallest atol with which
                   every finite pair passes at this rtol (exact up to working-dtype rounding).
* ``nan_ref, nan_sub, inf_ref, inf_sub`` counts; ``nonfinite_match``: NaN positions agree and every Inf
                   faces the same Inf; ``finite_ok``: neither side has any NaN/Inf;
                   ``first_nonfinite_mismatch``: multi-index of the first disagreeing non-finite position.

NaN/Inf are never zeroed out: the finite metrics are computed over the positions where both sides are
finite (chunks holding NaN/Inf take a slower masked path); with no such position (and n > 0) they are
NaN. A chunk whose float32 partial sums overflow or underflow is re-summed in float64.

``passed(m)`` is allclose-style: ``n_outside == 0`` and no NaN/Inf on either side.

Throughput (``make bench``): ``read_bandwidth_probe()`` times ``a.sum()`` on a large float32 array,
``metrics_throughput()`` times ``compute_metrics`` on two float32 arrays; both report GB/s of input read.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from parity.errors import ParityError
from parity.fused import chunk_sums

DEFAULT_CHUNK_ELEMS = 131072
REL_FLOOR_FACTOR = 1e-3
REL_FLOOR_ZERO = 1e-12
P99_PERCENT = 99


__all__ = [
    "DEFAULT_CHUNK_ELEMS",
    "REL_FLOOR_FACTOR",
    "REL_FLOOR_ZERO",
    "Metrics",
    "compute_metrics",
    "passed",
    "compare_close",
    "format_message",
    "format_number",
    "read_bandwidth_probe",
    "metrics_throughput",
]


@dataclass(frozen=True)
class Metrics:
    """All metrics of one probe (see the module docstring for exact definitions)."""

    name: str | None
    shape: tuple
    n: int
    n_compared: int
    max_abs: float
    mean_abs: float
    max_rel: float
    rel_floor: float
    cosine: float
    rel_fro: float
    p99_abs: float
    atol: float
    rtol: float
    n_outside: int
    frac_outside: float
    min_passing_atol: float
    argmax_abs: tuple | None
    ref_at_max: float | None
    sub_at_max: float | None
    nan_ref: int
    nan_sub: int
    inf_ref: int
    inf_sub: int
    nonfinite_match: bool
    finite_ok: bool
    first_nonfinite_mismatch: tuple | None

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (tuples become lists); NaN/Inf stay Python floats."""
        d = asdict(self)
        for k in ("shape", "argmax_abs", "first_nonfinite_mismatch"):
            if d[k] is not None:
                d[k] = [int(v) for v in d[k]]
        return d

    @property
    def passed(self) -> bool:
        return passed(self)


def passed(m: Metrics) -> bool:
    """allclose-style verdict: nothing outside atol + rtol·|ref| and no NaN/Inf on either side."""
    return m.n_outside == 0 and m.finite_ok


# ----------------------------------------------------------------------------------------------------------
# dtype handling

def _needs_f64(dt: np.dtype, what: str, name: str | None) -> bool:
    kind = dt.kind
    if kind == "f":
        return dt.itemsize > 4
    if kind == "b":
        return False
    if kind in "iu":
        return dt.itemsize > 2
    if "float" in dt.name:  # e.g. ml_dtypes bfloat16 / float8 (kind 'V'), cast through float32
        return False
    label = f"probe {name}: " if name else ""
    raise ParityError(f"{label}{what} has dtype {dt}, expected a real floating-point (or int/bool) array")


def _as_array(a, what: str, name: str | None) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except Exception as exc:  # pragma: no cover - defensive
        label = f"probe {name}: " if name else ""
        raise ParityError(f"{label}{what} is not array-like ({exc})") from None


_local = threading.local()


def _reused(key: tuple, make, *args) -> np.ndarray:
    """A work array kept per thread and handed to every later pass of that thread: fresh chunk-sized numpy
    arrays cost a page fault per 4 KiB here (more than the arithmetic on them). Callers never keep results
    in these arrays past their own pass."""
    cache = getattr(_local, "arrays", None)
    if cache is None:
        cache = _local.arrays = {}
    a = cache.get(key)
    if a is None:
        if len(cache) > 64:  # many chunk sizes (tests): start over
            cache.clear()
        a = cache[key] = make(*args)
    return a


class _Source:
    """Chunked, copy-free (when possible) access to one input, converted to the working dtype."""

    def __init__(self, a: np.ndarray, work: np.dtype, chunk: int, role: str):
        self.a = a
        self.work = work
        self.contig = a.flags.c_contiguous
        self.flat = a.reshape(-1) if self.contig else None
        self.direct = self.contig and a.dtype == work
        self.buf = None if self.direct else _reused(("src", role, work.str, chunk), np.empty, chunk, work)

    def get(self, i: int, j: int) -> np.ndarray:
        src = self.flat[i:j] if self.contig else self.a.flat[i:j]
        if self.direct:
            return src
        out = self.buf[: j - i]
        np.copyto(out, src, casting="unsafe")
        return out

    def take(self, pos: np.ndarray) -> np.ndarray:
        """The values at flat positions ``pos``, converted like ``get`` does."""
        v = self.flat[pos] if self.contig else self.a.flat[pos]
        return v if v.dtype == self.work else v.astype(self.work)


# ----------------------------------------------------------------------------------------------------------
# order statistics without a full partition (np.partition costs ~10 ns/element)

def _kth_largest(v: np.ndarray, k: int) -> float:
    """The k-th largest value of ``v`` (1 <= k <= v.size), bracketed from a strided sample first."""
    nv = v.size
    if nv <= 32768:
        return float(np.partition(v, nv - k)[nv - k])
    step = max(1, nv // 8192)
    samp = np.sort(v[::step])
    ns = samp.size
    a = ns * (1.0 - k / nv)
    delta = 4.0 * math.sqrt(ns * (k / nv) * (1.0 - k / nv)) + 8.0
    lo = samp[max(0, int(a - delta))]
    hi = samp[min(ns - 1, int(a + delta))]
    above = int(np.count_nonzero(v > hi))
    if above < k and int(np.count_nonzero(v >= lo)) >= k:
        band = v[(v >= lo) & (v <= hi)]
        kk = k - above  # rank inside the band, from the top
        return float(np.partition(band, band.size - kk)[band.size - kk])
    return float(np.partition(v, nv - k)[nv - k])


class _TopK:
    """Exact k-th largest of a stream, keeping at most ~2k + one chunk values (fallback path only)."""

    def __init__(self, k: int, slack: int):
        self.k = k
        self.slack = slack
        self.thr = -math.inf
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, v: np.ndarray):
        v = v[v > self.thr] if self.thr != -math.inf else v.copy()
        if v.size:
            self.parts.append(v)
            self.size += v.size
            if self.size > 2 * self.k + self.slack:
                allv = np.concatenate(self.parts)
                self.thr = _kth_largest(allv, self.k)  # at least k values are >= thr from now on
                keep = allv[allv > self.thr]
                self.parts = [keep]
                self.size = keep.size

    def result(self) -> float:
        if self.size >= self.k:
            return _kth_largest(np.concatenate(self.parts), self.k)
        return self.thr


# ----------------------------------------------------------------------------------------------------------
# thresholds: comparisons of a float32 array with a Python float round the float to float32 (numpy 1.26
# value-based casting), so every threshold is first rounded in the safe direction.

def _below(x: float, dt: np.dtype):
    """The largest value of dtype ``dt`` that is <= x: for a ``dt`` array, ``a > _below(x)`` == ``a > x``."""
    v = dt.type(x)
    if float(v) > x:
        v = np.nextafter(v, dt.type(-np.inf))
    return v


def _above(x: float, dt: np.dtype):
    """The smallest value of dtype ``dt`` that is >= x: ``a >= _above(x)`` == ``a >= x``."""
    v = dt.type(x)
    if float(v) < x:
        v = np.nextafter(v, dt.type(np.inf))
    return v


def _floor_of(amax: float, work: np.dtype) -> float:
    """The default relative-error floor for max |ref| = ``amax``, rounded to the working dtype (it
    underflows to 0 only for references below ~1e-42 in float32; max_rel is then |Δ|/|ref| as is)."""
    return float(work.type(REL_FLOOR_FACTOR * amax if amax > 0 else REL_FLOOR_ZERO))


def _floor_lower_bound(amax: float, work: np.dtype) -> float:
    """A value <= ``_floor_of(a)`` for EVERY a >= amax (the final max |ref| is only known at the end):
    for amax > 0, a -> fl(1e-3·a) is monotone (monotone float64 product, monotone rounding); for amax = 0
    the final floor may still be fl(1e-3·a) of any tiny a > 0, so 0."""
    return float(work.type(REL_FLOOR_FACTOR * amax)) if amax > 0 else 0.0


def _word_view():
    """(dtype, W) to scan bool masks W bytes at a time. float64 compares are the fastest vectorized
    ones, but the words are subnormal doubles: if denormals-are-zero is on (a library built with
    -ffast-math), they would compare equal to 0, so then uint32 words are used."""
    if bool((np.full(64, 5e-324) != 0.0).all()):
        return np.dtype(np.float64), 8
    return np.dtype(np.uint32), 4


_TINY_SUM = 1e-30
_Z = 6.0               # p99 band half-width, in standard deviations of the predicted rank
_SAMPLE = 16384        # size of the strided sample that places the first p99 band
_SAMPLE_MIN = 32768    # smaller first chunks are kept whole until _NARROW_MIN values are seen
_NARROW_MIN = 65536
_DENSE = 4             # more than 1/_DENSE candidate words in a chunk: work on the whole chunk, no gather
_QUEUE = 16384         # queued words before _flush


def _sums64(r, s):
    r64 = r.astype(np.float64)
    d64 = s.astype(np.float64) - r64
    return (float(np.dot(d64, d64)), float(np.dot(d64, r64)), float(np.dot(r64, r64)),
            float(np.abs(d64).sum()))


def _finite_absdiff(r: np.ndarray, s: np.ndarray):
    """(|Δ|, ref) over the positions where both are finite, exactly as the main pass computes them.

    Δ is computed in the working dtype; a chunk where that overflows is redone in float64 (fallback passes
    only; the main pass makes the same choice per chunk).
    """
    fin = np.isfinite(r) & np.isfinite(s)
    if not fin.all():
        r, s = r[fin], s[fin]
    d = s - r
    if not np.isfinite(d).all():
        r = r.astype(np.float64)
        d = s.astype(np.float64) - r
    return np.abs(d), r


class _Acc:
    """Running state of one compute_metrics pass (see the module docstring for the plan).

    Per full NaN-free chunk (consume + _fast): Δ = sub − ref, |Δ|, four BLAS dots, max/min of ref (only
    while the rel floor is unknown), one comparison with θ for the candidates and two (plus a count) for
    the p99 band, each followed by a word scan. Everything else runs on few elements: the candidates
    (|Δ| > θ = min(max_abs, max(0, max_e), atol, θ_rel), rare on a passing probe) and the band values.
    Chunks with NaN/Inf or a float overflow (_slow), partial chunks and chunk sizes that are not a multiple
    of the word size (_values) take plain masked paths with the same semantics.
    """

    def __init__(self, n: int, work: np.dtype, chunk: int, atol: float, rtol: float, floor: float | None):
        self.n = n
        self.work = work
        self.chunk = chunk
        self.atol = float(atol)
        self.rtol = float(rtol)
        self.atol_w = float(work.type(atol))
        self.eps = float(np.finfo(work).eps)
        key = (work.str, chunk)
        self.d = _reused(("d",) + key, np.empty, chunk, work)
        self.ones = _reused(("ones",) + key, np.ones, chunk, work)
        self.m1 = _reused(("m1",) + key, np.empty, chunk, bool)
        self.m2 = _reused(("m2",) + key, np.empty, chunk, bool)
        # word-level scans of the bool masks: numpy's nonzero/boolean indexing cost ~0.15 ns per mask byte
        # plus ~20 ns per hit, so the masks are first scanned W bytes at a time (one vectorized compare of
        # m/W words viewed as `wdt`), and only the few words with a hit are looked at
        self.wdt, self.W = _word_view()
        self.wf = _reused(("wf", self.W) + key, np.empty, chunk // self.W, bool)
        self.word_ok = chunk % self.W == 0
        self.m1w = self.m1.view(self.wdt) if self.word_ok else None
        self.m2w = self.m2.view(self.wdt) if self.word_ok else None
        self.th_last = None  # θ and its working-dtype rounding, cached
        self.th_w = None
        self.d8 = self.d.reshape(-1, self.W) if self.word_ok else None
        self.queue: list[tuple] = []  # (word indices, |Δ| of those words) of fast-path chunks (_flush)
        self.queue_n = 0
        self.src_r = self.src_s = None  # the _Source objects (candidates' ref/sub values are read there)
        self.sbuf = self.cbuf = None  # buffers of the masked path, allocated on first use
        self.tbuf = self.tbool = None  # scratch of _candidates / _rel (see _scratch)
        self.done = 0  # positions consumed
        # sums
        self.n_c = 0
        self.s_abs = self.s_dd = self.s_dr = self.s_rr = 0.0
        # order statistics
        self.max_abs = -1.0
        self.argmax = None
        self.ref_at = None
        self.sub_at = None
        self.max_e = -math.inf
        self.n_out = 0
        # relative error. floor known: rel_lo is the exact running max. Otherwise ("lazy floor") the final
        # floor F is only known at the end; F_lo <= F is a running lower bound, and every element that
        # might still be the argmax for some F >= F_lo is kept (|Δ|, |ref|) in `cand` (see _rel).
        self.known = floor is not None
        self.amax = 0.0
        self.F_lo = floor if self.known else _floor_lower_bound(0.0, work)
        self.rel_lo = 0.0
        self.rel_k = None  # (|Δ|, |ref|) of the element that set rel_lo
        self.theta_rel = 0.0
        self.cand: list[tuple[np.ndarray, np.ndarray]] = []
        self.cand_n = 0
        self.cand_cap = max(chunk // 2, 16384)  # more: _fix_floor
        self.rel_pass = self.known and not floor > 0  # floor 0: max_rel from one more pass at the end
        if self.rel_pass:
            self.theta_rel = math.inf
        # non-finite
        self.nan_r = self.nan_s = self.inf_r = self.inf_s = 0
        self.n_mism = 0
        self.first_mism = None
        # p99 band: c_hi values > hi were counted, the values in [lo, hi] are kept in b_parts
        # (mode 0: everything kept, no band yet; 1: band; 2: lo == hi, only b_eq = count(== lo) is kept)
        self.b_mode = 0
        self.b_lo = -math.inf
        self.b_hi = math.inf
        self.b_parts: list[np.ndarray] = []
        self.b_n = 0
        self.b_eq = 0
        self.c_hi = 0
        self.b_next = 0
        self.b_cap = 0
        self.b_thr = {}
        self.b_thr_w = None  # (hi, lo) rounded for comparisons in the working dtype

    # -- one chunk -----------------------------------------------------------------------------------------
    def consume(self, r: np.ndarray, s: np.ndarray, i: int):
        m = r.shape[0]
        self.done = i + m
        full = m == self.chunk
        d = self.d if full else self.d[:m]
        s_dr, s_rr, s_dd, s_abs, a = chunk_sums(r, s, d, self.ones if full else self.ones[:m])
        if not math.isfinite(s_dd + s_dr + s_rr + s_abs):  # NaN/Inf in the chunk, or a float overflow
            self._slow(r, s, i)
        else:
            if (s_dd < _TINY_SUM and s_dd < s_abs) or (s_rr < _TINY_SUM and r.any()):  # float underflow
                s_dd, s_dr, s_rr, s_abs = _sums64(r, s)
            self._add_sums(m, s_dr, s_rr, s_dd, s_abs)
            if not self.known and a > self.amax:
                self._raise_amax(a)
            if full and self.word_ok:
                self._fast(d, r, s, i)
            else:
                self._flush()
                self._values(d, r, s, i, None)
        if self.b_mode < 2 and (self.n_c >= self.b_next or self.b_n > self.b_cap):
            self._narrow()

    def _fast(self, ad, rr, ss, base):
        """Order statistics of a full NaN-free chunk (in the chunk buffer; length a multiple of W).

        Candidates: the W-element words holding some |Δ| > θ are found by one comparison and a word
        scan; their |Δ| are queued, and _flush works on them in batches (position order), reading ref/sub
        only at the candidates' positions. Extra elements in those words are harmless: _candidates is
        exact for any superset of the candidates. p99 band: count |Δ| > hi, keep the |Δ| in [lo, hi],
        picked from the few words holding one.
        """
        m1, wf, W = self.m1, self.wf, self.W
        th = self._theta()
        if th != self.th_last:
            self.th_last = th
            self.th_w = _below(th, self.work)
        np.greater(ad, self.th_w, out=m1)
        np.not_equal(self.m1w, 0, out=wf)
        w = wf.nonzero()[0]
        if w.size:
            if w.size * _DENSE > wf.size:  # dense (failing probe): no gather
                self._flush()
                self._candidates(ad, rr, ss, base, None)
            else:
                self.queue.append((w + base // W, self.d8.take(w, axis=0)))
                self.queue_n += w.size
                if self.queue_n > _QUEUE:
                    self._flush()
        if self.b_mode != 1:
            self._band(ad)
            return
        hi_t, lo_t = self.b_thr_w
        np.greater(ad, hi_t, out=m1)
        self.c_hi += int(np.count_nonzero(m1))
        np.greater_equal(ad, lo_t, out=self.m2)
        np.not_equal(self.m2w, self.m1w, out=wf)  # words with some lo <= |Δ| <= hi
        w = wf.nonzero()[0]
        if w.size:
            v = self.d8.take(w, axis=0)
            v = v[(v >= lo_t) & (v <= hi_t)]
            self.b_parts.append(v)
            self.b_n += v.size

    def _slow(self, r, s, i):
        """A chunk with NaN/Inf (or a float overflow): count and compare the non-finite values, then the
        order statistics and sums of the finite pairs (compacted into buffers; float64 sums if needed)."""
        self._flush()  # keep candidates in position order (first occurrence of the max wins)
        m = r.shape[0]
        if self.sbuf is None:
            key = (self.work.str, self.chunk)
            self.sbuf = _reused(("sbuf",) + key, np.empty, (6, self.chunk), bool)
            self.cbuf = _reused(("cbuf",) + key, np.empty, (2, self.chunk), self.work)
        fr, fs, both, nr, ns, mism = (b[:m] for b in self.sbuf)
        np.isfinite(r, out=fr)
        np.isfinite(s, out=fs)
        np.logical_and(fr, fs, out=both)
        nb = int(np.count_nonzero(both))
        if nb < m:
            np.isnan(r, out=nr)
            np.isnan(s, out=ns)
            nan_r = int(np.count_nonzero(nr))
            nan_s = int(np.count_nonzero(ns))
            self.nan_r += nan_r
            self.nan_s += nan_s
            self.inf_r += m - int(np.count_nonzero(fr)) - nan_r
            self.inf_s += m - int(np.count_nonzero(fs)) - nan_s
            # mismatch: not both finite, and neither NaN facing NaN nor Inf facing the same Inf
            np.logical_and(nr, ns, out=nr)
            np.equal(r, s, out=ns)
            np.logical_or(nr, ns, out=nr)
            np.logical_or(nr, both, out=nr)
            np.logical_not(nr, out=mism)
            nm = int(np.count_nonzero(mism))
            if nm:
                self.n_mism += nm
                if self.first_mism is None:
                    self.first_mism = i + int(np.argmax(mism))
        if not self.known:  # the floor is defined by every finite reference value, whatever sub holds
            if nb < m:
                hi = float(np.maximum.reduce(r, where=fr, initial=-np.inf))
                lo = float(np.minimum.reduce(r, where=fr, initial=np.inf))
            else:
                hi = float(np.maximum.reduce(r))
                lo = float(np.minimum.reduce(r))
            a = hi if hi >= -lo else -lo
            if a > self.amax:
                self._raise_amax(a)
        if nb == 0:
            return
        if nb < m:
            rc = np.compress(both, r, out=self.cbuf[0, :nb])
            sc = np.compress(both, s, out=self.cbuf[1, :nb])
            pos = both
        else:
            rc, sc, pos = r, s, None
        d = np.subtract(sc, rc, out=self.d[:nb])
        if not np.isfinite(d, out=mism[:nb]).all():  # Δ overflows the working dtype: work in float64
            rc, sc = rc.astype(np.float64), sc.astype(np.float64)
            d = sc - rc
        s_dr = float(np.dot(d, rc))
        s_rr = float(np.dot(rc, rc))
        ad = np.abs(d, out=d)
        s_dd = float(np.dot(ad, ad))
        s_abs = float(np.dot(ad, self.ones[:nb])) if ad.dtype == self.work else float(ad.sum())
        if (not math.isfinite(s_dd + s_dr + s_rr + s_abs) or (s_dd < _TINY_SUM and s_dd < s_abs)
                or (s_rr < _TINY_SUM and rc.any())):  # float32 sums overflow or underflow
            s_dd, s_dr, s_rr, s_abs = _sums64(rc, sc)
        self._add_sums(nb, s_dr, s_rr, s_dd, s_abs)
        self._values(ad, rc, sc, i, pos)

    def _add_sums(self, n_c: int, s_dr: float, s_rr: float, s_dd: float, s_abs: float):
        """One chunk's compared count and partial sums, accumulated in float64."""
        self.n_c += n_c
        self.s_dr += s_dr
        self.s_rr += s_rr
        self.s_dd += s_dd
        self.s_abs += s_abs

    def _values(self, ad, rr, ss, base, pos):
        """Order statistics of one chunk's finite pairs: |Δ| ``ad``, ref ``rr``, sub ``ss``; element j sits at
        flat position base + (j if pos is None else pos[j]); ``pos`` may also be given as the bool mask of
        the chunk positions the values were compressed from."""
        th = min(self.max_abs, self.max_e if self.max_e > 0.0 else 0.0, self.atol_w, self.theta_rel)
        if float(np.maximum.reduce(ad)) > th:
            if pos is not None and pos.dtype == bool:
                pos = np.flatnonzero(pos)
            m = ad.shape[0]
            mask = self.m1[:m]
            np.greater(ad, _below(th, ad.dtype), out=mask)
            if int(np.count_nonzero(mask)) * _DENSE > m:
                self._candidates(ad, rr, ss, base, pos)
            else:
                sel = np.flatnonzero(mask)
                self._candidates(ad[sel], rr[sel], ss[sel], base, sel if pos is None else pos[sel])
        self._band(ad)

    def _theta(self) -> float:
        """Elements with |Δ| <= θ cannot change max_abs (ties keep the first), min_passing_atol, n_outside
        (|Δ| <= atol is always close) or max_rel (see _rel_theta)."""
        return min(self.max_abs, self.max_e if self.max_e > 0.0 else 0.0, self.atol_w, self.theta_rel)

    def _flush(self):
        """Work on the queued words: every |Δ| > θ (θ as of now: a later θ is as valid) with its position."""
        if not self.queue:
            return
        q = self.queue
        self.queue = []
        self.queue_n = 0
        W = self.W
        wg = np.concatenate([w for w, _ in q]) if len(q) > 1 else q[0][0]
        v = (np.concatenate([x for _, x in q]) if len(q) > 1 else q[0][1]).reshape(-1)
        sel = np.flatnonzero(v > _below(self._theta(), v.dtype))
        if sel.size:
            pos = wg[sel // W] * W + sel % W
            self._candidates(v[sel], self.src_r.take(pos), self.src_s.take(pos), 0, pos)

    # -- candidates ----------------------------------------------------------------------------------------
    def _scratch(self, m: int, dt: np.dtype):
        """Three float and two bool work arrays of length m. numpy temporaries of chunk size cost a page
        fault per 4 KiB here (fresh memory every time), more than the arithmetic, so chunk buffers are
        reused whenever they fit."""
        if m <= self.chunk and dt == self.work:
            if self.tbuf is None:
                key = (self.work.str, self.chunk)
                self.tbuf = _reused(("tbuf",) + key, np.empty, (3, self.chunk), self.work)
                self.tbool = _reused(("tbool",) + key, np.empty, (2, self.chunk), bool)
            return (self.tbuf[0, :m], self.tbuf[1, :m], self.tbuf[2, :m], self.tbool[0, :m], self.tbool[1, :m])
        return (np.empty(m, dt), np.empty(m, dt), np.empty(m, dt), np.empty(m, bool), np.empty(m, bool))

    def _candidates(self, ad, rc, sc, base, pos):
        """Exact updates from a subset holding every element with |Δ| > θ (formulas as in the docstring)."""
        wt = ad.dtype.type
        k = int(np.argmax(ad))
        mx = float(ad[k])
        if mx > self.max_abs:  # first occurrence wins ties
            self.max_abs = mx
            self.argmax = base + (k if pos is None else int(pos[k]))
            self.ref_at = float(rc[k])
            self.sub_at = float(sc[k])
        f0, f1, f2, b0, _ = self._scratch(ad.shape[0], ad.dtype)
        ar = np.abs(rc, out=f0)
        t = np.multiply(ar, wt(self.rtol), out=f1) if self.rtol != 0 else None
        if mx > self.atol_w:  # numpy.isclose: |Δ| <= atol + rtol·|ref|, in the working dtype
            lim = wt(self.atol) if t is None else np.add(t, wt(self.atol), out=f2)
            self.n_out += int(np.count_nonzero(np.greater(ad, lim, out=b0)))
        if mx > self.max_e:
            em = mx if t is None else float(np.subtract(ad, t, out=f2).max())
            if em > self.max_e:
                self.max_e = em
        if mx > self.theta_rel and not self.rel_pass:
            self._rel(ad, ar)

    def _rel_theta(self, dk: float, rk: float) -> float:
        """θ_rel from a kept element k (|Δ_k| = dk, |ref_k| = rk).

        Claim: an element j with |Δ_j| <= dk·F_lo / max(rk, F_lo) has rel_j(F) <= rel_k(F) for every floor
        F >= F_lo, where rel(F) = |Δ| / max(|ref|, F). Proof: rel_j(F) <= |Δ_j| / F, and
        dk·F_lo / (max(rk, F_lo)·F) <= dk / max(rk, F) because F_lo·max(rk, F) <= F·max(rk, F_lo) (check
        the three orders of rk, F_lo <= F). Both sides are then rounded by the same monotone division, so
        the inequality survives floating point; the (1 − 4 eps) factor covers the two float64 roundings
        here and the rounding of θ to the working dtype. So j can never be the maximum: it is skipped.
        """
        F = self.F_lo
        if not F > 0:
            return 0.0
        return dk * (F / max(rk, F)) * (1.0 - 4.0 * self.eps)

    def _rel(self, ad, ar):
        """max_rel from candidates (|Δ| ``ad``, |ref| ``ar``; ``ar`` may be a scratch array)."""
        dt = ad.dtype
        _, f1, _, b0, b1 = self._scratch(ad.shape[0], dt)
        if self.theta_rel > 0 and ad.size > 64:  # only |Δ| > θ_rel can matter (see _rel_theta)
            sel = np.greater(ad, _below(self.theta_rel, dt), out=b0)
            if int(np.count_nonzero(sel)) * _DENSE < ad.size:
                ad, ar = ad[sel], ar[sel]
                if ad.size == 0:
                    return
                _, f1, _, b0, b1 = self._scratch(ad.shape[0], dt)
        rel = np.divide(ad, np.maximum(ar, dt.type(self.F_lo), out=f1), out=f1)
        k = int(np.argmax(rel))
        rk = float(rel[k])
        if self.known:
            if rk > self.rel_lo:
                self.rel_lo = rk
                self.theta_rel = max(self.theta_rel, self._rel_theta(float(ad[k]), float(ar[k])))
            return
        # Lazy floor: keep (in `cand`, re-evaluated with the final floor at the end) every element that is
        # neither under θ_rel nor dominated by the batch's max-rel element k or its max-|Δ| element k2.
        # j is dominated by k when |Δ_j| <= |Δ_k| and rel_j(F_lo) <= rel_k(F_lo): then rel_j(F) <= rel_k(F)
        # for all F >= F_lo. (For F >= max(|ref_j|, |ref_k|) both are |Δ|/F; if |ref_j| >= |ref_k| it holds
        # for every F; otherwise, for F < |ref_k|, rel_j(F) <= rel_j(F_lo) <= rel_k(F_lo) = rel_k(F) as
        # rel_k is flat there. Each step is a monotone correctly rounded operation, so it holds in floats.)
        k2 = int(np.argmax(ad))
        keep = np.greater(ad, _below(self.theta_rel, dt), out=b0)
        if ad.size > 64:
            np.logical_and(keep, np.greater(ad, ad[k], out=b1), out=keep)
            np.logical_and(keep, np.greater(rel, rel[k2], out=b1), out=keep)
            keep[k] = keep[k2] = True
        if not keep.all():
            ad, ar, rel = ad[keep], ar[keep], rel[keep]
            if ad.size == 0:
                return
            k = int(np.argmax(rel))
            rk = float(rel[k])
        else:
            ad, ar = ad.copy(), ar.copy()  # may be chunk / scratch buffers
        if rk > self.rel_lo or self.rel_k is None:
            self.rel_lo = rk
            self.rel_k = (float(ad[k]), float(ar[k]))
            self.theta_rel = max(self.theta_rel, self._rel_theta(*self.rel_k))
        self.cand.append((ad, ar))
        self.cand_n += ad.size
        if self.cand_n > self.cand_cap and self.done < self.n:
            self._fix_floor()

    def _raise_amax(self, a: float):
        """A larger max |ref| raises F_lo. O(1): θ_rel only tightens from the element that set it (k stays a
        valid witness, and dk·F/max(rk, F) grows with F)."""
        self.amax = a
        f = _floor_lower_bound(a, self.work)
        if f > self.F_lo:
            self.F_lo = f
            if self.rel_k is not None:
                dk, rk = self.rel_k
                wt = self.work.type
                self.rel_lo = float(wt(dk) / max(wt(rk), wt(f)))
                self.theta_rel = max(self.theta_rel, self._rel_theta(dk, rk))

    def _fix_floor(self):
        """The lazy-floor candidates keep piling up (e.g. pure relative errors, where |Δ| alone cannot rule
        out an element): read max |ref| of the rest of the reference now (one ref-only scan of what is
        left), so the floor is final, and continue with the exact running max_rel."""
        a = self.amax
        for i in range(self.done, self.n, self.chunk):
            r = self.src_r.get(i, min(self.n, i + self.chunk))
            hi = float(np.maximum.reduce(r))
            lo = float(np.minimum.reduce(r))
            if not (math.isfinite(hi) and math.isfinite(lo)):
                fr = np.isfinite(r)
                hi = float(np.maximum.reduce(r, where=fr, initial=-np.inf))
                lo = float(np.minimum.reduce(r, where=fr, initial=np.inf))
            a = max(a, hi, -lo)
        self.amax = a
        floor = _floor_of(a, self.work)
        self.known = True
        self.F_lo = floor
        cand, self.cand, self.cand_n = self.cand, [], 0
        self.rel_lo = 0.0
        self.theta_rel = 0.0
        if not floor > 0:
            self.rel_pass = True
            self.theta_rel = math.inf
            return
        for ad, ar in cand:  # every element that could be the maximum for this floor is in cand
            self._rel(ad, ar)

    # -- p99 -----------------------------------------------------------------------------------------------
    def _band(self, ad):
        """p99: count |Δ| > hi, keep the |Δ| in [lo, hi] (a narrow band around the predicted p99)."""
        if self.b_mode == 0:
            if not self.b_parts and ad.size >= _SAMPLE_MIN:
                self._band_from_sample(ad)
            else:
                self.b_parts.append(ad.copy())
                self.b_n += ad.size
                return
        dt = ad.dtype
        thr = self.b_thr.get(dt)
        if thr is None:
            thr = self.b_thr[dt] = (_below(self.b_hi, dt), _above(self.b_lo, dt))
        m = ad.shape[0]
        mh = self.m1[:m]
        np.greater(ad, thr[0], out=mh)
        c = int(np.count_nonzero(mh))
        self.c_hi += c
        if self.b_mode == 2:
            self.b_eq += int(np.count_nonzero(np.greater_equal(ad, thr[1], out=self.m2[:m]))) - c
            return
        ml = self.m2[:m]
        np.greater_equal(ad, thr[1], out=ml)
        np.not_equal(ml, mh, out=ml)  # lo <= |Δ| <= hi
        v = ad[ml]
        if v.size:
            self.b_parts.append(v)
            self.b_n += v.size

    def _targets(self, n_seen: float, n_rest: float):
        """Counts (c_h, c_l): the band should have at most c_h values above hi and at least c_l at/above lo
        among the n_seen values, so that at the end the nearest-rank p99 (rank k from the top) lies in it.

        With q = k/n, a threshold exceeded by c of the n_seen values will be exceeded by about
        c·(n_seen + n_rest)/n_seen values at the end, with variance ~ q(1−q)·n_rest·(n_seen + n_rest)/n_seen
        (binomial rest + error of the estimate of q); the band is ±_Z standard deviations wide. A wrong
        guess only costs one extra pass (final_p99), never exactness.
        """
        n_est = n_seen + n_rest
        k = n_est - (P99_PERCENT * n_est + 99) // 100 + 1
        q = k / n_est
        sig = math.sqrt(q * (1.0 - q) * n_rest * n_est / n_seen)
        scale = n_seen / n_est
        c_h = int(math.floor((k - 1 - _Z * sig) * scale)) - 1
        c_l = int(math.ceil((k + _Z * sig) * scale)) + 1
        return c_h, c_l

    def _b_all(self) -> np.ndarray:
        """The kept band values, as one array."""
        if not self.b_parts:
            return np.empty(0, self.work)
        b = np.concatenate(self.b_parts) if len(self.b_parts) > 1 else self.b_parts[0]
        self.b_parts = [b]
        return b

    def _set_band(self, lo: float, hi: float):
        self.b_lo, self.b_hi = lo, hi
        self.b_thr = {}
        self.b_thr_w = (_below(hi, self.work), _above(lo, self.work))
        self.b_mode = 2 if lo == hi else 1

    def _band_from_sample(self, ad):
        """First band, from a strided sample of the first chunk (as if the sample were all seen so far)."""
        step = max(1, ad.size // _SAMPLE)
        samp = ad[::step]
        ns = samp.size
        n_rest = max(self.n - ns, 0)
        c_h, c_l = self._targets(ns, n_rest)
        kth = [ns - j for j in (c_h + 1, c_l) if 1 <= j <= ns]
        srt = np.partition(samp, kth) if kth else samp
        hi = float(srt[ns - c_h - 1]) if 1 <= c_h + 1 <= ns else math.inf
        lo = float(srt[ns - c_l]) if 1 <= c_l <= ns else -math.inf
        self._set_band(lo, hi)
        self.b_next = 2 * self.chunk
        self.b_cap = 4 * self.chunk

    def _narrow(self):
        """Move lo up and hi down to the current targets (both moves only use kept values: exact)."""
        self._flush()  # queued words were selected with the current lo/hi
        n_rest = self.n - self.done
        if n_rest <= 0 or self.n_c == 0:
            self.b_next = math.inf
            return
        if self.b_mode == 0 and self.b_n < _NARROW_MIN:
            self.b_next = self.n_c + 1
            return
        c_h, c_l = self._targets(self.n_c, n_rest)
        b = self._b_all()
        nb = b.size
        rh = c_h + 1 - self.c_hi  # ranks from the top inside the band
        rl = c_l - self.c_hi
        kth = [nb - j for j in (rh, rl) if 1 <= j <= nb]
        srt = np.partition(b, kth) if kth else b
        hi = float(srt[nb - rh]) if 1 <= rh <= nb else self.b_hi
        lo = float(srt[nb - rl]) if 1 <= rl <= nb else self.b_lo
        if hi < self.b_hi:
            self.c_hi += int(np.count_nonzero(b > hi))
        b = b[(b >= lo) & (b <= hi)]
        self._set_band(lo, hi)
        if self.b_mode == 2:
            self.b_eq = b.size
            b = b[:0]
        self.b_parts = [b]
        self.b_n = b.size
        self.b_next = 3 * self.n_c
        self.b_cap = max(4 * self.chunk, 4 * b.size)

    # -- final ---------------------------------------------------------------------------------------------
    def _chunks(self, src_r: "_Source", src_s: "_Source"):
        for i in range(0, self.n, self.chunk):
            j = min(self.n, i + self.chunk)
            yield src_r.get(i, j), src_s.get(i, j)

    def final_p99(self, src_r: "_Source", src_s: "_Source") -> float:
        if self.n_c == 0:
            return math.nan
        k = self.n_c - (P99_PERCENT * self.n_c + 99) // 100 + 1  # nearest rank, counted from the top
        b = self._b_all()
        inside = self.b_eq if self.b_mode == 2 else b.size
        if self.c_hi < k <= self.c_hi + inside:
            if self.b_mode == 2:
                return self.b_lo
            return _kth_largest(b, k - self.c_hi)
        # the band missed (strongly non-stationary data): one more pass over the values above hi / below lo
        above = k <= self.c_hi
        top = _TopK(k if above else k - self.c_hi - inside, self.chunk)
        for r, s in self._chunks(src_r, src_s):
            ad, _ = _finite_absdiff(r, s)
            top.add(ad[ad > _below(self.b_hi, ad.dtype)] if above else ad[ad < _above(self.b_lo, ad.dtype)])
        return top.result()

    def final_rel(self, floor: float, src_r: "_Source", src_s: "_Source") -> float:
        if self.rel_pass or not floor > 0:
            # one more pass: the candidate set overflowed, or a zero floor (0/0 is NaN, x/0 is inf, as in
            # the plain formula; the candidate logic assumes a positive floor)
            best = 0.0
            for r, s in self._chunks(src_r, src_s):
                ad, rr = _finite_absdiff(r, s)
                if ad.size:
                    x = float((ad / np.maximum(np.abs(rr), ad.dtype.type(floor))).max())
                    if not x <= best:
                        best = x
                        if math.isnan(x):
                            break
            return best
        if self.known:
            return self.rel_lo
        best = 0.0
        for ad, ar in self.cand:
            if ad.size:
                best = max(best, float((ad / np.maximum(ar, ad.dtype.type(floor))).max()))
        return best


# ----------------------------------------------------------------------------------------------------------

def compute_metrics(ref, sub, *, atol: float, rtol: float, rel_floor: float | None = None,
                    chunk_elems: int = DEFAULT_CHUNK_ELEMS, name: str | None = None,
                    ref_absmax: float | None = None) -> Metrics:
    """All metrics of one probe in one chunked pass (see the module docstring).

    ``ref``/``sub``: same-shape real arrays (ndarray or memmap, any float dtype; ints/bools are accepted
    for masks). ``name`` is used in error messages. ``ref_absmax`` (max |ref| over finite values, if the
    caller already knows it) fixes the default ``rel_floor`` up front (the pass then skips its running
    max |ref|). Raises ``ParityError`` on a shape/dtype/argument problem.
    """
    label = f"probe {name}" if name else "probe"
    ref = _as_array(ref, "reference", name)
    sub = _as_array(sub, "subject", name)
    if tuple(ref.shape) != tuple(sub.shape):
        raise ParityError(f"{label}: shape {tuple(sub.shape)} vs reference {tuple(ref.shape)}")
    for what, val in (("atol", atol), ("rtol", rtol)):
        if not _is_num(val) or not val >= 0:
            raise ParityError(f"{label}: {what} must be a finite number >= 0, got {val!r}")
    if rel_floor is not None and (not _is_num(rel_floor) or not rel_floor > 0):
        raise ParityError(f"{label}: rel_floor must be a finite number > 0, got {rel_floor!r}")
    if ref_absmax is not None and (not _is_num(ref_absmax) or not ref_absmax >= 0):
        raise ParityError(f"{label}: ref_absmax must be a finite number >= 0, got {ref_absmax!r}")
    f64 = _needs_f64(ref.dtype, "reference", name) | _needs_f64(sub.dtype, "subject", name)
    work = np.dtype(np.float64 if f64 else np.float32)
    shape = tuple(int(x) for x in ref.shape)
    n = int(ref.size)
    chunk = min(max(1, int(chunk_elems)), max(n, 1))

    src_r = _Source(ref, work, chunk, "ref")
    src_s = _Source(sub, work, chunk, "sub")
    with np.errstate(all="ignore"):
        if rel_floor is not None:
            floor = float(work.type(float(rel_floor)))
        elif ref_absmax is not None:
            floor = _floor_of(float(ref_absmax), work)
        else:
            floor = None  # fixed at the end from the running max |ref|
        acc = _Acc(n, work, chunk, atol, rtol, floor)
        acc.src_r, acc.src_s = src_r, src_s
        for i in range(0, n, chunk):
            j = min(n, i + chunk)
            acc.consume(src_r.get(i, j), src_s.get(i, j), i)
        acc._flush()
        if floor is None:
            floor = _floor_of(acc.amax, work)
        p99 = acc.final_p99(src_r, src_s)
        max_rel = acc.final_rel(floor, src_r, src_s)

    nan = math.nan
    n_c = acc.n_c
    if n_c == 0:
        empty = n == 0
        max_abs = mean_abs = p99_abs = min_pass = max_rel = rel_fro = 0.0 if empty else nan
        cosine = 1.0 if empty else nan
        argmax = ref_at = sub_at = None
    else:
        max_abs = acc.max_abs
        mean_abs = acc.s_abs / n_c
        p99_abs = min(p99, max_abs)
        min_pass = max(0.0, acc.max_e)
        argmax = tuple(int(x) for x in np.unravel_index(acc.argmax, shape)) if shape else ()
        ref_at, sub_at = acc.ref_at, acc.sub_at
        cosine = _cosine(acc.s_dd, acc.s_dr, acc.s_rr)
        if acc.s_rr > 0:
            rel_fro = math.sqrt(acc.s_dd / acc.s_rr)
        else:
            rel_fro = 0.0 if acc.s_dd == 0 else math.inf
    first_mism = None
    if acc.first_mism is not None:
        first_mism = tuple(int(x) for x in np.unravel_index(acc.first_mism, shape)) if shape else ()
    n_out = acc.n_out + acc.n_mism
    return Metrics(
        name=name, shape=shape, n=n, n_compared=n_c,
        max_abs=float(max_abs), mean_abs=float(mean_abs), max_rel=float(max_rel), rel_floor=float(floor),
        cosine=float(cosine), rel_fro=float(rel_fro), p99_abs=float(p99_abs),
        atol=float(atol), rtol=float(rtol), n_outside=int(n_out),
        frac_outside=(n_out / n) if n else 0.0, min_passing_atol=float(min_pass),
        argmax_abs=argmax, ref_at_max=ref_at, sub_at_max=sub_at,
        nan_ref=acc.nan_r, nan_sub=acc.nan_s, inf_ref=acc.inf_r, inf_sub=acc.inf_s,
        nonfinite_match=acc.n_mism == 0,
        finite_ok=(acc.nan_r + acc.nan_s + acc.inf_r + acc.inf_s) == 0,
        first_nonfinite_mismatch=first_mism,
    )

def _is_num(x) -> bool:
    return (isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool)
            and math.isfinite(x))

def _cosine(s_dd: float, s_dr: float, s_rr: float) -> float:
    """cos(ref, sub) from Σ Δ², Σ Δ·ref, Σ ref² without cancellation in 1 − cos."""
    s_ss = max(0.0, s_rr + 2.0 * s_dr + s_dd)
    if s_rr <= 0.0 and s_ss <= 0.0:
        return 1.0
    if s_rr <= 0.0 or s_ss <= 0.0:
        return 0.0
    nr, ns = math.sqrt(s_rr), math.sqrt(s_ss)
    x = (2.0 * s_dr + s_dd) / (nr + ns)  # = ‖sub‖ − ‖ref‖
    one_minus = (s_dd - x * x) / (2.0 * nr * ns)
    return min(1.0, max(-1.0, 1.0 - min(2.0, max(0.0, one_minus))))


# ----------------------------------------------------------------------------------------------------------
# messages

def format_number(x) -> str:
    """Compact human formatting: 0, 0.5312, 3.1e-04, NaN, inf, —."""
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    ax = abs(x)
    if 1e-3 <= ax < 1e4:
        return f"{x:.4g}"
    return f"{x:.1e}"


def _fmt_tol(x: float) -> str:
    return f"{x:g}" if x == 0 else f"{x:.0e}" if float(f"{x:.0e}") == x else f"{x:.3g}"


def _fmt_index(idx) -> str:
    if idx is None:
        return "-"
    return "(" + ", ".join(str(int(v)) for v in idx) + ("," if len(idx) == 1 else "") + ")"


def compare_close(ref, sub, atol: float, rtol: float, name: str | None = None, *, context: str | None = None,
                  rel_floor: float | None = None,
                  chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> tuple[bool, Metrics, str]:
    """numpy.testing-style check. Returns ``(passed, metrics, message)``.

    The message's first line is self-contained (probe, verdict, tolerance, worst numbers); further lines
    give numpy.testing-style detail. ``context`` (e.g. ``"profile fp32/block/accumulated"``) is shown in
    parentheses after the tolerance.
    """
    m = compute_metrics(ref, sub, atol=atol, rtol=rtol, rel_floor=rel_floor, chunk_elems=chunk_elems,
                        name=name)
    ok = passed(m)
    return ok, m, format_message(m, context=context)


def format_message(m: Metrics, *, context: str | None = None) -> str:
    """The message ``compare_close`` returns, built from an existing ``Metrics``."""
    who = f"probe {m.name}" if m.name else "probe"
    tol = f"rtol={_fmt_tol(m.rtol)}, atol={_fmt_tol(m.atol)}"
    ctx = f" ({context})" if context else ""
    pct = 100.0 * m.frac_outside
    nonfinite = m.nan_ref + m.nan_sub + m.inf_ref + m.inf_sub
    if passed(m):
        return (f"{who}: within tolerance {tol}{ctx}: max abs {format_number(m.max_abs)}, "
                f"max rel {format_number(m.max_rel)}, cosine {_fmt_cos(m.cosine)}")
    head = (f"{who}: Not equal to tolerance {tol}{ctx}: {m.n_outside} / {m.n} mismatched ({pct:.3g}%), "
            f"max abs {format_number(m.max_abs)}")
    if nonfinite:
        head += f", NaN/Inf ref {m.nan_ref}/{m.inf_ref} sub {m.nan_sub}/{m.inf_sub}"
    lines = [head,
             f"Not equal to tolerance {tol}{ctx}",
             f"{who}: Mismatched elements: {m.n_outside} / {m.n} ({pct:.3g}%)"]
    if m.n_compared:
        lines.append(f"Max absolute difference: {format_number(m.max_abs)} at index {_fmt_index(m.argmax_abs)}: "
                     f"ref={_fmt_val(m.ref_at_max)} sub={_fmt_val(m.sub_at_max)}")
        lines.append(f"Max relative difference: {format_number(m.max_rel)} (floor {format_number(m.rel_floor)})")
        lines.append(f"Minimal passing atol at rtol={_fmt_tol(m.rtol)}: {format_number(m.min_passing_atol)}")
    if nonfinite:
        where = "same positions" if m.nonfinite_match else (
            f"positions differ, first at index {_fmt_index(m.first_nonfinite_mismatch)}")
        lines.append(f"NaN/Inf: ref {m.nan_ref} NaN {m.inf_ref} Inf, sub {m.nan_sub} NaN {m.inf_sub} Inf "
                     f"({where})")
    return "\n".join(lines)


def _fmt_val(x) -> str:
    return "-" if x is None else f"{x:.7g}"


def _fmt_cos(c: float) -> str:
    if math.isnan(c):
        return "NaN"
    if c == 1.0:
        return "1"
    if c > 0.999:
        return f"1-{1.0 - c:.1e}"
    return f"{c:.6f}"


# ----------------------------------------------------------------------------------------------------------
# throughput (used by `make bench`)

def read_bandwidth_probe(nbytes: int = 200_000_000, repeats: int = 5) -> float:
    """GB/s of ``a.sum()`` over a float32 array of ``nbytes`` (best of ``repeats``)."""
    a = np.ones(max(1, int(nbytes) // 4), dtype=np.float32)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def metrics_throughput(n: int = 50_000_000, repeats: int = 3, *, atol: float = 1e-5, rtol: float = 1e-5,
                       chunk_elems: int = DEFAULT_CHUNK_ELEMS, seed: int = 0) -> float:
    """GB/s (bytes of ref + sub per second) of ``compute_metrics`` on two float32 arrays of ``n`` elements.

    The subject is the reference plus ~1e-6 relative noise (a realistic passing probe).
    """
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(int(n), dtype=np.float32)
    sub = rng.standard_normal(int(n), dtype=np.float32)
    sub *= np.float32(1e-6)
    sub += ref
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        compute_metrics(ref, sub, atol=atol, rtol=rtol, chunk_elems=chunk_elems)
        best = min(best, time.perf_counter() - t0)
    return (ref.nbytes + sub.nbytes) / best / 1e9
