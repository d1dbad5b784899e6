"""The per-chunk arithmetic of the metrics pass in one read of the data: ``chunk_sums(r, s, d)``.

It writes |Δ| = |s − r| (working dtype) into ``d`` and returns ``(Σ Δ·r, Σ r², Σ Δ², Σ |Δ|, max |r|)``. With
numba installed this is one compiled loop (read r and s once, at memory speed); without it, the same values
from numpy calls (a subtraction, an abs, four BLAS dots and a max/min: about 3.5x slower). Both keep the
sums as working-dtype partials, like BLAS does; ``parity.metrics`` accumulates them per chunk in float64.

``max |r|`` is only meaningful when the sums are finite (a chunk with NaN/Inf takes the metrics' masked
path). The compiled loop reads it from the bit patterns: for finite floats, |x| orders like the integer
``bits(x) & ~sign``, and an integer max vectorizes where a float max with NaN semantics does not.

Summation order differs between the two (SIMD lanes vs BLAS blocks), so the sums agree to rounding, not
bit for bit; each one is deterministic on a given machine and independent of the thread count.
``PARITY_METRICS_KERNEL=numpy`` forces the numpy version.
"""

from __future__ import annotations

import os

import numpy as np

_SIGN_CLEARED = {np.dtype(np.float32): (np.int32, np.int32(0x7FFFFFFF)),
                 np.dtype(np.float64): (np.int64, np.int64(0x7FFFFFFFFFFFFFFF))}
_compiled = None  # the numba kernel once built, False when numba is unavailable or switched off


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


def _build():
    import numba

    # reassoc lets the sums run in SIMD lanes; no nnan/ninf: NaN and Inf must still reach the sums
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

    return fused


def _kernel():
    global _compiled
    if _compiled is None:
        _compiled = False
        if os.environ.get("PARITY_METRICS_KERNEL", "").strip().lower() != "numpy":
            try:
                _compiled = _build()
            except ImportError:
                pass
    return _compiled


def chunk_sums(r: np.ndarray, s: np.ndarray, d: np.ndarray, ones: np.ndarray):
    """(Σ Δ·r, Σ r², Σ Δ², Σ |Δ|, max |r|) of one chunk, |Δ| written into ``d`` (see the module docstring)."""
    kernel = _kernel()
    if kernel and r.dtype in _SIGN_CLEARED and r.dtype == s.dtype == d.dtype and r.flags.c_contiguous \
            and s.flags.c_contiguous:
        int_type, sign_cleared = _SIGN_CLEARED[r.dtype]
        s_dr, s_rr, s_dd, s_abs, top = kernel(r, s, r.view(int_type), sign_cleared, d)
        return float(s_dr), float(s_rr), float(s_dd), float(s_abs), float(np.array(top, int_type).view(r.dtype))
    return chunk_sums_numpy(r, s, d, ones)
