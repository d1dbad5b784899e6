# A from-scratch PyTorch implementation of Open-Sora 1.0's video DiT ``STDiT`` ("STDiT-XL/2").
#
# Written from the project's fact sheet (shared docs, stdit_facts.md) and upstream's code read for facts
# (hpcaitech/Open-Sora tag v1.0.0: opensora/models/stdit/stdit.py and opensora/models/layers/blocks.py). It
# reproduces upstream's numerics operation for operation and uses upstream's class, attribute and method names, so
#   * an upstream state dict loads with a strict key match (parameters and the three persistent buffers
#     ``pos_embed``, ``pos_embed_temporal``, ``y_embedder.y_embedding``), and
#   * probes described by module path are captured identically on this model and on upstream's.
# It imports only torch and numpy: no einops, timm, xformers, flash-attn, apex or colossalai. What upstream takes
# from those is written out here with the same semantics:
#   * timm's ``Mlp`` (fc1, act, drop1, norm, fc2, drop2) and ``DropPath``;
#   * xformers' ``memory_efficient_attention`` with a ``BlockDiagonalMask`` (the packed text cross-attention): per
#     sample, softmax attention of that sample's queries over its own valid text tokens, accumulated in float32 and
#     rounded once to the input dtype, as the xformers kernels do;
#   * flash-attn's ``flash_attn_func`` (self-attention with ``enable_flashattn=True``): the same float32
#     accumulation and one rounding;
#   * apex's ``FusedLayerNorm`` (``enable_layernorm_kernel=True``): the same function as ``nn.LayerNorm``.
# Sequence parallelism (colossalai process groups) is not available: ``enable_sequence_parallelism=True`` raises.
#
# Layout conventions (as upstream): video latents (B, C, T, H, W) -> tokens (B, N, C), N = T·S, S = H'·W', tokens
# t-major then h then w; text is packed into one sequence (1, ΣL_i, C) of the valid tokens of every sample, with
# their counts ``y_lens`` handed to the blocks as ``mask``.
"""PyTorch reference model ``STDiT`` (Open-Sora 1.0, STDiT-XL/2).

Size: one modeling file per family, as upstream keeps it (stdit.py + the blocks it uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# the registered name of the released model and the sizes its factory fixes (upstream ``STDiT_XL_2``)
XL_2_NAME = "STDiT-XL/2"
XL_2_SIZES = dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


# ==================================================================================================================
# opensora/models/layers/blocks.py @ v1.0.0
# ==================================================================================================================
def approx_gelu():
    return nn.GELU(approximate="tanh")


def get_layernorm(hidden_size: int, eps: float, affine: bool, use_kernel: bool):
    # use_kernel selects apex's FusedLayerNorm upstream (CUDA only): the same normalisation as nn.LayerNorm, which
    # on CPU also computes half/bf16 inputs in float32 and rounds the output once.
    return nn.LayerNorm(hidden_size, eps, elementwise_affine=affine)


def t2i_modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Mlp(nn.Module):
    """timm's ``Mlp`` (timm 0.9.16, ``timm.layers.mlp``) as upstream builds it: fc1 -> act -> drop1 -> norm
    (Identity) -> fc2 -> drop2."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=True)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=True)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))


class DropPath(nn.Module):
    """timm's stochastic depth: in training, zero a whole sample's residual branch with probability ``drop_prob``
    (survivors scaled by 1/keep); the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            mask.div_(keep)
        return x * mask


class PatchEmbed3D(nn.Module):
    """Video to patch tokens: zero-pad W, H, T (right/bottom/back) to multiples of the patch, Conv3d with
    kernel = stride = patch, flatten to (B, T'·H'·W', C)."""

    def __init__(self, patch_size=(2, 4, 4), in_chans=3, embed_dim=96, norm_layer=None, flatten=True):
        super().__init__()
        self.patch_size = patch_size
        self.flatten = flatten
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        _, _, D, H, W = x.size()
        pt, ph, pw = self.patch_size
        if W % pw != 0:
            x = F.pad(x, (0, pw - W % pw))
        if H % ph != 0:
            x = F.pad(x, (0, 0, 0, ph - H % ph))
        if D % pt != 0:
            x = F.pad(x, (0, 0, 0, 0, 0, pt - D % pt))
        x = self.proj(x)  # B C T H W
        if self.norm is not None:
            D, Wh, Ww = x.size(2), x.size(3), x.size(4)
            x = self.norm(x.flatten(2).transpose(1, 2))
            x = x.transpose(1, 2).view(-1, self.embed_dim, D, Wh, Ww)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # B C T H W -> B N C
        return x


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None):
    """flash-attn's ``flash_attn_func`` semantics on (B, N, heads, d): ``softmax(q·kᵀ·scale)·v`` accumulated in
    float32 (the kernel's accumulators), rounded once to the input dtype. Dropout only in training."""
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # B heads N d
    probs = ((qf @ kf.transpose(-2, -1)) * scale).softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return (probs @ vf).transpose(1, 2).to(q.dtype)


class Attention(nn.Module):
    """Multi-head self-attention (``qkv`` -> per-head attention -> ``proj``), upstream's two paths:

    * ``enable_flashattn=False``: scores ``(q·scale)·kᵀ`` in the working dtype, softmax in float32, the
      probabilities cast back to the working dtype before ``·v`` (every step rounds in half/bf16);
    * ``enable_flashattn=True``: flash-attn (``flash_attn_func`` above: float32 inside, one rounding).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer=nn.LayerNorm,
                 enable_flashattn: bool = False):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Attention: dim {dim} should be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.enable_flashattn = enable_flashattn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        # flash-attn takes (B, N, heads, d); the math path (B, heads, N, d)
        qkv = qkv.permute(2, 0, 1, 3, 4) if self.enable_flashattn else qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.enable_flashattn:
            x = flash_attn_func(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                softmax_scale=self.scale)
        else:
            dtype = q.dtype
            q = q * self.scale
            attn = (q @ k.transpose(-2, -1)).to(torch.float32).softmax(dim=-1).to(dtype)
            x = self.attn_drop(attn) @ v
            x = x.transpose(1, 2)
        x = self.proj(x.reshape(B, N, C))
        return self.proj_drop(x)


@dataclass(frozen=True)
class BlockDiagonalMask:
    """xformers' ``fmha.BlockDiagonalMask``: query block i (``q_seqlen[i]`` rows of the packed queries) attends
    only to key block i (``kv_seqlen[i]`` rows of the packed keys)."""

    q_seqlen: tuple
    kv_seqlen: tuple

    @classmethod
    def from_seqlens(cls, q_seqlen: Sequence[int], kv_seqlen: Optional[Sequence[int]] = None) -> "BlockDiagonalMask":
        q = tuple(int(n) for n in q_seqlen)
        return cls(q, q if kv_seqlen is None else tuple(int(n) for n in kv_seqlen))


def memory_efficient_attention(q, k, v, p: float = 0.0, attn_bias: Optional[BlockDiagonalMask] = None):
    """xformers' ``memory_efficient_attention`` on packed (1, M, heads, d) tensors, scale d^-0.5, written out per
    block: float32 accumulation, output rounded once to q's dtype (as the kernels do). Without ``attn_bias``
    every query attends to every key (across samples). A block with no keys is refused: what the kernel returns
    for it is not defined by anything this reference can run."""
    if attn_bias is None:
        return flash_attn_func(q, k, v, dropout_p=p)
    if sum(attn_bias.q_seqlen) != q.shape[1] or sum(attn_bias.kv_seqlen) != k.shape[1]:
        raise ValueError(f"memory_efficient_attention: block sizes {attn_bias.q_seqlen} / {attn_bias.kv_seqlen} "
                         f"do not tile {q.shape[1]} queries / {k.shape[1]} keys")
    if any(n <= 0 for n in attn_bias.kv_seqlen):
        raise ValueError(f"memory_efficient_attention: a sample has no valid text token (y_lens "
                         f"{list(attn_bias.kv_seqlen)}); every sample needs at least one")
    out, q0, k0 = [], 0, 0
    for nq, nk in zip(attn_bias.q_seqlen, attn_bias.kv_seqlen):
        out.append(flash_attn_func(q[:, q0:q0 + nq], k[:, k0:k0 + nk], v[:, k0:k0 + nk], dropout_p=p))
        q0, k0 = q0 + nq, k0 + nk
    return torch.cat(out, dim=1)


class MultiHeadCrossAttention(nn.Module):
    """Cross-attention of the video tokens (queries) to the packed text (keys/values), sample by sample.

    ``cond`` is the packed text (1, ΣL_i, C) and ``mask`` the per-sample token counts ``y_lens`` (upstream's
    argument name): the N queries of sample i attend to its ``y_lens[i]`` tokens only. ``mask=None`` lets all
    B·N queries attend to all keys (only the same thing for B = 1)."""

    def __init__(self, d_model, num_heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"MultiHeadCrossAttention: d_model {d_model} must be divisible by num_heads {num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.kv_linear = nn.Linear(d_model, d_model * 2)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, cond, mask=None):
        B, N, C = x.shape
        q = self.q_linear(x).view(1, -1, self.num_heads, self.head_dim)
        k, v = self.kv_linear(cond).view(1, -1, 2, self.num_heads, self.head_dim).unbind(2)
        attn_bias = None
        if mask is not None:
            attn_bias = BlockDiagonalMask.from_seqlens([N] * B, mask)
        x = memory_efficient_attention(q, k, v, p=self.attn_drop.p if self.training else 0.0, attn_bias=attn_bias)
        x = self.proj(x.reshape(B, -1, C))
        return self.proj_drop(x)


class T2IFinalLayer(nn.Module):
    """PixArt's final layer: norm, modulation by ``scale_shift_table + t`` (the raw timestep embedding), linear."""

    def __init__(self, hidden_size, num_patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size ** 0.5)
        self.out_channels = out_channels

    def forward(self, x, t):
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        x = t2i_modulate(self.norm_final(x), shift, scale)
        return self.linear(x)


class TimestepEmbedder(nn.Module):
    """Sinusoid of the timestep (float32, **[cos, sin]**), cast to the model dtype, then Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        """(B,) timesteps (may be fractional) -> (B, dim) float32: freqs ``exp(-ln(max_period)·i/half)``."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs.to(device=t.device)[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t, dtype):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        if t_freq.dtype != dtype:
            t_freq = t_freq.to(dtype)
        return self.mlp(t_freq)


class CaptionEmbedder(nn.Module):
    """T5 features -> hidden size (``y_proj``, an Mlp with tanh GELU). ``y_embedding`` (token_num, in_channels) is
    the learned null caption: a persistent *buffer* (in the state dict, not a parameter), used for classifier-free
    guidance and for the training-time caption drop."""

    def __init__(self, in_channels, hidden_size, uncond_prob, act_layer=approx_gelu, token_num=120):
        super().__init__()
        self.y_proj = Mlp(in_features=in_channels, hidden_features=hidden_size, out_features=hidden_size,
                          act_layer=act_layer, drop=0)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels ** 0.5)
        self.uncond_prob = uncond_prob

    def token_drop(self, caption, force_drop_ids=None):
        """Replace dropped samples' captions by the null caption (upstream draws on ``.cuda()``; here on the
        caption's device)."""
        if force_drop_ids is None:
            drop_ids = torch.rand(caption.shape[0], device=caption.device) < self.uncond_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids[:, None, None, None], self.y_embedding, caption)

    def forward(self, caption, train, force_drop_ids=None):
        if train and caption.shape[2:] != self.y_embedding.shape:
            raise ValueError(f"CaptionEmbedder: training captions must be {tuple(self.y_embedding.shape)} per sample, "
                             f"got {tuple(caption.shape[2:])}")
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            caption = self.token_drop(caption, force_drop_ids)
        return self.y_proj(caption)


# ---- fixed sine/cosine positional tables (numpy, float64 maths; MAE's pos_embed.py as upstream uses it) ----------
def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False, extra_tokens=0, scale=1.0, base_size=None):
    """(H·W, embed_dim) float64 for a grid (H, W), tokens row-major (h, then w). The first half of the channels
    encodes the **column (w)** coordinate, the second half the row (h) coordinate; coordinates are
    ``arange/scale`` in float32 (times ``base_size/size`` if given)."""
    if not isinstance(grid_size, tuple):
        grid_size = (grid_size, grid_size)
    grid_h = np.arange(grid_size[0], dtype=np.float32) / scale
    grid_w = np.arange(grid_size[1], dtype=np.float32) / scale
    if base_size is not None:
        grid_h *= base_size / grid_size[0]
        grid_w *= base_size / grid_size[1]
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # [0]: w coordinate, [1]: h coordinate; each (H, W)
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid.reshape(2, -1))
    if cls_token and extra_tokens > 0:
        pos_embed = np.concatenate([np.zeros([extra_tokens, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_2d_sincos_pos_embed_from_grid(embed_dim, grid):
    if embed_dim % 2 != 0:
        raise ValueError(f"2D sincos: embed_dim {embed_dim} must be even")
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # upstream names this half "emb_h"
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_w, emb_h], axis=1)


def get_1d_sincos_pos_embed(embed_dim, length, scale=1.0):
    """(length, embed_dim) float64; positions ``arange(length)/scale`` in float64."""
    pos = np.arange(0, length)[..., None] / scale
    return get_1d_sincos_pos_embed_from_grid(embed_dim, pos)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    """(M, embed_dim) float64 ``[sin(pos·ω), cos(pos·ω)]`` (**sin first**), ω_i = 10000^(-i/(embed_dim/2))."""
    if embed_dim % 2 != 0:
        raise ValueError(f"1D sincos: embed_dim {embed_dim} must be even")
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # outer product, float64
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


# ==================================================================================================================
# opensora/models/stdit/stdit.py @ v1.0.0
# ==================================================================================================================
class STDiTBlock(nn.Module):
    """One spatial-temporal block on (B, T·S, C) tokens, modulated by ``t`` (B, 6·C):

    spatial self-attention on ``norm1`` + modulation, gated by ``gate_msa``; temporal self-attention on the
    *un-normalised* tokens (plus ``tpe``, the temporal table, in block 0 only), gated by the same ``gate_msa``;
    cross-attention to the packed text (no norm, no gate); MLP on ``norm2`` + modulation, gated by ``gate_mlp``.
    """

    def __init__(self, hidden_size, num_heads, d_s=None, d_t=None, mlp_ratio=4.0, drop_path=0.0,
                 enable_flashattn=False, enable_layernorm_kernel=False, enable_sequence_parallelism=False):
        super().__init__()
        if enable_sequence_parallelism:
            raise ValueError("STDiTBlock: sequence parallelism needs colossalai process groups; this reference runs "
                             "in one process (same math): set enable_sequence_parallelism=False")
        self.hidden_size = hidden_size
        self.enable_flashattn = enable_flashattn
        self._enable_sequence_parallelism = enable_sequence_parallelism
        self.attn_cls = Attention
        self.mha_cls = MultiHeadCrossAttention

        self.norm1 = get_layernorm(hidden_size, eps=1e-6, affine=False, use_kernel=enable_layernorm_kernel)
        self.attn = self.attn_cls(hidden_size, num_heads=num_heads, qkv_bias=True, enable_flashattn=enable_flashattn)
        self.cross_attn = self.mha_cls(hidden_size, num_heads)
        self.norm2 = get_layernorm(hidden_size, eps=1e-6, affine=False, use_kernel=enable_layernorm_kernel)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio), act_layer=approx_gelu,
                       drop=0)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size ** 0.5)

        # temporal attention
        self.d_s = d_s
        self.d_t = d_t
        self.attn_temp = self.attn_cls(hidden_size, num_heads=num_heads, qkv_bias=True,
                                       enable_flashattn=self.enable_flashattn)

    def forward(self, x, y, t, mask=None, tpe=None):
        B, N, C = x.shape
        T, S = self.d_t, self.d_s
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t.reshape(B, 6, -1)
        ).chunk(6, dim=1)
        x_m = t2i_modulate(self.norm1(x), shift_msa, scale_msa)

        # spatial branch: B (T S) C -> (B T) S C
        x_s = self.attn(x_m.reshape(B * T, S, C))
        x_s = x_s.reshape(B, T * S, C)
        x = x + self.drop_path(gate_msa * x_s)

        # temporal branch: B (T S) C -> (B S) T C, on x itself (no norm, no modulation)
        x_t = x.reshape(B, T, S, C).permute(0, 2, 1, 3).reshape(B * S, T, C)
        if tpe is not None:
            x_t = x_t + tpe
        x_t = self.attn_temp(x_t)
        x_t = x_t.reshape(B, S, T, C).permute(0, 2, 1, 3).reshape(B, T * S, C)
        x = x + self.drop_path(gate_msa * x_t)  # gate_msa again: there is no temporal gate

        # cross attn
        x = x + self.cross_attn(x, y, mask)

        # mlp
        x = x + self.drop_path(gate_mlp * self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class STDiT(nn.Module):
    """Spatial-temporal DiT of Open-Sora 1.0. Constructor keywords are upstream's (``STDiT.from_config`` also takes
    the registry ``type``, e.g. ``"STDiT-XL/2"``). ``forward(x, timestep, y, mask)`` -> (B, out_channels, T, H, W)
    float32. ``dtype`` is the working dtype forward() casts its inputs to (the parameters are cast separately,
    e.g. ``model.to(torch.bfloat16)``, as upstream's scripts do)."""

    def __init__(self, input_size=(1, 32, 32), in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, drop_path=0.0,
                 no_temporal_pos_emb=False, caption_channels=4096, model_max_length=120, dtype=torch.float32,
                 space_scale=1.0, time_scale=1.0, freeze=None, enable_flashattn=False, enable_layernorm_kernel=False,
                 enable_sequence_parallelism=False):
        super().__init__()
        input_size, patch_size = tuple(input_size), tuple(patch_size)
        self.pred_sigma = pred_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size = hidden_size
        self.patch_size = patch_size
        self.input_size = input_size
        num_patches = int(np.prod([input_size[i] // patch_size[i] for i in range(3)]))
        self.num_patches = num_patches
        self.num_temporal = input_size[0] // patch_size[0]
        self.num_spatial = num_patches // self.num_temporal
        self.num_heads = num_heads
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.no_temporal_pos_emb = no_temporal_pos_emb  # stored, never read by upstream's forward (kept as is)
        self.depth = depth
        self.mlp_ratio = mlp_ratio
        self.enable_flashattn = enable_flashattn
        self.enable_layernorm_kernel = enable_layernorm_kernel
        self.space_scale = space_scale
        self.time_scale = time_scale

        self.register_buffer("pos_embed", self.get_spatial_pos_embed())
        self.register_buffer("pos_embed_temporal", self.get_temporal_pos_embed())

        self.x_embedder = PatchEmbed3D(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))
        self.y_embedder = CaptionEmbedder(in_channels=caption_channels, hidden_size=hidden_size,
                                          uncond_prob=class_dropout_prob, act_layer=approx_gelu,
                                          token_num=model_max_length)
        # float32 linspace on the CPU (its values feed DropPath only; .item() cannot run on the meta device)
        drop_path = [x.item() for x in torch.linspace(0, drop_path, depth, device="cpu")]
        self.blocks = nn.ModuleList([
            STDiTBlock(self.hidden_size, self.num_heads, mlp_ratio=self.mlp_ratio, drop_path=drop_path[i],
                       enable_flashattn=self.enable_flashattn, enable_layernorm_kernel=self.enable_layernorm_kernel,
                       enable_sequence_parallelism=enable_sequence_parallelism, d_t=self.num_temporal,
                       d_s=self.num_spatial)
            for i in range(self.depth)
        ])
        self.final_layer = T2IFinalLayer(hidden_size, int(np.prod(self.patch_size)), self.out_channels)

        self.initialize_weights()
        self.initialize_temporal()
        if freeze is not None:
            if freeze not in ("not_temporal", "text"):
                raise ValueError(f"STDiT: freeze must be None, 'not_temporal' or 'text', got {freeze!r}")
            self.freeze_not_temporal() if freeze == "not_temporal" else self.freeze_text()
        self.enable_sequence_parallelism = enable_sequence_parallelism
        self.sp_rank = None

    @classmethod
    def from_config(cls, config: Mapping, **overrides) -> "STDiT":
        """Build from upstream's model keywords; ``type`` "STDiT-XL/2" applies the factory's fixed sizes (giving
        one of them too is an error there as here), "STDiT" or no type the constructor defaults."""
        kwargs = dict(config)
        kwargs.update(overrides)
        kind = kwargs.pop("type", "STDiT")
        if kind == XL_2_NAME:
            clash = sorted(set(XL_2_SIZES) & set(kwargs))
            if clash:
                raise TypeError(f"{XL_2_NAME} fixes {', '.join(clash)}; drop them from the config")
            kwargs.update(XL_2_SIZES)
        elif kind != "STDiT":
            raise ValueError(f"STDiT.from_config: unknown model type {kind!r}; use 'STDiT' or {XL_2_NAME!r}")
        return cls(**kwargs)

    def forward(self, x, timestep, y, mask=None):
        """x (B, C, T, H, W) latent; timestep (B,); y (B, 1, L, caption_channels) text features; mask (B, L)
        1 = real token (its batch may divide B: it is then tiled, as for classifier-free guidance)."""
        x = x.to(self.dtype)
        timestep = timestep.to(self.dtype)  # rounded to the working dtype before the sinusoid, as upstream
        y = y.to(self.dtype)

        # embedding
        x = self.x_embedder(x)  # B N C
        B, N, C = x.shape
        x = x.reshape(B, self.num_temporal, self.num_spatial, C)  # B (T S) C -> B T S C
        x = x + self.pos_embed
        x = x.reshape(B, N, C)

        t = self.t_embedder(timestep, dtype=x.dtype)  # B C
        t0 = self.t_block(t)  # B 6C: the blocks' modulation
        y = self.y_embedder(y, self.training)  # B 1 L C

        if mask is not None:
            if mask.shape[0] != y.shape[0]:
                mask = mask.repeat(y.shape[0] // mask.shape[0], 1)
            mask = mask.squeeze(1).squeeze(1)
            y = y.squeeze(1).masked_select(mask.unsqueeze(-1) != 0).view(1, -1, x.shape[-1])  # valid tokens, packed
            y_lens = [int(n) for n in mask.sum(dim=1).tolist()]
        else:
            y_lens = [y.shape[2]] * y.shape[0]
            y = y.squeeze(1).view(1, -1, x.shape[-1])

        # blocks: the temporal table goes to block 0 only
        for i, block in enumerate(self.blocks):
            tpe = self.pos_embed_temporal if i == 0 else None
            x = block(x, y, t0, y_lens, tpe)

        x = self.final_layer(x, t)  # B N (T_p H_p W_p C_out), on the raw t
        x = self.unpatchify(x)  # B C_out T H W
        return x.to(torch.float32)

    def unpatchify(self, x):
        """B (N_t N_h N_w) (T_p H_p W_p C_out) -> B C_out (N_t T_p) (N_h H_p) (N_w W_p)."""
        N_t, N_h, N_w = [self.input_size[i] // self.patch_size[i] for i in range(3)]
        T_p, H_p, W_p = self.patch_size
        x = x.reshape(x.shape[0], N_t, N_h, N_w, T_p, H_p, W_p, self.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], self.out_channels, N_t * T_p, N_h * H_p, N_w * W_p)

    def get_spatial_pos_embed(self, grid_size=None):
        if grid_size is None:
            grid_size = self.input_size[1:]
        pos_embed = get_2d_sincos_pos_embed(self.hidden_size, (grid_size[0] // self.patch_size[1],
                                                               grid_size[1] // self.patch_size[2]),
                                            scale=self.space_scale)
        return torch.from_numpy(pos_embed).float().unsqueeze(0).requires_grad_(False)

    def get_temporal_pos_embed(self):
        pos_embed = get_1d_sincos_pos_embed(self.hidden_size, self.input_size[0] // self.patch_size[0],
                                            scale=self.time_scale)
        return torch.from_numpy(pos_embed).float().unsqueeze(0).requires_grad_(False)

    def freeze_not_temporal(self):
        for n, p in self.named_parameters():
            if "attn_temp" not in n:
                p.requires_grad = False

    def freeze_text(self):
        for n, p in self.named_parameters():
            if "cross_attn" in n:
                p.requires_grad = False

    def initialize_temporal(self):
        for block in self.blocks:
            nn.init.constant_(block.attn_temp.proj.weight, 0)
            nn.init.constant_(block.attn_temp.proj.bias, 0)

    def initialize_weights(self):
        """Upstream's init (Xavier-uniform Linears, N(0, 0.02) embedder MLPs, zeroed cross-attention and final
        projections). It zeroes several paths, so tests re-randomise every parameter."""
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        w = self.x_embedder.proj.weight.data  # like a Linear over the flattened patch
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.cross_attn.proj.weight, 0)
            nn.init.constant_(block.cross_attn.proj.bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)


def STDiT_XL_2(from_pretrained=None, **kwargs):
    """Upstream's registered "STDiT-XL/2": depth 28, hidden 1152, patch (1, 2, 2), 16 heads. Weights are loaded
    with ``load_state_dict`` by the caller; ``from_pretrained`` must be None."""
    if from_pretrained is not None:
        raise ValueError("STDiT_XL_2: load the checkpoint with model.load_state_dict(...) (from_pretrained is not "
                         "supported by the reference)")
    return STDiT(**XL_2_SIZES, **kwargs)
