"""Constant tables of the MindSpore ``OpenSoraT2V_v1_3``, computed on the host in numpy.

MindSpore's CPU fp32 ``exp``/``pow`` are up to ~5e-6 relative off torch's, which would put ~1e-3 into the
timestep sinusoid at t=999. Each table follows upstream's float32 operation chain step by step, every step
exactly rounded to float32, so it is bit-identical to torch's except where torch's own fp32 ``exp`` is one
ULP off (2 of the 128 timestep frequencies). A single float64 evaluation rounded once to float32 would differ
from torch in 85 of 128 entries (~6e-5 rad of angle at t=999).
"""

from __future__ import annotations

import math

import numpy as np

TIMESTEP_CHANNELS = 256
MAX_PERIOD = 10000
ROPE_BASE = 10000.0


def timestep_frequencies(half: int = TIMESTEP_CHANNELS // 2, downscale_freq_shift: float = 0.0,
                         max_period: int = MAX_PERIOD) -> np.ndarray:
    """diffusers ``get_timestep_embedding``: ``exp(-ln(max_period) * arange(half, fp32) / (half - shift))``."""
    exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)).astype(np.float32)
    exponent = (exponent / np.float32(half - downscale_freq_shift)).astype(np.float32)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def rope_inv_freq(dim: int, base: float = ROPE_BASE) -> np.ndarray:
    """RoPE3D per-axis ``1 / base ** (arange(0, dim, 2).float() / dim)`` with dim = head_dim // 3."""
    exponent = (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)).astype(np.float32)
    return (np.float32(1.0) / np.power(np.float32(base), exponent)).astype(np.float32)
