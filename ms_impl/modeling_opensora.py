"""Open-Sora-Plan v1.3 ``OpenSoraT2V_v1_3`` in MindSpore 2.x (PyNative), module for module the upstream model.

Classes, attributes, methods and parameter names are upstream's (``opensora/models/diffusion/opensora_v1_3`` plus
the diffusers 0.30.2 building blocks it uses), so ``parameters_and_names()`` equals torch's ``state_dict()`` keys
and upstream checkpoints load by name. The file reads top to bottom like upstream: building blocks, RoPE,
attention, the transformer block, the model. Configuration is ``OpenSoraConfig.from_dict`` of the upstream
``config.json``.

Deliberate layout choices of this port (the probe map's ``ms_adapter`` entries translate them):

* hidden states between blocks are **batch-first** ``(B, S, D)`` (upstream: sequence-first ``(S, B, D)``); text
  is ``(B, L, D)``; blocks take the timestep modulation as ``(B, 6·D)`` and view it as ``(B, 6, D)``; Skiparse
  regrouping is the same permutation expressed batch-first (sub-batch order stays k-major: index ``k·B + b``);
* ``Attention.prepare_sparse_mask`` returns the additive biases **without** repeating them over heads:
  ``(n·B, 1, 1, len)``; they broadcast over heads and queries in the attention seam.

Everything else keeps upstream's layout. Attention itself runs through ``ms_impl.attention.attention`` (the seam
choosing portable / Ascend flash-attention / emulated kernels).

Numerics: ``numerics(x)`` (see ``ms_impl.precision``) marks every point where PyTorch's model materialises a
tensor in the activation dtype; it is the identity for fp32/fp16 and rounds to bf16 under ``bf16-emulated``.
Constant tables are computed on the host in numpy (MindSpore's CPU fp32 ``exp`` is ~5e-6 relative off, which
would put ~1e-3 into the timestep sinusoid at t=999): the timestep frequencies and RoPE inverse frequencies
follow upstream's float32 operation chain step by step with exactly rounded fp32 ops (``timestep_frequencies``,
``rope_inv_freq``: bit-identical to torch's tables except where torch's own fp32 ``exp`` is one ULP off (2 of the
128 timestep frequencies), whereas one float64 evaluation rounded to fp32 differs from torch in 85 of 128), and RoPE
angles come from integer positions (fp32 angle, rounded to the activation dtype as upstream does, then cos/sin
in float64 rounded once). LayerNorm statistics are computed in float32 for every dtype (like torch on CPU).

Seams that ``ms_impl.mutants`` swap on a built model (there are no test flags in this file): the FFN's
``GELU.approximate``, ``LayerNorm.eps``, ``OpenSoraAttnProcessor.rope`` (``RoPE3D.rotate_half``/``get_cos_sin``),
the processor's ``sparse_group``, ``Timesteps.flip_sin_to_cos`` and ``Attention.processor``.
"""

from __future__ import annotations

import math
from typing import Mapping

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, Uniform, initializer

from ms_impl import attention as attention_seam
from ms_impl.precision import FP32, Numerics, numerics_for
from parity.errors import ParityError
from parity.families.opensora_v13.config import FIRST_DENSE_TAIL_BLOCK, FIRST_SPARSE_BLOCK, OpenSoraConfig
from parity.families.opensora_v13.probes import SPARSE_NS
from parity.families.opensora_v13.shapes import rope_positions, token_chunks
from parity.families.opensora_v13.tables import rope_inv_freq, timestep_frequencies

MASK_BIAS = -10000.0        # additive bias of a masked video patch / text token
# The feed-forward runs in token chunks once its inner activations (tokens · 4·D) would exceed this many elements
# (released width: 120 tokens x 9,216, half a streamed chunk: at the released size its temporaries are the
# largest in the chunk loop, and halved they leave MindSpore's pool 14 MB lower); below it (every committed
# fixture) it is one call, as upstream.
FFN_CHUNK_ELEMENTS = 120 * 9216
# Blocks whose hidden states hold more than this many elements (B·S·D; released size 21,120 x 2,304) run
# token-streamed with the portable attention backend (``BasicTransformerBlock._construct_streamed``): the same
# math holding only the residual stream (updated in place), the self-attention outputs of all tokens, one head
# group's keys and values, and one chunk of STREAM_CHUNK_TOKENS tokens. Below it (every committed fixture and test
# config) a block runs as upstream. Lower than torch's threshold: MindSpore's CPU memory pool keeps the
# high-water mark of an unstreamed block's temporaries (~17 hidden states at 6,144 x 1,152) for the whole run.
STREAM_BLOCK_ELEMENTS = 4 * 1024 * 1024
# 240 tokens (15 Skiparse units) divide the released 21,120 tokens: no odd-sized last chunk, whose temporaries
# split the pool's holes (measured: 8 MB lower peak than 256-token chunks at the released size).
STREAM_CHUNK_TOKENS = 240
# Streamed self-attention runs STREAM_GROUP_HEADS heads at a time (released 24 heads: 12 groups; a group's keys
# and values = 1/6 of a hidden state, numpy-backed, one set per block); streamed attention calls hold at most
# STREAM_ATTENTION_SCORES scores: 240 x 9,216, the size of a chunk's norm/modulation temporaries at the released
# width (4 x 240 tokens x 2,304), so that the pool's holes fit every large temporary. (1 Mi: 2x slower, and no
# lower at the peak: more calls, more fragmentation.)
STREAM_GROUP_HEADS = 2
STREAM_ATTENTION_SCORES = 240 * 9216
# Streamed self-attention builds a group's keys and values, then queries, STREAM_QUERY_CHUNKS token chunks at a
# time. Fewer, longer calls matter: every round of chunk temporaries can leave MindSpore's CPU pool a little more
# fragmented, and the pool never shrinks (measured: it creeps by ~0.01-0.02 GB per released-size block; more
# with 480- or 512-token chunks, whose smaller holes the feed-forward's temporaries then do not fit).
STREAM_QUERY_CHUNKS = 4
SPARSE_PAD_BIAS = -9980.0   # additive bias of a Skiparse padding token


class Cell(nn.Cell):
    """Base of every cell here: ``numerics`` is the model-wide precision (set by ``set_precision``)."""

    numerics: Numerics = FP32


# MindSpore's CPU kernels broadcast a binary op through per-element int64 offset tables: (B, S, D) * (B, 1, D)
# holds ~4 extra (B, S, D)-sized buffers, and the framework's memory pool keeps its high-water mark (at 21,120
# tokens that is +0.8 GB per op, +1.4 GB for a Linear's bias add). Broadcasting the small operand explicitly
# first costs one buffer; done with ``tile`` (``attention.tile_to``) it is also 10-25x faster than the implicit
# broadcast. Elementwise ops are exact per element, so the values are identical (tested); other devices keep
# the implicit broadcast. None: decide by the device target.
EXPLICIT_BROADCAST: bool | None = None


def explicit_broadcast() -> bool:
    if EXPLICIT_BROADCAST is None:
        return ms.get_context("device_target") == "CPU"
    return EXPLICIT_BROADCAST


def bcast(small, like):
    """``small`` broadcast to ``like``'s shape when ``explicit_broadcast()`` (else as it is)."""
    if not explicit_broadcast() or tuple(small.shape) == tuple(like.shape):
        return small
    return attention_seam.tile_to(small, like.shape)


def stream_buffer(shape, dtype):
    """A zero tensor for a long-lived buffer of the streamed paths (the residual stream, the self-attention
    outputs): on CPU backed by a numpy array, i.e. outside MindSpore's memory pool, which never returns memory
    to the OS. Chunks are written into it in place; freeing it returns its pages. Elsewhere ``ops.zeros``."""
    if ms.get_context("device_target") != "CPU":
        return ops.zeros(shape, dtype)
    return Tensor.from_numpy(np.zeros(shape, ms.dtype_to_nptype(dtype)))


def outside_pool(x):
    """``x`` copied to a ``stream_buffer``-like tensor outside MindSpore's pool on CPU (as it is elsewhere): for a
    tensor that stays alive while a loop of chunk temporaries runs around it in the pool, where it would split
    the holes the temporaries reuse."""
    if ms.get_context("device_target") != "CPU":
        return x
    return Tensor.from_numpy(np.array(x.asnumpy(), copy=True))


def zeros_to_none(bias):
    """None for an additive attention bias of zeros (nothing masked or padded), else ``bias``: adding zeros
    changes no score, and the streamed paths then hold one score-sized buffer less per attention call."""
    return None if bias is None or not np.any(bias.asnumpy()) else bias


def modulate(x, shift, scale, r):
    """``x * (1 + scale) + shift`` with each step materialised like torch does (adaLN-single modulation)."""
    y = r(x * bcast(r(1 + scale), x))
    return r(y + bcast(shift, y))


def gelu(x, approximate: str):
    if approximate == "tanh" and x.dtype == ms.float32 and ms.get_context("device_target") == "CPU":
        return gelu_tanh_sigmoid(x)
    return ops.gelu(x, approximate=approximate)


GELU_BETA, GELU_KAPPA = math.sqrt(2.0 / math.pi), 0.044715
# True: the sigmoid in float64 (within 1 fp32 ULP of torch's kernel, ~3x slower: a single-threaded fp64 kernel)
PRECISE_GELU = False
GELU_CHUNK_ELEMENTS = 8 * 1024 * 1024  # elements per call (PRECISE_GELU's float64 temporaries: 2 x 64 MiB)


def gelu_tanh_sigmoid(x):
    """tanh-GELU ``½x(1 + tanh u)`` as ``x·sigmoid(2u)`` (the same function), ``u = β(x + κx³)`` formed in float32
    as torch forms it (``2u`` as ``(2β)(x + κx³)``: scaling by 2 is exact). MindSpore's CPU ``gelu`` kernel is
    ~10x slower than these ops and its fp32 ``tanh`` is up to 1e-4 off; its fp32 ``sigmoid`` keeps this within
    6e-7 of torch's kernel (torch's own distance from float64: 4e-7), ``PRECISE_GELU`` (float64 sigmoid) within
    one fp32 ULP of |value| (4.8e-7)."""
    rows = x.reshape(-1, x.shape[-1])
    step = max(1, GELU_CHUNK_ELEMENTS // max(1, x.shape[-1]))
    if rows.shape[0] <= step:
        return _gelu_tanh_sigmoid_rows(x)
    out = ops.zeros(rows.shape, x.dtype)  # in row chunks: the temporaries stay small
    for r0 in range(0, rows.shape[0], step):
        out[r0:r0 + step] = _gelu_tanh_sigmoid_rows(rows[r0:r0 + step])
    return out.reshape(x.shape)


def _gelu_tanh_sigmoid_rows(x):
    two_u = (2 * GELU_BETA) * (x + GELU_KAPPA * (x * x * x))
    if not PRECISE_GELU:
        return x * ops.sigmoid(two_u)
    return x * ops.sigmoid(two_u.astype(ms.float64)).astype(ms.float32)


# ================================================================================================================
# diffusers building blocks
# ================================================================================================================
_linear_matmul = ops.MatMul(transpose_b=True)  # x (N, in) · weight (out, in)ᵀ, the weight as stored


class Linear(Cell):
    """torch ``nn.Linear``: weight (out, in), bias (out); default init U(±1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(initializer(Uniform(bound), (out_features, in_features), ms.float32))
        self.bias = Parameter(initializer(Uniform(bound), (out_features,), ms.float32)) if bias else None

    def construct(self, x):
        return self._dense(x, self.weight, self.bias)

    def rows(self, x, start, stop):
        """``construct(x)[..., start:stop]``, computing only those output features (bit-identical: each output
        feature is its own dot product over the same inputs)."""
        return self._dense(x, self.weight[start:stop], None if self.bias is None else self.bias[start:stop])

    def _dense(self, x, weight, bias):
        if explicit_broadcast() and x.dtype == ms.float32:
            # on CPU: a 2-D matmul against the weight as stored (transpose_b), + bias explicitly broadcast. The
            # same values as ops.dense from 16 rows on (closer to float64 below), at up to 2-4x its speed, and
            # without ops.dense's transposed copy of the weight in MindSpore's never-shrinking memory pool
            # (85 MB per call for a released FFN weight).
            y = _linear_matmul(x.reshape(-1, x.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[0])
            return self.numerics(y if bias is None else y + bcast(bias, y))
        if bias is not None and explicit_broadcast() and x.dtype == ms.float16:
            y = ops.dense(x, weight, None)  # + bias, explicitly broadcast: bit-identical to the fused call
            return self.numerics(y + bcast(bias, y))
        return self.numerics(ops.dense(x, weight, bias))


class LayerNorm(Cell):
    """torch ``nn.LayerNorm(dim, eps, elementwise_affine=False)``: no parameters, float32 statistics."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = False):
        super().__init__()
        if elementwise_affine:
            raise ParityError("LayerNorm: elementwise_affine=True is not part of OpenSoraT2V v1.3")
        self.dim, self.eps = dim, eps
        # one primitive (per eps) and one pair of unit gamma/zero beta per cell, not per call: a primitive made per
        # call leaves a little in MindSpore's memory pool each time (the streamed paths call a norm per token chunk)
        self._layer_norm, self._layer_norm_eps = None, None
        self._gamma = Tensor(np.ones((dim,), np.float32))
        self._beta = Tensor(np.zeros((dim,), np.float32))

    def construct(self, x):
        if self._layer_norm_eps != self.eps:
            self._layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=self.eps)
            self._layer_norm_eps = self.eps
        y = self._layer_norm(x.astype(ms.float32), self._gamma, self._beta)[0]
        return self.numerics(y.astype(x.dtype))


class GELU(Cell):
    """diffusers ``GELU``: ``proj`` Linear then GELU (``approximate`` "tanh" for ``gelu-approximate``)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def construct(self, hidden_states):
        return self.numerics(gelu(self.proj(hidden_states), self.approximate))


class FeedForward(Cell):
    """diffusers ``FeedForward`` for ``activation_fn="gelu-approximate"``: net = [GELU(proj), Dropout, Linear]."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "gelu-approximate", final_dropout: bool = False, inner_dim: int | None = None,
                 bias: bool = True):
        super().__init__()
        if activation_fn != "gelu-approximate":
            raise ParityError(f"FeedForward: activation_fn {activation_fn!r} is not used by OpenSoraT2V v1.3")
        inner_dim = inner_dim or int(dim * mult)
        dim_out = dim_out or dim
        layers = [GELU(dim, inner_dim, approximate="tanh", bias=bias), nn.Dropout(p=dropout),
                  Linear(inner_dim, dim_out, bias=bias)]
        if final_dropout:
            layers.append(nn.Dropout(p=dropout))
        self.net = nn.CellList(layers)

    def construct(self, hidden_states):
        inner = self.net[0].proj.out_features
        tokens = hidden_states.size // hidden_states.shape[-1]
        if tokens * inner <= FFN_CHUNK_ELEMENTS:
            for module in self.net:
                hidden_states = module(hidden_states)
            return hidden_states
        # token chunks (a memory bound at real sizes; every token's FFN is independent of the others)
        flat = hidden_states.reshape(tokens, hidden_states.shape[-1])
        step = max(32, FFN_CHUNK_ELEMENTS // inner)
        out = None
        for start in range(0, tokens, step):
            y = flat[start:start + step]
            for module in self.net:
                y = module(y)
            if out is None:
                out = ops.zeros((tokens, y.shape[-1]), y.dtype)
            out[start:start + step] = y
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


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
        return self.linear_2(self.numerics(ops.silu(self.linear_1(sample))))


class PixArtAlphaCombinedTimestepSizeEmbeddings(Cell):
    """diffusers class of the same name with ``use_additional_conditions=False`` (timestep only)."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)

    def construct(self, timestep, batch_size=None, hidden_dtype=None):
        timesteps_proj = self.time_proj(timestep)
        return self.timestep_embedder(self.numerics(timesteps_proj.astype(hidden_dtype or self.numerics.dtype)))


class AdaLayerNormSingle(Cell):
    """diffusers ``AdaLayerNormSingle`` (PixArt-α adaLN-single): (``linear(SiLU(emb))`` (B, 6D), emb (B, D))."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(embedding_dim)
        self.linear = Linear(embedding_dim, 6 * embedding_dim, bias=True)

    def construct(self, timestep, added_cond_kwargs=None, batch_size=None, hidden_dtype=None):
        embedded_timestep = self.emb(timestep, batch_size=batch_size, hidden_dtype=hidden_dtype)
        return self.linear(self.numerics(ops.silu(embedded_timestep))), embedded_timestep


class PixArtAlphaTextProjection(Cell):
    """diffusers ``PixArtAlphaTextProjection``: linear_1 -> GELU(tanh) -> linear_2."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int | None = None):
        super().__init__()
        self.linear_1 = Linear(in_features, hidden_size, bias=True)
        self.linear_2 = Linear(hidden_size, out_features or hidden_size, bias=True)

    def construct(self, caption):
        return self.linear_2(self.numerics(gelu(self.linear_1(caption), "tanh")))


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
        if ms.get_context("device_target") == "CPU":
            return self._construct_as_matmul(latent)
        b, c, t, h, w = latent.shape
        p = self.proj.stride[-1]
        if b * t * (h // p) * (w // p) * self.proj.out_channels > STREAM_BLOCK_ELEMENTS:
            return self._construct_per_frame(latent)
        latent = latent.transpose(0, 2, 1, 3, 4).reshape(b * t, c, h, w)          # b c t h w -> (b t) c h w
        latent = self.numerics(self.proj(latent))
        _, d, hp, wp = latent.shape
        return latent.reshape(b, t, d, hp, wp).transpose(0, 1, 3, 4, 2).reshape(b, t * hp * wp, d)

    def _construct_per_frame(self, latent):
        """``construct`` in bands of patch rows of one frame, into the token layout (real sizes: the
        convolution's output and its permuted copy exist for about STREAM_CHUNK_TOKENS tokens only; with
        stride = kernel every output patch is its own dot product, so the values are unchanged)."""
        b, _, t, h, w = latent.shape
        p = self.proj.stride[-1]
        hp, wp = h // p, w // p
        band = max(1, STREAM_CHUNK_TOKENS // wp)
        out = None
        for f in range(t):
            for r0 in range(0, hp, band):
                r1 = min(hp, r0 + band)
                x = self.numerics(self.proj(latent[:, :, f, r0 * p:r1 * p]))   # b D rows w'
                if out is None:
                    out = stream_buffer((b, t * hp * wp, x.shape[1]), x.dtype)
                start = (f * hp + r0) * wp
                out[:, start:start + (r1 - r0) * wp] = x.transpose(0, 2, 3, 1).reshape(b, (r1 - r0) * wp, -1)
        return out

    def _construct_as_matmul(self, latent):
        """The same stride-p convolution as one matmul over non-overlapping patches, flattened channels-last
        ``(p, q, c)``: this order reproduces torch's CPU conv bit for bit in fp32 (MindSpore's Conv2D kernel
        matches 40% of its outputs, and takes ~100-180 ms for the bench's 6x8x32x48 latent; the matmul ~5 ms)."""
        b, c, t, h, w = latent.shape
        p = self.proj.kernel_size[0]
        hp, wp = h // p, w // p
        latent = latent[..., :hp * p, :wp * p]                                    # "valid": drop a partial patch
        # b c t (hp p) (wp q) -> (b t hp wp) (p q c); the (D, C, p, q) weight -> (D, p q c)
        patches = latent.reshape(b, c, t, hp, p, wp, p).transpose(0, 2, 3, 5, 4, 6, 1).reshape(-1, p * p * c)
        weight = self.proj.weight.transpose(0, 2, 3, 1).reshape(self.proj.weight.shape[0], -1)
        rows = patches.shape[0]
        if rows * weight.shape[0] <= STREAM_BLOCK_ELEMENTS:
            return self._patch_rows(patches, weight).reshape(b, t * hp * wp, -1)
        # real sizes: bands of STREAM_CHUNK_TOKENS tokens, so the product and its biased copy stay small
        out = None
        for r0 in range(0, rows, STREAM_CHUNK_TOKENS):
            y = self._patch_rows(patches[r0:r0 + STREAM_CHUNK_TOKENS], weight)
            if out is None:
                out = stream_buffer((rows, weight.shape[0]), y.dtype)  # the residual stream: outside the pool
            out[r0:r0 + y.shape[0]] = y
        return out.reshape(b, t * hp * wp, -1)

    def _patch_rows(self, patches, weight):
        y = ops.dense(patches, weight, None)
        if self.proj.bias is not None:
            y = y + bcast(self.proj.bias, y)
        return self.numerics(y)


class PositionGetter3D:
    """Integer (t, h, w) grid positions of the tokens, t-major (``torch.cartesian_prod`` order), cached per grid."""

    def __init__(self):
        self.cache_positions = {}

    def __call__(self, b, t, h, w):
        if (t, h, w) not in self.cache_positions:
            pos = rope_positions(t, h, w)  # (S, 3) int
            poses = (pos[:, 0], pos[:, 1], pos[:, 2])
            self.cache_positions[t, h, w] = (poses, (t - 1, h - 1, w - 1))
        return self.cache_positions[t, h, w]


class RoPE3D:
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

    def get_cos_sin(self, D, seq_len, numerics, interpolation_scale=1):
        key = (D, seq_len, numerics.logical)
        if key not in self.cache:
            inv_freq = rope_inv_freq(D, self.base)                                         # fp32 (D/2,)
            t = (np.arange(seq_len, dtype=np.float32) / np.float32(interpolation_scale)).astype(np.float32)
            freqs = numerics.table(np.outer(t, inv_freq).astype(np.float32))               # angle in act dtype
            freqs = np.concatenate((freqs, freqs), axis=-1).astype(np.float64)
            self.cache[key] = (numerics.table(np.cos(freqs)), numerics.table(np.sin(freqs)))
        return self.cache[key]

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return ops.cat((-x[..., half:], x[..., :half]), -1)

    def apply_rope1d(self, tokens, pos1d, cos, sin, numerics):
        """tokens (B, S, N, D3); pos1d (S,) int; cos/sin tables (L, D3) -> rows gathered per token."""
        dtype = numerics.dtype
        cos = Tensor(cos[pos1d][None, :, None, :]).astype(dtype)
        sin = Tensor(sin[pos1d][None, :, None, :]).astype(dtype)
        r = numerics
        return r(r(tokens * bcast(cos, tokens)) + r(self.rotate_half(tokens) * bcast(sin, tokens)))

    def __call__(self, tokens, positions, numerics=FP32):
        """tokens (B, S, N, d) batch-first (upstream: (S, B, N, d)); positions from ``PositionGetter3D``."""
        if tokens.shape[3] % 3 != 0:
            raise ParityError("RoPE3D: number of dimensions should be a multiple of three")
        D = tokens.shape[3] // 3
        poses, max_poses = positions
        cos_t, sin_t = self.get_cos_sin(D, max_poses[0] + 1, numerics, self.interpolation_scale_t)
        cos_y, sin_y = self.get_cos_sin(D, max_poses[1] + 1, numerics, self.interpolation_scale_h)
        cos_x, sin_x = self.get_cos_sin(D, max_poses[2] + 1, numerics, self.interpolation_scale_w)
        t, y, x = ops.chunk(tokens, 3, axis=-1)
        t = self.apply_rope1d(t, poses[0], cos_t, sin_t, numerics)
        y = self.apply_rope1d(y, poses[1], cos_y, sin_y, numerics)
        x = self.apply_rope1d(x, poses[2], cos_x, sin_x, numerics)
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
        self.to_out = nn.CellList([Linear(self.inner_dim, query_dim, bias=out_bias), nn.Dropout(p=dropout)])
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

        video (B, 1, S) is padded to a multiple of n² with ``pad_value`` (-9980 as the activation dtype holds it)
        and regrouped single-skip ``b 1 1 (g k) -> (k b) 1 1 g`` or group-skip ``b 1 1 (n m k) -> (m b) 1 1 (n k)``;
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
            attention_mask_sparse = ops.pad(attention_mask, (0, pad_len), value=float(pad_value))
        g = (l + pad_len) // sparse_n
        attention_mask_sparse_1d = (attention_mask_sparse.reshape(b, g, sparse_n).transpose(2, 0, 1)
                                    .reshape(sparse_n * b, 1, 1, g))
        n_outer = (l + pad_len) // block
        attention_mask_sparse_1d_group = (attention_mask_sparse.reshape(b, n_outer, sparse_n, sparse_n)
                                          .transpose(2, 0, 1, 3).reshape(sparse_n * b, 1, 1, g))
        encoder_attention_mask_sparse = encoder_attention_mask.tile((sparse_n, 1, 1, 1))
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
            raise ParityError(f"Skiparse: sequence length {l} != frame*height*width = {frame * height * width}")
        k = self.sparse_n
        pad_len = 0 if l % (k * k) == 0 else k * k - l % (k * k)
        if pad_len:
            x = ops.pad(x, (0, 0, 0, pad_len))
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
            raise ParityError("Skiparse: regrouped length does not match frame*height*width + padding")
        if not self.sparse_group:   # g (k b) d -> (g k) b d
            x = x.reshape(k, b, g, d).transpose(1, 2, 0, 3).reshape(b, s, d)
        else:                       # (n k) (m b) d -> (n m k) b d
            x = x.reshape(k, b, s // (k * k), k, d).transpose(1, 2, 0, 3, 4).reshape(b, s, d)
        # (without padding the slice is the identity, and a full-size StridedSlice costs ~20 ms on CPU)
        return x[:, :frame * height * width] if pad_len else x

    def _sparse_1d_kv(self, x):
        """Text keys/values tiled to every sub-batch: (B, L, D) -> (k·B, L, D)."""
        return x.tile((self.sparse_n, 1, 1))

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 frame=8, height=16, width=16):
        r = attn.numerics
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
            query = self.rope(query.reshape(batch_size, -1, attn.heads, head_dim), pos_thw, r)
            key = self.rope(key.reshape(batch_size, -1, attn.heads, head_dim), pos_thw, r)
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

        hidden_states = r(attention_seam.attention(query, key, value, attention_mask, heads=attn.heads,
                                                   scale=attn.scale, backend=attn.attention_backend,
                                                   kernel_dtype=r.kernel_dtype))
        del query, key, value  # not needed any more: frees three states early at real token counts

        if self.sparse1d:
            hidden_states = self._reverse_sparse_1d(hidden_states, frame, height, width, pad_len)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if attn.rescale_output_factor != 1.0:
            hidden_states = r(hidden_states / attn.rescale_output_factor)
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
        if (hidden_states.size > STREAM_BLOCK_ELEMENTS
                and attention_seam.resolve_backend(self.attn1.attention_backend) == "portable"):
            return self._construct_streamed(hidden_states, attention_mask, encoder_hidden_states,
                                            encoder_attention_mask, timestep, frame, height, width)
        r = self.numerics
        batch_size = hidden_states.shape[0]
        modulation = r(self.scale_shift_table[None] + timestep.reshape(batch_size, 6, -1))   # (B, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.chunk(modulation, 6, axis=1)

        # 0. Self-Attention
        norm_hidden_states = modulate(self.norm1(hidden_states), shift_msa, scale_msa, r)
        attn_output = self.attn1(norm_hidden_states, encoder_hidden_states=None, attention_mask=attention_mask,
                                 frame=frame, height=height, width=width)
        hidden_states = r(r(bcast(gate_msa, attn_output) * attn_output) + hidden_states)
        del norm_hidden_states, attn_output  # (memory only: dead tensors released before the next attention)

        # 3. Cross-Attention
        attn_output = self.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=encoder_attention_mask, frame=frame, height=height, width=width)
        hidden_states = r(attn_output + hidden_states)
        del attn_output

        # 4. Feed-forward
        norm_hidden_states = modulate(self.norm2(hidden_states), shift_mlp, scale_mlp, r)
        ff_output = self.ff(norm_hidden_states)
        return r(r(bcast(gate_mlp, ff_output) * ff_output) + hidden_states)

    def _construct_streamed(self, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                            timestep, frame, height, width):
        """``construct`` in token chunks, for real-size inputs (see ``STREAM_BLOCK_ELEMENTS``); the twin of the
        torch reference's ``_forward_streamed``.

        (1) Self-attention runs one group of heads at a time (``_streamed_self_attention``) into a buffer of the
        attention outputs of all tokens (the output projection's input); (2) per chunk of tokens (aligned to
        sparse_n² so a chunk maps to a contiguous run of every sub-sequence): output projection and gated
        residual, cross-attention and the modulated FFN, written back into ``hidden_states`` in place. Hooks
        inside the block are not called on this path.
        """
        r = self.numerics
        h = hidden_states                                                       # (B, S, D)
        batch, seq, _ = h.shape
        modulation = r(self.scale_shift_table[None] + timestep.reshape(batch, 6, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.chunk(modulation, 6, axis=1)
        attn1, attn2 = self.attn1, self.attn2
        stream = _TokenStream(attn1, batch, seq, frame, height, width)
        attended = self._streamed_self_attention(h, stream, shift_msa, scale_msa, zeros_to_none(attention_mask))

        # Cross-attention keys/values once per batch element, not tiled to the k Skiparse sub-batches as upstream
        # does: every sub-batch sees the same text and the same (k-major tiled) text mask, so the chunk's queries
        # attend in token order (per query row the same computation; tested bit-identical).
        text_k_t, text_v = attention_seam.prepare_keys(attn2.to_k(encoder_hidden_states),
                                                       attn2.to_v(encoder_hidden_states), attn2.heads)
        text_k_t, text_v = outside_pool(text_k_t), outside_pool(text_v)  # they live through the chunk loop
        text_mask = None if encoder_attention_mask is None else zeros_to_none(encoder_attention_mask[:batch])

        for s0, s1, _ in stream.chunks():
            chunk = h[:, s0:s1]
            a = attn1.to_out[1](attn1.to_out[0](attended[:, s0:s1]))
            if attn1.rescale_output_factor != 1.0:
                a = r(a / attn1.rescale_output_factor)
            chunk = r(r(bcast(gate_msa, a) * a) + chunk)
            a = r(attention_seam.attend_prepared(attn2.to_q(chunk), text_k_t, text_v, text_mask, heads=attn2.heads,
                                                 scale=attn2.scale, chunk_elements=STREAM_ATTENTION_SCORES))
            a = attn2.to_out[1](attn2.to_out[0](a))
            if attn2.rescale_output_factor != 1.0:
                a = r(a / attn2.rescale_output_factor)
            chunk = r(a + chunk)
            n = modulate(self.norm2(chunk), shift_mlp, scale_mlp, r)
            f = self.ff(n)
            del n
            h[:, s0:s1] = r(r(bcast(gate_mlp, f) * f) + chunk)
            del f, a, chunk
        return h

    def _streamed_self_attention(self, h, stream, shift_msa, scale_msa, attention_mask):
        """Self-attention outputs of all tokens (B, S, inner), before the output projection, one group of
        STREAM_GROUP_HEADS heads at a time: the group's keys (transposed) and values (the portable seam's layout)
        of every token (RoPE'd, Skiparse regrouped, zero padding as ``_sparse_1d`` pads; projections restricted to
        the group's output rows), then attention for chunks of queries (``_sparse_1d`` layout, built per chunk
        from the same normalised tokens: recomputing the norm costs less than holding a group's queries) against
        all keys."""
        r = self.numerics
        attn1 = self.attn1
        proc = attn1.processor
        batch, seq, _ = h.shape
        head_dim = attn1.inner_dim // attn1.heads
        kb, g_all = stream.k * batch, stream.seq_pad // stream.k
        attended = stream_buffer((batch, seq, attn1.inner_dim), h.dtype)

        def normed(s0, s1):
            return modulate(self.norm1(h[:, s0:s1]), shift_msa, scale_msa, r)

        def grouped(linear, n, s0, s1, rows, c0, c1, rope=True):
            """the group's output features of tokens s0..s1, RoPE'd, padded to ``rows`` and Skiparse regrouped"""
            x = linear.rows(n, c0, c1)
            if rope:
                x = stream.roped(x, s0, s1)
            x = stream.padded(x, rows)
            return stream.regroup(x, proc)

        group_heads = None
        for h0 in range(0, attn1.heads, STREAM_GROUP_HEADS):
            h1 = min(attn1.heads, h0 + STREAM_GROUP_HEADS)
            c0, c1 = h0 * head_dim, h1 * head_dim
            if h1 - h0 != group_heads:  # one set per block, outside MindSpore's pool (each group rewrites
                group_heads = h1 - h0   # every element; re-allocated per group they fragmented the pool)
                key_t = stream_buffer((kb, group_heads, head_dim, g_all), ms.float32)
                values = stream_buffer((kb, group_heads, g_all, head_dim), ms.float32)
            for s0, s1, rows in stream.chunks(STREAM_QUERY_CHUNKS):
                n = normed(s0, s1)
                g0 = s0 // stream.k
                kc = grouped(attn1.to_k, n, s0, s1, rows, c0, c1)
                vc = grouped(attn1.to_v, n, s0, s1, rows, c0, c1, rope=False)
                del n
                kc, vc = attention_seam.prepare_keys(kc, vc, h1 - h0)
                key_t[:, :, :, g0:g0 + kc.shape[-1]] = kc
                values[:, :, g0:g0 + vc.shape[2]] = vc
                del kc, vc
            for s0, s1, rows in stream.chunks(STREAM_QUERY_CHUNKS):
                q = grouped(attn1.to_q, normed(s0, s1), s0, s1, rows, c0, c1)
                a = r(attention_seam.attend_prepared(q, key_t, values, attention_mask, heads=h1 - h0,
                                                     scale=attn1.scale, chunk_elements=STREAM_ATTENTION_SCORES))
                del q
                attended[:, s0:s1, c0:c1] = stream.ungroup(a, proc, rows)[:, :s1 - s0]
                del a
        return attended


class _TokenStream:
    """Token-chunk bookkeeping of a streamed block: chunks of whole Skiparse units (sparse_n² tokens; a unit maps
    to one contiguous run of every sub-sequence), RoPE on a chunk's own grid positions, and the Skiparse
    regrouping of a unit-aligned run of tokens (a run of ``_sparse_1d``'s layout)."""

    def __init__(self, attn1: Attention, batch, seq, frame, height, width):
        self.proc = proc = attn1.processor
        self.numerics = attn1.numerics
        self.batch, self.seq = batch, seq
        self.head_dim = attn1.inner_dim // attn1.heads
        self.k = proc.sparse_n if proc.sparse1d else 1
        self.unit = self.k * self.k if proc.sparse1d else 1
        self.seq_pad = seq + (-seq % self.unit)
        self.step = max(self.unit, STREAM_CHUNK_TOKENS // self.unit * self.unit)
        self.positions = proc.position_getter(batch, t=frame, h=height, w=width)

    def chunks(self, steps: int = 1):
        """(start, stop, rows): token chunks of ``steps`` steps; ``rows`` is the chunk's length rounded up to whole
        units."""
        return token_chunks(self.seq, self.step * steps, self.unit)

    def roped(self, x, s0, s1):
        """(B, L, heads·d) tokens s0..s1: the processor's RoPE on their own grid positions."""
        poses, max_poses = self.positions
        x = self.proc.rope(x.reshape(self.batch, s1 - s0, -1, self.head_dim),
                           (tuple(p[s0:s1] for p in poses), max_poses), self.numerics)
        return x.reshape(self.batch, s1 - s0, -1)

    @staticmethod
    def padded(x, rows):
        """zero rows appended up to ``rows`` (as ``_sparse_1d`` pads)"""
        return ops.pad(x, (0, 0, 0, rows - x.shape[1])) if rows > x.shape[1] else x

    def regroup(self, x, p):
        """(B, L, C), L unit-aligned -> (k·B, L/k, C) for processor ``p``"""
        if not p.sparse1d:
            return x
        k, unit = self.k, self.unit
        b, n_tok, c = x.shape
        if not p.sparse_group:
            return x.reshape(b, n_tok // k, k, c).transpose(2, 0, 1, 3).reshape(k * b, n_tok // k, c)
        return x.reshape(b, n_tok // unit, k, k, c).transpose(2, 0, 1, 3, 4).reshape(k * b, n_tok // k, c)

    def ungroup(self, x, p, n_tok):
        """inverse of ``regroup``: (k·B, L/k, C) -> (B, L, C)"""
        if not p.sparse1d:
            return x
        k, unit = self.k, self.unit
        kb, g, c = x.shape
        if not p.sparse_group:
            return x.reshape(k, kb // k, g, c).transpose(1, 2, 0, 3).reshape(kb // k, n_tok, c)
        return x.reshape(k, kb // k, n_tok // unit, k, c).transpose(1, 2, 0, 3, 4).reshape(kb // k, n_tok, c)


# ================================================================================================================
# opensora/models/diffusion/opensora_v1_3/modeling_opensora.py
# ================================================================================================================
class OpenSoraT2V_v1_3(Cell):
    """The v1.3 text-to-video DiT. ``construct`` returns ``(output,)`` like upstream's ``return_dict=False``."""

    def __init__(self, config: OpenSoraConfig | Mapping):
        super().__init__()
        if not isinstance(config, OpenSoraConfig):
            config = OpenSoraConfig.from_dict(config)
        self.config = config
        self.out_channels = config.output_channels
        self._init_patched_inputs()
        self.set_train(False)

    def _init_patched_inputs(self):
        c = self.config
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
                sparse1d=c.sparse1d if FIRST_SPARSE_BLOCK <= i < FIRST_DENSE_TAIL_BLOCK else False,
                sparse_n=c.sparse_n, sparse_group=i % 2 == 1)
            for i in range(c.num_layers)
        ])
        self.norm_out = LayerNorm(c.hidden_size, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = Parameter(initializer(Normal(sigma=c.hidden_size ** -0.5), (2, c.hidden_size),
                                                       ms.float32))
        self.proj_out = Linear(c.hidden_size, c.patch_out_features)
        self.adaln_single = AdaLayerNormSingle(c.hidden_size)

    @property
    def dtype(self):
        """Activation dtype MindSpore computes in (float32 under bf16 emulation)."""
        return self.numerics.dtype

    def set_precision(self, precision: str, device: str = "CPU") -> "OpenSoraT2V_v1_3":
        set_precision(self, precision, device)
        return self

    # ---- forward -----------------------------------------------------------------------------------------------
    def construct(self, hidden_states, timestep, encoder_hidden_states, attention_mask, encoder_attention_mask):
        r = self.numerics
        c = self.config
        batch_size, _, frame, _, _ = hidden_states.shape
        if attention_mask is None or attention_mask.ndim != 4:
            raise ParityError("OpenSoraT2V_v1_3: attention_mask must be given as (B, T, H, W) with 1 = valid latent "
                              "pixel (upstream crashes without it)")
        if encoder_attention_mask is None or encoder_attention_mask.ndim != 3:
            raise ParityError("OpenSoraT2V_v1_3: encoder_attention_mask must be (B, 1, L) with 0/1 (upstream passes a "
                              "2-D mask through unconverted)")
        # masks -> additive biases in the activation dtype: (B, 1, T'H'W') and (B, 1, L)
        attention_mask = r(attention_mask.astype(self.dtype))[:, None]                       # b 1 t h w
        kernel = (c.patch_size_t, c.patch_size, c.patch_size)
        attention_mask = ops.max_pool3d(attention_mask, kernel_size=kernel, stride=kernel)
        attention_mask = attention_mask.reshape(batch_size, 1, -1)                          # (b 1) 1 (t h w)
        attention_mask = r((1 - (attention_mask != 0).astype(self.dtype)) * MASK_BIAS)
        encoder_attention_mask = r(r(1 - r(encoder_attention_mask.astype(self.dtype))) * MASK_BIAS)

        # 1. Input
        frame = ((frame - 1) // c.patch_size_t + 1) if frame % 2 == 1 else frame // c.patch_size_t
        height, width = hidden_states.shape[-2] // c.patch_size, hidden_states.shape[-1] // c.patch_size
        hidden_states, encoder_hidden_states, timestep, embedded_timestep = self._operate_on_patched_inputs(
            hidden_states, encoder_hidden_states, timestep, batch_size, frame)
        if hidden_states.size > STREAM_BLOCK_ELEMENTS:  # real sizes: it stays alive through every block
            encoder_hidden_states = outside_pool(encoder_hidden_states)

        sparse_mask = {}
        for sparse_n in SPARSE_NS:
            sparse_mask[sparse_n] = Attention.prepare_sparse_mask(attention_mask, encoder_attention_mask, sparse_n,
                                                                  c.num_attention_heads,
                                                                  pad_value=r.scalar(SPARSE_PAD_BIAS))
        # 2. Blocks
        hidden_states = self.run_blocks(hidden_states, encoder_hidden_states, timestep, sparse_mask, frame, height,
                                        width, 0, len(self.transformer_blocks))
        # 3. Output
        output = self._get_output_for_patched_inputs(hidden_states=hidden_states, timestep=timestep,
                                                     embedded_timestep=embedded_timestep, num_frames=frame,
                                                     height=height, width=width)
        return (output,)

    def _operate_on_patched_inputs(self, hidden_states, encoder_hidden_states, timestep, batch_size, frame):
        """-> hidden_states (B, S, D), encoder_hidden_states (B, L, D), timestep (B, 6D), embedded_timestep (B, D)."""
        hidden_states = self.pos_embed(self.numerics(hidden_states.astype(self.dtype)))
        timestep, embedded_timestep = self.adaln_single(timestep, None, batch_size=batch_size,
                                                        hidden_dtype=self.dtype)
        encoder_hidden_states = self.caption_projection(encoder_hidden_states)   # b 1 l d
        if encoder_hidden_states.ndim != 4 or encoder_hidden_states.shape[1] != 1:
            raise ParityError(f"OpenSoraT2V_v1_3: encoder_hidden_states must be (B, 1, L, C), got projected shape "
                              f"{tuple(encoder_hidden_states.shape)}")
        encoder_hidden_states = encoder_hidden_states[:, 0]                        # b 1 l d -> (b 1) l d
        return hidden_states, encoder_hidden_states, timestep, embedded_timestep

    def run_blocks(self, hidden_states, encoder_hidden_states, timestep, sparse_masks, frame, height, width,
                   start=0, stop=None):
        """Blocks ``start..stop-1`` on batch-first states; blocks 2..29 take ``sparse_masks[n][group]``, others n=1."""
        stop = len(self.transformer_blocks) if stop is None else stop
        for i in range(start, stop):
            block = self.transformer_blocks[i]
            processor = block.attn1.processor
            n = processor.sparse_n if FIRST_SPARSE_BLOCK <= i < FIRST_DENSE_TAIL_BLOCK else 1
            attention_mask, encoder_attention_mask = sparse_masks[n][processor.sparse_group]
            hidden_states = block(hidden_states, attention_mask=attention_mask,
                                  encoder_hidden_states=encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask, timestep=timestep, frame=frame,
                                  height=height, width=width)
        return hidden_states

    def _get_output_for_patched_inputs(self, hidden_states, timestep, embedded_timestep, num_frames, height, width):
        r = self.numerics
        c = self.config
        shift, scale = ops.chunk(r(self.scale_shift_table[None] + embedded_timestep[:, None]), 2, axis=1)
        if hidden_states.size > STREAM_BLOCK_ELEMENTS:
            # real sizes: token chunks (norm, modulation and projection are per token), small output only
            out = None
            for s0 in range(0, hidden_states.shape[1], STREAM_CHUNK_TOKENS):
                x = self.proj_out(modulate(self.norm_out(hidden_states[:, s0:s0 + STREAM_CHUNK_TOKENS]), shift,
                                           scale, r))
                if out is None:
                    out = ops.zeros((hidden_states.shape[0], hidden_states.shape[1], x.shape[-1]), x.dtype)
                out[:, s0:s0 + STREAM_CHUNK_TOKENS] = x
            hidden_states = out
        else:
            hidden_states = modulate(self.norm_out(hidden_states), shift, scale, r)
            hidden_states = self.proj_out(hidden_states)
        # unpatchify: n t h w o p q c -> n c t o h p w q
        pt, p, ch = c.patch_size_t, c.patch_size, self.out_channels
        hidden_states = hidden_states.reshape(-1, num_frames, height, width, pt, p, p, ch)
        hidden_states = hidden_states.transpose(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden_states.reshape(-1, ch, num_frames * pt, height * p, width * p)

    def output_head(self, hidden_states, embedded_timestep, frame, height, width):
        """Teacher-forcing entry: the output layer on batch-first block output (B, S, D) -> (B, C, T, H, W)."""
        return self._get_output_for_patched_inputs(hidden_states, None, embedded_timestep, frame, height, width)


def OpenSoraT2V_v1_3_2B_122(**kwargs):
    """Upstream factory of the released 2B/122 model (kwargs complete the config, e.g. in_channels=8)."""
    config = dict(num_layers=32, attention_head_dim=96, num_attention_heads=24, patch_size_t=1, patch_size=2,
                  caption_channels=4096, cross_attention_dim=2304, activation_fn="gelu-approximate")
    config.update(kwargs)
    return OpenSoraT2V_v1_3(config)


# ================================================================================================================
# precision
# ================================================================================================================
def set_precision(cell: nn.Cell, precision: str, device: str = "CPU") -> Numerics:
    """Cast ``cell``'s parameters to ``precision`` and set the numerics of every sub-cell.

    Parameters already holding data are converted (rounded to bf16 values under emulation); lazily initialised
    ones (``no_init_parameters``) only change dtype.
    """
    numerics = numerics_for(precision, device)
    for _, sub in cell.cells_and_names():
        if isinstance(sub, Cell):
            sub.numerics = numerics
    for _, param in cell.parameters_and_names():
        if param.has_init:
            param.set_dtype(numerics.dtype)
            continue
        if param.dtype == numerics.dtype and numerics.logical == "float32":
            continue  # float32 values already: the round trip below would only copy them (3 transient copies)
        data = param.asnumpy().astype(np.float32) if param.dtype != ms.bfloat16 else \
            param.astype(ms.float32).asnumpy()
        if param.dtype != numerics.dtype:
            param.set_dtype(numerics.dtype)
        param.set_data(Tensor(numerics.table(data)).astype(numerics.dtype))
    return numerics


def set_attention_backend(cell: nn.Cell, backend: str | None) -> None:
    """Make every ``Attention`` in ``cell`` use ``backend`` (None: follow ``ms_impl.attention``'s module setting)."""
    if backend is not None and backend not in attention_seam.BACKENDS:
        raise ParityError(f"unknown attention backend {backend!r}; use one of {', '.join(attention_seam.BACKENDS)}")
    for _, sub in cell.cells_and_names():
        if isinstance(sub, Attention):
            sub.attention_backend = backend
