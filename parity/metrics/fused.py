"""The per-chunk loops of the metrics passes, compiled with numba (numpy calls without it).

* ``chunk_sums(r, s, d, ones)`` writes |Δ| = |s − r| (working dtype) into ``d`` and returns
  ``(Σ Δ·r, Σ r², Σ Δ², Σ |Δ|, max |r|)``: one read of r and s. The sums are working-dtype partials, like BLAS
  keeps them; ``parity.metrics.verdict`` adds them per chunk in float64. ``max |r|`` is only meaningful when the
  sums are finite (a chunk with NaN/Inf takes the masked path). The compiled loop reads it from the bit patterns:
  for finite floats |x| orders like the integer ``bits(x) & ~sign``, and an integer max vectorizes where a
  float max with NaN semantics does not.
* ``chunk_order_stats(r, d, rtol, atol)`` -> ``(n_outside, max(0, max(|Δ| − rtol·|r|)), max |Δ|)`` of a NaN-free
  chunk, with |Δ| from ``d`` (still in cache) and the tolerance arithmetic of ``numpy.isclose`` in the working dtype:
  ``|Δ| > atol + rtol·|r|``, no fused multiply-add.
* ``chunk_tail(r, s, floor, hi, lo, band, scratch)`` -> ``(ok, n_above_hi, n_equal_lo, n_band, max_rel)``: the pass
  behind the shown metrics (``parity.metrics.shown``); values of |Δ| in (lo, hi] go to ``band``. ``ok`` is False when the chunk
  holds NaN/Inf or |Δ| overflows (the caller then takes the masked path).

Summation order differs between compiled and numpy (SIMD lanes vs BLAS blocks), so the sums agree to
rounding, not bit for bit; each is deterministic on a given machine and independent of the thread count.
Every other value is exact and the same either way. ``PARITY_METRICS_KERNEL=numpy`` forces numpy.
"""

from __future__ import annotations

import os

import numpy as np

_SIGN_CLEARED = {np.dtype(np.float32): (np.int32, np.int32(0x7FFFFFFF)),
                 np.dtype(np.float64): (np.int64, np.int64(0x7FFFFFFFFFFFFFFF))}
_compiled = None  # the numba kernels once built, False when numba is unavailable or switched off


def chunk_sums_numpy(r: np.ndarray, s: np.ndarray, d: np.ndarray, ones: np.ndarray):
    np.subtract(s, r, out=d)
    s_dr = float(np.dot(d, r))
    s_rr = float(np.dot(r, r))
    np.abs(d, out=d)
    s_dd = float(np.dot(d, d))
    s_abs = float(np.dot(d, ones))
    hi = float(np.maximum.reduce(r))
    lo = float(np.minimum.reduce(r))
    return s_dr, s_rr, s_dd, s_abs, hi if hi >= -lo else -lo


def chunk_order_stats_numpy(r: np.ndarray, d: np.ndarray, rtol, atol):
    t = np.abs(r) * rtol
    n_out = int(np.count_nonzero(d > t + atol))
    return n_out, max(0.0, float((d - t).max())), float(d.max())


def chunk_tail_numpy(r: np.ndarray, s: np.ndarray, floor, hi, lo, band: np.ndarray):
    with np.errstate(all="ignore"):
        a = np.abs(s - r)
    if not np.isfinite(a).all():
        return False, 0, 0, 0, 0.0
    above = a > hi
    v = a[(a > lo) & ~above]
    band[: v.size] = v
    return (True, int(np.count_nonzero(above)), int(np.count_nonzero(a == lo)), int(v.size),
            float((a / np.maximum(np.abs(r), floor)).max()))


def _build():
    import numba

    # reassoc lets the sums run in SIMD lanes; no nnan/ninf: NaN and Inf must still reach the sums.
    # (This loop is unchanged since the one-pass metrics began: the sums, and so the reports, stay bit-identical.)
    @numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
    def fused(r, s, r_bits, sign_cleared, d):
        zero = r[:0].sum()  # 0 in the working dtype: the sums stay working-dtype partials
        s_dr = s_rr = s_dd = s_abs = zero
        top = r_bits[:0].sum()
        for i in range(r.shape[0]):
            x = r[i]
            e = s[i] - x
            a = abs(e)
            d[i] = a
            s_dr += e * x
            s_rr += x * x
            s_dd += a * a
            s_abs += a
            b = r_bits[i] & sign_cleared
            top = b if b > top else top
        return s_dr, s_rr, s_dd, s_abs, top

    bits = _bits_intrinsic()

    # order_stats and tail: maxima are taken over bit patterns (non-negative floats order like their bits), an
    # integer max that vectorizes where a float max does not (not even with fastmath). No fastmath here:
    # atol + rtol·|r| must round like numpy's (no fused multiply-add).
    @numba.njit(nogil=True, cache=True)
    def order_stats(r, d, rtol, atol):
        n_out = 0
        zero = d[0] - d[0]
        top_e = top_a = bits(zero)
        for i in range(r.shape[0]):
            a = d[i]
            t = rtol * abs(r[i])
            if a > t + atol:
                n_out += 1
            e = a - t
            b = bits(e if e > zero else zero)  # only max(0, ·) is wanted: min_passing_atol
            top_e = b if b > top_e else top_e
            b = bits(a)
            top_a = b if b > top_a else top_a
        return n_out, top_e, top_a

    # error_model="numpy": x/0 is inf, not ZeroDivisionError (whose check would stop the loop from vectorizing)
    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def tail(r, s, floor, hi, lo, band, a_buf):
        zero = floor - floor
        top_rel = top_a = bits(zero)
        n_hi = n_lo = n_eq = 0
        for i in range(r.shape[0]):
            x = r[i]
            a = abs(s[i] - x)
            a_buf[i] = a
            ax = abs(x)
            b = bits(a / (ax if ax > floor else floor))
            top_rel = b if b > top_rel else top_rel
            b = bits(a)
            top_a = b if b > top_a else top_a
            if a > hi:
                n_hi += 1
            if a >= lo:
                n_lo += 1
            if a == lo:
                n_eq += 1
        if top_a > bits(np.finfo(r.dtype).max):  # NaN, Inf or an overflowing difference (|NaN| orders above Inf)
            return False, 0, 0, 0, top_rel
        n_band = 0
        if n_lo > n_hi + n_eq:
            for i in range(r.shape[0]):
                a = a_buf[i]
                if a > lo and a <= hi:
                    band[n_band] = a
                    n_band += 1
        return True, n_hi, n_eq, n_band, top_rel

    return fused, order_stats, tail


def _bits_intrinsic():
    """``bits(x)``: the bit pattern of a float32/float64 scalar as int32/int64 (an LLVM bitcast: free)."""
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def bits(typingctx, x):
        if not isinstance(x, types.Float):
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.IntType(x.bitwidth))
        return (types.int32 if x.bitwidth == 32 else types.int64)(x), codegen

    return bits


def _kernels():
    global _compiled
    if _compiled is None:
        _compiled = False
        if os.environ.get("PARITY_METRICS_KERNEL", "").strip().lower() != "numpy":
            try:
                _compiled = _build()
            except ImportError:
                pass
    return _compiled


def _compiled_for(*arrays):
    kernels = _kernels()
    a0 = arrays[0]
    if kernels and a0.dtype in _SIGN_CLEARED and all(a.dtype == a0.dtype and a.flags.c_contiguous for a in arrays):
        return kernels
    return None


def chunk_sums(r: np.ndarray, s: np.ndarray, d: np.ndarray, ones: np.ndarray):
    """(Σ Δ·r, Σ r², Σ Δ², Σ |Δ|, max |r|) of one chunk, |Δ| written into ``d`` (see the module docstring)."""
    kernels = _compiled_for(r, s, d)
    if kernels:
        int_type, sign_cleared = _SIGN_CLEARED[r.dtype]
        s_dr, s_rr, s_dd, s_abs, top = kernels[0](r, s, r.view(int_type), sign_cleared, d)
        return float(s_dr), float(s_rr), float(s_dd), float(s_abs), float(np.array(top, int_type).view(r.dtype))
    return chunk_sums_numpy(r, s, d, ones)


def chunk_order_stats(r: np.ndarray, d: np.ndarray, rtol: float, atol: float):
    """(n_outside, max(0, max(|Δ| − rtol·|r|)), max |Δ|) of a non-empty NaN-free chunk, |Δ| in ``d``;
    ``rtol``/``atol`` are rounded to the working dtype first (as ``numpy.isclose`` does with Python floats)."""
    wt = d.dtype.type
    kernels = _compiled_for(r, d)
    if kernels:
        int_type = _SIGN_CLEARED[d.dtype][0]
        n_out, top_e, top_a = kernels[1](r, d, wt(rtol), wt(atol))
        return int(n_out), _float_of(top_e, int_type, d.dtype), _float_of(top_a, int_type, d.dtype)
    return chunk_order_stats_numpy(r, d, wt(rtol), wt(atol))


def _float_of(bits, int_type, dtype) -> float:
    return float(np.array(bits, int_type).view(dtype))


def chunk_tail(r: np.ndarray, s: np.ndarray, floor: float, hi, lo, band: np.ndarray, scratch: np.ndarray):
    """(ok, count(|Δ| > hi), count(|Δ| == lo), count(lo < |Δ| <= hi), max |Δ|/max(|r|, floor)) of one chunk; the
    |Δ| in (lo, hi] are written to ``band[:count]``; ``ok`` False: NaN/Inf or overflow in the chunk, nothing else is
    valid.
    ``floor`` > 0, and ``hi``/``lo`` already rounded to the working dtype in the safe direction (see ``parity.metrics.shown``).
    ``scratch``: a work array like ``band``."""
    wt = r.dtype.type
    kernels = _compiled_for(r, s, band, scratch)
    if kernels:
        int_type = _SIGN_CLEARED[r.dtype][0]
        ok, n_hi, n_eq, n_band, top = kernels[2](r, s, wt(floor), wt(hi), wt(lo), band, scratch[: r.shape[0]])
        return bool(ok), int(n_hi), int(n_eq), int(n_band), _float_of(top, int_type, r.dtype)
    return chunk_tail_numpy(r, s, wt(floor), wt(hi), wt(lo), band)
