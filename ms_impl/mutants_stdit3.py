"""Deliberately wrong variants of the MindSpore STDiT3 port, for the teeth tests (test_stdit3_teeth.py).

Each mutant patches a *built* model inside a ``with`` block and restores it on exit; ``modeling_stdit3`` has no test
flags. ``first_divergence`` is the first probe (data-flow order) the bug changes, in isolated mode; ``case`` is the
committed fixture whose inputs make the bug visible.

    with MUTANTS["rope_rotate_half"].apply(model):
        ...
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
from mindspore import Tensor, nn, ops

import ms_impl.modeling_stdit3 as M
from ms_impl.mutants import Mutant as BaseMutant, _setting


@dataclass(frozen=True)
class Mutant(BaseMutant):
    case: str = "stdit3-tiny-padded"       # the committed fixture whose inputs make the bug visible


def _rope_rotate_half(rope: M.RotaryEmbedding):
    """RoPE pairing channel i with i + d/2 (GPT-NeoX rotate-half) instead of rotary_embedding_torch's (2i, 2i+1)."""
    def rotate(t, seq_dim=None):
        r = rope.numerics
        cos, sin = rope.cos_sin(t.shape[-2])
        half = t.shape[-1] // 2
        order = np.concatenate([np.arange(0, 2 * half, 2), np.arange(0, 2 * half, 2)])   # f0 f1 .. f0 f1 ..
        cos = M.bcast(Tensor(cos[:, order]).astype(r.dtype), t)
        sin = M.bcast(Tensor(sin[:, order]).astype(r.dtype), t)
        rotated = ops.cat((-t[..., half:], t[..., :half]), -1)
        return r(r(t * cos) + r(rotated * sin))
    return rotate


def rope_rotate_half(model):
    return _setting([(b.attn, "rotary_emb", _rope_rotate_half(model.rope)) for b in model.temporal_blocks])


def rope_in_spatial_blocks(model):
    pairs = []
    for b in model.spatial_blocks:
        pairs += [(b.attn, "rope", True), (b.attn, "rotary_emb", model.rope.rotate_queries_or_keys)]
    return _setting(pairs)


def rms_norm_after_rope(model):
    """qk RMSNorm applied to the rotated q, k (upstream: normalise, then rotate)."""
    pairs = []
    for b in model.temporal_blocks:
        attn = b.attn
        norms = itertools.cycle((attn.q_norm, attn.k_norm))      # construct rotates q, then k
        pairs += [(attn, "q_norm", nn.Identity()), (attn, "k_norm", nn.Identity()),
                  (attn, "rotary_emb", lambda t, rope=attn.rotary_emb, norms=norms: next(norms)(rope(t)))]
    return _setting(pairs)


def pos_emb_scale_from_latent(model):
    """``scale = sqrt(H·W) / input_sq_size`` from the latent's size instead of the pixel ``height``/``width``."""
    pos = model.pos_embed
    construct = pos.construct

    def wrong(x, h, w, scale=1.0, base_size=None):
        return construct(x, h, w, scale=math.sqrt(x.shape[-2] * x.shape[-1]) / model.input_sq_size,
                         base_size=base_size)
    return _setting([(pos, "construct", wrong)])


@contextlib.contextmanager
def x_mask_ignored(model):
    """Every frame modulated with t, never t0 (blocks and final layer), as if ``x_mask`` were None."""
    with _setting([(M, "t_mask_select", lambda x_mask, x, masked_x, T, S: x)]):
        yield


def text_padding_kept(model):
    """The text mask ignored when packing: every sample's padding tokens stay in ``y`` (y_lens = L each)."""
    encode = model.encode_text
    return _setting([(model, "encode_text", lambda y, mask=None: encode(y, None))])


def text_samples_mixed(model):
    """Cross-attention over the whole packed text without y_lens: sample i also attends to sample j's tokens."""
    pairs = []
    for b in list(model.spatial_blocks) + list(model.temporal_blocks):
        construct = b.cross_attn.construct
        pairs.append((b.cross_attn, "construct", lambda x, cond, mask=None, c=construct: c(x, cond, None)))
    return _setting(pairs)


MUTANTS: dict[str, Mutant] = {m.name: m for m in (
    Mutant("rope_rotate_half", "RoPE pairs channel i with i + d/2 (rotate-half) instead of interleaved pairs",
           "hidden_states_0_temporal_block", rope_rotate_half),
    Mutant("rope_in_spatial_blocks", "RoPE also applied in the spatial blocks' self-attention",
           "hidden_states_0_spatial_block", rope_in_spatial_blocks),
    Mutant("rms_norm_after_rope", "qk RMSNorm after RoPE instead of before", "hidden_states_0_temporal_block",
           rms_norm_after_rope),
    Mutant("pos_emb_scale_from_latent", "position-embedding scale from the latent size, not the pixel size",
           "pos_emb", pos_emb_scale_from_latent),
    Mutant("x_mask_ignored", "x_mask selection ignored: conditioning frames modulated with t, not t0",
           "hidden_states_0_spatial_block", x_mask_ignored, case="stdit3-tiny-xmask"),
    Mutant("text_padding_kept", "text padding tokens not dropped when packing the text", "y", text_padding_kept),
    Mutant("text_samples_mixed", "cross-attention without y_lens: samples attend to each other's text at B > 1",
           "hidden_states_0_spatial_block", text_samples_mixed),
)}
