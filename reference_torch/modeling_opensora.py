# A from-scratch PyTorch implementation of Open-Sora-Plan v1.3's video DiT ``OpenSoraT2V_v1_3``.
#
# It reproduces upstream's numerics (PKU-YuanGroup/Open-Sora-Plan, opensora/models/diffusion/opensora_v1_3 +
# common.py, with diffusers 0.30.2 building blocks) operation for operation, and uses upstream's class, attribute
# and method names so that
#   * upstream checkpoints load with a strict key match, and
#   * probes described by module path / method name are captured identically on this model and on upstream's.
# There is no diffusers or einops dependency: the diffusers pieces the model uses (AdaLayerNormSingle,
# PixArtAlphaTextProjection, FeedForward with a tanh GELU, the attention module) are written here.
#
# Layout conventions (as upstream):
#   video latents (B, C, T, H, W) -> tokens (B, S, D), S = T'·H'·W' in t-major, then h, then w order;
#   inside the blocks everything is sequence-first: hidden states (S, B, D), text (L, B, D), timestep (6, B, D).
#
# This file is the plain model. Memory machinery for real-size inputs (attention in query slices, the feed-forward
# in token chunks, token-streamed blocks) lives beside it in ``reference_torch.streaming`` and is switched on
# explicitly by whoever runs the model.
"""PyTorch reference model ``OpenSoraT2V_v1_3`` (Open-Sora-Plan v1.3, the 2.7B "2B/122" DiT).

Size: one modeling file per family, as upstream and diffusers keep it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


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
        latent = latent.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # b c t h w -> (b t) c h w
        latent = self.proj(latent)
        _, d, hp, wp = latent.shape
        return latent.reshape(b, t, d, hp, wp).permute(0, 1, 3, 4, 2).reshape(b, t * hp * wp, d)  # -> b (t h w) c


class PositionGetter3D:
    """Integer grid positions of the tokens: three (S, B) long tensors (t, h, w) plus their maxima."""

    def __init__(self):
        self.cache_positions: Dict[tuple, tuple] = {}

    def __call__(self, b: int, t: int, h: int, w: int, device: torch.device):
        if (b, t, h, w) not in self.cache_positions:
            pos_t = torch.arange(t, device=device).repeat_interleave(h * w)
            pos_h = torch.arange(h, device=device).repeat_interleave(w).repeat(t)
            pos_w = torch.arange(w, device=device).repeat(t * h)
            poses = tuple(p[:, None].expand(t * h * w, b).contiguous() for p in (pos_t, pos_h, pos_w))
            self.cache_positions[b, t, h, w] = (poses, (t - 1, h - 1, w - 1))
        return self.cache_positions[b, t, h, w]


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
        if (D, seq_len, device, dtype) not in self.cache:
            inv_freq = 1.0 / (self.base ** (torch.arange(0, D, 2).float().to(device) / D))
            t = torch.arange(seq_len, device=device, dtype=inv_freq.dtype) / interpolation_scale
            freqs = torch.outer(t, inv_freq).to(dtype)
            freqs = torch.cat((freqs, freqs), dim=-1)
            self.cache[D, seq_len, device, dtype] = (freqs.cos(), freqs.sin())
        return self.cache[D, seq_len, device, dtype]

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

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
        # split features into three along the feature dimension, and apply rope1d on each third
        t, y, x = tokens.chunk(3, dim=-1)
        t = self.apply_rope1d(t, poses[0], cos_t, sin_t)
        y = self.apply_rope1d(y, poses[1], cos_y, sin_y)
        x = self.apply_rope1d(x, poses[2], cos_x, sin_x)
        return torch.cat((t, y, x), dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Attention with Skiparse (upstream: opensora/models/diffusion/opensora_v1_3/modules.py)
# ----------------------------------------------------------------------------------------------------------


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

    def scaled_dot_product_attention(self, query, key, value, attn_mask):
        """``F.scaled_dot_product_attention`` (scale 1/√d, no dropout, not causal) on (B, N, S, d) tensors.

        Upstream restricts SDPA to the CUDA mem-efficient kernel (the float bias rules out flash), which has no
        CPU implementation; a CPU run of upstream uses the math backend, which is what runs here, on every device.
        (``reference_torch.streaming.SlicedOpenSoraAttnProcessor`` overrides this with query slices.)
        """
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0,
                                                  is_causal=False)

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
        hidden_states = self.scaled_dot_product_attention(query, key, value, attention_mask)
        # 'b h s d -> s b (h d)'
        b, n, s, d = hidden_states.shape
        hidden_states = hidden_states.permute(2, 0, 1, 3).reshape(s, b, n * d)

        if self.sparse1d:
            hidden_states = self._reverse_sparse_1d(hidden_states, frame, height, width, pad_len)

        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear proj
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
        padded = F.pad(attention_mask, (0, pad_len, 0, 0), value=-9980.0)
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
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


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
# Transformer block (upstream: opensora/models/diffusion/opensora_v1_3/modules.py)
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
        # 1. Self-Attn
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(
            query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
            bias=attention_bias, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
            upcast_attention=upcast_attention, out_bias=attention_out_bias,
            interpolation_scale_thw=interpolation_scale_thw, sparse1d=sparse1d, sparse_n=sparse_n,
            sparse_group=sparse_group, is_cross_attn=False)
        # 2. Cross-Attn (norm2 belongs to the feed-forward: cross-attention has no norm)
        self.norm2 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
        self.attn2 = Attention(
            query_dim=dim, cross_attention_dim=cross_attention_dim if not double_self_attention else None,
            heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout, bias=attention_bias,
            upcast_attention=upcast_attention, out_bias=attention_out_bias,
            interpolation_scale_thw=interpolation_scale_thw, sparse1d=sparse1d, sparse_n=sparse_n,
            sparse_group=sparse_group, is_cross_attn=True)
        # 3. Feed-forward
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)
        # 4. Scale-shift (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None, timestep: Optional[torch.Tensor] = None,
                frame: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None) -> torch.Tensor:
        # 0. Self-Attention
        batch_size = hidden_states.shape[1]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[:, None] + timestep.reshape(6, batch_size, -1)
        ).chunk(6, dim=0)

        norm_hidden_states = self.norm1(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_msa) + shift_msa
        attn_output = self.attn1(norm_hidden_states, encoder_hidden_states=None, attention_mask=attention_mask,
                                 frame=frame, height=height, width=width)
        attn_output = gate_msa * attn_output
        hidden_states = attn_output + hidden_states

        # 3. Cross-Attention (no norm, no modulation, no gate)
        attn_output = self.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=encoder_attention_mask, frame=frame, height=height, width=width)
        hidden_states = attn_output + hidden_states

        # 4. Feed-forward
        norm_hidden_states = self.norm2(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_mlp) + shift_mlp
        ff_output = self.ff(norm_hidden_states)
        ff_output = gate_mlp * ff_output
        hidden_states = ff_output + hidden_states
        return hidden_states


# ----------------------------------------------------------------------------------------------------------
# The model (upstream: opensora/models/diffusion/opensora_v1_3/modeling_opensora.py)
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


def check_config(config: SimpleNamespace) -> None:
    """ValueError for a config this model cannot run (upstream would fail later, or differently)."""
    missing = [k for k in ("in_channels", "patch_size", "patch_size_t", "caption_channels")
               if getattr(config, k) is None]
    if missing:
        raise ValueError(f"OpenSoraT2V_v1_3: {', '.join(missing)} must be given (upstream's default None cannot run)")
    # upstream prepares Skiparse masks only for sparse_n in [1, 4] and hands blocks 2..29 the sparse_n ones
    if config.num_layers > 2 and config.sparse_n not in (1, 4):
        raise ValueError(f"OpenSoraT2V_v1_3: sparse_n={config.sparse_n!r} is not supported: upstream prepares "
                         f"Skiparse masks only for sparse_n in (1, 4)")
    if config.num_layers > 2 and not config.sparse1d and config.sparse_n != 1:
        raise ValueError(f"OpenSoraT2V_v1_3: sparse1d=False with sparse_n={config.sparse_n} cannot run: upstream "
                         f"hands blocks 2..29 the sparse_n={config.sparse_n} Skiparse masks even when sparse1d is off")


class OpenSoraT2V_v1_3(nn.Module):
    """Open-Sora-Plan v1.3 text-to-video DiT (PixArt-style adaLN-single blocks, 3D RoPE, Skiparse attention).

    Construct with upstream's keyword names (``OpenSoraT2V_v1_3(num_layers=32, ...)``) or from an upstream
    ``config.json`` dict (``OpenSoraT2V_v1_3.from_config(config)``, unknown and EMA keys ignored). A setting the
    model cannot run (e.g. ``sparse_n`` other than 1 or 4) is a ``ValueError`` up front rather than a ``KeyError``
    in forward(). Inference only: no gradient checkpointing, no sequence parallelism.
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
        self.config = SimpleNamespace(**{k: kwargs[k] for k in inspect.signature(type(self).__init__).parameters
                                         if k != "self"})
        check_config(self.config)
        self.out_channels = in_channels if out_channels is None else out_channels
        self.config.hidden_size = num_attention_heads * attention_head_dim
        self.gradient_checkpointing = False
        self._init_patched_inputs()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> "OpenSoraT2V_v1_3":
        """Build from an upstream-style config dict; keys that are not constructor arguments (``_class_name``,
        EMA leftovers such as ``decay``) are ignored, as diffusers does."""
        if not isinstance(config, Mapping):
            raise TypeError(f"OpenSoraT2V_v1_3.from_config: expected a config dict, got {type(config).__name__}")
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        kwargs = {k: v for k, v in config.items() if k in names}
        kwargs.update(overrides)
        return cls(**kwargs)

    def _init_patched_inputs(self):
        cfg = self.config
        cfg.sample_size = (cfg.sample_size_h, cfg.sample_size_w)
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
        # masks -> additive biases in the model dtype: (1 = keep, 0 = discard) -> (keep = +0, discard = -10000.0)
        if attention_mask.ndim == 4:
            # video mask (B, T, H, W): a patch is valid if any of its latent pixels is valid
            attention_mask = attention_mask.to(self.dtype)
            attention_mask = attention_mask.unsqueeze(1)  # b 1 t h w
            kernel = (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
            attention_mask = F.max_pool3d(attention_mask, kernel_size=kernel, stride=kernel)
            attention_mask = attention_mask.reshape(attention_mask.shape[0], 1, -1)  # (b 1) 1 (t h w)
            attention_mask = (1 - attention_mask.bool().to(self.dtype)) * -10000.0
        if encoder_attention_mask.ndim == 3:
            # text mask (B, 1, L)
            encoder_attention_mask = (1 - encoder_attention_mask.to(self.dtype)) * -10000.0

        # 1. Input
        frame = ((frame - 1) // cfg.patch_size_t + 1) if frame % 2 == 1 else frame // cfg.patch_size_t  # patchfy
        height, width = hidden_states.shape[-2] // cfg.patch_size, hidden_states.shape[-1] // cfg.patch_size
        hidden_states, encoder_hidden_states, timestep, embedded_timestep = self._operate_on_patched_inputs(
            hidden_states, encoder_hidden_states, timestep, batch_size, frame)
        # to sequence-first: x (t·h·w, b, d), cond (l, b, d), timestep (6, b, d)
        hidden_states = hidden_states.permute(1, 0, 2).contiguous()
        encoder_hidden_states = encoder_hidden_states.permute(1, 0, 2).contiguous()
        timestep = timestep.view(batch_size, 6, -1).transpose(0, 1).contiguous()

        # Skiparse masks for sparse_n in [1, 4] (looked up on the class at call time, like upstream)
        head_num = cfg.num_attention_heads
        sparse_mask = {}
        for sparse_n in [1, 4]:
            sparse_mask[sparse_n] = Attention.prepare_sparse_mask(attention_mask, encoder_attention_mask, sparse_n,
                                                                  head_num)

        # 2. Blocks
        for i, block in enumerate(self.transformer_blocks):
            if i > 1 and i < 30:
                attention_mask, encoder_attention_mask = sparse_mask[block.attn1.processor.sparse_n][
                    block.attn1.processor.sparse_group]
            else:
                attention_mask, encoder_attention_mask = sparse_mask[1][block.attn1.processor.sparse_group]
            hidden_states = block(hidden_states, attention_mask=attention_mask,
                                  encoder_hidden_states=encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask, timestep=timestep, frame=frame,
                                  height=height, width=width)

        # to (b, t·h·w, d)
        hidden_states = hidden_states.permute(1, 0, 2).contiguous()

        # 3. Output
        output = self._get_output_for_patched_inputs(hidden_states=hidden_states, timestep=timestep,
                                                     embedded_timestep=embedded_timestep, num_frames=frame,
                                                     height=height, width=width)  # b c t h w
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
        encoder_hidden_states = self.caption_projection(encoder_hidden_states)  # b 1 l d
        if encoder_hidden_states.ndim != 4 or encoder_hidden_states.shape[1] != 1:
            raise ValueError(f"encoder_hidden_states must be (B, 1, L, {self.config.caption_channels}); after the "
                             f"caption projection got shape {tuple(encoder_hidden_states.shape)}")
        encoder_hidden_states = encoder_hidden_states.squeeze(1)  # b 1 l d -> (b 1) l d
        return hidden_states, encoder_hidden_states, timestep, embedded_timestep

    def _get_output_for_patched_inputs(self, hidden_states, timestep, embedded_timestep, num_frames, height, width):
        """Final modulation (shift first), projection and unpatchify to (B, C, T'·pt, H'·p, W'·p)."""
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        hidden_states = self.norm_out(hidden_states)
        # Modulation
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
