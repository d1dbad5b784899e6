# A from-scratch PyTorch implementation of Open-Sora-Plan v1.3's video DiT ``OpenSoraT2V_v1_3``.
#
# Written from the project's fact sheet (docs/opensora_v13_facts.md); it reproduces upstream's numerics
# (PKU-YuanGroup/Open-Sora-Plan, opensora/models/diffusion/opensora_v1_3 + common.py, with diffusers 0.30.2
# building blocks) operation for operation, and uses upstream's class, attribute and method names so that
#   * upstream checkpoints load with a strict key match, and
#   * probes described by module path / method name are captured identically on this model and on upstream's.
# There is no diffusers or einops dependency: the diffusers pieces the model uses (AdaLayerNormSingle,
# PixArtAlphaTextProjection, FeedForward with a tanh GELU, the attention module) are written here.
#
# Layout conventions (as upstream):
#   video latents (B, C, T, H, W) -> tokens (B, S, D), S = T'·H'·W' in t-major, then h, then w order;
#   inside the blocks everything is sequence-first: hidden states (S, B, D), text (L, B, D), timestep (6, B, D).
"""PyTorch reference model ``OpenSoraT2V_v1_3`` (Open-Sora-Plan v1.3, the 2.7B "2B/122" DiT)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from parity.errors import ParityError
from parity.families.opensora_v13.config import OpenSoraConfig
from parity.families.opensora_v13.shapes import token_chunks

# Attention on CPU is evaluated in query chunks once a single call would hold more attention scores than this
# (batch · heads · q_len · k_len). Chunking only splits the query rows; every row still sees all keys, so the
# result is the same as one call. At the released size (21,120 tokens, 24 heads) a dense block would otherwise
# materialise ~10.7e9 scores (43 GB in fp32); with this budget a chunk holds two 64 MiB score buffers.
ATTENTION_CHUNK_SCORES = 16 * 1024 * 1024
ATTENTION_CHUNK_MIN_ROWS = 32
# The feed-forward runs in token chunks once its inner activations (tokens · 4·D) would exceed this many
# elements (at the released size: 21,120 x 9,216 = 778 MB per intermediate, two of them alive at once).
# Below it (every committed fixture) it is one call, exactly as upstream.
FFN_CHUNK_ELEMENTS = 16 * 1024 * 1024
# A block whose hidden states hold more than this many elements (S·B·D; the released size is 21,120 x 2,304 =
# 48.7 M) runs token-streamed (``BasicTransformerBlock._forward_streamed``, inference only): the same math, but
# it holds only the residual stream (updated in place), the self-attention outputs of all tokens, one head
# group's queries, keys and values, and one chunk of STREAM_CHUNK_TOKENS tokens — under three hidden states
# instead of eight. Below it (every committed fixture and test config) the block runs exactly as upstream.
STREAM_BLOCK_ELEMENTS = 32 * 1024 * 1024
STREAM_CHUNK_TOKENS = 256
# Streamed self-attention runs STREAM_GROUP_HEADS heads at a time (at the released 24 heads: 12 groups, one group's
# queries, keys and values = 1/4 of a hidden state), and every streamed attention call holds at most
# STREAM_ATTENTION_SCORES scores (two 8 MiB fp32 buffers).
STREAM_GROUP_HEADS = 2
STREAM_ATTENTION_SCORES = 2 * 1024 * 1024
# Streamed self-attention takes queries STREAM_QUERY_CHUNKS token chunks at a time (its score buffers are capped
# by STREAM_ATTENTION_SCORES, so a longer query chunk only saves per-call overhead).
STREAM_QUERY_CHUNKS = 4

# Bias values, as upstream: masked tokens get -10000 (in the model dtype); Skiparse padding keys get -9980.
MASK_BIAS = -10000.0
SPARSE_PAD_BIAS = -9980.0
# Upstream prepares Skiparse masks only for these ratios (hard-coded list in forward()).
PREPARED_SPARSE_N = (1, 4)


# ----------------------------------------------------------------------------------------------------------
# Patch embedding and 3D rotary position embedding (upstream: opensora/models/diffusion/common.py)
# ----------------------------------------------------------------------------------------------------------


class PatchEmbed2D(nn.Module):
    """Per-frame 2D patch embedding of a video: (B, C, T, H, W) -> (B, T·H'·W', D); no temporal patching."""

    def __init__(self, patch_size: int = 16, in_channels: int = 3, embed_dim: int = 768, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=(patch_size, patch_size),
                              stride=(patch_size, patch_size), bias=bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = latent.shape
        p = self.proj.stride
        if b * t * (h // p[0]) * (w // p[1]) * self.proj.out_channels > STREAM_BLOCK_ELEMENTS \
                and not torch.is_grad_enabled():
            return self._forward_per_frame(latent)
        frames = latent.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (b t) c h w
        out = self.proj(frames)  # (b t) D h' w'
        _, d, hp, wp = out.shape
        return out.reshape(b, t, d, hp, wp).permute(0, 1, 3, 4, 2).reshape(b, t * hp * wp, d)

    def _forward_per_frame(self, latent: torch.Tensor) -> torch.Tensor:
        """``forward`` one frame at a time into the token layout (real sizes: the convolution's output and its
        permuted copy exist for one frame only; the convolution is per frame anyway)."""
        out = None
        for f in range(latent.shape[2]):
            x = self.proj(latent[:, :, f])  # b D h' w'
            b, d, hp, wp = x.shape
            if out is None:
                out = x.new_empty(b, latent.shape[2] * hp * wp, d)
            out[:, f * hp * wp:(f + 1) * hp * wp] = x.permute(0, 2, 3, 1).reshape(b, hp * wp, d)
        return out


class PositionGetter3D:
    """Integer grid positions of the tokens: three (S, B) long tensors (t, h, w) plus their maxima."""

    def __init__(self):
        self.cache_positions: Dict[tuple, tuple] = {}

    def __call__(self, b: int, t: int, h: int, w: int, device: torch.device):
        key = (b, t, h, w)
        if key not in self.cache_positions:
            pos_t = torch.arange(t, device=device).repeat_interleave(h * w)
            pos_h = torch.arange(h, device=device).repeat_interleave(w).repeat(t)
            pos_w = torch.arange(w, device=device).repeat(t * h)
            poses = tuple(p[:, None].expand(t * h * w, b).contiguous() for p in (pos_t, pos_h, pos_w))
            self.cache_positions[key] = (poses, (t - 1, h - 1, w - 1))
        return self.cache_positions[key]


class RoPE3D(nn.Module):
    """3D rotary embedding: the head dim is split in three equal chunks [t | h | w], each rotated by its axis'
    position with rotate-half pairing (element i with i + D₃/2)."""

    def __init__(self, freq: float = 10000.0, F0: float = 1.0, interpolation_scale_thw=(1, 1, 1)):
        super().__init__()
        self.base = freq
        self.F0 = F0
        self.interpolation_scale_t = interpolation_scale_thw[0]
        self.interpolation_scale_h = interpolation_scale_thw[1]
        self.interpolation_scale_w = interpolation_scale_thw[2]
        self.cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def get_cos_sin(self, D: int, seq_len: int, device, dtype, interpolation_scale: float = 1):
        # Angles are computed in fp32 and cast to the activation dtype *before* cos/sin (as upstream).
        # The cache key is (D, seq_len, device, dtype) exactly as upstream's: it does not include the
        # interpolation scale, so axes with equal length share the first-computed table. All released
        # configs use scale 1.0 on every axis, where this makes no difference.
        key = (D, seq_len, device, dtype)
        if key not in self.cache:
            inv_freq = 1.0 / (self.base ** (torch.arange(0, D, 2).float().to(device) / D))
            positions = torch.arange(seq_len, device=device, dtype=inv_freq.dtype) / interpolation_scale
            angles = torch.outer(positions, inv_freq).to(dtype)
            angles = torch.cat((angles, angles), dim=-1)
            self.cache[key] = (angles.cos(), angles.sin())
        return self.cache[key]

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def apply_rope1d(self, tokens, pos1d, cos, sin):
        # tokens (S, B, N, D₃); pos1d (S, B) -> tables gathered to (S, B, 1, D₃), broadcast over heads
        cos = cos[pos1d][:, :, None, :]
        sin = sin[pos1d][:, :, None, :]
        return (tokens * cos) + (self.rotate_half(tokens) * sin)

    def forward(self, tokens: torch.Tensor, positions) -> torch.Tensor:
        """tokens (S, B, N, d) with d % 3 == 0; positions from ``PositionGetter3D``."""
        if tokens.size(3) % 3 != 0:
            raise ValueError(f"RoPE3D: head dim {tokens.size(3)} is not a multiple of three")
        D = tokens.size(3) // 3
        poses, max_poses = positions
        cos_t, sin_t = self.get_cos_sin(D, max_poses[0] + 1, tokens.device, tokens.dtype, self.interpolation_scale_t)
        cos_y, sin_y = self.get_cos_sin(D, max_poses[1] + 1, tokens.device, tokens.dtype, self.interpolation_scale_h)
        cos_x, sin_x = self.get_cos_sin(D, max_poses[2] + 1, tokens.device, tokens.dtype, self.interpolation_scale_w)
        t, y, x = tokens.chunk(3, dim=-1)
        t = self.apply_rope1d(t, poses[0], cos_t, sin_t)
        y = self.apply_rope1d(y, poses[1], cos_y, sin_y)
        x = self.apply_rope1d(x, poses[2], cos_x, sin_x)
        return torch.cat((t, y, x), dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Attention with Skiparse (upstream: opensora/models/diffusion/opensora_v1_3/modules.py)
# ----------------------------------------------------------------------------------------------------------


def scaled_dot_product_attention_cpu(query, key, value, attn_mask=None, max_scores: Optional[int] = None):
    """``F.scaled_dot_product_attention`` (scale 1/√d, no dropout, not causal) on (B, N, S, d) tensors.

    Upstream runs SDPA under ``torch.backends.cuda.sdp_kernel(enable_mem_efficient=True)`` only (the float
    bias rules out flash). That kernel has no CPU implementation, so a CPU run of upstream (with the GPU-only
    restriction lifted) uses the math backend, which is what we select here, on every device.

    When ``B·N·S_q·S_k`` exceeds ``max_scores`` (default ``ATTENTION_CHUNK_SCORES``) the queries are processed
    in row chunks (``_attention_rows``): every query row still attends to all keys with the same bias row, so
    the values equal one unchunked call (tested, fp32/bf16/fp16) while memory stays bounded at real token counts.
    """
    if max_scores is None:
        max_scores = ATTENTION_CHUNK_SCORES
    b, n, s_q, _ = query.shape
    s_k = key.shape[-2]
    if b * n * s_q * s_k <= max_scores:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0,
                                                  is_causal=False)
    # The math backend, written out with what does not depend on the query rows done once: it computes in
    # float32 for half/bf16 inputs, scales q and k by √scale each, adds the bias, softmax, multiplies by v.
    # (Calling SDPA per chunk would re-scale a full copy of k for every chunk.)
    compute = _compute_dtype(query.dtype)
    root_scale = math.sqrt(1.0 / math.sqrt(query.shape[-1]))
    key_t = key.to(compute).transpose(-2, -1) * root_scale
    return _attention_in_row_chunks(query, key_t, value.to(compute), attn_mask, root_scale, max_scores)


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _attention_in_row_chunks(query, key_t, value, attn_mask, root_scale, max_scores=None):
    """softmax((q·√s)·key_t + mask)·v over balanced query-row chunks; ``key_t`` = kᵀ·√s in the compute dtype.
    Two score buffers are reused; returns (B, N, S_q, d_v) in the query's dtype."""
    if max_scores is None:
        max_scores = ATTENTION_CHUNK_SCORES
    b, n, s_q, _ = query.shape
    s_k = key_t.shape[-1]
    compute = key_t.dtype
    # Balanced chunks of at least ATTENTION_CHUNK_MIN_ROWS // 2 rows: BLAS kernels take a different
    # (small-M) path for a sliver of 1-3 query rows, which would round differently from the unchunked call.
    rows = max(ATTENTION_CHUNK_MIN_ROWS, max_scores // max(1, b * n * s_k))
    num_chunks = -(-s_q // rows)
    bounds = [(s_q * c) // num_chunks for c in range(num_chunks + 1)]
    mask = None if attn_mask is None else attn_mask.to(compute)
    most = max(stop - start for start, stop in zip(bounds[:-1], bounds[1:]))
    scores = torch.empty(b * n * most * s_k, dtype=compute, device=query.device)
    probs = torch.empty_like(scores)
    out = torch.empty(b, n, s_q, value.shape[-1], dtype=query.dtype, device=query.device)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        m = mask
        if m is not None and m.dim() >= 2 and m.shape[-2] != 1:
            m = m[..., start:stop, :]
        shape = (b, n, stop - start, s_k)
        numel = b * n * (stop - start) * s_k
        out[:, :, start:stop] = _attention_rows(query[:, :, start:stop], key_t, value, m, root_scale,
                                                scores[:numel].view(shape), probs[:numel].view(shape))
    return out


def _attention_rows(query, key_t, value, mask, root_scale, scores, probs):
    """One query chunk of the math backend: softmax((q·√s)(k·√s)ᵀ + mask)·v into the given score buffers."""
    torch.matmul(query.to(scores.dtype) * root_scale, key_t, out=scores)
    if mask is not None:
        scores.add_(mask)
    torch.ops.aten._softmax.out(scores, -1, False, out=probs)
    return torch.matmul(probs, value)


class OpenSoraAttnProcessor2_0:
    """Self/cross attention of a block: projections, 3D RoPE (self-attention only), Skiparse regrouping
    (``sparse1d``), SDPA, un-grouping and the output projection. Inputs are sequence-first (len, B, D)."""

    def __init__(self, interpolation_scale_thw=(1, 1, 1), sparse1d: bool = False, sparse_n: int = 2,
                 sparse_group: bool = False, is_cross_attn: bool = True):
        self.sparse1d = sparse1d
        self.sparse_n = sparse_n
        self.sparse_group = sparse_group
        self.is_cross_attn = is_cross_attn
        self.interpolation_scale_thw = interpolation_scale_thw
        self._init_rope(interpolation_scale_thw)

    def _init_rope(self, interpolation_scale_thw):
        self.rope = RoPE3D(interpolation_scale_thw=interpolation_scale_thw)
        self.position_getter = PositionGetter3D()

    # Skiparse regrouping. k = sparse_n; the sequence is zero-padded to a multiple of k².
    #   single skip: '(g k) b d -> g (k b) d'      sub-batch j holds tokens i with i % k == j
    #   group skip:  '(n m k) b d -> (n k) (m b) d' sub-batch j holds runs of k tokens with (i // k) % k == j
    # The new batch is k-major: index j·B + b.
    def _sparse_1d(self, x: torch.Tensor, frame: int, height: int, width: int):
        seq = x.shape[0]
        if seq != frame * height * width:
            raise ValueError(f"Skiparse: sequence length {seq} != frame·height·width = {frame * height * width}")
        k = self.sparse_n
        pad_len = 0
        if seq % (k * k) != 0:
            pad_len = k * k - seq % (k * k)
        if pad_len != 0:
            x = F.pad(x, (0, 0, 0, 0, 0, pad_len))
        s_pad, b, d = x.shape
        if not self.sparse_group:
            x = x.reshape(s_pad // k, k * b, d)
        else:
            x = x.reshape(s_pad // (k * k), k, k, b, d).permute(0, 2, 1, 3, 4).reshape(s_pad // k, k * b, d)
        return x, pad_len

    def _reverse_sparse_1d(self, x: torch.Tensor, frame: int, height: int, width: int, pad_len: int):
        k = self.sparse_n
        seq = frame * height * width
        if x.shape[0] != (seq + pad_len) // k:
            raise ValueError(f"Skiparse: cannot undo grouping of a length-{x.shape[0]} sequence")
        g, kb, d = x.shape
        b = kb // k
        if not self.sparse_group:
            x = x.reshape(g * k, b, d)
        else:
            x = x.reshape(g // k, k, k, b, d).permute(0, 2, 1, 3, 4).reshape(g * k, b, d)
        return x[:seq, :, :]

    def _sparse_1d_kv(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-attention keys/values: tile the text over the k sub-batches, 's b d -> s (k b) d'."""
        s, b, d = x.shape
        return x[:, None].expand(s, self.sparse_n, b, d).reshape(s, self.sparse_n * b, d)

    def __call__(self, attn: "Attention", hidden_states: torch.Tensor,
                 encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 temb: Optional[torch.Tensor] = None, frame: int = 8, height: int = 16, width: int = 16,
                 *args, **kwargs) -> torch.Tensor:
        batch_size = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        heads = attn.heads

        query = query.view(-1, batch_size, heads, head_dim)
        key = key.view(-1, batch_size, heads, head_dim)
        if not self.is_cross_attn:
            # RoPE on the unsplit t/h/w grid, before any Skiparse regrouping.
            pos_thw = self.position_getter(batch_size, t=frame, h=height, w=width, device=query.device)
            query = self.rope(query, pos_thw)
            key = self.rope(key, pos_thw)

        query = query.view(-1, batch_size, heads * head_dim)
        key = key.view(-1, batch_size, heads * head_dim)
        value = value.view(-1, batch_size, heads * head_dim)

        if self.sparse1d:
            query, pad_len = self._sparse_1d(query, frame, height, width)
            if self.is_cross_attn:
                key = self._sparse_1d_kv(key)
                value = self._sparse_1d_kv(value)
            else:
                key, pad_len = self._sparse_1d(key, frame, height, width)
                value, pad_len = self._sparse_1d(value, frame, height, width)

        # 's b (h d) -> b h s d'
        query = query.view(query.shape[0], query.shape[1], heads, head_dim).permute(1, 2, 0, 3)
        key = key.view(key.shape[0], key.shape[1], heads, head_dim).permute(1, 2, 0, 3)
        value = value.view(value.shape[0], value.shape[1], heads, head_dim).permute(1, 2, 0, 3)

        hidden_states = scaled_dot_product_attention_cpu(query, key, value, attn_mask=attention_mask)
        out_dtype = query.dtype
        del query, key, value  # not needed any more: frees three states early at real token counts

        # 'b h s d -> s b (h d)'
        b, n, s, d = hidden_states.shape
        hidden_states = hidden_states.permute(2, 0, 1, 3).reshape(s, b, n * d)

        if self.sparse1d:
            hidden_states = self._reverse_sparse_1d(hidden_states, frame, height, width, pad_len)

        hidden_states = hidden_states.to(out_dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


class Attention(nn.Module):
    """Attention module with diffusers' parameter layout (``to_q``, ``to_k``, ``to_v``, ``to_out`` =
    [Linear, Dropout]) and an ``OpenSoraAttnProcessor2_0`` as its ``processor``."""

    def __init__(self, query_dim: int, cross_attention_dim: Optional[int] = None, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.0, bias: bool = False, upcast_attention: bool = False,
                 out_bias: bool = True, interpolation_scale_thw=(1, 1, 1), sparse1d: bool = False,
                 sparse_n: int = 2, sparse_group: bool = False, is_cross_attn: bool = False):
        super().__init__()
        self.inner_dim = dim_head * heads
        self.query_dim = query_dim
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.upcast_attention = upcast_attention
        self.rescale_output_factor = 1.0
        self.residual_connection = False
        self.dropout = dropout
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.out_dim = query_dim

        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_v = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, self.out_dim, bias=out_bias), nn.Dropout(dropout)])

        self.processor = OpenSoraAttnProcessor2_0(
            interpolation_scale_thw=interpolation_scale_thw, sparse1d=sparse1d, sparse_n=sparse_n,
            sparse_group=sparse_group, is_cross_attn=is_cross_attn)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, **cross_attention_kwargs) -> torch.Tensor:
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **cross_attention_kwargs)

    @staticmethod
    def prepare_sparse_mask(attention_mask: torch.Tensor, encoder_attention_mask: torch.Tensor, sparse_n: int,
                            head_num: int):
        """Per-call attention biases for Skiparse ratio ``sparse_n``.

        attention_mask (B, 1, S) and encoder_attention_mask (B, 1, L) are additive biases. Returns
        ``{False: (video, text), True: (video_group, text)}`` with video masks (n·B, head_num, 1, S_pad/n)
        (S padded to a multiple of n² with -9980, regrouped like the queries, k-major batch) and the text mask
        tiled n times over the batch, (n·B, head_num, 1, L). For n = 1 all of them are plain (B, N, 1, len).
        """
        attention_mask = attention_mask.unsqueeze(1)  # (B, 1, 1, S)
        encoder_attention_mask = encoder_attention_mask.unsqueeze(1)  # (B, 1, 1, L)
        k = sparse_n
        seq = attention_mask.shape[-1]
        pad_len = 0 if seq % (k * k) == 0 else k * k - seq % (k * k)
        padded = F.pad(attention_mask, (0, pad_len, 0, 0), value=SPARSE_PAD_BIAS)
        b = padded.shape[0]
        s_pad = padded.shape[-1]
        # 'b 1 1 (g k) -> (k b) 1 1 g'
        video = padded.reshape(b, 1, 1, s_pad // k, k).permute(4, 0, 1, 2, 3).reshape(k * b, 1, 1, s_pad // k)
        # 'b 1 1 (n m k) -> (m b) 1 1 (n k)' with m = k = sparse_n
        video_group = (padded.reshape(b, 1, 1, s_pad // (k * k), k, k).permute(4, 0, 1, 2, 3, 5)
                       .reshape(k * b, 1, 1, s_pad // k))
        text = encoder_attention_mask.repeat(k, 1, 1, 1)  # tiled: batch index j·B + b

        video = video.repeat_interleave(head_num, dim=1)
        video_group = video_group.repeat_interleave(head_num, dim=1)
        text = text.repeat_interleave(head_num, dim=1)
        return {False: (video, text), True: (video_group, text)}


# ----------------------------------------------------------------------------------------------------------
# diffusers-equivalent building blocks (as of diffusers 0.30.2)
# ----------------------------------------------------------------------------------------------------------


class GELU(nn.Module):
    """Linear projection followed by GELU (``approximate="tanh"`` for "gelu-approximate")."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


class FeedForward(nn.Module):
    """``net`` = [GELU(dim -> mult·dim, tanh), Dropout, Linear(mult·dim -> dim)]."""

    def __init__(self, dim: int, dim_out: Optional[int] = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "gelu-approximate", final_dropout: bool = False, inner_dim: Optional[int] = None,
                 bias: bool = True):
        super().__init__()
        if activation_fn != "gelu-approximate":
            raise ValueError(f"FeedForward: only 'gelu-approximate' is implemented (OpenSoraT2V v1.3), "
                             f"got {activation_fn!r}")
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim if dim_out is None else dim_out
        self.net = nn.ModuleList([GELU(dim, inner_dim, approximate="tanh", bias=bias), nn.Dropout(dropout),
                                  nn.Linear(inner_dim, dim_out, bias=bias)])
        if final_dropout:
            self.net.append(nn.Dropout(dropout))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        inner = self.net[0].proj.out_features
        tokens = hidden_states.numel() // hidden_states.shape[-1]
        if tokens * inner <= FFN_CHUNK_ELEMENTS:
            for module in self.net:
                hidden_states = module(hidden_states)
            return hidden_states
        # token chunks (a memory bound at real sizes; every token's FFN is independent of the others)
        flat = hidden_states.reshape(tokens, hidden_states.shape[-1])
        out = None
        step = max(ATTENTION_CHUNK_MIN_ROWS, FFN_CHUNK_ELEMENTS // inner)
        for start in range(0, tokens, step):
            y = flat[start:start + step]
            for module in self.net:
                y = module(y)
            if out is None:
                out = torch.empty(tokens, y.shape[-1], dtype=y.dtype, device=y.device)
            out[start:start + step] = y
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int, flip_sin_to_cos: bool = False,
                           downscale_freq_shift: float = 1, scale: float = 1, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep features, fp32: freqs exp(-ln(max_period)·i/(half - shift)); [cos | sin] if flipped."""
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps must be a 1-D tensor (B,), got shape {tuple(timesteps.shape)}")
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half - downscale_freq_shift)
    freqs = torch.exp(exponent)
    args = timesteps[:, None].float() * freqs[None, :]
    args = scale * args
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin], dim=-1) if flip_sin_to_cos else torch.cat([sin, cos], dim=-1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class Timesteps(nn.Module):
    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: int = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(timesteps, self.num_channels, flip_sin_to_cos=self.flip_sin_to_cos,
                                      downscale_freq_shift=self.downscale_freq_shift, scale=self.scale)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, bias=True)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim, bias=True)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


class PixArtAlphaCombinedTimestepSizeEmbeddings(nn.Module):
    """Timestep embedding of AdaLayerNormSingle (use_additional_conditions=False): sinusoid(256) -> MLP."""

    def __init__(self, embedding_dim: int, size_emb_dim: int, use_additional_conditions: bool = False):
        super().__init__()
        if use_additional_conditions:
            raise ValueError("use_additional_conditions=True is not used by OpenSoraT2V v1.3")
        self.outdim = size_emb_dim
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)
        self.use_additional_conditions = use_additional_conditions

    def forward(self, timestep, resolution=None, aspect_ratio=None, batch_size=None, hidden_dtype=None):
        timesteps_proj = self.time_proj(timestep)  # fp32
        return self.timestep_embedder(timesteps_proj.to(dtype=hidden_dtype))  # (B, D)


class AdaLayerNormSingle(nn.Module):
    """adaLN-single: returns (linear(SiLU(emb)) (B, 6D), emb (B, D))."""

    def __init__(self, embedding_dim: int, use_additional_conditions: bool = False):
        super().__init__()
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(embedding_dim, size_emb_dim=embedding_dim // 3,
                                                             use_additional_conditions=use_additional_conditions)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim, bias=True)

    def forward(self, timestep: torch.Tensor, added_cond_kwargs: Optional[Dict[str, Any]] = None,
                batch_size: Optional[int] = None, hidden_dtype: Optional[torch.dtype] = None):
        added_cond_kwargs = added_cond_kwargs or {"resolution": None, "aspect_ratio": None}
        embedded_timestep = self.emb(timestep, **added_cond_kwargs, batch_size=batch_size, hidden_dtype=hidden_dtype)
        return self.linear(self.silu(embedded_timestep)), embedded_timestep


class PixArtAlphaTextProjection(nn.Module):
    """Caption projection: linear_1 -> GELU(tanh) -> linear_2."""

    def __init__(self, in_features: int, hidden_size: int, out_features: Optional[int] = None):
        super().__init__()
        out_features = hidden_size if out_features is None else out_features
        self.linear_1 = nn.Linear(in_features=in_features, out_features=hidden_size, bias=True)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(in_features=hidden_size, out_features=out_features, bias=True)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(caption)))


# ----------------------------------------------------------------------------------------------------------
# Transformer block
# ----------------------------------------------------------------------------------------------------------


class BasicTransformerBlock(nn.Module):
    """Modulated self-attention (RoPE, optional Skiparse) -> plain cross-attention -> modulated FFN.

    Sequence-first: hidden_states (S, B, D), encoder_hidden_states (L, B, D), timestep (6, B, D).
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout: float = 0.0,
                 cross_attention_dim: Optional[int] = None, activation_fn: str = "geglu",
                 attention_bias: bool = False, only_cross_attention: bool = False,
                 double_self_attention: bool = False, upcast_attention: bool = False,
                 norm_elementwise_affine: bool = True, norm_eps: float = 1e-5, final_dropout: bool = False,
                 ff_inner_dim: Optional[int] = None, ff_bias: bool = True, attention_out_bias: bool = True,
                 interpolation_scale_thw=(1, 1, 1), sparse1d: bool = False, sparse_n: int = 2,
                 sparse_group: bool = False):
        super().__init__()
        # 1. self-attention (norm1 + shift/scale/gate from the timestep)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(
            query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
            bias=attention_bias, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
            upcast_attention=upcast_attention, out_bias=attention_out_bias,
            interpolation_scale_thw=interpolation_scale_thw, sparse1d=sparse1d, sparse_n=sparse_n,
            sparse_group=sparse_group, is_cross_attn=False)
        # 2. norm2 belongs to the feed-forward (cross-attention has no norm)
        self.norm2 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
        self.attn2 = Attention(
            query_dim=dim, cross_attention_dim=cross_attention_dim if not double_self_attention else None,
            heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout, bias=attention_bias,
            upcast_attention=upcast_attention, out_bias=attention_out_bias,
            interpolation_scale_thw=interpolation_scale_thw, sparse1d=sparse1d, sparse_n=sparse_n,
            sparse_group=sparse_group, is_cross_attn=True)
        # 3. feed-forward
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)
        # 4. per-block modulation table (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None, timestep: Optional[torch.Tensor] = None,
                frame: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None) -> torch.Tensor:
        if hidden_states.numel() > STREAM_BLOCK_ELEMENTS and not torch.is_grad_enabled():
            return self._forward_streamed(hidden_states, attention_mask, encoder_hidden_states,
                                          encoder_attention_mask, timestep, frame, height, width)
        batch_size = hidden_states.shape[1]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[:, None] + timestep.reshape(6, batch_size, -1)
        ).chunk(6, dim=0)

        # self-attention: modulated, gated
        norm_hidden_states = self.norm1(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_msa) + shift_msa
        attn_output = self.attn1(norm_hidden_states, encoder_hidden_states=None, attention_mask=attention_mask,
                                 frame=frame, height=height, width=width)
        attn_output = gate_msa * attn_output
        hidden_states = attn_output + hidden_states
        del norm_hidden_states, attn_output  # (memory only: dead tensors released before the next attention)

        # cross-attention: no norm, no modulation, no gate
        attn_output = self.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=encoder_attention_mask, frame=frame, height=height, width=width)
        hidden_states = attn_output + hidden_states
        del attn_output

        # feed-forward: modulated, gated
        norm_hidden_states = self.norm2(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_mlp) + shift_mlp
        ff_output = self.ff(norm_hidden_states)
        ff_output = gate_mlp * ff_output
        hidden_states = ff_output + hidden_states
        return hidden_states

    def _forward_streamed(self, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                          timestep, frame, height, width):
        """``forward`` in token chunks, for real-size inputs (see ``STREAM_BLOCK_ELEMENTS``); inference only.

        Every operation of ``forward`` is per token except attention's mixing over keys, and attention is per
        head. So: (1) self-attention runs one group of heads at a time (``_streamed_self_attention``) into a
        buffer of the attention outputs of all tokens (the output projection's input); (2) per chunk of tokens:
        output projection and gated residual, cross-attention and the modulated FFN, written back into
        ``hidden_states`` in place (the caller rebinds it to the result). Peak: the residual, that buffer and one
        head group's queries, keys and values. A query's Skiparse sub-sequence is fixed by its position, so chunks
        are aligned to sparse_n² tokens (cross-attention is regrouped the same way, as upstream). Hooks on
        ``attn1``/``attn2`` and the processors are not called on this path (the block's own hooks are).
        """
        h = hidden_states                                                       # (S, B, D)
        seq, batch, _ = h.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[:, None] + timestep.reshape(6, batch, -1)).chunk(6, dim=0)
        attn1, attn2 = self.attn1, self.attn2
        stream = _TokenStream(attn1, batch, seq, frame, height, width, h.device)
        attended = self._streamed_self_attention(h, stream, shift_msa, scale_msa, attention_mask)

        # cross-attention keys/values (text, small), tiled to every Skiparse sub-sequence as upstream does
        compute = _compute_dtype(h.dtype)
        text_k = attn2.to_k(encoder_hidden_states).view(-1, batch, attn2.inner_dim)
        text_v = attn2.to_v(encoder_hidden_states).view(-1, batch, attn2.inner_dim)
        if attn2.processor.sparse1d:
            text_k, text_v = attn2.processor._sparse_1d_kv(text_k), attn2.processor._sparse_1d_kv(text_v)
        text_k_t = _heads_first(text_k, attn2.heads).to(compute).transpose(-2, -1) * stream.root_scale
        text_v = _heads_first(text_v, attn2.heads).to(compute)

        for s0, s1, rows in stream.chunks():
            chunk = h[s0:s1]
            a = attn1.to_out[1](attn1.to_out[0](attended[s0:s1])) / attn1.rescale_output_factor
            chunk.add_(gate_msa * a)                                            # hidden = gate·attn + hidden
            q = _heads_first(stream.regroup(stream.padded(attn2.to_q(chunk).view(-1, batch, attn2.inner_dim),
                                                          rows)), attn2.heads)
            a = _attention_in_row_chunks(q, text_k_t, text_v, encoder_attention_mask, stream.root_scale,
                                         STREAM_ATTENTION_SCORES)
            a = stream.ungroup(_heads_last(a), rows)[: s1 - s0]
            chunk.add_(attn2.to_out[1](attn2.to_out[0](a.to(h.dtype))) / attn2.rescale_output_factor)
            n = self.norm2(chunk)
            n = n * (1 + scale_mlp) + shift_mlp
            chunk.add_(gate_mlp * self.ff(n))                                   # hidden = gate·ff + hidden
            del n, a, q
        return h

    def _streamed_self_attention(self, h, stream, shift_msa, scale_msa, attention_mask):
        """Self-attention outputs of all tokens (S, B, inner), before the output projection, computed one group
        of STREAM_GROUP_HEADS heads at a time: the group's queries, keys (·√scale, compute dtype) and values of
        every token in its Skiparse layout (RoPE'd, zero padding rows as ``F.pad`` gives; q/k/v projections
        restricted to the group's output rows), then attention for chunks of queries against all keys."""
        attn1 = self.attn1
        seq, batch, _ = h.shape
        compute = _compute_dtype(h.dtype)
        head_dim = attn1.inner_dim // attn1.heads
        attended = torch.empty(seq, batch, attn1.inner_dim, dtype=h.dtype, device=h.device)
        for h0 in range(0, attn1.heads, STREAM_GROUP_HEADS):
            h1 = min(attn1.heads, h0 + STREAM_GROUP_HEADS)
            cols = slice(h0 * head_dim, h1 * head_dim)
            shape = (stream.seq_pad // stream.k, stream.k * batch, cols.stop - cols.start)
            queries = torch.zeros(shape, dtype=h.dtype, device=h.device)
            keys = torch.zeros(shape, dtype=compute, device=h.device)
            values = torch.zeros(shape, dtype=compute, device=h.device)
            for s0, s1, rows in stream.chunks():
                n = self.norm1(h[s0:s1])
                n = n * (1 + scale_msa) + shift_msa
                g = slice(s0 // stream.k, (s0 + rows) // stream.k)
                queries[g] = stream.regroup(stream.padded(stream.roped(_linear_rows(attn1.to_q, n, cols), s0, s1),
                                                          rows))
                k = stream.padded(stream.roped(_linear_rows(attn1.to_k, n, cols), s0, s1).to(compute), rows)
                keys[g] = stream.regroup(k) * stream.root_scale
                values[g] = stream.regroup(stream.padded(_linear_rows(attn1.to_v, n, cols).to(compute), rows))
                del n, k
            heads = h1 - h0
            key_t = _heads_first(keys, heads).transpose(-2, -1)
            value_h = _heads_first(values, heads)
            mask = None if attention_mask is None else attention_mask[:, h0:h1]
            for s0, s1, rows in stream.chunks(STREAM_QUERY_CHUNKS):
                q = _heads_first(queries[s0 // stream.k:(s0 + rows) // stream.k], heads)
                a = _attention_in_row_chunks(q, key_t, value_h, mask, stream.root_scale, STREAM_ATTENTION_SCORES)
                attended[s0:s1, :, cols] = stream.ungroup(_heads_last(a), rows)[: s1 - s0]
            del queries, keys, values, key_t, value_h
        return attended


def _heads_first(x, heads):
    """(s, b, heads·d) -> (b, heads, s, d), a view."""
    return x.view(x.shape[0], x.shape[1], heads, -1).permute(1, 2, 0, 3)


def _heads_last(x):
    """(b, heads, s, d) -> (s, b, heads·d)."""
    b, n, s, d = x.shape
    return x.permute(2, 0, 1, 3).reshape(s, b, n * d)


def _linear_rows(linear: nn.Linear, x, rows: slice):
    """``linear(x)[..., rows]``, computing only those output features (bit-identical: each output feature is
    its own dot product over the same inputs)."""
    bias = None if linear.bias is None else linear.bias[rows]
    return F.linear(x, linear.weight[rows], bias)


class _TokenStream:
    """Token-chunk bookkeeping of a streamed block: chunks of whole Skiparse units (sparse_n² tokens; a unit
    maps to one contiguous run of every sub-sequence), RoPE on a chunk's own grid positions, and the Skiparse
    regrouping of a unit-aligned run of tokens ('(g k) b d -> g (k b) d', group skip '(n m k) b d -> (n k) (m b) d').
    """

    def __init__(self, attn1: "Attention", batch, seq, frame, height, width, device):
        self.proc = proc = attn1.processor
        self.batch, self.seq = batch, seq
        self.head_dim = attn1.inner_dim // attn1.heads
        self.k = proc.sparse_n if proc.sparse1d else 1
        self.unit = self.k * self.k if proc.sparse1d else 1
        self.seq_pad = seq + (-seq % self.unit)
        self.step = max(self.unit, STREAM_CHUNK_TOKENS // self.unit * self.unit)
        self.root_scale = math.sqrt(1.0 / math.sqrt(self.head_dim))
        self.positions = proc.position_getter(batch, t=frame, h=height, w=width, device=device)

    def chunks(self, steps: int = 1):
        """(start, stop, rows): token chunks of ``steps`` steps; ``rows`` is the chunk's length rounded up to whole
        units."""
        return token_chunks(self.seq, self.step * steps, self.unit)

    def roped(self, x, s0, s1):
        """(L, B, heads·d) tokens s0..s1: the processor's RoPE on their own grid positions."""
        poses, max_poses = self.positions
        x = self.proc.rope(x.view(s1 - s0, self.batch, -1, self.head_dim),
                           (tuple(p[s0:s1] for p in poses), max_poses))
        return x.view(s1 - s0, self.batch, -1)

    @staticmethod
    def padded(x, rows):
        """zero rows appended up to ``rows`` (as ``_sparse_1d``'s F.pad)"""
        return F.pad(x, (0, 0, 0, 0, 0, rows - x.shape[0])) if rows > x.shape[0] else x

    def regroup(self, x):
        """(L, B, C), L unit-aligned -> (L/k, k·B, C)"""
        if not self.proc.sparse1d:
            return x
        n_tok, b, c = x.shape
        k, unit = self.k, self.unit
        if self.proc.sparse_group:
            x = x.reshape(n_tok // unit, k, k, b, c).permute(0, 2, 1, 3, 4)
        return x.reshape(n_tok // k, k * b, c)

    def ungroup(self, x, n_tok):
        """inverse of ``regroup``: (L/k, k·B, C) -> (L, B, C)"""
        if not self.proc.sparse1d:
            return x
        g, kb, c = x.shape
        k = self.k
        if self.proc.sparse_group:
            x = x.reshape(g // k, k, k, kb // k, c).permute(0, 2, 1, 3, 4)
        return x.reshape(n_tok, kb // k, c)


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Transformer2DModelOutput:
    """What ``forward(..., return_dict=True)`` returns (like diffusers' output: ``.sample``, or ``[0]``)."""

    sample: torch.Tensor

    def __getitem__(self, index):
        if index in (0, "sample"):
            return self.sample
        raise IndexError(index)

    def to_tuple(self):
        return (self.sample,)


# upstream keyword -> OpenSoraConfig field, for the constructor (the rest of the names are identical)
_UPSTREAM_KWARGS = (
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "dropout",
    "cross_attention_dim", "attention_bias", "sample_size_h", "sample_size_w", "sample_size_t", "patch_size",
    "patch_size_t", "activation_fn", "only_cross_attention", "double_self_attention", "upcast_attention",
    "norm_elementwise_affine", "norm_eps", "caption_channels", "interpolation_scale_h", "interpolation_scale_w",
    "interpolation_scale_t", "sparse1d", "sparse_n",
)


def _upstream_kwargs(cfg: OpenSoraConfig) -> dict:
    out = {k: getattr(cfg, k) for k in _UPSTREAM_KWARGS if hasattr(cfg, k) and not k.startswith("sample_size_")}
    out["sample_size_t"] = cfg.sample_size_t
    out["sample_size_h"] = cfg.extra.get("sample_size_h")
    out["sample_size_w"] = cfg.extra.get("sample_size_w")
    return out


class OpenSoraT2V_v1_3(nn.Module):
    """Open-Sora-Plan v1.3 text-to-video DiT (PixArt-style adaLN-single blocks, 3D RoPE, Skiparse attention).

    Construct with upstream's keyword names (``OpenSoraT2V_v1_3(num_layers=32, ...)``) or from a config
    (``OpenSoraT2V_v1_3.from_config(cfg)``); either way the config is validated by ``OpenSoraConfig`` so an
    unsupported setting (e.g. ``sparse_n`` other than 1 or 4) is a ``ParityError`` up front rather than a
    ``KeyError`` in forward(). Inference only: no gradient checkpointing, no sequence parallelism.
    """

    _supports_gradient_checkpointing = False

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: Optional[int] = None,
                 out_channels: Optional[int] = None, num_layers: int = 1, dropout: float = 0.0,
                 cross_attention_dim: Optional[int] = None, attention_bias: bool = True,
                 sample_size_h: Optional[Any] = None, sample_size_w: Optional[Any] = None,
                 sample_size_t: Optional[Any] = None, patch_size: Optional[int] = None,
                 patch_size_t: Optional[int] = None, activation_fn: str = "geglu",
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = False, norm_eps: float = 1e-6,
                 caption_channels: Optional[int] = None, interpolation_scale_h: float = 1.0,
                 interpolation_scale_w: float = 1.0, interpolation_scale_t: float = 1.0, sparse1d: bool = False,
                 sparse_n: int = 2):
        super().__init__()
        kwargs = dict(locals())
        kwargs = {k: kwargs[k] for k in _UPSTREAM_KWARGS}
        self.parity_config = OpenSoraConfig.from_dict(kwargs, source=f"{type(self).__name__} arguments")
        self.out_channels = in_channels if out_channels is None else out_channels
        self.config = SimpleNamespace(**kwargs)
        self.config.hidden_size = num_attention_heads * attention_head_dim
        self.config.sample_size = (sample_size_h, sample_size_w)
        self.gradient_checkpointing = False
        self._init_patched_inputs()

    @classmethod
    def from_config(cls, config: "OpenSoraConfig | Mapping[str, Any]", **overrides) -> "OpenSoraT2V_v1_3":
        """Build from an ``OpenSoraConfig`` or an upstream-style config dict (unknown/EMA keys are ignored)."""
        if isinstance(config, OpenSoraConfig):
            cfg = config
        elif isinstance(config, Mapping):
            cfg = OpenSoraConfig.from_dict(config)
        else:
            raise ParityError(f"OpenSoraT2V_v1_3.from_config: expected an OpenSoraConfig or a config dict, "
                              f"got {type(config).__name__}")
        kwargs = _upstream_kwargs(cfg)
        kwargs.update(overrides)
        return cls(**kwargs)

    def _init_patched_inputs(self):
        cfg = self.config
        interpolation_scale_thw = (cfg.interpolation_scale_t, cfg.interpolation_scale_h, cfg.interpolation_scale_w)
        # Registration order = upstream's (it fixes the RNG order of the random init and the state-dict order).
        self.caption_projection = PixArtAlphaTextProjection(in_features=cfg.caption_channels,
                                                            hidden_size=cfg.hidden_size)
        self.pos_embed = PatchEmbed2D(patch_size=cfg.patch_size, in_channels=cfg.in_channels,
                                      embed_dim=cfg.hidden_size)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(
                cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim, dropout=cfg.dropout,
                cross_attention_dim=cfg.cross_attention_dim, activation_fn=cfg.activation_fn,
                attention_bias=cfg.attention_bias, only_cross_attention=cfg.only_cross_attention,
                double_self_attention=cfg.double_self_attention, upcast_attention=cfg.upcast_attention,
                norm_elementwise_affine=cfg.norm_elementwise_affine, norm_eps=cfg.norm_eps,
                interpolation_scale_thw=interpolation_scale_thw,
                # blocks 0, 1 and >= 30 are dense: hard-coded indices, not relative to num_layers
                sparse1d=cfg.sparse1d if 1 < i < 30 else False,
                sparse_n=cfg.sparse_n,
                sparse_group=i % 2 == 1,
            )
            for i in range(cfg.num_layers)
        ])
        self.norm_out = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, cfg.hidden_size) / cfg.hidden_size ** 0.5)
        self.proj_out = nn.Linear(cfg.hidden_size, cfg.patch_size_t * cfg.patch_size * cfg.patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(cfg.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        """The parameter dtype (that of the first parameter, like diffusers' ModelMixin)."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, hidden_states: torch.Tensor, timestep: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """hidden_states (B, C, T, H, W); timestep (B,); encoder_hidden_states (B, 1, L, Dc);
        attention_mask (B, T, H, W) 1 = valid; encoder_attention_mask (B, 1, L) 1 = valid.
        Extra keyword arguments (e.g. the pipeline's ``pooled_projections``) are ignored."""
        cfg = self.config
        batch_size, _, frame, _, _ = hidden_states.shape
        if attention_mask is None or encoder_attention_mask is None:
            raise ValueError("OpenSoraT2V_v1_3 needs attention_mask (B, T, H, W) and encoder_attention_mask "
                             "(B, 1, L); upstream cannot run without them")

        # (a) masks -> additive biases in the model dtype
        if attention_mask.ndim == 4:
            # video mask (B, T, H, W): a patch is valid if any of its latent pixels is valid
            attention_mask = attention_mask.to(self.dtype).unsqueeze(1)  # (B, 1, T, H, W)
            kernel = (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
            attention_mask = F.max_pool3d(attention_mask, kernel_size=kernel, stride=kernel)
            attention_mask = attention_mask.reshape(attention_mask.shape[0], 1, -1)  # (B, 1, T'H'W')
            attention_mask = (1 - attention_mask.bool().to(self.dtype)) * MASK_BIAS
        if encoder_attention_mask.ndim == 3:
            # text mask (B, 1, L)
            encoder_attention_mask = (1 - encoder_attention_mask.to(self.dtype)) * MASK_BIAS

        # (b) patch grid
        frame = ((frame - 1) // cfg.patch_size_t + 1) if frame % 2 == 1 else frame // cfg.patch_size_t
        height, width = hidden_states.shape[-2] // cfg.patch_size, hidden_states.shape[-1] // cfg.patch_size

        # (c) embeddings
        hidden_states, encoder_hidden_states, timestep, embedded_timestep = self._operate_on_patched_inputs(
            hidden_states, encoder_hidden_states, timestep, batch_size, frame)

        # (d) sequence-first
        hidden_states = hidden_states.permute(1, 0, 2).contiguous()  # (S, B, D)
        encoder_hidden_states = encoder_hidden_states.permute(1, 0, 2).contiguous()  # (L, B, D)
        timestep = timestep.view(batch_size, 6, -1).transpose(0, 1).contiguous()  # (6, B, D)

        # (e) Skiparse masks for n in [1, 4] (looked up on the class at call time, like upstream)
        head_num = cfg.num_attention_heads
        sparse_mask = {}
        for sparse_n in PREPARED_SPARSE_N:
            sparse_mask[sparse_n] = Attention.prepare_sparse_mask(attention_mask, encoder_attention_mask, sparse_n,
                                                                  head_num)

        # (f) blocks
        for i, block in enumerate(self.transformer_blocks):
            processor = block.attn1.processor
            if 1 < i < 30:
                attention_mask, encoder_attention_mask = sparse_mask[processor.sparse_n][processor.sparse_group]
            else:
                attention_mask, encoder_attention_mask = sparse_mask[1][processor.sparse_group]
            hidden_states = block(hidden_states, attention_mask=attention_mask,
                                  encoder_hidden_states=encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask, timestep=timestep, frame=frame,
                                  height=height, width=width)

        # (j) output
        hidden_states = hidden_states.permute(1, 0, 2).contiguous()  # (B, S, D)
        output = self._get_output_for_patched_inputs(hidden_states=hidden_states, timestep=timestep,
                                                     embedded_timestep=embedded_timestep, num_frames=frame,
                                                     height=height, width=width)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def _operate_on_patched_inputs(self, hidden_states, encoder_hidden_states, timestep, batch_size, frame):
        """Patch embedding, timestep embedding and caption projection. Returns batch-first
        (tokens (B, S, D), text (B, L, D), timestep (B, 6D), embedded_timestep (B, D))."""
        hidden_states = self.pos_embed(hidden_states.to(self.dtype))
        added_cond_kwargs = {"resolution": None, "aspect_ratio": None}
        timestep, embedded_timestep = self.adaln_single(timestep, added_cond_kwargs, batch_size=batch_size,
                                                        hidden_dtype=self.dtype)
        encoder_hidden_states = self.caption_projection(encoder_hidden_states)  # (B, 1, L, D)
        if encoder_hidden_states.ndim != 4 or encoder_hidden_states.shape[1] != 1:
            raise ValueError(f"encoder_hidden_states must be (B, 1, L, {self.config.caption_channels}); after the "
                             f"caption projection got shape {tuple(encoder_hidden_states.shape)}")
        encoder_hidden_states = encoder_hidden_states.squeeze(1)  # (B, L, D)
        return hidden_states, encoder_hidden_states, timestep, embedded_timestep

    def _get_output_for_patched_inputs(self, hidden_states, timestep, embedded_timestep, num_frames, height, width):
        """Final modulation (shift first), projection and unpatchify to (B, C, T'·pt, H'·p, W'·p)."""
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        if hidden_states.numel() > STREAM_BLOCK_ELEMENTS and not torch.is_grad_enabled():
            # real sizes: token chunks (norm, modulation and projection are per token), small output only
            out = None
            for s0 in range(0, hidden_states.shape[1], STREAM_CHUNK_TOKENS):
                x = self.norm_out(hidden_states[:, s0:s0 + STREAM_CHUNK_TOKENS])
                x = self.proj_out(x * (1 + scale) + shift)
                if out is None:
                    out = x.new_empty(hidden_states.shape[0], hidden_states.shape[1], x.shape[-1])
                out[:, s0:s0 + STREAM_CHUNK_TOKENS] = x
            hidden_states = out
        else:
            hidden_states = self.norm_out(hidden_states)
            hidden_states = hidden_states * (1 + scale) + shift
            hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.squeeze(1)
        return self._unpatchify(hidden_states, num_frames, height, width)

    def _unpatchify(self, hidden_states, num_frames, height, width):
        """(B, T'·H'·W', pt·p·p·C) -> (B, C, T'·pt, H'·p, W'·p); features ordered (pt, ph, pw, C), C fastest:
        'n t h w o p q c -> n c (t o) (h p) (w q)'."""
        cfg = self.config
        pt, p, c = cfg.patch_size_t, cfg.patch_size, self.out_channels
        hidden_states = hidden_states.reshape(-1, num_frames, height, width, pt, p, p, c)
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden_states.reshape(-1, c, num_frames * pt, height * p, width * p)


def OpenSoraT2V_v1_3_2B_122(**kwargs) -> OpenSoraT2V_v1_3:
    """The released 2.7B architecture ("2B/122": patch t,h,w = 1,2,2); channels/sparsity come from kwargs."""
    kwargs.pop("skip_connection", None)
    return OpenSoraT2V_v1_3(num_layers=32, attention_head_dim=96, num_attention_heads=24, patch_size_t=1,
                            patch_size=2, caption_channels=4096, cross_attention_dim=2304,
                            activation_fn="gelu-approximate", **kwargs)


OpenSora_v1_3_models = {"OpenSoraT2V_v1_3-2B/122": OpenSoraT2V_v1_3_2B_122}
OpenSora_v1_3_models_class = {"OpenSoraT2V_v1_3-2B/122": OpenSoraT2V_v1_3, "OpenSoraT2V_v1_3": OpenSoraT2V_v1_3}
