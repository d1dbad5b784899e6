"""Per-probe error metrics, computed in ONE chunked pass over (reference, subject).

``compute_metrics(ref, sub, atol=..., rtol=...)`` reads both arrays (ndarrays or ``np.memmap``s of any
real dtype, same shape) chunk by chunk (default 128Ki elements, so a chunk and its work buffers stay in
cache), reusing chunk-sized buffers: no full-size temporary is ever made. Per chunk it does one
subtraction, |Δ|, four BLAS dot products (float32 partials, accumulated in float64) and ONE comparison
|Δ| > θ that picks the few "candidate" elements that can still change an order statistic (max |Δ|, min
passing atol, max rel, the tolerance count, the p99 tail); only those are gathered and worked on.

Definitions (Δ = sub − ref, computed in the *working dtype*: float32 when both inputs are at most 32-bit
floats or small ints/bools, else float64 — the arithmetic ``numpy.isclose`` uses for float32/float64):

* ``n``            number of elements (1 for a 0-d array); ``n_compared``: positions where both are finite.
* ``max_abs``      max |Δ| over compared positions; ``argmax_abs`` its multi-index (first occurrence in C
                   order), ``ref_at_max`` / ``sub_at_max`` the two values there.
* ``mean_abs``     mean |Δ| over compared positions.
* ``max_rel``      max |Δ| / max(|ref|, rel_floor). Default ``rel_floor`` = 1e-3 · max|ref| over the finite
                   reference values, or 1e-12 when that is 0 (all-zero reference). The floor keeps near-zero
                   reference entries from dominating. Because the floor is global, the default costs one
                   streaming max/min pre-scan of ``ref`` (memory-bound, ~25% of the run time); pass
                   ``rel_floor=`` or ``ref_absmax=`` (max|ref|, if already known) to skip it. Exact.
* ``cosine``       cos(ref, sub) in float64; 1 when both are all-zero, 0 when exactly one is. Evaluated as
                   1 − (‖Δ‖² − (‖sub‖−‖ref‖)²) / (2‖ref‖‖sub‖) from Σ Δ², Σ Δ·ref and Σ ref², so 1 − cos
                   keeps its relative precision even at 1e-14 (a plain dot/norm product would not).
* ``rel_fro``      ‖Δ‖₂ / ‖ref‖₂; when ‖ref‖ = 0 it is 0 if Δ = 0 and +inf otherwise.
* ``p99_abs``      99th percentile of |Δ|, nearest rank: the smallest value v with at least 99% of the
                   compared |Δ| <= v. EXACT (no histogram binning): after the first chunk a threshold τ is
                   set at the top 2% of what was seen and every |Δ| > τ is kept (~2% of n, plus one chunk;
                   re-thresholded if it grows past 5%); if at the end fewer than 1% are above τ (strongly
                   non-stationary data), one extra pass finds the exact value below τ.
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
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from parity.errors import ParityError

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


class _Source:
    """Chunked, copy-free (when possible) access to one input, converted to the working dtype."""

    def __init__(self, a: np.ndarray, work: np.dtype, chunk: int):
        self.a = a
        self.work = work
        self.contig = a.flags.c_contiguous
        self.flat = a.reshape(-1) if self.contig else None
        self.direct = self.contig and a.dtype == work
        self.buf = None if self.direct else np.empty(chunk, dtype=work)

    def get(self, i: int, j: int) -> np.ndarray:
        src = self.flat[i:j] if self.contig else self.a.flat[i:j]
        if self.direct:
            return src
        out = self.buf[: j - i]
        np.copyto(out, src, casting="unsafe")
        return out


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


class _Work:
    """dtype-specific constants and reusable chunk buffers."""

    def __init__(self, dtype: np.dtype, size: int, atol: float, rtol: float):
        self.dtype = dtype
        self.atol = dtype.type(atol)
        self.rtol = dtype.type(rtol)
        self.eps = float(np.finfo(dtype).eps)
        self.d = np.empty(size, dtype)
        self.ones = np.ones(size, dtype)
        self.mask = np.empty(size, bool)


_P99_SPEC = 0.02  # fraction of |Δ| kept above the speculative p99 threshold (needs >= 1%)


class _Acc:
    """Running state of one compute_metrics pass.

    Every chunk contributes its four BLAS partial sums; then ONE comparison |Δ| > θ picks the few
    "candidate" elements that could still change any order-statistic metric, with
    θ = min(max(0, max_e), atol, τ, max_rel·floor): an element at or below θ cannot raise the max |Δ|, the
    min passing atol, the max relative error, be outside the tolerance, or be above the p99 threshold τ.
    Only the candidates are gathered and worked on.
    """

    def __init__(self, n: int, work: np.dtype, chunk: int, atol: float, rtol: float, floor: float):
        self.n = n
        self.chunk = chunk
        self.atol = float(atol)
        self.rtol = float(rtol)
        self.w = _Work(work, chunk, atol, rtol)
        self.floor = floor
        self.n_c = 0
        self.s_abs = 0.0
        self.s_dd = 0.0
        self.s_dr = 0.0
        self.s_rr = 0.0
        self.max_abs = -1.0
        self.argmax = None
        self.ref_at = None
        self.sub_at = None
        self.max_e = -math.inf
        self.n_out = 0
        self.max_rel = 0.0
        self.nan_r = self.nan_s = self.inf_r = self.inf_s = 0
        self.n_mism = 0
        self.first_mism = None
        # p99: every |Δ| > tau is kept (tau is speculative; verified at the end, else one more pass)
        self.tau = -math.inf
        self.kept: list[np.ndarray] = []
        self.kept_n = 0
        self.cap = int(0.05 * n) + 2 * chunk
        self.theta = -math.inf

    def _update_theta(self):
        w = self.w
        t = min(max(0.0, self.max_e), float(w.atol), self.tau,
                self.max_rel * self.floor * (1.0 - 4.0 * w.eps))
        self.theta = t

    # -- one chunk -----------------------------------------------------------------------------------------
    def consume(self, r: np.ndarray, s: np.ndarray, i: int):
        m = r.shape[0]
        w = self.w
        d = w.d[:m]
        np.subtract(s, r, out=d)
        s_dr = float(np.dot(d, r))
        s_rr = float(np.dot(r, r))
        np.abs(d, out=d)
        s_dd = float(np.dot(d, d))
        s_abs = float(np.dot(d, w.ones[:m]))
        if not math.isfinite(s_dd + s_dr + s_rr + s_abs):  # NaN/Inf in the chunk, or a float overflow
            self._slow(r, s, i)
            return
        if (s_dd < _TINY_SUM and s_dd < s_abs) or (s_rr < _TINY_SUM and r.any()):  # float underflow
            s_dd, s_dr, s_rr, s_abs = _sums64(r, s)
        self.n_c += m
        self.s_abs += s_abs
        self.s_dd += s_dd
        self.s_dr += s_dr
        self.s_rr += s_rr
        mask = w.mask[:m]
        np.greater(d, self.theta, out=mask)
        idx = np.flatnonzero(mask)
        if idx.size:
            self._candidates(w, d[idx], r[idx], s, idx, i)

    def _candidates(self, w: _Work, ad, rc, s, idx, i):
        """Work on the candidate elements (``ad`` = |Δ|, ``rc`` = ref there; ``s[idx]`` = sub there)."""
        k = int(np.argmax(ad))
        mx = float(ad[k])
        if mx > self.max_abs:  # first occurrence wins ties
            self.max_abs = mx
            self.argmax = i + int(idx[k])
            self.ref_at = float(rc[k])
            self.sub_at = float(s[idx[k]])
        # tolerance and relative error: only elements above their own threshold can matter
        th2 = min(max(0.0, self.max_e), float(w.atol), self.max_rel * self.floor * (1.0 - 4.0 * w.eps))
        if mx > th2:
            if th2 > self.theta:
                pick = ad > th2
                ad2, ar = ad[pick], np.abs(rc[pick])
            else:
                ad2, ar = ad, np.abs(rc)
            if w.rtol == 0:
                emax = float(ad2.max())
                t = None
            else:
                t = ar * w.rtol
                emax = float((ad2 - t).max())
            if emax > self.max_e:
                self.max_e = emax
            if mx > w.atol:  # numpy.isclose: |Δ| <= atol + rtol·|ref|, in the working dtype
                lim = w.atol if t is None else t + w.atol
                self.n_out += int(np.count_nonzero(ad2 > lim))
            rel = float((ad2 / np.maximum(ar, ar.dtype.type(self.floor))).max())
            if rel > self.max_rel:
                self.max_rel = rel
        if mx > self.tau:
            sel = ad[ad > self.tau] if self.tau != -math.inf else ad
            self.kept.append(sel)
            self.kept_n += sel.size
            if self.tau == -math.inf and self.n > self.chunk:
                self._speculate()
            elif self.kept_n > self.cap:
                self._speculate()
        self._update_theta()

    def _speculate(self):
        """Raise tau so that about 2% of the values seen so far stay above it."""
        allv = np.concatenate(self.kept) if len(self.kept) > 1 else self.kept[0]
        want = max(1, int(math.ceil(_P99_SPEC * self.n_c)))
        if allv.size <= want:
            return
        tau = _kth_largest(allv, want)
        keep = allv[allv > tau]
        self.tau = tau
        self.kept = [keep] if keep.size else []
        self.kept_n = int(keep.size)

    def _slow(self, r, s, i):
        """A chunk with NaN/Inf (or an overflow of Δ): count, mask, accumulate the finite pairs in float64."""
        m = r.shape[0]
        fr = np.isfinite(r)
        fs = np.isfinite(s)
        nr = np.isnan(r)
        ns = np.isnan(s)
        nan_r = int(np.count_nonzero(nr))
        nan_s = int(np.count_nonzero(ns))
        self.nan_r += nan_r
        self.nan_s += nan_s
        self.inf_r += m - int(np.count_nonzero(fr)) - nan_r
        self.inf_s += m - int(np.count_nonzero(fs)) - nan_s
        both = fr & fs
        mism = ~both & ~((nr & ns) | (r == s))  # NaN faces NaN, Inf faces the same Inf
        nm = int(np.count_nonzero(mism))
        if nm:
            self.n_mism += nm
            if self.first_mism is None:
                self.first_mism = i + int(np.flatnonzero(mism)[0])
        idx = np.flatnonzero(both)
        if idx.size == 0:
            return
        rc = r[idx]
        sc = s[idx]
        w = self.w
        d = sc - rc
        if not np.isfinite(d).all():  # Δ overflows the working dtype: work in float64
            rc, sc = rc.astype(np.float64), sc.astype(np.float64)
            d = sc - rc
            w = _Work(np.dtype(np.float64), 0, self.atol, self.rtol)
        s_dd, s_dr, s_rr, s_abs = _sums64(rc, sc)
        self.s_dd += s_dd
        self.s_dr += s_dr
        self.s_rr += s_rr
        self.s_abs += s_abs
        self.n_c += idx.size
        np.abs(d, out=d)
        cand = np.flatnonzero(d > self.theta)
        if cand.size:
            self._candidates(w, d[cand], rc[cand], s, idx[cand], i)

    # -- final ---------------------------------------------------------------------------------------------
    def final_p99(self, src_r: "_Source", src_s: "_Source") -> float:
        if self.n_c == 0:
            return math.nan
        k = self.n_c - (P99_PERCENT * self.n_c + 99) // 100 + 1  # nearest rank, counted from the top
        if self.kept_n >= k:
            allv = np.concatenate(self.kept) if len(self.kept) > 1 else self.kept[0]
            return _kth_largest(allv, k)
        # the speculative tau was too high (non-stationary data): one more pass over the values <= tau
        top = _TopK(k - self.kept_n, self.chunk)
        tau = self.tau
        for i in range(0, self.n, self.chunk):
            j = min(self.n, i + self.chunk)
            r, s = src_r.get(i, j), src_s.get(i, j)
            ad = np.abs(s - r)
            both = np.isfinite(r) & np.isfinite(s)
            if not both.all():
                ad = np.abs(s[both] - r[both])
            top.add(ad[ad <= tau])
        return top.result()


_TINY_SUM = 1e-30


def _sums64(r, s):
    r64 = r.astype(np.float64)
    d64 = s.astype(np.float64) - r64
    return (float(np.dot(d64, d64)), float(np.dot(d64, r64)), float(np.dot(r64, r64)),
            float(np.abs(d64).sum()))


def _max_abs_finite(src: "_Source", n: int, chunk: int) -> float:
    """max |ref| over the finite reference values (the pre-scan that fixes the default rel floor)."""
    best = 0.0
    for i in range(0, n, chunk):
        r = src.get(i, min(n, i + chunk))
        hi = float(np.maximum.reduce(r))
        lo = float(np.minimum.reduce(r))
        if not (math.isfinite(hi) and math.isfinite(lo)):
            r = r[np.isfinite(r)]
            if r.size == 0:
                continue
            hi, lo = float(r.max()), float(r.min())
        best = max(best, hi, -lo)
    return best


# ----------------------------------------------------------------------------------------------------------

def compute_metrics(ref, sub, *, atol: float, rtol: float, rel_floor: float | None = None,
                    chunk_elems: int = DEFAULT_CHUNK_ELEMS, name: str | None = None,
                    ref_absmax: float | None = None) -> Metrics:
    """All metrics of one probe in one chunked pass (see the module docstring).

    ``ref``/``sub``: same-shape real arrays (ndarray or memmap, any float dtype; ints/bools are accepted
    for masks). ``name`` is used in error messages. ``ref_absmax`` (max |ref| over finite values, if the
    caller already knows it) spares the pre-scan that fixes the default ``rel_floor``. Raises
    ``ParityError`` on a shape/dtype/argument problem.
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

    src_r = _Source(ref, work, chunk)
    src_s = _Source(sub, work, chunk)
    with np.errstate(all="ignore"):
        if rel_floor is None:
            amax = _max_abs_finite(src_r, n, chunk) if ref_absmax is None else float(ref_absmax)
            floor = REL_FLOOR_FACTOR * amax
            if not floor > 0:
                floor = REL_FLOOR_ZERO
        else:
            floor = float(rel_floor)
        floor = float(work.type(floor))
        if not floor > 0:  # a tiny floor underflowing float32
            floor = float(np.finfo(work).tiny)
        acc = _Acc(n, work, chunk, atol, rtol, floor)
        for i in range(0, n, chunk):
            j = min(n, i + chunk)
            acc.consume(src_r.get(i, j), src_s.get(i, j), i)
        p99 = acc.final_p99(src_r, src_s)

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
        max_rel = acc.max_rel
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
