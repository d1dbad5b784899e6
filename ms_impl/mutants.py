"""Deliberately wrong variants of the MindSpore model, for the parity suite's teeth tests.

Each mutant patches a *built* model for the duration of a ``with`` block and restores it on exit; the modeling
file is not edited and has no test flags. The seams used are the model's own attributes (``GELU.approximate``,
``LayerNorm.eps``, the attention processors' ``rope`` / ``sparse_group``, ``Timesteps.flip_sin_to_cos``,
``Attention.processor``). ``first_divergence`` is the first probe (in the family's data-flow order) the bug changes;
``needs`` names an input condition without which the bug is invisible.

    with MUTANTS["gelu_exact"].apply(model):
        out = harness.capture(model, inputs, specs, on_probe)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import numpy as np
from mindspore import ops

from ms_impl.modeling_opensora import LayerNorm, OpenSoraAttnProcessor, RoPE3D
from parity.families.opensora_v13.config import FIRST_DENSE_TAIL_BLOCK, FIRST_SPARSE_BLOCK


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    first_divergence: str
    apply: Callable[[object], ContextManager]
    needs: str | None = None


def _blocks(model):
    return list(model.transformer_blocks)


@contextlib.contextmanager
def _setting(pairs: list[tuple[object, str, object]]) -> Iterator[None]:
    """Temporarily ``setattr(obj, name, value)`` for each triple; restored on exit."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in pairs]
    try:
        for obj, name, value in pairs:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


# ---- the wrong pieces ------------------------------------------------------------------------------------------
class InterleavedRoPE3D(RoPE3D):
    """RoPE pairing element 2i with 2i+1 (GPT-J style) instead of rotate-half's i with i + D₃/2."""

    def get_cos_sin(self, D, seq_len, dtype, interpolation_scale=1):
        cos, sin = super().get_cos_sin(D, seq_len, dtype, interpolation_scale)
        half = D // 2
        order = np.stack([np.arange(half), np.arange(half)], axis=1).reshape(-1)  # f0 f0 f1 f1 ...
        return cos[:, order], sin[:, order]

    @staticmethod
    def rotate_half(x):
        even, odd = x[..., 0::2], x[..., 1::2]
        return ops.cat((-odd[..., None], even[..., None]), -1).reshape(x.shape)


class DetunedRoPE3D(RoPE3D):
    """RoPE angles 1e-4 too large (every frequency 1e-4 relative off): invisible over a few positions, visible
    over the dozens of positions of a real latent grid (the long-axes fixture has 57 on W)."""

    def get_cos_sin(self, D, seq_len, numerics, interpolation_scale=1):
        return super().get_cos_sin(D, seq_len, numerics, interpolation_scale / (1 + 1e-4))


class _MaskIgnoringProcessor:
    """Cross-attention processor wrapper that drops the text mask."""

    def __init__(self, inner: OpenSoraAttnProcessor):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=None,
                          **kwargs)


class _PreNormProcessor:
    """Cross-attention processor wrapper that LayerNorms (eps 1e-6, no affine) the query stream first."""

    def __init__(self, inner: OpenSoraAttnProcessor, dim: int):
        self.inner = inner
        self.norm = LayerNorm(dim, eps=1e-6)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, attn, hidden_states, *args, **kwargs):
        return self.inner(attn, self.norm(hidden_states), *args, **kwargs)


# ---- mutants -----------------------------------------------------------------------------------------------------
def _gelu_exact(model):
    return _setting([(b.ff.net[0], "approximate", "none") for b in _blocks(model)])


def _layernorm_eps(model):
    return _setting([(norm, "eps", 1e-5) for b in _blocks(model) for norm in (b.norm1, b.norm2)])


def _rope_replaced(model, rope_cls):
    """Every block's self-attention RoPE replaced by a ``rope_cls`` with the same interpolation scales."""
    procs = [b.attn1.processor for b in _blocks(model)]
    return _setting([(p, "rope", rope_cls(interpolation_scale_thw=p.interpolation_scale_thw)) for p in procs])


def _rope_interleaved(model):
    return _rope_replaced(model, InterleavedRoPE3D)


def _skiparse_swapped(model):
    pairs = []
    for i, b in enumerate(_blocks(model)):
        if FIRST_SPARSE_BLOCK <= i < FIRST_DENSE_TAIL_BLOCK and b.attn1.processor.sparse1d:
            for attn in (b.attn1, b.attn2):
                pairs.append((attn.processor, "sparse_group", not attn.processor.sparse_group))
    return _setting(pairs)


def _rope_detuned(model):
    return _rope_replaced(model, DetunedRoPE3D)


@contextlib.contextmanager
def _train_mode(model):
    """The model left in training mode: its Dropout cells drop (and rescale) activations."""
    model.set_train(True)
    try:
        yield
    finally:
        model.set_train(False)


def _sinusoid_sin_cos(model):
    return _setting([(model.adaln_single.emb.time_proj, "flip_sin_to_cos", False)])


def _text_mask_ignored(model):
    return _setting([(b.attn2, "processor", _MaskIgnoringProcessor(b.attn2.processor)) for b in _blocks(model)])


def _norm_before_cross_attn(model):
    dim = model.config.hidden_size
    return _setting([(b.attn2, "processor", _PreNormProcessor(b.attn2.processor, dim)) for b in _blocks(model)])


MUTANTS: dict[str, Mutant] = {m.name: m for m in (
    Mutant("gelu_exact", "FFN GELU exact (erf) instead of the tanh approximation", "hidden_states_0_block",
           _gelu_exact),
    Mutant("layernorm_eps_1e-5", "block LayerNorms (norm1, norm2) with eps 1e-5 instead of 1e-6",
           "hidden_states_0_block", _layernorm_eps),
    Mutant("rope_interleaved", "RoPE pairs (2i, 2i+1) (interleaved) instead of rotate-half (i, i + D/2)",
           "hidden_states_0_block", _rope_interleaved),
    Mutant("skiparse_swapped", "Skiparse group and single skip swapped in blocks 2..29", "hidden_states_2_block",
           _skiparse_swapped, needs="a sparse config (sparse1d, sparse_n 4) with at least 3 layers"),
    Mutant("sinusoid_sin_cos", "timestep sinusoid ordered [sin, cos] instead of [cos, sin]",
           "embedded_timestep_operate_on_patched_inputs", _sinusoid_sin_cos),
    Mutant("text_mask_ignored", "cross-attention ignores the text mask", "hidden_states_0_block",
           _text_mask_ignored, needs="padded text (an encoder_attention_mask with zeros)"),
    Mutant("norm_before_cross_attn", "a LayerNorm (eps 1e-6, no affine) applied before cross-attention",
           "hidden_states_0_block", _norm_before_cross_attn),
    Mutant("rope_freq_1e-4", "RoPE frequencies 1e-4 relative too high", "hidden_states_0_block", _rope_detuned,
           needs="long position axes (dozens of positions on an axis)"),
    Mutant("train_mode", "the model left in training mode (dropout active)", "hidden_states_0_block", _train_mode,
           needs="a config with dropout > 0"),
)}
