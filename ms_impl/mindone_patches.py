"""Runtime substitutions for mindone 0.5.0 on MindSpore CPU: labelled, opt-in, per model, never editing mindone.

``HOST_RELATIVE_POSITION_BUCKETS`` — mindone's ``MT5Attention._relative_position_bucket`` computes the
logarithmic buckets with MindSpore's ``ops.log``, whose vectorised fp32 CPU kernel is up to ~1.3e-6 relative off
the correctly rounded value. Where ``log(n / max_exact) / log(max_distance / max_exact) * (buckets - max_exact)``
is an exact integer — relative distances ±16, ±32 and ±64 with the released 32 buckets / max distance 128 — the
quotient lands just below it (1.9999995 instead of 2.0) and the truncation puts the pair into the bucket below
the one transformers (and the trained weights) use. The substitute computes the same expression in host numpy
float32 (equal to transformers' buckets for every distance within ±5000 of seven bucket configurations, both
directions: ``ms_impl/tests/test_mindone_mt5.py``) and installs it as an *instance* attribute of the one attention
cell that owns the relative bias, so only the model it is applied to changes and ``compute_bias`` (which calls
``self._relative_position_bucket``) picks it up.

``SIGMOID_GELU_NEW`` — mindone's ``NewGELUActivation`` (the ``gelu_new`` of mT5's gated feed-forward) is
``0.5·x·(1 + tanh(z))``; MindSpore 2.10's fp32 CPU ``tanh`` is up to 1.0e-4 off for 4 <= |z| < 9 (1.5e-5 for
2 <= |z| < 4, 1.7e-7 below 2), which moves GELU outputs by up to ~2e-4. The substitute keeps mindone's
expression and dtype flow and replaces only the ``tanh``: for |z| >= 2 it is ``2·sigmoid(2z) − 1`` on MindSpore's
accurate fp32 sigmoid (no cancellation there: |tanh| > 0.96), below 2 the kernel's own ``tanh``; computed in fp32
and cast back to ``z``'s dtype. Installed per model, replacing each feed-forward's ``act`` cell.
"""

from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import mint, nn, ops

HOST_RELATIVE_POSITION_BUCKETS = "host_relative_position_buckets"
SIGMOID_GELU_NEW = "sigmoid_gelu_new"
SUBSTITUTIONS = (HOST_RELATIVE_POSITION_BUCKETS, SIGMOID_GELU_NEW)
_TANH_SWITCH = 2.0  # below it MindSpore's fp32 tanh is within 1.7e-7


def relative_position_bucket_host(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """T5's relative-position buckets of ``relative_position`` (an int tensor), computed in numpy float32."""
    rel = np.asarray(relative_position.asnumpy() if isinstance(relative_position, ms.Tensor) else relative_position,
                     dtype=np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) at distance 0: that pair takes the exact bucket
        scaled = (np.log(rel.astype(np.float32) / np.float32(max_exact))
                  / np.log(np.float32(max_distance) / np.float32(max_exact)) * np.float32(num_buckets - max_exact))
        large = max_exact + np.where(np.isfinite(scaled), scaled, 0).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return ms.Tensor(buckets + np.where(rel < max_exact, rel, large))


def _accurate_tanh(z):
    z32 = z.astype(ms.float32)
    tail = 2.0 * ops.sigmoid(2.0 * z32) - 1.0
    return ops.where(ops.abs(z32) < _TANH_SWITCH, ops.tanh(z32), tail).astype(z.dtype)


class SigmoidGELUNew(nn.Cell):
    """mindone's ``NewGELUActivation`` with ``tanh`` from ``_accurate_tanh``."""

    def construct(self, input):
        z = mint.sqrt(ms.Tensor(2.0 / np.pi)) * (input + 0.044715 * mint.pow(input, 3.0))
        return (0.5 * input * (1.0 + _accurate_tanh(z))).to(input.dtype)


def apply_substitutions(model, names) -> list[str]:
    """Apply the named substitutions to ``model`` (a mindone ``MT5EncoderModel``); returns what was applied."""
    for name in names:
        if name not in SUBSTITUTIONS:
            raise ValueError(f"unknown mindone substitution {name!r}; known: {', '.join(SUBSTITUTIONS)}")
    cells = list(model.cells_and_names())
    for name in names:
        for _, cell in cells:
            if name == HOST_RELATIVE_POSITION_BUCKETS and getattr(cell, "has_relative_attention_bias", False):
                object.__setattr__(cell, "_relative_position_bucket", relative_position_bucket_host)
            if name == SIGMOID_GELU_NEW and type(getattr(cell, "act", None)).__name__ == "NewGELUActivation":
                cell.act = SigmoidGELUNew()
    return list(names)
