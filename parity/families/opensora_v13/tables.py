"""Constant tables computed precisely: float64 in numpy, rounded once to float32.

MindSpore's CPU fp32 ``exp``/``pow`` are up to ~4e-6 relative off torch's, which would put ~1e-3 into the
timestep sinusoid at t=999. Computing the tables in float64 lands within 1 ULP of torch's fp32 tables.
"""

from __future__ import annotations

import math

import numpy as np

TIMESTEP_CHANNELS = 256
MAX_PERIOD = 10000
ROPE_BASE = 10000.0


def timestep_frequencies(channels: int = TIMESTEP_CHANNELS, max_period: int = MAX_PERIOD,
                         downscale_freq_shift: float = 0.0) -> np.ndarray:
    """diffusers ``get_timestep_embedding`` frequencies: exp(-ln(max_period) * i / (half - shift)), i < half."""
    half = channels // 2
    i = np.arange(half, dtype=np.float64)
    return np.exp(-math.log(max_period) * i / (half - downscale_freq_shift)).astype(np.float32)


def rope_inv_freq(dim: int, base: float = ROPE_BASE) -> np.ndarray:
    """RoPE3D per-axis inverse frequencies 1 / base^(arange(0, dim, 2) / dim), dim = head_dim // 3."""
    return (1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)).astype(np.float32)
