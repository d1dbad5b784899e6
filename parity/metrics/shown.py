"""The metrics that are only shown, never decide a verdict: exact ``p99_abs`` and ``max_rel``.

They need what the verdict pass ends with (the number of compared values, and max |ref| for the floor of
max_rel), so they cost a second pass over the arrays, made only where they are shown: ``compute_metrics`` makes it
by default (``shown=True``: reports, failure messages); ``shown=False`` skips it (``parity compare`` without
``--report`` for passing probes, the bench's verdict figure) and leaves both ``None``.

The pass uses the verdict pass's chunks (a chunk whose Δ overflows the working dtype is computed in float64 as a
whole here too) and runs on every core the same way (``parity.metrics.verdict.for_each_chunk``):

* max_rel = max |Δ| / max(|ref|, floor) in the chunk's dtype: a max per chunk (order-free).
* p99, nearest rank k from the top among the n_compared values of |Δ|: a band [lo, hi] that holds rank k with
  overwhelming probability is placed from a strided sample of ~16 Ki values (±6 standard deviations of the
  sampled rank); the pass counts |Δ| > hi and keeps the |Δ| in [lo, hi] (about 1 % of them), and the answer is
  their (k − count)-th largest. When the band misses (a sample that does not represent the data) or holds more
  than ``_cap`` values (heavily quantized errors), the interval that holds rank k is narrowed by histograms of
  the float64 bit patterns of |Δ| (non-negative floats order like their bits; 2^16 bins a pass, at most four
  passes) until its values fit in memory or are all equal. Exact either way; small probes keep every value.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from parity.metrics.definitions import p99_rank
from parity.metrics.fused import chunk_tail
from parity.metrics.verdict import VerdictPass, finite_absdiff, for_each_chunk, reused

_Z = 6.0            # band half-width, in standard deviations of the sampled rank
_SAMPLE = 16384     # sampled values that place the band
_KEEP_ALL = 65536   # probes up to this many elements keep every |Δ|
_BIN_BITS = 16      # histogram bins per narrowing pass: 2^16
_INF_BITS = int(np.array(np.inf).view(np.uint64))


def _cap(n: int) -> int:
    """Most values of |Δ| held at once (float64): 1/4 of a float32 probe's size, at least _KEEP_ALL."""
    return max(_KEEP_ALL, n // 32)


def shown_metrics(vp: VerdictPass, floor: float) -> tuple[float, float]:
    """(p99_abs, max_rel) of the pair a finished ``VerdictPass`` was run on (n_compared > 0)."""
    with np.errstate(all="ignore"):
        k = p99_rank(vp.n_c)
        lo, hi = (0.0, math.inf) if vp.n <= _KEEP_ALL else _band_from_sample(vp, k)
        tail = _TailPass(vp, floor, lo, hi).run()
        above, inside, ties = tail.n_hi, tail.n_band, tail.n_eq  # > hi, in (lo, hi], == lo
        if above < k <= above + inside:
            interval = (_bits(lo) + 1, _bits(hi), k - above, inside, tail.values)
        elif above + inside < k <= above + inside + ties:
            interval = (_bits(lo), _bits(lo), 1, ties, None)
        elif k <= above:
            interval = (_bits(hi) + 1, _INF_BITS, k, above, None)
        else:
            rest = above + inside + ties
            interval = (0, _bits(lo) - 1, k - rest, vp.n_c - rest, None)
        return min(_kth_largest_in(vp, *interval), vp.max_abs), tail.max_rel


class _TailPass:
    """max_rel, and the count above / values inside the band [lo, hi] of |Δ|."""

    def __init__(self, vp: VerdictPass, floor: float, lo: float, hi: float):
        self.vp, self.floor, self.lo, self.hi = vp, floor, lo, hi
        self.hi_counts = np.zeros(vp.n_chunks, np.int64)
        self.eq_counts = np.zeros(vp.n_chunks, np.int64)
        self.band_counts = np.zeros(vp.n_chunks, np.int64)
        self.rel = np.zeros(vp.n_chunks)
        self.parts: list = [None] * vp.n_chunks
        self.keep = True
        self.kept = 0
        self.lock = threading.Lock()

    def run(self) -> "_TailPass":
        for_each_chunk(self.vp.n_chunks, self._chunk)
        self.n_hi = int(self.hi_counts.sum())
        self.n_band = int(self.band_counts.sum())
        self.n_eq = int(self.eq_counts.sum())
        rel = self.rel
        self.max_rel = math.nan if np.isnan(rel).any() else float(rel.max())
        self.values = None  # too many: narrowed by histograms
        if self.keep:
            self.values = np.concatenate([p for p in self.parts if p is not None] or [np.empty(0)])
        return self

    def _chunk(self, c: int) -> None:
        vp = self.vp
        if vp.tab.n_c[c] == 0:
            return
        if not vp.tab.masked[c] and self.floor > 0:
            i, j = vp.bounds(c)
            r, s = vp.src_r.get(i, j), vp.src_s.get(i, j)
            dt = r.dtype
            band = reused(("band", dt.str, vp.chunk), np.empty, vp.chunk, dt)
            scratch = reused(("tail", dt.str, vp.chunk), np.empty, vp.chunk, dt)
            lo = dt.type(self.lo)  # lo is a value of |Δ| (or 0): exact in every dtype it is compared in
            ok, n_hi, n_eq, n_band, rel = chunk_tail(r, s, self.floor, _below(self.hi, dt), lo, band, scratch)
            if ok:
                self._keep(c, n_hi, n_eq, band[:n_band], rel)
                return
        rc, _, ad = _chunk_values(vp, c)
        dt = ad.dtype
        above = ad > _below(self.hi, dt)
        inside = ad[(ad > self.lo) & ~above]
        # a zero floor (it underflowed): the plain |Δ|/|ref|, 0/0 is NaN and x/0 is inf, as in the formula
        rel = float((ad / np.maximum(np.abs(rc), dt.type(self.floor))).max())
        self._keep(c, int(np.count_nonzero(above)), int(np.count_nonzero(ad == self.lo)), inside, rel)

    def _keep(self, c: int, n_hi: int, n_eq: int, values: np.ndarray, rel: float) -> None:
        n_band = values.size
        self.hi_counts[c], self.eq_counts[c], self.band_counts[c], self.rel[c] = n_hi, n_eq, n_band, rel
        if not self.keep:
            return
        with self.lock:
            self.kept += n_band
            if self.kept > _cap(self.vp.n):  # too many to hold: the band is narrowed by histograms instead
                self.keep = False
                self.parts = [None] * self.vp.n_chunks
                return
        self.parts[c] = values.astype(np.float64)


def _kth_largest_in(vp: VerdictPass, blo: int, bhi: int, k: int, count: int, values) -> float:
    """The k-th largest |Δ| whose float64 bit pattern lies in [blo, bhi], which holds ``count`` of them
    (``values``: those values, if already at hand)."""
    while True:
        if values is not None:
            return float(np.partition(values, values.size - k)[values.size - k])
        if blo == bhi:
            return float(np.array(blo, np.uint64).view(np.float64))
        if count <= _cap(vp.n):
            values = _values_in(vp, blo, bhi)
            continue
        shift = max(0, (bhi - blo).bit_length() - _BIN_BITS)
        hist = _histogram(vp, blo, bhi, shift)
        from_top = np.cumsum(hist[::-1])
        b = hist.size - 1 - int(np.searchsorted(from_top, k))  # the bin holding rank k
        k -= int(from_top[hist.size - 2 - b]) if b < hist.size - 1 else 0
        count = int(hist[b])
        blo, bhi = blo + (b << shift), min(bhi, blo + ((b + 1) << shift) - 1)


def _chunk_bits(vp: VerdictPass, c: int) -> np.ndarray:
    """The float64 bit patterns of chunk c's |Δ| (as the verdict pass computed them)."""
    if vp.tab.n_c[c] == 0:
        return np.empty(0, np.uint64)
    return _chunk_values(vp, c)[2].astype(np.float64).view(np.uint64)


def _values_in(vp: VerdictPass, blo: int, bhi: int) -> np.ndarray:
    parts: list = [None] * vp.n_chunks

    def chunk(c):
        b = _chunk_bits(vp, c)
        parts[c] = b[(b >= blo) & (b <= bhi)].view(np.float64)
    for_each_chunk(vp.n_chunks, chunk)
    return np.concatenate([p for p in parts if p is not None] or [np.empty(0)])


def _histogram(vp: VerdictPass, blo: int, bhi: int, shift: int) -> np.ndarray:
    n_bins = ((bhi - blo) >> shift) + 1
    hist = np.zeros(n_bins, np.int64)
    lock = threading.Lock()

    def chunk(c):
        b = _chunk_bits(vp, c)
        b = b[(b >= blo) & (b <= bhi)]
        counts = np.bincount(((b - np.uint64(blo)) >> np.uint64(shift)).astype(np.intp), minlength=n_bins)
        with lock:  # integer counts: the order of the additions does not matter
            hist[:] += counts
    for_each_chunk(vp.n_chunks, chunk)
    return hist


def _chunk_values(vp: VerdictPass, c: int):
    """(ref, sub, |Δ|) of chunk c's compared positions, as the verdict pass computed them."""
    i, j = vp.bounds(c)
    r, s = vp.src_r.get(i, j), vp.src_s.get(i, j)
    both = (np.isfinite(r) & np.isfinite(s)) if vp.tab.masked[c] else None
    return finite_absdiff(r, s, both)


def _band_from_sample(vp: VerdictPass, k: int) -> tuple[float, float]:
    """[lo, hi] around the k-th largest |Δ|, from _SAMPLE positions drawn with a fixed seed (not a fixed stride,
    which could fall in step with a row length); finite pairs only. lo and hi are values of |Δ| (or 0, inf)."""
    pos = np.unique(np.random.default_rng(0).integers(0, vp.n, _SAMPLE))
    r, s = vp.src_r.take(pos), vp.src_s.take(pos)
    fin = np.isfinite(r) & np.isfinite(s)
    samp = np.abs(s[fin] - r[fin])  # in the working dtype, as the pass computes |Δ|
    samp = samp[np.isfinite(samp)].astype(np.float64)
    ns = samp.size
    if ns == 0:
        return 0.0, math.inf
    q = k / vp.n_c
    delta = _Z * math.sqrt(ns * q * (1.0 - q)) + 8.0
    at = ns * (1.0 - q)
    srt = np.sort(samp)
    lo = float(srt[int(at - delta)]) if at - delta >= 0 else 0.0
    hi = float(srt[int(at + delta)]) if at + delta < ns else math.inf
    return lo, hi


def _bits(x: float) -> int:
    return int(np.array(x, np.float64).view(np.uint64))


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
