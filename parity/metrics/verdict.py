"""The verdict metrics of one probe in ONE read of (reference, subject), chunk by chunk, on every core.

The arrays (ndarrays or ``np.memmap``s, any real dtype) are cut into chunks of ``chunk_elems`` elements. Each
chunk is worked on by whichever thread takes it next and leaves one row of results, at its own index, in a
``_ChunkTable``; the rows are combined in chunk order at the end. So every result is exact and the same for any
thread count and any schedule: integer counts add, maxima and the first position of the maximum are order-free,
and the float64 sums of the per-chunk partial sums are added chunk 0, 1, 2, … as one thread would.

Per chunk without NaN/Inf (``parity.metrics.fused``, both loops compiled, the GIL released):
1. ``chunk_sums``: |Δ| into a chunk buffer, Σ Δ·ref, Σ ref², Σ Δ², Σ |Δ| and max |ref| from one read of ref
   and sub. The sums' finiteness doubles as the NaN/Inf detector: a chunk whose sums are not finite takes the
   masked path (``_masked_chunk``); float32 sums that underflow are redone in float64.
2. ``chunk_order_stats`` on the buffer (in cache): the tolerance count, max(|Δ| − rtol·|ref|) and max |Δ|.
The position of the maximum is looked up afterwards in the one chunk that holds it.

The memory traffic is that of reading both arrays once; the limit is memory bandwidth, which one core does not
saturate on the machines measured (``make bench``: ``metrics_vs_read_probe``), hence the threads.
``PARITY_METRICS_THREADS`` caps their number (default: the usable cores).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from parity.metrics.definitions import floor_of
from parity.metrics.fused import chunk_order_stats, chunk_sums

_TINY_SUM = 1e-30  # float32 partial sums below this are redone in float64 (underflow)


# ----------------------------------------------------------------------------------------------------------
# chunked access and threads

_local = threading.local()


def reused(key: tuple, make, *args) -> np.ndarray:
    """A work array kept per thread and handed to every later pass of that thread: fresh chunk-sized numpy
    arrays cost a page fault per 4 KiB (more than the arithmetic on them). Callers never keep results in these
    arrays past their own chunk."""
    cache = getattr(_local, "arrays", None)
    if cache is None:
        cache = _local.arrays = {}
    a = cache.get(key)
    if a is None:
        if len(cache) > 64:  # many chunk sizes (tests): start over
            cache.clear()
        a = cache[key] = make(*args)
    return a


class Source:
    """Chunked, copy-free (when possible) access to one input, converted to the working dtype."""

    def __init__(self, a: np.ndarray, work: np.dtype, chunk: int, role: str):
        self.a = a
        self.work = work
        self.chunk = chunk
        self.role = role
        self.contig = a.flags.c_contiguous
        self.flat = a.reshape(-1) if self.contig else None
        self.direct = self.contig and a.dtype == work

    def get(self, i: int, j: int) -> np.ndarray:
        src = self.flat[i:j] if self.contig else self.a.flat[i:j]
        if self.direct:
            return src
        out = reused(("src", self.role, self.work.str, self.chunk), np.empty, self.chunk, self.work)[: j - i]
        np.copyto(out, src, casting="unsafe")
        return out

    def take(self, pos: np.ndarray) -> np.ndarray:
        """The values at flat positions ``pos``, converted like ``get`` does."""
        v = self.flat[pos] if self.contig else self.a.flat[pos]
        return v if v.dtype == self.work else v.astype(self.work)


def thread_count() -> int:
    env = os.environ.get("PARITY_METRICS_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


_pool: tuple | None = None  # (executor, its size, the process that made it: a forked child makes its own)
_pool_lock = threading.Lock()


def for_each_chunk(n_chunks: int, work) -> None:
    """``work(c)`` for every chunk index c, on up to ``thread_count()`` threads (this one included), each taking
    the next index when it is free. ``work`` must only write results at index c. Floating-point warnings are off
    (NaN/Inf are counted, never warned about; numpy's error state is per thread)."""
    k = min(thread_count(), n_chunks)
    if k <= 1:
        with np.errstate(all="ignore"):
            for c in range(n_chunks):
                work(c)
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool[1] < k - 1 or _pool[2] != os.getpid():
            _pool = (ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="parity-metrics"), k - 1, os.getpid())
        pool = _pool[0]
    indices = itertools.count()  # next() on it is atomic under the GIL

    def worker():
        with np.errstate(all="ignore"):
            for c in indices:
                if c >= n_chunks:
                    return
                work(c)

    futures = [pool.submit(worker) for _ in range(k - 1)]
    try:
        worker()
    finally:
        errors = [f.exception() for f in futures]
    for exc in errors:
        if exc is not None:
            raise exc


# ----------------------------------------------------------------------------------------------------------
# per-chunk results

class _ChunkTable:
    """One row per chunk; rows are written by whichever thread worked on the chunk."""

    def __init__(self, n_chunks: int):
        self.sums = np.zeros((n_chunks, 4))  # Σ Δ·ref, Σ ref², Σ Δ², Σ |Δ| (float64 of working-dtype partials)
        self.n_c = np.zeros(n_chunks, np.int64)
        self.n_out = np.zeros(n_chunks, np.int64)
        self.max_e = np.full(n_chunks, -math.inf)
        self.max_a = np.full(n_chunks, -math.inf)
        self.amax = np.zeros(n_chunks)  # max |ref| over the chunk's finite reference values
        self.masked = np.zeros(n_chunks, bool)
        self.f64 = np.zeros(n_chunks, bool)  # |Δ| of this chunk computed in float64 (overflow)
        self.nonfinite = np.zeros((n_chunks, 5), np.int64)  # NaN ref, NaN sub, Inf ref, Inf sub, mismatches
        self.first_mism = np.full(n_chunks, -1, np.int64)


class VerdictPass:
    """The verdict metrics of (ref, sub): ``run()`` fills the chunk table, the attributes hold the results."""

    def __init__(self, ref: np.ndarray, sub: np.ndarray, work: np.dtype, chunk: int, atol: float, rtol: float):
        self.n = int(ref.size)
        self.work = work
        self.chunk = chunk
        self.atol = float(atol)
        self.rtol = float(rtol)
        self.src_r = Source(ref, work, chunk, "ref")
        self.src_s = Source(sub, work, chunk, "sub")
        self.n_chunks = -(-self.n // chunk)
        self.tab = _ChunkTable(self.n_chunks)

    def run(self) -> "VerdictPass":
        for_each_chunk(self.n_chunks, self._chunk)
        with np.errstate(all="ignore"):
            self._combine()
        return self

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.chunk, min(self.n, (c + 1) * self.chunk)

    # -- one chunk -----------------------------------------------------------------------------------------
    def _chunk(self, c: int) -> None:
        i, j = self.bounds(c)
        m = j - i
        r, s = self.src_r.get(i, j), self.src_s.get(i, j)
        key = (self.work.str, self.chunk)
        d = reused(("d",) + key, np.empty, self.chunk, self.work)[:m]
        ones = reused(("ones",) + key, np.ones, self.chunk, self.work)[:m]
        s_dr, s_rr, s_dd, s_abs, a = chunk_sums(r, s, d, ones)
        if not math.isfinite(s_dd + s_dr + s_rr + s_abs):  # NaN/Inf in the chunk, or a float overflow
            self._masked_chunk(c, i, r, s)
            return
        if (s_dd < _TINY_SUM and s_dd < s_abs) or (s_rr < _TINY_SUM and r.any()):  # float underflow
            s_dd, s_dr, s_rr, s_abs = _sums64(r, s)
        t = self.tab
        t.sums[c] = (s_dr, s_rr, s_dd, s_abs)
        t.n_c[c] = m
        t.amax[c] = a
        t.n_out[c], t.max_e[c], t.max_a[c] = chunk_order_stats(r, d, self.rtol, self.atol)

    def _masked_chunk(self, c: int, i: int, r: np.ndarray, s: np.ndarray) -> None:
        """A chunk with NaN/Inf (or a float overflow): count and compare the non-finite values, then the sums
        and order statistics of the finite pairs (compacted; float64 where Δ or the sums overflow)."""
        t = self.tab
        t.masked[c] = True
        m = r.shape[0]
        fr, fs = np.isfinite(r), np.isfinite(s)
        both = fr & fs
        nb = int(np.count_nonzero(both))
        if nb < m:
            nr, ns = np.isnan(r), np.isnan(s)
            nan_r, nan_s = int(np.count_nonzero(nr)), int(np.count_nonzero(ns))
            # mismatch: not both finite, and neither NaN facing NaN nor Inf facing the same Inf
            mism = ~((nr & ns) | (r == s) | both)
            nm = int(np.count_nonzero(mism))
            t.nonfinite[c] = (nan_r, nan_s, m - int(np.count_nonzero(fr)) - nan_r,
                              m - int(np.count_nonzero(fs)) - nan_s, nm)
            if nm:
                t.first_mism[c] = i + int(np.argmax(mism))
            hi = float(np.maximum.reduce(r, where=fr, initial=-np.inf))
            lo = float(np.minimum.reduce(r, where=fr, initial=np.inf))
        else:
            hi, lo = float(np.maximum.reduce(r)), float(np.minimum.reduce(r))
        t.amax[c] = max(0.0, hi if hi >= -lo else -lo)
        if nb == 0:
            return
        rc, sc, ad = finite_absdiff(r, s, both if nb < m else None)
        t.f64[c] = ad.dtype != self.work
        d = sc - rc
        s_dr = float(np.dot(d, rc))
        s_rr = float(np.dot(rc, rc))
        s_dd = float(np.dot(ad, ad))
        s_abs = float(np.dot(ad, np.ones(nb, ad.dtype))) if ad.dtype == self.work else float(ad.sum())
        if (not math.isfinite(s_dd + s_dr + s_rr + s_abs) or (s_dd < _TINY_SUM and s_dd < s_abs)
                or (s_rr < _TINY_SUM and rc.any())):  # float32 sums overflow or underflow
            s_dd, s_dr, s_rr, s_abs = _sums64(rc, sc)
        t.sums[c] = (s_dr, s_rr, s_dd, s_abs)
        t.n_c[c] = nb
        wt = ad.dtype.type
        tol = np.abs(rc) * wt(self.rtol)
        t.n_out[c] = int(np.count_nonzero(ad > tol + wt(self.atol)))
        t.max_e[c] = float((ad - tol).max())
        t.max_a[c] = float(ad.max())

    # -- all chunks ----------------------------------------------------------------------------------------
    def _combine(self) -> None:
        t = self.tab
        self.n_c = int(t.n_c.sum())
        self.s_dr = self.s_rr = self.s_dd = self.s_abs = 0.0
        for c in np.flatnonzero(t.n_c):  # in chunk order, as one thread would
            s_dr, s_rr, s_dd, s_abs = (float(x) for x in t.sums[c])
            self.s_dr += s_dr
            self.s_rr += s_rr
            self.s_dd += s_dd
            self.s_abs += s_abs
        self.nan_r, self.nan_s, self.inf_r, self.inf_s, self.n_mism = (int(x) for x in t.nonfinite.sum(axis=0))
        hit = np.flatnonzero(t.first_mism >= 0)
        self.first_mism = int(t.first_mism[hit[0]]) if hit.size else None
        self.n_out = int(t.n_out.sum())
        self.amax = float(t.amax.max()) if self.n_chunks else 0.0
        self.max_e = float(t.max_e.max()) if self.n_c else -math.inf
        self.max_abs = float(t.max_a.max()) if self.n_c else math.nan
        self.argmax = self.ref_at = self.sub_at = None
        if self.n_c:
            c = int(np.flatnonzero(t.max_a == self.max_abs)[0])  # the first chunk holding the maximum
            self.argmax, self.ref_at, self.sub_at = self._first_position_of(c, self.max_abs)

    def _first_position_of(self, c: int, value: float) -> tuple[int, float, float]:
        """Flat position and the (working-dtype) ref/sub values of the first |Δ| == value in chunk c."""
        i, j = self.bounds(c)
        r, s = self.src_r.get(i, j), self.src_s.get(i, j)
        both = (np.isfinite(r) & np.isfinite(s)) if self.tab.masked[c] else None
        rc, sc, ad = finite_absdiff(r, s, both)
        k = int(np.flatnonzero(ad == value)[0])
        pos = k if both is None else int(np.flatnonzero(both)[k])
        return i + pos, float(rc[k]), float(sc[k])

    # -- the floor of max_rel (known at the end of the pass) -----------------------------------------------
    def rel_floor(self, rel_floor: float | None, ref_absmax: float | None) -> float:
        if rel_floor is not None:
            return float(self.work.type(float(rel_floor)))
        return floor_of(float(ref_absmax) if ref_absmax is not None else self.amax, self.work)


def finite_absdiff(r: np.ndarray, s: np.ndarray, both: np.ndarray | None):
    """(ref, sub, |Δ|) over the positions ``both`` (all if None), exactly as the verdict pass computes them: Δ in
    the working dtype, or in float64 for the whole chunk when it overflows there."""
    if both is not None:
        r, s = r[both], s[both]
    d = s - r
    if not np.isfinite(d).all():
        r, s = r.astype(np.float64), s.astype(np.float64)
        d = s - r
    return r, s, np.abs(d)


def _sums64(r, s):
    r64 = r.astype(np.float64)
    d64 = s.astype(np.float64) - r64
    return (float(np.dot(d64, d64)), float(np.dot(d64, r64)), float(np.dot(r64, r64)),
            float(np.abs(d64).sum()))


def cosine(s_dd: float, s_dr: float, s_rr: float) -> float:
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
