"""Open-Sora-Plan v1.3 ``OpenSoraT2V_v1_3`` in MindSpore 2.x (PyNative), module for module the upstream model.

Classes, attributes, methods and parameter names are upstream's (``opensora/models/diffusion/opensora_v1_3`` plus
the diffusers 0.30.2 building blocks it uses), so ``parameters_and_names()`` equals torch's ``state_dict()`` keys
and upstream checkpoints load by name. The file reads top to bottom like upstream: building blocks, patch embedding
and RoPE, attention, the transformer block, the model. Construct with upstream's config keywords
(``OpenSoraT2V_v1_3(**config)``) or ``OpenSoraT2V_v1_3.from_config(config_dict)``.

Deliberate layout choices of this port (the parity harness's probe map translates them):

* hidden states between blocks are **batch-first** ``(B, S, D)`` (upstream: sequence-first ``(S, B, D)``); text
  is ``(B, L, D)``; blocks take the timestep modulation as ``(B, 6·D)`` and view it as ``(B, 6, D)``; Skiparse
  regrouping is the same permutation expressed batch-first (sub-batch order stays k-major: index ``k·B + b``);
* ``Attention.prepare_sparse_mask`` returns the additive biases **without** repeating them over heads:
  ``(n·B, 1, 1, len)``; they broadcast over heads and queries in the attention seam.

Device-dependent operations go through two seams: attention through ``ms_impl.attention.attention`` (portable /
Ascend flash-attention / emulated kernel), and a handful of kernels through ``self.kernels`` (``ms_impl.kernels``:
Linear, GELU, SiLU, the patch convolution, and ``expand_as`` for a small operand about to broadcast). Memory
machinery for real sizes (token streaming, feed-forward chunks) lives in ``ms_impl.streaming``, switched on by the
caller.

Precision: parameters and activations are held in the model dtype (bfloat16 for bf16, also when emulated on CPU,
see ``ms_impl.precision``), so the elementwise math below materialises in that dtype exactly as upstream's does.
Constant tables are computed on the host in numpy (``ms_impl.tables``: MindSpore's CPU fp32 ``exp`` is ~5e-6
relative off, which would put ~1e-3 into the timestep sinusoid at t=999); RoPE angles come from integer positions
(fp32 angle, rounded to the model dtype as upstream does, then cos/sin in float64 rounded once).

Seams that ``ms_impl.mutants`` swap on a built model (there are no test flags in this file): the FFN's
``GELU.approximate``, ``LayerNorm.eps``, ``OpenSoraAttnProcessor.rope`` (``RoPE3D.rotate_half``/``get_cos_sin``),
the processor's ``sparse_group``, ``Timesteps.flip_sin_to_cos`` and ``Attention.processor``.

Size: one modeling file per family, as upstream and diffusers keep it, so a block's math is found where
upstream's is.
"""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace
from typing import Any, Mapping

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, Uniform, initializer

from ms_impl import attention as attention_seam
from ms_impl.kernels import UsesKernels
from ms_impl.precision import round_table
from ms_impl.tables import rope_inv_freq, timestep_frequencies

MASK_BIAS = -10000.0        # additive bias of a masked video patch / text token
SPARSE_PAD_BIAS = -9980.0   # additive bias of a Skiparse padding token


class Cell(UsesKernels, nn.Cell):
    """Base of every cell here: ``self.kernels`` is the device's kernel policy (``ms_impl.kernels``)."""


def mask_to_bias(mask, dtype):
    """``(1 - mask.to(dtype)) * -10000.0`` with every step rounded to ``dtype`` as upstream's ops round it, evaluated
    in float32 (MindSpore's CPU backend has no bf16 reversed subtraction)."""
    def rounded(x):
        return x.astype(dtype).astype(ms.float32)
    return (rounded(1 - rounded(mask)) * MASK_BIAS).astype(dtype)


def zero_pad_tokens(x, length):
    """``x`` (B, S, D) with zero rows appended up to ``length`` tokens (upstream's ``F.pad``; concatenated: the CPU
    backend has no bf16 pad)."""
    b, s, d = x.shape
    return x if length == s else ops.cat((x, ops.zeros((b, length - s, d), x.dtype)), axis=1)


# ================================================================================================================
# diffusers building blocks
# ================================================================================================================
class Linear(Cell):
    """torch ``nn.Linear``: weight (out, in), bias (out); default init U(±1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(initializer(Uniform(bound), (out_features, in_features), ms.float32))
        self.bias = Parameter(initializer(Uniform(bound), (out_features,), ms.float32)) if bias else None

    def construct(self, x):
        return self.kernels.linear(x, self.weight, self.bias)


class LayerNorm(Cell):
    """torch ``nn.LayerNorm(dim, eps, elementwise_affine=False)``: no parameters, float32 statistics (like torch on
    CPU for every dtype), the output in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = False):
        super().__init__()
        if elementwise_affine:
            raise ValueError("LayerNorm: elementwise_affine=True is not part of OpenSoraT2V v1.3")
        self.dim, self.eps = dim, eps
        # one primitive (per eps) and one pair of unit gamma/zero beta per cell, not per call: a primitive made per
        # call leaves a little in MindSpore's memory pool each time (token-streamed blocks call a norm per chunk)
        self._layer_norm, self._layer_norm_eps = None, None
        self._gamma = Tensor(np.ones((dim,), np.float32))
        self._beta = Tensor(np.zeros((dim,), np.float32))

    def construct(self, x):
        if self._layer_norm_eps != self.eps:
            self._layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=self.eps)
            self._layer_norm_eps = self.eps
        return self._layer_norm(x.astype(ms.float32), self._gamma, self._beta)[0].astype(x.dtype)


class Dropout(UsesKernels, nn.Dropout):
    """torch ``nn.Dropout(p)``: the identity in eval mode; in training through the kernel policy (bf16 on CPU)."""

    def construct(self, x):
        if not self.training:
            return x
        return self.kernels.dropout(super().construct, x)


class GELU(Cell):
    """diffusers ``GELU``: ``proj`` Linear then GELU (``approximate`` "tanh" for ``gelu-approximate``)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def construct(self, hidden_states):
        hidden_states = self.proj(hidden_states)
        return self.kernels.gelu(hidden_states, approximate=self.approximate)


class FeedForward(Cell):
    """diffusers ``FeedForward`` for ``activation_fn="gelu-approximate"``: net = [GELU(proj), Dropout, Linear]."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "gelu-approximate", final_dropout: bool = False, inner_dim: int | None = None,
                 bias: bool = True):
        super().__init__()
        if activation_fn != "gelu-approximate":
            raise ValueError(f"FeedForward: activation_fn {activation_fn!r} is not used by OpenSoraT2V v1.3")
        inner_dim = inner_dim or int(dim * mult)
        dim_out = dim_out or dim
        layers = [GELU(dim, inner_dim, approximate="tanh", bias=bias), Dropout(p=dropout),
                  Linear(inner_dim, dim_out, bias=bias)]
        if final_dropout:
            layers.append(Dropout(p=dropout))
        self.net = nn.CellList(layers)

    def construct(self, hidden_states):
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class Timesteps(Cell):
    """diffusers ``Timesteps``: sinusoid of float32 timesteps; ``flip_sin_to_cos`` puts cos first."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1.0):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def construct(self, timesteps):
        freqs = Tensor(timestep_frequencies(self.num_channels // 2, self.downscale_freq_shift))
        emb = timesteps.astype(ms.float32)[:, None] * freqs[None, :]
        if self.scale != 1.0:
            emb = self.scale * emb
        emb = ops.cat((ops.sin(emb), ops.cos(emb)), -1)
        if self.flip_sin_to_cos:
            half = self.num_channels // 2
            emb = ops.cat((emb[:, half:], emb[:, :half]), -1)
        return emb


class TimestepEmbedding(Cell):
    """diffusers ``TimestepEmbedding``: linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim)
        self.linear_2 = Linear(time_embed_dim, time_embed_dim)

    def construct(self, sample):
        return self.linear_2(self.kernels.silu(self.linear_1(sample)))


class PixArtAlphaCombinedTimestepSizeEmbeddings(Cell):
    """diffusers class of the same name with ``use_additional_conditions=False`` (timestep only)."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)

    def construct(self, timestep, batch_size=None, hidden_dtype=None):
        timesteps_proj = self.time_proj(timestep)  # float32
        if hidden_dtype is not None:
            timesteps_proj = timesteps_proj.astype(hidden_dtype)
        return self.timestep_embedder(timesteps_proj)  # (B, D)


class AdaLayerNormSingle(Cell):
    """diffusers ``AdaLayerNormSingle`` (PixArt-α adaLN-single): (``linear(SiLU(emb))`` (B, 6D), emb (B, D))."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(embedding_dim)
        self.linear = Linear(embedding_dim, 6 * embedding_dim, bias=True)

    def construct(self, timestep, added_cond_kwargs=None, batch_size=None, hidden_dtype=None):
        embedded_timestep = self.emb(timestep, batch_size=batch_size, hidden_dtype=hidden_dtype)
        return self.linear(self.kernels.silu(embedded_timestep)), embedded_timestep


class PixArtAlphaTextProjection(Cell):
    """diffusers ``PixArtAlphaTextProjection``: linear_1 -> GELU(tanh) -> linear_2."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int | None = None):
        super().__init__()
        self.linear_1 = Linear(in_features, hidden_size, bias=True)
        self.linear_2 = Linear(hidden_size, out_features or hidden_size, bias=True)

    def construct(self, caption):
        return self.linear_2(self.kernels.gelu(self.linear_1(caption), approximate="tanh"))


# ================================================================================================================
# opensora/models/diffusion/common.py
# ================================================================================================================
class PatchEmbed2D(Cell):
    """Per-frame Conv2d patch embedding: (B, C, T, H, W) -> (B, T·H'·W', D), tokens t-major then h, w."""

    def __init__(self, patch_size: int = 16, in_channels: int = 3, embed_dim: int = 768, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_channels * patch_size * patch_size)
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, pad_mode="valid",
                              has_bias=bias, weight_init=Uniform(bound), bias_init=Uniform(bound))

    def construct(self, latent):
        b, c, t, h, w = latent.shape
        latent = latent.transpose(0, 2, 1, 3, 4).reshape(b * t, c, h, w)          # b c t h w -> (b t) c h w
        latent = self.kernels.conv2d(self.proj, latent)
        _, d, hp, wp = latent.shape
        return latent.reshape(b, t, d, hp, wp).transpose(0, 1, 3, 4, 2).reshape(b, t * hp * wp, d)  # b (t h w) c


class PositionGetter3D:
    """Integer (t, h, w) grid positions of the tokens, t-major (``torch.cartesian_prod`` order), cached per grid."""

    def __init__(self):
        self.cache_positions = {}

    def __call__(self, b, t, h, w):
        if (t, h, w) not in self.cache_positions:
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
            poses = (tt.ravel(), hh.ravel(), ww.ravel())                              # (S,) each
            self.cache_positions[t, h, w] = (poses, (t - 1, h - 1, w - 1))
        return self.cache_positions[t, h, w]


class RoPE3D(UsesKernels):
    """3D rotary embedding: head_dim split in thirds [t | h | w], rotate-half pairing inside each third.

    Tables are built on the host from integer positions: angle = fp32(pos / scale) · fp32 inv_freq (an fp32
    product, as torch's einsum gives), rounded to the activation dtype like upstream's ``.to(dtype)``, then cos/sin
    in float64 rounded once to the activation dtype. Cached per (D, seq_len, dtype) as upstream caches them
    (upstream's key ignores the interpolation scale; with the released scales of 1.0 that never matters).
    """

    def __init__(self, freq: float = 10000.0, F0: float = 1.0, interpolation_scale_thw=(1, 1, 1)):
        self.base = freq
        self.F0 = F0
        self.interpolation_scale_t, self.interpolation_scale_h, self.interpolation_scale_w = interpolation_scale_thw
        self.cache = {}

    def get_cos_sin(self, D, seq_len, dtype, interpolation_scale=1):
        if (D, seq_len, dtype) not in self.cache:
            inv_freq = rope_inv_freq(D, self.base)                                         # fp32 (D/2,)
            t = (np.arange(seq_len, dtype=np.float32) / np.float32(interpolation_scale)).astype(np.float32)
            freqs = round_table(np.outer(t, inv_freq).astype(np.float32), dtype)          # angle in the dtype
            freqs = np.concatenate((freqs, freqs), axis=-1).astype(np.float64)
            self.cache[D, seq_len, dtype] = (round_table(np.cos(freqs), dtype), round_table(np.sin(freqs), dtype))
        return self.cache[D, seq_len, dtype]

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return ops.cat((-x[..., half:], x[..., :half]), -1)

    def apply_rope1d(self, tokens, pos1d, cos, sin):
        """tokens (B, S, N, D3); pos1d (S,) int; cos/sin tables (L, D3) -> rows gathered per token (on the host)."""
        cos = Tensor(cos[pos1d][None, :, None, :]).astype(tokens.dtype)
        sin = Tensor(sin[pos1d][None, :, None, :]).astype(tokens.dtype)
        k = self.kernels
        return (tokens * k.expand_as(cos, tokens)) + (self.rotate_half(tokens) * k.expand_as(sin, tokens))

    def __call__(self, tokens, positions):
        """tokens (B, S, N, d) batch-first (upstream: (S, B, N, d)); positions from ``PositionGetter3D``."""
        if tokens.shape[3] % 3 != 0:
            raise ValueError("RoPE3D: number of dimensions should be a multiple of three")
        D = tokens.shape[3] // 3
        poses, max_poses = positions
        cos_t, sin_t = self.get_cos_sin(D, max_poses[0] + 1, tokens.dtype, self.interpolation_scale_t)
        cos_y, sin_y = self.get_cos_sin(D, max_poses[1] + 1, tokens.dtype, self.interpolation_scale_h)
        cos_x, sin_x = self.get_cos_sin(D, max_poses[2] + 1, tokens.dtype, self.interpolation_scale_w)
        # split features into three along the feature dimension, and apply rope1d on each third
        t, y, x = ops.chunk(tokens, 3, axis=-1)
        t = self.apply_rope1d(t, poses[0], cos_t, sin_t)
        y = self.apply_rope1d(y, poses[1], cos_y, sin_y)
        x = self.apply_rope1d(x, poses[2], cos_x, sin_x)
        return ops.cat((t, y, x), -1)


# ================================================================================================================
# opensora/models/diffusion/opensora_v1_3/modules.py
# ================================================================================================================
class Attention(Cell):
    """diffusers ``Attention`` as used by v1.3 (to_q/to_k/to_v, to_out = [Linear, Dropout]) with the v1.3 processor."""

    def __init__(self, interpolation_scale_thw, sparse1d, sparse_n, sparse_group, is_cross_attn, *, query_dim: int,
                 heads: int = 8, dim_head: int = 64, dropout: float = 0.0, bias: bool = False,
                 cross_attention_dim: int | None = None, upcast_attention: bool = False, out_bias: bool = True):
        super().__init__()
        self.inner_dim = dim_head * heads
        self.query_dim = query_dim
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.rescale_output_factor = 1.0
        self.upcast_attention = upcast_attention
        self.attention_backend = None   # None: the attention seam's module-level setting (set_attention_backend)
        self.to_q = Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_v = Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_out = nn.CellList([Linear(self.inner_dim, query_dim, bias=out_bias), Dropout(p=dropout)])
        self.processor = OpenSoraAttnProcessor(interpolation_scale_thw=interpolation_scale_thw, sparse1d=sparse1d,
                                               sparse_n=sparse_n, sparse_group=sparse_group,
                                               is_cross_attn=is_cross_attn)

    def construct(self, hidden_states, encoder_hidden_states=None, attention_mask=None, frame=8, height=16,
                  width=16):
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, frame=frame, height=height, width=width)

    @staticmethod
    def prepare_sparse_mask(attention_mask, encoder_attention_mask, sparse_n, head_num, pad_value=SPARSE_PAD_BIAS):
        """Skiparse biases for ratio ``sparse_n``: ``{False: (video, text), True: (video_group, text)}``.

        video (B, 1, S) is padded to a multiple of n² with ``pad_value`` (-9980, as the mask's dtype holds it) and
        regrouped single-skip ``b 1 1 (g k) -> (k b) 1 1 g`` or group-skip ``b 1 1 (n m k) -> (m b) 1 1 (n k)``;
        text (B, 1, L) is tiled k-major to (n·B, 1, 1, L). Unlike upstream, nothing is repeated over heads
        (``head_num`` is accepted for the upstream signature): all masks are (n·B, 1, 1, len).
        """
        attention_mask = attention_mask[:, None]                      # (B, 1, 1, S)
        encoder_attention_mask = encoder_attention_mask[:, None]      # (B, 1, 1, L)
        b, l = attention_mask.shape[0], attention_mask.shape[-1]
        block = sparse_n * sparse_n
        pad_len = 0 if l % block == 0 else block - l % block
        attention_mask_sparse = attention_mask
        if pad_len:
            padding = Tensor(np.full((b, 1, 1, pad_len), pad_value, np.float32)).astype(attention_mask.dtype)
            attention_mask_sparse = ops.cat((attention_mask, padding), -1)
        g = (l + pad_len) // sparse_n
        attention_mask_sparse_1d = (attention_mask_sparse.reshape(b, g, sparse_n).transpose(2, 0, 1)
                                    .reshape(sparse_n * b, 1, 1, g))
        n_outer = (l + pad_len) // block
        attention_mask_sparse_1d_group = (attention_mask_sparse.reshape(b, n_outer, sparse_n, sparse_n)
                                          .transpose(2, 0, 1, 3).reshape(sparse_n * b, 1, 1, g))
        encoder_attention_mask_sparse = ops.cat((encoder_attention_mask,) * sparse_n)  # k-major: index j·B + b
        return {
            False: (attention_mask_sparse_1d, encoder_attention_mask_sparse),
            True: (attention_mask_sparse_1d_group, encoder_attention_mask_sparse),
        }


class OpenSoraAttnProcessor:
    """v1.3 attention processor (upstream ``OpenSoraAttnProcessor2_0``): RoPE (self-attn), Skiparse, attention.

    Tensors are batch-first: x (B, S, D). Skiparse single-skip puts token i in sub-batch i % k, group-skip in
    sub-batch (i // k) % k; sub-batches are stacked k-major (index k·B + b) like upstream's ``(k b)``.
    """

    def __init__(self, interpolation_scale_thw=(1, 1, 1), sparse1d=False, sparse_n=2, sparse_group=False,
                 is_cross_attn=True):
        self.sparse1d = sparse1d
        self.sparse_n = sparse_n
        self.sparse_group = sparse_group
        self.is_cross_attn = is_cross_attn
        self.interpolation_scale_thw = interpolation_scale_thw
        self._init_rope(interpolation_scale_thw)

    def _init_rope(self, interpolation_scale_thw):
        self.rope = RoPE3D(interpolation_scale_thw=interpolation_scale_thw)
        self.position_getter = PositionGetter3D()

    def _sparse_1d(self, x, frame, height, width):
        """(B, S, D) -> (k·B, S_pad/k, D), zero-padding S to a multiple of k²."""
        b, l, d = x.shape
        if l != frame * height * width:
            raise ValueError(f"Skiparse: sequence length {l} != frame*height*width = {frame * height * width}")
        k = self.sparse_n
        pad_len = 0 if l % (k * k) == 0 else k * k - l % (k * k)
        x = zero_pad_tokens(x, l + pad_len)
        s = l + pad_len
        if not self.sparse_group:   # (g k) b d -> g (k b) d
            x = x.reshape(b, s // k, k, d).transpose(2, 0, 1, 3).reshape(k * b, s // k, d)
        else:                       # (n m k) b d -> (n k) (m b) d
            x = x.reshape(b, s // (k * k), k, k, d).transpose(2, 0, 1, 3, 4).reshape(k * b, s // k, d)
        return x, pad_len

    def _reverse_sparse_1d(self, x, frame, height, width, pad_len):
        """(k·B, S_pad/k, D) -> (B, S, D)."""
        k = self.sparse_n
        kb, g, d = x.shape
        b, s = kb // k, g * k
        if s != frame * height * width + pad_len:
            raise ValueError("Skiparse: regrouped length does not match frame*height*width + padding")
        if not self.sparse_group:   # g (k b) d -> (g k) b d
            x = x.reshape(k, b, g, d).transpose(1, 2, 0, 3).reshape(b, s, d)
        else:                       # (n k) (m b) d -> (n m k) b d
            x = x.reshape(k, b, s // (k * k), k, d).transpose(1, 2, 0, 3, 4).reshape(b, s, d)
        # (without padding the slice is the identity, and a full-size StridedSlice costs ~20 ms on CPU)
        return x[:, :frame * height * width] if pad_len else x

    def _sparse_1d_kv(self, x):
        """Text keys/values tiled to every sub-batch: (B, L, D) -> (k·B, L, D), k-major."""
        return ops.cat((x,) * self.sparse_n)

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 frame=8, height=16, width=16):
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        if not self.is_cross_attn:
            pos_thw = self.position_getter(batch_size, t=frame, h=height, w=width)
            query = self.rope(query.reshape(batch_size, -1, attn.heads, head_dim), pos_thw)
            key = self.rope(key.reshape(batch_size, -1, attn.heads, head_dim), pos_thw)
            query = query.reshape(batch_size, -1, inner_dim)
            key = key.reshape(batch_size, -1, inner_dim)

        if self.sparse1d:
            query, pad_len = self._sparse_1d(query, frame, height, width)
            if self.is_cross_attn:
                key = self._sparse_1d_kv(key)
                value = self._sparse_1d_kv(value)
            else:
                key, pad_len = self._sparse_1d(key, frame, height, width)
                value, pad_len = self._sparse_1d(value, frame, height, width)

        hidden_states = attention_seam.attention(query, key, value, attention_mask, heads=attn.heads,
                                                 scale=attn.scale, backend=attn.attention_backend)

        if self.sparse1d:
            hidden_states = self._reverse_sparse_1d(hidden_states, frame, height, width, pad_len)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


class BasicTransformerBlock(Cell):
    """v1.3 block: adaLN-single self-attn (RoPE, Skiparse), un-normalised cross-attn, adaLN-single FFN.

    ``hidden_states`` (B, S, D), ``timestep`` (B, 6·D) from ``adaln_single``; masks (n·B, 1, 1, len).
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout=0.0,
                 cross_attention_dim: int | None = None, activation_fn: str = "geglu", attention_bias: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = True, norm_eps: float = 1e-5,
                 final_dropout: bool = False, ff_inner_dim: int | None = None, ff_bias: bool = True,
                 attention_out_bias: bool = True, interpolation_scale_thw=(1, 1, 1), sparse1d: bool = False,
                 sparse_n: int = 2, sparse_group: bool = False):
        super().__init__()
        # 1. Self-Attn
        self.norm1 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = Attention(interpolation_scale_thw, sparse1d, sparse_n, sparse_group, False, query_dim=dim,
                               heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                               bias=attention_bias,
                               cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               upcast_attention=upcast_attention, out_bias=attention_out_bias)
        # 2. Cross-Attn (no norm, no modulation, no gate); norm2 belongs to the FFN
        self.norm2 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn2 = Attention(interpolation_scale_thw, sparse1d, sparse_n, sparse_group, True, query_dim=dim,
                               cross_attention_dim=cross_attention_dim if not double_self_attention else None,
                               heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                               bias=attention_bias, upcast_attention=upcast_attention, out_bias=attention_out_bias)
        # 3. Feed-forward
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)
        # 4. Scale-shift
        self.scale_shift_table = Parameter(initializer(Normal(sigma=dim ** -0.5), (6, dim), ms.float32))

    def construct(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                  timestep=None, frame=None, height=None, width=None):
        # 0. Self-Attention
        batch_size = hidden_states.shape[0]
        modulation = ops.chunk(self.scale_shift_table[None] + timestep.reshape(batch_size, 6, -1), 6, axis=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.kernels.expand_as(m, hidden_states) for m in modulation)   # (B, 1, D), broadcast over the tokens

        norm_hidden_states = self.norm1(hidden_states)
        norm_hidden_states = norm_hidden_states * (1 + scale_msa) + shift_msa
        attn_output = self.attn1(norm_hidden_states, encoder_hidden_states=None, attention_mask=attention_mask,
                                 frame=frame, height=height, width=width)
        attn_output = gate_msa * attn_output
        hidden_states = attn_output + hidden_states

        # 3. Cross-Attention
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


# ================================================================================================================
# opensora/models/diffusion/opensora_v1_3/modeling_opensora.py
# ================================================================================================================
class OpenSoraT2V_v1_3(Cell):
    """The v1.3 text-to-video DiT. ``construct`` returns ``(output,)`` like upstream's ``return_dict=False``.

    Construct with upstream's keyword names (``OpenSoraT2V_v1_3(num_layers=32, ...)``) or from an upstream
    ``config.json`` dict (``from_config``, unknown and EMA keys ignored). Settings the model cannot run are a
    ``ValueError`` up front.
    """

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int | None = None,
                 out_channels: int | None = None, num_layers: int = 1, dropout: float = 0.0,
                 cross_attention_dim: int | None = None, attention_bias: bool = True, sample_size_h: Any = None,
                 sample_size_w: Any = None, sample_size_t: Any = None, patch_size: int | None = None,
                 patch_size_t: int | None = None, activation_fn: str = "geglu", only_cross_attention: bool = False,
                 double_self_attention: bool = False, upcast_attention: bool = False,
                 norm_elementwise_affine: bool = False, norm_eps: float = 1e-6, caption_channels: int | None = None,
                 interpolation_scale_h: float = 1.0, interpolation_scale_w: float = 1.0,
                 interpolation_scale_t: float = 1.0, sparse1d: bool = False, sparse_n: int = 2):
        super().__init__()
        kwargs = dict(locals())
        self.config = SimpleNamespace(**{k: kwargs[k] for k in _config_names(type(self))})
        for key in ("in_channels", "patch_size", "patch_size_t", "caption_channels"):
            if kwargs[key] is None:
                raise ValueError(f"OpenSoraT2V_v1_3: {key} must be given (upstream's default None cannot run)")
        if num_layers > 2 and (sparse_n not in (1, 4) or (sparse_n != 1 and not sparse1d)):
            raise ValueError(f"OpenSoraT2V_v1_3: sparse_n={sparse_n!r} with sparse1d={sparse1d} cannot run: upstream "
                             f"prepares Skiparse masks only for sparse_n in (1, 4) and hands blocks 2..29 the "
                             f"sparse_n ones")
        self.out_channels = in_channels if out_channels is None else out_channels
        self.config.hidden_size = num_attention_heads * attention_head_dim
        self._init_patched_inputs()
        self.set_train(False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> "OpenSoraT2V_v1_3":
        """Build from an upstream-style config dict (keys that are not constructor arguments are ignored)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"OpenSoraT2V_v1_3.from_config: expected a config dict, got {type(config).__name__}")
        kwargs = {k: v for k, v in config.items() if k in _config_names(cls)}
        kwargs.update(overrides)
        return cls(**kwargs)

    def _init_patched_inputs(self):
        c = self.config
        c.sample_size = (c.sample_size_h, c.sample_size_w)
        interpolation_scale_thw = (c.interpolation_scale_t, c.interpolation_scale_h, c.interpolation_scale_w)
        self.caption_projection = PixArtAlphaTextProjection(in_features=c.caption_channels, hidden_size=c.hidden_size)
        self.pos_embed = PatchEmbed2D(patch_size=c.patch_size, in_channels=c.in_channels, embed_dim=c.hidden_size)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(
                c.hidden_size, c.num_attention_heads, c.attention_head_dim, dropout=c.dropout,
                cross_attention_dim=c.cross_attention_dim, activation_fn=c.activation_fn,
                attention_bias=c.attention_bias, only_cross_attention=c.only_cross_attention,
                double_self_attention=c.double_self_attention, upcast_attention=c.upcast_attention,
                norm_elementwise_affine=c.norm_elementwise_affine, norm_eps=c.norm_eps,
                interpolation_scale_thw=interpolation_scale_thw,
                sparse1d=c.sparse1d if i > 1 and i < 30 else False,
                sparse_n=c.sparse_n, sparse_group=i % 2 == 1)
            for i in range(c.num_layers)
        ])
        self.norm_out = LayerNorm(c.hidden_size, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = Parameter(initializer(Normal(sigma=c.hidden_size ** -0.5), (2, c.hidden_size),
                                                       ms.float32))
        self.proj_out = Linear(c.hidden_size, c.patch_size_t * c.patch_size * c.patch_size * self.out_channels)
        self.adaln_single = AdaLayerNormSingle(c.hidden_size)

    @property
    def dtype(self):
        """The parameter dtype (that of the first parameter, like diffusers' ModelMixin)."""
        return next(self.get_parameters()).dtype

    # ---- forward -----------------------------------------------------------------------------------------------
    def construct(self, hidden_states, timestep, encoder_hidden_states, attention_mask, encoder_attention_mask):
        c = self.config
        batch_size, _, frame, _, _ = hidden_states.shape
        if attention_mask is None or attention_mask.ndim != 4:
            raise ValueError("OpenSoraT2V_v1_3: attention_mask must be given as (B, T, H, W) with 1 = valid latent "
                             "pixel (upstream crashes without it)")
        if encoder_attention_mask is None or encoder_attention_mask.ndim != 3:
            raise ValueError("OpenSoraT2V_v1_3: encoder_attention_mask must be (B, 1, L) with 0/1 (upstream passes a "
                             "2-D mask through unconverted)")
        # masks -> additive biases in the model dtype: (1 = keep, 0 = discard) -> (keep = +0, discard = -10000.0);
        # a video patch is valid if any of its latent pixels is (max-pooled in float32: the values are the dtype's)
        attention_mask = attention_mask.astype(self.dtype).astype(ms.float32)[:, None]      # b 1 t h w
        kernel = (c.patch_size_t, c.patch_size, c.patch_size)
        attention_mask = ops.max_pool3d(attention_mask, kernel_size=kernel, stride=kernel)
        attention_mask = attention_mask.reshape(batch_size, 1, -1)                          # (b 1) 1 (t h w)
        attention_mask = mask_to_bias(attention_mask != 0, self.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, self.dtype)          # b 1 l

        # 1. Input
        frame = ((frame - 1) // c.patch_size_t + 1) if frame % 2 == 1 else frame // c.patch_size_t  # patchfy
        height, width = hidden_states.shape[-2] // c.patch_size, hidden_states.shape[-1] // c.patch_size
        hidden_states, encoder_hidden_states, timestep, embedded_timestep = self._operate_on_patched_inputs(
            hidden_states, encoder_hidden_states, timestep, batch_size, frame)

        sparse_mask = {}
        for sparse_n in [1, 4]:
            sparse_mask[sparse_n] = Attention.prepare_sparse_mask(attention_mask, encoder_attention_mask, sparse_n,
                                                                  c.num_attention_heads)
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

        # 3. Output
        output = self._get_output_for_patched_inputs(hidden_states=hidden_states, timestep=timestep,
                                                     embedded_timestep=embedded_timestep, num_frames=frame,
                                                     height=height, width=width)  # b c t h w
        return (output,)

    def _operate_on_patched_inputs(self, hidden_states, encoder_hidden_states, timestep, batch_size, frame):
        """-> hidden_states (B, S, D), encoder_hidden_states (B, L, D), timestep (B, 6D), embedded_timestep (B, D)."""
        hidden_states = self.pos_embed(hidden_states.astype(self.dtype))
        timestep, embedded_timestep = self.adaln_single(timestep, None, batch_size=batch_size,
                                                        hidden_dtype=self.dtype)  # b 6d, b d
        encoder_hidden_states = self.caption_projection(encoder_hidden_states)   # b 1 l d
        if encoder_hidden_states.ndim != 4 or encoder_hidden_states.shape[1] != 1:
            raise ValueError(f"OpenSoraT2V_v1_3: encoder_hidden_states must be (B, 1, L, C), got projected shape "
                             f"{tuple(encoder_hidden_states.shape)}")
        encoder_hidden_states = encoder_hidden_states[:, 0]                        # b 1 l d -> (b 1) l d
        return hidden_states, encoder_hidden_states, timestep, embedded_timestep

    def _get_output_for_patched_inputs(self, hidden_states, timestep, embedded_timestep, num_frames, height, width):
        modulation = ops.chunk(self.scale_shift_table[None] + embedded_timestep[:, None], 2, axis=1)
        shift, scale = (self.kernels.expand_as(m, hidden_states) for m in modulation)
        hidden_states = self.norm_out(hidden_states)
        # Modulation
        hidden_states = hidden_states * (1 + scale) + shift
        hidden_states = self.proj_out(hidden_states)
        return self._unpatchify(hidden_states, num_frames, height, width)

    def _unpatchify(self, hidden_states, num_frames, height, width):
        """(B, T'·H'·W', pt·p·p·C) -> (B, C, T'·pt, H'·p, W'·p): 'n t h w o p q c -> n c (t o) (h p) (w q)'."""
        c = self.config
        pt, p, ch = c.patch_size_t, c.patch_size, self.out_channels
        hidden_states = hidden_states.reshape(-1, num_frames, height, width, pt, p, p, ch)
        hidden_states = hidden_states.transpose(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden_states.reshape(-1, ch, num_frames * pt, height * p, width * p)


def _config_names(cls) -> list[str]:
    """The constructor's keyword names: upstream's config keys."""
    return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]


def OpenSoraT2V_v1_3_2B_122(**kwargs):
    """Upstream factory of the released 2B/122 model (kwargs complete the config, e.g. in_channels=8)."""
    kwargs.pop("skip_connection", None)
    return OpenSoraT2V_v1_3(num_layers=32, attention_head_dim=96, num_attention_heads=24, patch_size_t=1,
                            patch_size=2, caption_channels=4096, cross_attention_dim=2304,
                            activation_fn="gelu-approximate", **kwargs)
