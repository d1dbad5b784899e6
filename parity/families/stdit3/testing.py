"""Deterministic random weights for ``STDiT3`` configs (plain numpy; shared by both frameworks' tests and cases).

Upstream's own init zeroes the fps embedder's output layer and the temporal blocks' output projections, which
would hide those paths, so every tensor is drawn afresh: Linear/Conv weights uniform with variance 1/fan_in,
biases small, ``scale_shift_table`` like upstream (randn / sqrt(C)), RMSNorm weights around 1, the null caption
randn / sqrt(Dc). ``rope.freqs`` holds its true values (upstream's formula in float32).
"""

from __future__ import annotations

import numpy as np

from .config import STDiT3Config
from .statedict import expected_shapes

ROPE_THETA = 10000.0


def rope_freqs(head_dim: int, theta: float = ROPE_THETA) -> np.ndarray:
    """``1 / theta ** (arange(0, dim, 2).float() / dim)`` as rotary_embedding_torch builds it: the float32 exponent,
    the power rounded once to float32 (torch's float32 pow is within an ULP of that), a float32 reciprocal."""
    exponent = (np.arange(0, head_dim, 2, dtype=np.float32)[: head_dim // 2] / np.float32(head_dim)).astype(np.float32)
    power = np.power(np.float64(theta), exponent.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / power).astype(np.float32)


def random_weights(config: STDiT3Config, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in expected_shapes(config).items():
        if name == "rope.freqs":
            out[name] = rope_freqs(config.head_dim)
            continue
        if name.endswith("scale_shift_table"):
            arr = rng.standard_normal(shape) / np.sqrt(shape[-1])
        elif name.endswith(("q_norm.weight", "k_norm.weight")):
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "y_embedder.y_embedding":
            arr = rng.standard_normal(shape) / np.sqrt(shape[-1])
        elif name.endswith(".bias"):
            arr = 0.1 * rng.uniform(-1.0, 1.0, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.uniform(-1.0, 1.0, shape) * np.sqrt(3.0 / fan_in)
        out[name] = arr.astype(np.float32)
    return out


def capture_specs(depth: int) -> list:
    """The probe map's probes in data-flow order, each with ``name``, ``probe_class``, ``block`` and the reference's
    ``capture`` (the port keeps upstream's module paths, argument names and layouts: the same rule on both sides)."""
    from types import SimpleNamespace

    from parity.probemap import load_probe_map

    return [SimpleNamespace(name=p.name, probe_class=p.probe_class, block=p.block, capture=p.reference.capture)
            for p in load_probe_map("stdit3").resolve(depth)]
