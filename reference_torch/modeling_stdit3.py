# A from-scratch PyTorch implementation of Open-Sora 1.2's video DiT ``STDiT3`` (hpcaitech/Open-Sora, tag v1.2.0:
# opensora/models/stdit/stdit3.py and opensora/models/layers/blocks.py).
#
# Written from the project's fact sheet (docs: stdit_facts.md) and upstream's code read for facts. It keeps
# upstream's class, attribute and method names, so that
#   * an upstream checkpoint (``hpcai-tech/OpenSora-STDiT-v3`` model.safetensors) loads with a strict key match,
#     ``rope.freqs`` (a Parameter) and ``y_embedder.y_embedding`` (a persistent buffer) included, and
#   * probes described by module path / method name are captured identically on this model and on upstream's;
# and reproduces upstream's numerics operation for operation. Differences that do not change a value:
#   * no transformers / timm / einops / rotary_embedding_torch / xformers dependency: ``STDiT3Config`` is a plain
#     class with upstream's keys and defaults; timm's ``Mlp`` (fc1, act, drop1, norm, fc2, drop2),
#     rotary_embedding_torch 0.5.3's ``RotaryEmbedding`` (the parts STDiT3 uses) and xformers'
#     ``memory_efficient_attention`` with a ``BlockDiagonalMask`` are written out here;
#   * inference only: DropPath (identity in eval), caption token drop (training), gradient checkpointing and
#     sequence parallelism are not implemented (``enable_sequence_parallelism=True`` is refused);
#   * no lru_cache on the 2D position embedding and no frequency cache in the rotary embedding (both caches
#     return the values a fresh computation gives);
#   * ``enable_layernorm_kernel`` (apex FusedLayerNorm) builds ``nn.LayerNorm``: same eps, no affine, statistics
#     in float32 for half inputs — the same math;
#   * ``enable_flash_attn`` keeps upstream's switch (flash only when N > B) and runs ``flash_attn_func`` written
#     out: float32 softmax attention with one rounding to the input dtype (the GPU kernel accumulates in float32).
#     With the flag off (the CPU configuration) the manual path below is upstream's, rounding where it rounds.
#
# Layouts are upstream's: video latents (B, C, T, H, W) -> tokens (B, N, C), N = T·S, S = H·W, t-major then h, w.
"""PyTorch reference model ``STDiT3`` (Open-Sora 1.2, ``STDiT3-XL/2``, 1.21 B parameters).

Size: one modeling file per family, as upstream keeps it (stdit3.py + the blocks it uses).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------------------
# configuration (upstream: transformers.PretrainedConfig subclass; here a plain class, same keys and defaults)
# ----------------------------------------------------------------------------------------------------------
class STDiT3Config:
    model_type = "STDiT3"

    def __init__(self, input_size=(None, None, None), input_sq_size=512, in_channels=4, patch_size=(1, 2, 2),
                 hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True,
                 drop_path=0.0, caption_channels=4096, model_max_length=300, qk_norm=True, enable_flash_attn=False,
                 enable_layernorm_kernel=False, enable_sequence_parallelism=False, only_train_temporal=False,
                 freeze_y_embedder=False, skip_y_embedder=False, **kwargs):
        self.input_size = input_size
        self.input_sq_size = input_sq_size
        self.in_channels = in_channels
        self.patch_size = tuple(patch_size)
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.class_dropout_prob = class_dropout_prob
        self.pred_sigma = pred_sigma
        self.drop_path = drop_path
        self.caption_channels = caption_channels
        self.model_max_length = model_max_length
        self.qk_norm = qk_norm
        self.enable_flash_attn = enable_flash_attn
        self.enable_layernorm_kernel = enable_layernorm_kernel
        self.enable_sequence_parallelism = enable_sequence_parallelism
        self.only_train_temporal = only_train_temporal
        self.freeze_y_embedder = freeze_y_embedder
        self.skip_y_embedder = skip_y_embedder
        self.extra = dict(kwargs)  # informational keys of a HF config.json (architectures, torch_dtype, ...)

    @classmethod
    def from_any(cls, config) -> "STDiT3Config":
        """A config from an ``STDiT3Config``, a mapping of upstream's keys, or an object with ``to_dict()``."""
        if isinstance(config, cls):
            return config
        if not isinstance(config, Mapping) and hasattr(config, "to_dict"):
            config = config.to_dict()
        if not isinstance(config, Mapping):
            raise TypeError(f"STDiT3: expected a config mapping, got {type(config).__name__}")
        return cls(**dict(config))


# ----------------------------------------------------------------------------------------------------------
# opensora/models/layers/blocks.py: building blocks
# ----------------------------------------------------------------------------------------------------------
def approx_gelu():
    return nn.GELU(approximate="tanh")


class LlamaRMSNorm(nn.Module):
    """RMSNorm over the last dim, statistics in float32, weight applied after casting back (T5LayerNorm)."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def get_layernorm(hidden_size, eps: float, affine: bool, use_kernel: bool):
    # use_kernel (apex FusedLayerNorm): the same normalisation; plain nn.LayerNorm here (see the file header)
    return nn.LayerNorm(hidden_size, eps, elementwise_affine=affine)


def t2i_modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Mlp(nn.Module):
    """timm's ``Mlp`` as STDiT3 builds it: fc1 -> act -> drop1 -> norm (Identity) -> fc2 -> drop2."""

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


class PatchEmbed3D(nn.Module):
    """Video to patch embedding: zero-pad W, H, T (right/bottom/back) to the patch, Conv3d k = s = patch,
    ``flatten(2).transpose(1, 2)`` -> (B, N, C)."""

    def __init__(self, patch_size=(2, 4, 4), in_chans=3, embed_dim=96, norm_layer=None, flatten=True):
        super().__init__()
        if norm_layer is not None:
            raise ValueError("PatchEmbed3D: STDiT3 builds it without a norm layer")
        self.patch_size = patch_size
        self.flatten = flatten
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = None

    def forward(self, x):
        _, _, D, H, W = x.size()
        if W % self.patch_size[2] != 0:
            x = F.pad(x, (0, self.patch_size[2] - W % self.patch_size[2]))
        if H % self.patch_size[1] != 0:
            x = F.pad(x, (0, 0, 0, self.patch_size[1] - H % self.patch_size[1]))
        if D % self.patch_size[0] != 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.patch_size[0] - D % self.patch_size[0]))
        x = self.proj(x)  # (B C T H W)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # BCTHW -> BNC
        return x


# ---- attention -------------------------------------------------------------------------------------------
def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None):
    """flash-attn's ``flash_attn_func`` on (B, N, heads, d), written out: softmax attention in float32, the
    output rounded once to the input dtype."""
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
    attn = ((qf * scale) @ kf.transpose(-2, -1)).softmax(dim=-1)
    return (attn @ vf).transpose(1, 2).to(q.dtype)


class Attention(nn.Module):
    """Self-attention: qkv -> per-head RMSNorm (qk_norm) -> RoPE (temporal blocks) -> attention -> proj."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer=LlamaRMSNorm,
                 enable_flash_attn: bool = False, rope=None, qk_norm_legacy: bool = False) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError("dim should be divisible by num_heads")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.enable_flash_attn = enable_flash_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.qk_norm_legacy = qk_norm_legacy
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = False
        if rope is not None:
            self.rope = True
            self.rotary_emb = rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # upstream: "flash attn is not memory efficient for small sequences, this is empirical"
        enable_flash_attn = self.enable_flash_attn and (N > B)
        qkv = self.qkv(x)
        qkv = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, d)
        if self.qk_norm_legacy:  # v1.1 order (RoPE, then norm); STDiT3 builds qk_norm_legacy=False
            if self.rope:
                q = self.rotary_emb(q)
                k = self.rotary_emb(k)
            q, k = self.q_norm(q), self.k_norm(k)
        else:
            q, k = self.q_norm(q), self.k_norm(k)
            if self.rope:
                q = self.rotary_emb(q)
                k = self.rotary_emb(k)

        if enable_flash_attn:
            x = flash_attn_func(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3),
                                dropout_p=0.0, softmax_scale=self.scale)
        else:
            dtype = q.dtype
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.to(torch.float32)  # softmax in float32, probabilities cast back
            attn = attn.softmax(dim=-1)
            attn = attn.to(dtype)
            attn = self.attn_drop(attn)
            x = attn @ v
        if not enable_flash_attn:
            x = x.transpose(1, 2)
        x = x.reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class BlockDiagonalMask:
    """xformers' ``fmha.BlockDiagonalMask``: query block i (q_seqlen[i] rows) sees only key block i."""

    def __init__(self, q_seqlen, kv_seqlen):
        self.q_seqlen = [int(n) for n in q_seqlen]
        self.kv_seqlen = [int(n) for n in kv_seqlen]

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(q_seqlen, q_seqlen if kv_seqlen is None else kv_seqlen)


def memory_efficient_attention(query, key, value, attn_bias: Optional[BlockDiagonalMask] = None, p: float = 0.0):
    """xformers' ``memory_efficient_attention`` on packed (1, M, heads, d) tensors, written out: per block of
    ``attn_bias`` (all queries to all keys without one) softmax attention in float32 with the default scale
    d^-0.5 applied to the queries, the output rounded once to the query dtype (the GPU kernels accumulate in
    float32)."""
    if p != 0.0:
        raise ValueError("memory_efficient_attention: dropout is not supported (inference only)")
    scale = query.shape[-1] ** -0.5

    def attend(q, k, v):
        q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))  # (1, heads, M, d)
        attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return (attn @ v).transpose(1, 2)

    if attn_bias is None:
        out = attend(query, key, value)
    else:
        if sum(attn_bias.q_seqlen) != query.shape[1] or sum(attn_bias.kv_seqlen) != key.shape[1]:
            raise ValueError(f"memory_efficient_attention: block lengths {attn_bias.q_seqlen} / "
                             f"{attn_bias.kv_seqlen} do not cover {query.shape[1]} queries / {key.shape[1]} keys")
        pieces, q0, k0 = [], 0, 0
        for nq, nk in zip(attn_bias.q_seqlen, attn_bias.kv_seqlen):
            pieces.append(attend(query[:, q0:q0 + nq], key[:, k0:k0 + nk], value[:, k0:k0 + nk]))
            q0, k0 = q0 + nq, k0 + nk
        out = torch.cat(pieces, dim=1)
    return out.to(query.dtype).contiguous()


class MultiHeadCrossAttention(nn.Module):
    """Cross-attention of the video tokens to packed text: the batch is folded into the sequence, and the
    block-diagonal mask from ``y_lens`` keeps sample i's N queries on its own y_lens[i] text tokens."""

    def __init__(self, d_model, num_heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("d_model must be divisible by num_heads")
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
        kv = self.kv_linear(cond).view(1, -1, 2, self.num_heads, self.head_dim)
        k, v = kv.unbind(2)
        attn_bias = None
        if mask is not None:
            attn_bias = BlockDiagonalMask.from_seqlens([N] * B, mask)
        x = memory_efficient_attention(q, k, v, p=0.0, attn_bias=attn_bias)
        x = x.view(B, -1, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


# ---- final layer, embedders ------------------------------------------------------------------------------
class T2IFinalLayer(nn.Module):
    """PixArt's final layer: LayerNorm, modulation by ``scale_shift_table + t`` (per frame t or t0), Linear."""

    def __init__(self, hidden_size, num_patch, out_channels, d_t=None, d_s=None):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size ** 0.5)
        self.out_channels = out_channels
        self.d_t = d_t
        self.d_s = d_s

    def t_mask_select(self, x_mask, x, masked_x, T, S):
        # x, masked_x (B, T·S, C); x_mask (B, T) bool: frames where it is False take masked_x
        x = x.reshape(x.shape[0], T, S, x.shape[-1])
        masked_x = masked_x.reshape(masked_x.shape[0], T, S, masked_x.shape[-1])
        x = torch.where(x_mask[:, :, None, None], x, masked_x)
        return x.reshape(x.shape[0], T * S, x.shape[-1])

    def forward(self, x, t, x_mask=None, t0=None, T=None, S=None):
        if T is None:
            T = self.d_t
        if S is None:
            S = self.d_s
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        x = t2i_modulate(self.norm_final(x), shift, scale)
        if x_mask is not None:
            shift_zero, scale_zero = (self.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
            x_zero = t2i_modulate(self.norm_final(x), shift_zero, scale_zero)
            x = self.t_mask_select(x_mask, x, x_zero, T, S)
        x = self.linear(x)
        return x


class TimestepEmbedder(nn.Module):
    """Sinusoid of the (fractional) timestep, **cos first**, 256 channels, then Linear -> SiLU -> Linear."""

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
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
        freqs = freqs.to(device=t.device)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t, dtype):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        if t_freq.dtype != dtype:
            t_freq = t_freq.to(dtype)
        return self.mlp(t_freq)


class SizeEmbedder(TimestepEmbedder):
    """The fps embedder: the same sinusoid and MLP; a batch of ``b`` values is tiled (``repeat``) to ``bs``."""

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__(hidden_size=hidden_size, frequency_embedding_size=frequency_embedding_size)
        self.outdim = hidden_size

    def forward(self, s, bs):
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2:
            raise ValueError(f"SizeEmbedder: expected (b, d) sizes, got shape {tuple(s.shape)}")
        if s.shape[0] != bs:
            s = s.repeat(bs // s.shape[0], 1)
            if s.shape[0] != bs:
                raise ValueError(f"SizeEmbedder: {s.shape[0]} values cannot be tiled to batch {bs}")
        b, dims = s.shape[0], s.shape[1]
        s = s.reshape(b * dims)  # b d -> (b d)
        s_freq = self.timestep_embedding(s, self.frequency_embedding_size).to(self.dtype)
        s_emb = self.mlp(s_freq)
        return s_emb.reshape(b, dims * self.outdim)  # (b d) d2 -> b (d d2)

    @property
    def dtype(self):
        return next(self.parameters()).dtype


class CaptionEmbedder(nn.Module):
    """``y_proj`` (Mlp with tanh-GELU) of the T5 features; ``y_embedding`` is the learned null caption (CFG),
    a persistent buffer."""

    def __init__(self, in_channels, hidden_size, uncond_prob, act_layer=approx_gelu, token_num=120):
        super().__init__()
        self.y_proj = Mlp(in_features=in_channels, hidden_features=hidden_size, out_features=hidden_size,
                          act_layer=act_layer, drop=0)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels ** 0.5)
        self.uncond_prob = uncond_prob

    def forward(self, caption, train, force_drop_ids=None):
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            raise ValueError("CaptionEmbedder: caption token drop (training, CFG dropout) is not implemented")
        return self.y_proj(caption)


class PositionEmbedding2D(nn.Module):
    """2D sincos embedding recomputed per token grid: grid ``arange / scale · base_size / size``; the first half
    of the channels encodes the column (w) coordinate, the second the row (h) one, each half [sin, cos]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        if dim % 4 != 0:
            raise ValueError("dim must be divisible by 4")
        half_dim = dim // 2
        inv_freq = 1.0 / (10000 ** (torch.arange(0, half_dim, 2).float() / half_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _get_sin_cos_emb(self, t: torch.Tensor):
        out = torch.einsum("i,d->id", t, self.inv_freq)
        return torch.cat((torch.sin(out), torch.cos(out)), dim=-1)

    def _get_cached_emb(self, device, dtype, h: int, w: int, scale: float = 1.0, base_size: Optional[int] = None):
        grid_h = torch.arange(h, device=device) / scale
        grid_w = torch.arange(w, device=device) / scale
        if base_size is not None:
            grid_h *= base_size / h
            grid_w *= base_size / w
        grid_h, grid_w = torch.meshgrid(grid_w, grid_h, indexing="ij")  # here w goes first
        grid_h = grid_h.t().reshape(-1)  # the w coordinate of each token (row-major over (h, w))
        grid_w = grid_w.t().reshape(-1)  # its h coordinate
        emb_h = self._get_sin_cos_emb(grid_h)
        emb_w = self._get_sin_cos_emb(grid_w)
        return torch.concat([emb_h, emb_w], dim=-1).unsqueeze(0).to(dtype)

    def forward(self, x: torch.Tensor, h: int, w: int, scale: Optional[float] = 1.0,
                base_size: Optional[int] = None) -> torch.Tensor:
        return self._get_cached_emb(x.device, x.dtype, h, w, scale, base_size)


# ---- rotary embedding (rotary_embedding_torch 0.5.3, the parts STDiT3 uses) --------------------------------
def rotate_half(x):
    """Interleaved pairs (GPT-J style): (x0, x1), (x2, x3), ... -> (-x1, x0), (-x3, x2), ..."""
    x = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)  # ... (d r) -> ... d r
    x1, x2 = x.unbind(dim=-1)
    x = torch.stack((-x2, x1), dim=-1)
    return x.reshape(*x.shape[:-2], x.shape[-2] * 2)  # ... d r -> ... (d r)


def apply_rotary_emb(freqs, t, start_index=0, scale=1.0, seq_dim=-2):
    if t.ndim == 3:
        seq_len = t.shape[seq_dim]
        freqs = freqs[-seq_len:].to(t)
    rot_dim = freqs.shape[-1]
    end_index = start_index + rot_dim
    if rot_dim > t.shape[-1]:
        raise ValueError(f"feature dimension {t.shape[-1]} is not of sufficient size to rotate in all the "
                         f"positions {rot_dim}")
    t_left, t, t_right = t[..., :start_index], t[..., start_index:end_index], t[..., end_index:]
    t = (t * freqs.cos() * scale) + (rotate_half(t) * freqs.sin() * scale)
    return torch.cat((t_left, t, t_right), dim=-1)


class RotaryEmbedding(nn.Module):
    """``freqs_for="lang"`` rotary embedding: ``freqs = 1 / theta^(arange(0, dim, 2) / dim)`` as an ``nn.Parameter``
    (``rope.freqs`` in the checkpoint; cast with the model, so a bf16 model computes its angles in bf16);
    positions ``arange(seq_len)`` in the input's dtype along dim -2; each frequency repeated for its pair."""

    def __init__(self, dim, theta=10000, interpolate_factor=1.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)
        self.learned_freq = False
        self.default_seq_dim = -2
        if interpolate_factor < 1.0:
            raise ValueError("interpolate_factor must be >= 1")
        self.interpolate_factor = interpolate_factor

    def get_seq_pos(self, seq_len, device, dtype, offset=0):
        return (torch.arange(seq_len, device=device, dtype=dtype) + offset) / self.interpolate_factor

    def rotate_queries_or_keys(self, t, seq_dim=None, offset=0):
        seq_dim = self.default_seq_dim if seq_dim is None else seq_dim
        device, dtype, seq_len = t.device, t.dtype, t.shape[seq_dim]
        freqs = self.forward(self.get_seq_pos(seq_len, device=device, dtype=dtype, offset=offset), seq_len=seq_len,
                             offset=offset)
        return apply_rotary_emb(freqs, t, seq_dim=seq_dim)

    def forward(self, t, seq_len=None, offset=0):
        freqs = self.freqs
        freqs = torch.einsum("..., f -> ... f", t.type(freqs.dtype), freqs)
        return freqs.repeat_interleave(2, dim=-1)  # ... n -> ... (n r), r = 2


# ----------------------------------------------------------------------------------------------------------
# opensora/models/stdit/stdit3.py
# ----------------------------------------------------------------------------------------------------------
class STDiT3Block(nn.Module):
    """One spatial (attention within a frame) or temporal (attention along time, with RoPE) block.

    forward(x (B, T·S, C), y (1, Σy_lens, C) packed text, t (B, 6C), mask = y_lens, x_mask (B, T) bool,
    t0 (B, 6C) the timestep-0 modulation, T, S): frames where x_mask is False are modulated with t0.
    """

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, drop_path=0.0, rope=None, qk_norm=False,
                 temporal=False, enable_flash_attn=False, enable_layernorm_kernel=False,
                 enable_sequence_parallelism=False):
        super().__init__()
        if enable_sequence_parallelism:
            raise ValueError("STDiT3Block: sequence parallelism is not supported by this reference")
        self.temporal = temporal
        self.hidden_size = hidden_size
        self.enable_flash_attn = enable_flash_attn
        self.enable_sequence_parallelism = enable_sequence_parallelism
        self.norm1 = get_layernorm(hidden_size, eps=1e-6, affine=False, use_kernel=enable_layernorm_kernel)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, qk_norm=qk_norm, rope=rope,
                              enable_flash_attn=enable_flash_attn)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.norm2 = get_layernorm(hidden_size, eps=1e-6, affine=False, use_kernel=enable_layernorm_kernel)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio), act_layer=approx_gelu,
                       drop=0)
        self.drop_path = nn.Identity()  # DropPath is the identity in eval
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size ** 0.5)

    def t_mask_select(self, x_mask, x, masked_x, T, S):
        # x, masked_x (B, T·S, C); x_mask (B, T) bool: frames where it is False take masked_x
        B, _, C = x.shape
        x = x.reshape(B, T, S, C)
        masked_x = masked_x.reshape(B, T, S, C)
        x = torch.where(x_mask[:, :, None, None], x, masked_x)
        return x.reshape(B, T * S, C)

    def forward(self, x, y, t, mask=None, x_mask=None, t0=None, T=None, S=None):
        B, N, C = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t.reshape(B, 6, -1)).chunk(6, dim=1)
        if x_mask is not None:
            shift_msa_zero, scale_msa_zero, gate_msa_zero, shift_mlp_zero, scale_mlp_zero, gate_mlp_zero = (
                self.scale_shift_table[None] + t0.reshape(B, 6, -1)).chunk(6, dim=1)

        # modulate (attention)
        x_m = t2i_modulate(self.norm1(x), shift_msa, scale_msa)
        if x_mask is not None:
            x_m_zero = t2i_modulate(self.norm1(x), shift_msa_zero, scale_msa_zero)
            x_m = self.t_mask_select(x_mask, x_m, x_m_zero, T, S)

        # attention: B (T S) C -> (B S) T C (temporal) or (B T) S C (spatial), and back
        if self.temporal:
            x_m = x_m.reshape(B, T, S, C).permute(0, 2, 1, 3).reshape(B * S, T, C)
            x_m = self.attn(x_m)
            x_m = x_m.reshape(B, S, T, C).permute(0, 2, 1, 3).reshape(B, T * S, C)
        else:
            x_m = x_m.reshape(B * T, S, C)
            x_m = self.attn(x_m)
            x_m = x_m.reshape(B, T * S, C)

        # modulate (attention)
        x_m_s = gate_msa * x_m
        if x_mask is not None:
            x_m_s_zero = gate_msa_zero * x_m
            x_m_s = self.t_mask_select(x_mask, x_m_s, x_m_s_zero, T, S)

        # residual
        x = x + self.drop_path(x_m_s)

        # cross attention
        x = x + self.cross_attn(x, y, mask)

        # modulate (MLP)
        x_m = t2i_modulate(self.norm2(x), shift_mlp, scale_mlp)
        if x_mask is not None:
            x_m_zero = t2i_modulate(self.norm2(x), shift_mlp_zero, scale_mlp_zero)
            x_m = self.t_mask_select(x_mask, x_m, x_m_zero, T, S)

        # MLP
        x_m = self.mlp(x_m)

        # modulate (MLP)
        x_m_s = gate_mlp * x_m
        if x_mask is not None:
            x_m_s_zero = gate_mlp_zero * x_m
            x_m_s = self.t_mask_select(x_mask, x_m_s, x_m_s_zero, T, S)

        # residual
        x = x + self.drop_path(x_m_s)
        return x


class STDiT3(nn.Module):
    """Open-Sora 1.2's STDiT3. ``forward(x, timestep, y, mask, x_mask, fps, height, width)`` -> (B, C_out, T, H, W)
    float32; ``height``/``width`` are the *pixel* size (element 0 is read)."""

    def __init__(self, config):
        super().__init__()
        config = STDiT3Config.from_any(config)
        if config.enable_sequence_parallelism:
            raise ValueError("STDiT3: enable_sequence_parallelism=True is not supported by this reference")
        if config.skip_y_embedder:
            raise ValueError("STDiT3: skip_y_embedder=True (pre-embedded, packed text) is not supported")
        self.config = config
        self.pred_sigma = config.pred_sigma
        self.in_channels = config.in_channels
        self.out_channels = config.in_channels * 2 if config.pred_sigma else config.in_channels

        # model size related
        self.depth = config.depth
        self.mlp_ratio = config.mlp_ratio
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_heads

        # computation related
        self.drop_path = config.drop_path
        self.enable_flash_attn = config.enable_flash_attn
        self.enable_layernorm_kernel = config.enable_layernorm_kernel
        self.enable_sequence_parallelism = config.enable_sequence_parallelism

        # input size related
        self.patch_size = config.patch_size
        self.input_sq_size = config.input_sq_size
        self.pos_embed = PositionEmbedding2D(config.hidden_size)
        self.rope = RotaryEmbedding(dim=self.hidden_size // self.num_heads)

        # embedding
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, config.hidden_size)
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.fps_embedder = SizeEmbedder(self.hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden_size, 6 * config.hidden_size, bias=True))
        self.y_embedder = CaptionEmbedder(in_channels=config.caption_channels, hidden_size=config.hidden_size,
                                          uncond_prob=config.class_dropout_prob, act_layer=approx_gelu,
                                          token_num=config.model_max_length)

        block_kwargs = dict(hidden_size=config.hidden_size, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                            qk_norm=config.qk_norm, enable_flash_attn=config.enable_flash_attn,
                            enable_layernorm_kernel=config.enable_layernorm_kernel,
                            enable_sequence_parallelism=config.enable_sequence_parallelism)
        # spatial blocks
        self.spatial_blocks = nn.ModuleList([STDiT3Block(**block_kwargs) for _ in range(config.depth)])
        # temporal blocks (the RoPE frequencies are shared: each gets the bound method)
        self.temporal_blocks = nn.ModuleList([
            STDiT3Block(**block_kwargs, temporal=True, rope=self.rope.rotate_queries_or_keys)
            for _ in range(config.depth)])

        # final layer
        self.final_layer = T2IFinalLayer(config.hidden_size, int(np.prod(self.patch_size)), self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """Upstream's init (xavier-uniform Linears, zero biases, zeroed fps/temporal output layers)."""
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        nn.init.normal_(self.fps_embedder.mlp[0].weight, std=0.02)
        nn.init.constant_(self.fps_embedder.mlp[0].bias, 0)
        nn.init.constant_(self.fps_embedder.mlp[2].weight, 0)
        nn.init.constant_(self.fps_embedder.mlp[2].bias, 0)
        for block in self.temporal_blocks:
            nn.init.constant_(block.attn.proj.weight, 0)
            nn.init.constant_(block.cross_attn.proj.weight, 0)
            nn.init.constant_(block.mlp.fc2.weight, 0)

    @property
    def dtype(self):
        return self.x_embedder.proj.weight.dtype

    def get_dynamic_size(self, x):
        _, _, T, H, W = x.size()
        if T % self.patch_size[0] != 0:
            T += self.patch_size[0] - T % self.patch_size[0]
        if H % self.patch_size[1] != 0:
            H += self.patch_size[1] - H % self.patch_size[1]
        if W % self.patch_size[2] != 0:
            W += self.patch_size[2] - W % self.patch_size[2]
        return T // self.patch_size[0], H // self.patch_size[1], W // self.patch_size[2]

    def encode_text(self, y, mask=None):
        """-> packed text (1, Σy_lens, C) of the valid tokens of every sample, and ``y_lens`` (a list)."""
        y = self.y_embedder(y, self.training)  # [B, 1, N_token, C]
        if mask is not None:
            if mask.shape[0] != y.shape[0]:
                mask = mask.repeat(y.shape[0] // mask.shape[0], 1)
            mask = mask.squeeze(1).squeeze(1)
            y = y.squeeze(1).masked_select(mask.unsqueeze(-1) != 0).view(1, -1, self.hidden_size)
            y_lens = mask.sum(dim=1).tolist()
        else:
            y_lens = [y.shape[2]] * y.shape[0]
            y = y.squeeze(1).view(1, -1, self.hidden_size)
        return y, y_lens

    def forward(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, **kwargs):
        dtype = self.x_embedder.proj.weight.dtype
        B = x.size(0)
        x = x.to(dtype)
        timestep = timestep.to(dtype)
        y = y.to(dtype)

        # === get pos embed ===
        _, _, Tx, Hx, Wx = x.size()
        T, H, W = self.get_dynamic_size(x)
        S = H * W
        base_size = round(S ** 0.5)
        resolution_sq = (height[0].item() * width[0].item()) ** 0.5
        scale = resolution_sq / self.input_sq_size
        pos_emb = self.pos_embed(x, H, W, scale=scale, base_size=base_size)

        # === get timestep embed ===
        t = self.t_embedder(timestep, dtype=x.dtype)  # [B, C]
        fps = self.fps_embedder(fps.unsqueeze(1), B)
        t = t + fps
        t_mlp = self.t_block(t)
        t0 = t0_mlp = None
        if x_mask is not None:
            t0_timestep = torch.zeros_like(timestep)
            t0 = self.t_embedder(t0_timestep, dtype=x.dtype)
            t0 = t0 + fps
            t0_mlp = self.t_block(t0)

        # === get y embed ===
        y, y_lens = self.encode_text(y, mask)

        # === get x embed ===
        x = self.x_embedder(x)  # [B, N, C]
        x = x.reshape(B, T, S, x.shape[-1])  # B (T S) C -> B T S C
        x = x + pos_emb
        x = x.reshape(B, T * S, x.shape[-1])  # B T S C -> B (T S) C

        # === blocks ===
        for spatial_block, temporal_block in zip(self.spatial_blocks, self.temporal_blocks):
            x = spatial_block(x, y, t_mlp, y_lens, x_mask, t0_mlp, T, S)
            x = temporal_block(x, y, t_mlp, y_lens, x_mask, t0_mlp, T, S)

        # === final layer ===
        x = self.final_layer(x, t, x_mask, t0, T, S)
        x = self.unpatchify(x, T, H, W, Tx, Hx, Wx)

        # cast to float32 for better accuracy
        return x.to(torch.float32)

    def unpatchify(self, x, N_t, N_h, N_w, R_t, R_h, R_w):
        """(B, N, T_p·H_p·W_p·C_out) -> (B, C_out, T, H, W), cropped back to the unpadded input size."""
        T_p, H_p, W_p = self.patch_size
        B = x.shape[0]
        # B (N_t N_h N_w) (T_p H_p W_p C_out) -> B C_out (N_t T_p) (N_h H_p) (N_w W_p)
        x = x.reshape(B, N_t, N_h, N_w, T_p, H_p, W_p, self.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.reshape(B, self.out_channels, N_t * T_p, N_h * H_p, N_w * W_p)
        return x[:, :, :R_t, :R_h, :R_w]


def STDiT3_XL_2(**kwargs):
    """Upstream's ``STDiT3-XL/2`` (without ``from_pretrained``): depth 28, hidden 1152, 16 heads, patch (1, 2, 2)."""
    return STDiT3(STDiT3Config(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16, **kwargs))
