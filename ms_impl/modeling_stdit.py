"""Open-Sora 1.0 ``STDiT`` (STDiT-XL/2) in MindSpore 2.x (PyNative), module for module upstream's model.

Classes, attributes, methods and state-dict names are upstream's (hpcaitech/Open-Sora v1.0.0,
``opensora/models/stdit/stdit.py`` and ``opensora/models/layers/blocks.py``, plus timm's ``Mlp``): ``state_dict()``
lists torch's keys in torch's order, and ``pos_embed``, ``pos_embed_temporal`` and ``y_embedder.y_embedding`` are
persistent *buffers* as upstream's (MindSpore 2.10 ``Cell.register_buffer``). mindone's port
(examples/opensora_hpcai) differs there — ``y_embedding`` a Parameter, the tables plain tensors outside the
checkpoint — and those differences belong to a strict conversion map, not to this file. The file reads top to
bottom like upstream: layers, then the block, then the model. Constructor keywords are upstream's.

Blocks and the final layer are called standalone exactly as upstream's forward calls them:
``blocks[i](x, y, t0, y_lens, tpe)`` with x (B, T·S, C), y the packed text (1, ΣL, C), t0 (B, 6·C), y_lens the
text lengths (a sequence of ints, a numpy array or a tensor) and tpe (1, T, C) for block 0 only (else None);
``final_layer(x, t)`` with the raw timestep embedding t (B, C); ``unpatchify(x)``. Layouts are upstream's
everywhere, so reference tensors feed them unchanged.

Numerics: ``numerics(x)`` (``ms_impl.precision``) marks every point where PyTorch's model materialises a tensor in
the working dtype; it is the identity for fp32 and fp16 and rounds to bf16 under ``bf16-emulated``. Matmuls,
norms and activations are computed in float32 and rounded once to the working dtype, as torch's CPU kernels do
for half and bf16 (MindSpore's native CPU fp16 dense differed from torch's in 28 % of a test Linear's outputs,
float32 rounded once in 0.2 %). Nothing here clips or replaces non-finite
values: an fp16 overflow (which upstream's README warns of) stays inf/NaN through the model.

Attention: upstream's self-attention path without flash-attn (``enable_flashattn=False``) is written out as
upstream computes it (``(q·scale)·kᵀ`` rounded to the working dtype, float32 softmax, probabilities rounded back,
``·v``). With ``enable_flashattn=True``, and for the cross-attention (xformers upstream), attention runs through the
project's seam ``ms_impl.attention.attention`` (float32 inside, one rounding; portable / Ascend flash-attention /
emulated backends). The packed text cross-attention is computed per sample on zero-padded keys with their
padding masked out (an additive -inf bias, True = discard for the Ascend kernel): the same as xformers'
block-diagonal attention over the packed sequence, because attention does not depend on key order.

Host-side tables (numpy, as upstream computes them or more exactly): the 2D/1D sincos positional tables (upstream
computes them in float64 numpy too); the 128 timestep frequencies, because MindSpore's CPU fp32 ``exp`` is up to
~5e-6 relative off torch's: they follow upstream's float32 chain with one float64 ``exp`` rounded to float32
(bit-identical to torch's table except 2 of 128 entries, where torch's own ``exp`` is one ULP off). The timestep
sinusoid itself (cos/sin of fp32 arguments) runs on device: MindSpore's CPU fp32 sin/cos are correctly rounded.

Size: one modeling file per family, as upstream keeps it (``stdit.py`` + the blocks it uses).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, Uniform, initializer

from ms_impl import attention as attention_seam
from ms_impl.precision import FP32, Numerics, numerics_for

XL_2_NAME = "STDiT-XL/2"
XL_2_SIZES = dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16)
# torch's CPU convolution (the reference) sums a patch in channels-last order (t, h, w, c) when it takes its oneDNN
# path and in channel-first order (c, t, h, w) in its plain vol2col path; it takes oneDNN for a batch > 1 or when
# B·C·T·H exceeds this many elements (measured on torch 2.13 with 1 and 2 threads, see PatchEmbed3D).
TORCH_CPU_CONV_ONEDNN_ELEMENTS = 20480


class Cell(nn.Cell):
    """Base of every cell here: ``numerics`` is the model-wide precision (set by ``set_precision``)."""

    numerics: Numerics = FP32


def materialize(x, numerics: Numerics):
    """A float32 result as the working dtype holds it: cast (fp16), rounded to bf16 values (bf16-emulated)."""
    if x.dtype != numerics.dtype:
        x = x.astype(numerics.dtype)
    return numerics(x)


def text_lengths(mask) -> list[int]:
    """``y_lens`` as Python ints, from a sequence, a numpy array or a tensor."""
    if isinstance(mask, Tensor):
        mask = mask.asnumpy()
    return [int(n) for n in np.asarray(mask).reshape(-1)]


# ==================================================================================================================
# opensora/models/layers/blocks.py @ v1.0.0 (and the timm layers it uses)
# ==================================================================================================================
# Memory layout of upstream's residual stream, a rounding matter in half/bf16: x_embedder's
# flatten(2).transpose(1, 2) is a view, so x is (B, N, C) over a (B, C, N) buffer, and every later op on x keeps those
# strides. torch's F.linear on a non-contiguous input of 3+ dims is a matmul and a separate bias add (two roundings)
# instead of one fused addmm. Two Linears see x in that layout: cross_attn.q_linear (x itself, non-contiguous when
# N > 1) and, when B = 1 or S = 1, attn_temp.qkv (the "B (T S) C -> (B S) T C" rearrange is then a view of x, not a
# copy). Linear's ``round_before_bias`` reproduces it; the block passes it where upstream's forward has that input.
_linear_matmul = ops.MatMul(transpose_b=True)  # x (rows, in) · weight (out, in)ᵀ, the weight as stored
_bmm = ops.BatchMatMul()
_bmm_nt = ops.BatchMatMul(transpose_b=True)


class Linear(Cell):
    """torch ``nn.Linear``: weight (out, in), bias (out). Computed in float32 and rounded once to the working dtype
    on CPU (a 2-D matmul against the weight as stored); native ``ops.dense`` elsewhere.

    ``round_before_bias=True``: the matmul is materialised in the working dtype before the bias is added (two
    roundings in half/bf16), as torch's ``F.linear`` does on a non-contiguous input (see the layout note above).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(initializer(Uniform(bound), (out_features, in_features), ms.float32))
        self.bias = Parameter(initializer(Uniform(bound), (out_features,), ms.float32)) if bias else None

    def construct(self, x, round_before_bias=False):
        r = self.numerics
        if ms.get_context("device_target") != "CPU":
            if round_before_bias and self.bias is not None:
                return r(r(ops.dense(x, self.weight, None)) + self.bias)
            return r(ops.dense(x, self.weight, self.bias))
        w = self.weight if self.weight.dtype == ms.float32 else self.weight.astype(ms.float32)
        y = _linear_matmul(x.astype(ms.float32).reshape(-1, self.in_features), w)
        if self.bias is not None:
            if round_before_bias:
                y = materialize(y, r).astype(ms.float32)
            y = y + self.bias.astype(ms.float32)
        return materialize(y.reshape(*x.shape[:-1], self.out_features), r)


class LayerNorm(Cell):
    """torch ``nn.LayerNorm(dim, eps, elementwise_affine=False)``: float32 statistics, one rounding."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        if elementwise_affine:
            raise ValueError("LayerNorm: STDiT's norms have no affine parameters (elementwise_affine=False)")
        self.normalized_shape, self.eps = normalized_shape, eps
        self._gamma = Tensor(np.ones((normalized_shape,), np.float32))
        self._beta = Tensor(np.zeros((normalized_shape,), np.float32))
        self._layer_norm, self._layer_norm_eps = None, None

    def construct(self, x):
        if self._layer_norm_eps != self.eps:  # one primitive per cell (rebuilt if eps is changed on a built model)
            self._layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=self.eps)
            self._layer_norm_eps = self.eps
        y = self._layer_norm(x.astype(ms.float32), self._gamma, self._beta)[0]
        return materialize(y, self.numerics)


def get_layernorm(hidden_size: int, eps: float, affine: bool, use_kernel: bool):
    # use_kernel selects apex's FusedLayerNorm upstream: the same normalisation
    return LayerNorm(hidden_size, eps, elementwise_affine=affine)


GELU_BETA, GELU_KAPPA = math.sqrt(2.0 / math.pi), 0.044715


class GELU(Cell):
    """torch ``nn.GELU(approximate="tanh")`` in float32, one rounding. On CPU as ``x·sigmoid(2u)``, the same
    function as ``½x(1 + tanh u)``, u = β(x + κx³): MindSpore's CPU fp32 ``tanh`` is up to 1e-4 off, its sigmoid
    keeps the result within 6e-7 of torch's kernel."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate != "tanh":
            raise ValueError(f"GELU: STDiT uses approximate='tanh', got {approximate!r}")
        self.approximate = approximate

    def construct(self, x):
        x32 = x.astype(ms.float32)
        if ms.get_context("device_target") == "CPU":
            y = x32 * ops.sigmoid((2 * GELU_BETA) * (x32 + GELU_KAPPA * (x32 * x32 * x32)))
        else:
            y = ops.gelu(x32, approximate=self.approximate)
        return materialize(y, self.numerics)


def approx_gelu():
    return GELU(approximate="tanh")


class SiLU(Cell):
    """torch ``nn.SiLU`` in float32, one rounding."""

    def construct(self, x):
        return materialize(ops.silu(x.astype(ms.float32)), self.numerics)


def t2i_modulate(x, shift, scale, numerics: Numerics = FP32):
    """``x * (1 + scale) + shift``, each step materialised as torch's working dtype does."""
    r = numerics
    return r(r(x * r(1 + scale)) + shift)


class Mlp(Cell):
    """timm's ``Mlp``: fc1 -> act -> drop1 -> norm (Identity) -> fc2 -> drop2."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=approx_gelu, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = Linear(in_features, hidden_features, bias=True)
        self.act = act_layer()
        self.drop1 = nn.Dropout(p=drop)
        self.norm = nn.Identity()
        self.fc2 = Linear(hidden_features, out_features, bias=True)
        self.drop2 = nn.Dropout(p=drop)

    def construct(self, x):
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(self.norm(x)))


class DropPath(Cell):
    """timm's stochastic depth: the identity in inference (this port does not train)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def construct(self, x):
        if self.training and self.drop_prob > 0.0:
            raise NotImplementedError("DropPath: training is not part of this port")
        return x


class Conv3d(Cell):
    """The parameters of torch's ``nn.Conv3d`` (weight (out, in, kt, kh, kw), bias (out)) for a stride = kernel
    patch convolution; ``PatchEmbed3D`` applies them."""

    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        if tuple(kernel_size) != tuple(stride):
            raise ValueError("Conv3d: the patch embedding uses stride = kernel_size")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        bound = 1.0 / math.sqrt(in_channels * math.prod(self.kernel_size))
        self.weight = Parameter(initializer(Uniform(bound), (out_channels, in_channels, *self.kernel_size),
                                            ms.float32))
        self.bias = Parameter(initializer(Uniform(bound), (out_channels,), ms.float32))


class PatchEmbed3D(Cell):
    """Video to patch tokens: zero-pad W, H, T to multiples of the patch, the patch convolution, (B, N, C) tokens
    t-major then h, w.

    On CPU the convolution is one matmul over the non-overlapping patches (MindSpore 2.10 has no CPU Conv3d),
    summed in the order torch's CPU convolution sums them so that fp32 results are bit-identical: channels-last
    (t, h, w, c) where torch takes its oneDNN path (batch > 1, or B·C·T·H > TORCH_CPU_CONV_ONEDNN_ELEMENTS), channel-
    first (c, t, h, w) on its vol2col path otherwise.
    """

    def __init__(self, patch_size=(2, 4, 4), in_chans=3, embed_dim=96, norm_layer=None, flatten=True):
        super().__init__()
        if norm_layer is not None or not flatten:
            raise ValueError("PatchEmbed3D: STDiT uses norm_layer=None, flatten=True")
        self.patch_size = tuple(patch_size)
        self.flatten = flatten
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = None

    def construct(self, x):
        _, _, D, H, W = x.shape
        pt, ph, pw = self.patch_size
        pads = ((pt - D % pt) % pt, (ph - H % ph) % ph, (pw - W % pw) % pw)
        if any(pads):
            x = ops.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        if ms.get_context("device_target") == "CPU":
            return self._construct_as_matmul(x)
        y = ops.conv3d(x, self.proj.weight, self.proj.bias, stride=self.patch_size)  # B C T H W
        b, c = y.shape[:2]
        return materialize(y.reshape(b, c, -1).transpose(0, 2, 1), self.numerics)

    def _construct_as_matmul(self, x):
        b, c, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        nt, nh, nw = t // pt, h // ph, w // pw
        x = x.astype(ms.float32).reshape(b, c, nt, pt, nh, ph, nw, pw)
        weight = self.proj.weight.astype(ms.float32)
        if b > 1 or b * c * t * h > TORCH_CPU_CONV_ONEDNN_ELEMENTS:   # channels-last patches (pt ph pw c)
            patches = x.transpose(0, 2, 4, 6, 3, 5, 7, 1)
            weight = weight.transpose(0, 2, 3, 4, 1)
        else:                                                          # channel-first patches (c pt ph pw)
            patches = x.transpose(0, 2, 4, 6, 1, 3, 5, 7)
        y = _linear_matmul(patches.reshape(b * nt * nh * nw, -1), weight.reshape(self.embed_dim, -1))
        y = y + self.proj.bias.astype(ms.float32)
        return materialize(y.reshape(b, nt * nh * nw, self.embed_dim), self.numerics)


def softmax_rows(scores):
    """Softmax over the last axis in float32 (float64-normalised if ``ms_impl.attention.PRECISE_SOFTMAX``)."""
    return attention_seam.softmax_precise(scores.astype(ms.float32))


class Attention(Cell):
    """Multi-head self-attention: ``qkv`` -> attention -> ``proj``.

    ``enable_flashattn=False``: upstream's own path, ``(q·scale)·kᵀ`` and ``probs·v`` each rounded to the working
    dtype, softmax in float32. ``enable_flashattn=True``: the attention seam (float32 inside, one rounding).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer=None, enable_flashattn: bool = False):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Attention: dim {dim} should be divisible by num_heads {num_heads}")
        if qk_norm:
            raise ValueError("Attention: STDiT builds its attention with qk_norm=False")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.enable_flashattn = enable_flashattn
        self.attention_backend = None  # None: the seam's module-level setting (set_attention_backend)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)

    def construct(self, x, round_before_bias=False):
        """``round_before_bias``: torch sees ``x`` strided (the layout note above), so ``qkv`` rounds twice."""
        r = self.numerics
        B, N, C = x.shape
        qkv = self.qkv(x, round_before_bias=round_before_bias).reshape(B, N, 3, self.num_heads, self.head_dim)
        if self.enable_flashattn:
            q, k, v = (qkv[:, :, i].reshape(B, N, C) for i in range(3))
            x = attention_seam.attention(q, k, v, None, heads=self.num_heads, scale=self.scale,
                                         backend=self.attention_backend, kernel_dtype=r.kernel_dtype)
            x = materialize(x, r)
        else:
            qkv = qkv.transpose(2, 0, 3, 1, 4)  # 3 B heads N d
            q, k, v = qkv[0], qkv[1], qkv[2]
            q = materialize(q.astype(ms.float32) * self.scale, r)
            attn = materialize(_bmm_nt(q.astype(ms.float32), k.astype(ms.float32)), r)
            attn = materialize(softmax_rows(attn), r)
            x = materialize(_bmm(attn.astype(ms.float32), v.astype(ms.float32)), r)
            x = x.transpose(0, 2, 1, 3).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class MultiHeadCrossAttention(Cell):
    """Cross-attention of the video tokens to the packed text ``cond`` (1, ΣL_i, C); ``mask`` = ``y_lens``.

    Sample i's N queries attend to its own ``y_lens[i]`` tokens only (xformers' block-diagonal mask upstream),
    computed through the attention seam on zero-padded per-sample keys with the padding masked out.
    ``mask=None``: every query attends to every key (upstream's behaviour; the same as per sample only for B = 1).
    """

    def __init__(self, d_model, num_heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"MultiHeadCrossAttention: d_model {d_model} must be divisible by num_heads {num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.attention_backend = None
        self.q_linear = Linear(d_model, d_model)
        self.kv_linear = Linear(d_model, d_model * 2)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(p=proj_drop)

    def construct(self, x, cond, mask=None):
        r = self.numerics
        B, N, C = x.shape
        q = self.q_linear(x, round_before_bias=N > 1)    # B N C; torch sees x strided (the layout note above)
        kv = self.kv_linear(cond)       # 1 ΣL 2C: keys are the first C features, values the last C
        if mask is None:
            q, bias = q.reshape(1, B * N, C), None
            k, v = kv[..., :C], kv[..., C:]
        else:
            k, v, bias = self.padded_text(kv, text_lengths(mask), B)
        x = attention_seam.attention(q, k, v, bias, heads=self.num_heads, scale=self.head_dim ** -0.5,
                                     backend=self.attention_backend, kernel_dtype=r.kernel_dtype)
        x = materialize(x, r).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    @staticmethod
    def padded_text(kv, y_lens: Sequence[int], batch: int):
        """Packed (1, ΣL_i, 2C) -> keys and values (B, L_max, C) zero-padded per sample, and the additive bias
        (B, 1, 1, L_max): 0 for a real token, -inf for padding (exactly zero weight, as an absent key)."""
        if len(y_lens) != batch or sum(y_lens) != kv.shape[1]:
            raise ValueError(f"MultiHeadCrossAttention: y_lens {list(y_lens)} do not split {kv.shape[1]} packed text "
                             f"tokens into {batch} samples")
        if min(y_lens) <= 0:
            raise ValueError(f"MultiHeadCrossAttention: a sample has no valid text token (y_lens {list(y_lens)}); "
                             f"every sample needs at least one")
        longest, start, rows = max(y_lens), 0, []
        for n in y_lens:
            seg = kv[:, start:start + n]
            rows.append(ops.pad(seg, (0, 0, 0, longest - n)) if n < longest else seg)
            start += n
        kv = ops.cat(rows, axis=0)      # B L_max 2C
        c = kv.shape[-1] // 2
        bias = np.zeros((batch, 1, 1, longest), np.float32)
        for i, n in enumerate(y_lens):
            bias[i, ..., n:] = -np.inf
        return kv[..., :c], kv[..., c:], Tensor(bias)


class T2IFinalLayer(Cell):
    """PixArt's final layer: norm, modulation by ``scale_shift_table + t`` (the raw timestep embedding), linear."""

    def __init__(self, hidden_size, num_patch, out_channels):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(hidden_size, num_patch * out_channels, bias=True)
        self.scale_shift_table = Parameter(initializer(Normal(sigma=hidden_size ** -0.5), (2, hidden_size),
                                                       ms.float32))
        self.out_channels = out_channels

    def construct(self, x, t):
        r = self.numerics
        shift, scale = ops.chunk(r(self.scale_shift_table[None] + t[:, None]), 2, axis=1)
        x = t2i_modulate(self.norm_final(x), shift, scale, r)
        return self.linear(x)


def timestep_frequencies(half: int, max_period: int = 10000) -> np.ndarray:
    """Upstream's ``exp(-ln(max_period) · arange(half, fp32) / half)``: each fp32 step exactly rounded, the exp in
    float64 rounded to fp32 (torch's fp32 exp is itself one ULP off in 2 of the 128 entries)."""
    exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)).astype(np.float32)
    exponent = (exponent / np.float32(half)).astype(np.float32)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


class TimestepEmbedder(Cell):
    """Sinusoid of the timestep (float32, **[cos, sin]**), cast to the working dtype, Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.SequentialCell(
            Linear(frequency_embedding_size, hidden_size, bias=True),
            SiLU(),
            Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = Tensor(timestep_frequencies(half, max_period))
        args = t.astype(ms.float32)[:, None] * freqs[None]
        embedding = ops.cat([ops.cos(args), ops.sin(args)], axis=-1)
        if dim % 2:
            embedding = ops.cat([embedding, ops.zeros_like(embedding[:, :1])], axis=-1)
        return embedding

    def construct(self, t, dtype=None):
        t_freq = materialize(self.timestep_embedding(t, self.frequency_embedding_size), self.numerics)
        return self.mlp(t_freq)


class CaptionEmbedder(Cell):
    """T5 features -> hidden size (``y_proj``). ``y_embedding`` (token_num, in_channels), the learned null caption,
    is a persistent buffer as upstream's (in the state dict, not a parameter). Inference only: no caption drop."""

    def __init__(self, in_channels, hidden_size, uncond_prob, act_layer=approx_gelu, token_num=120):
        super().__init__()
        self.y_proj = Mlp(in_features=in_channels, hidden_features=hidden_size, out_features=hidden_size,
                          act_layer=act_layer, drop=0)
        self.register_buffer("y_embedding", initializer(Normal(sigma=in_channels ** -0.5), (token_num, in_channels),
                                                        ms.float32).init_data())
        self.uncond_prob = uncond_prob

    def construct(self, caption, train=False, force_drop_ids=None):
        if train or force_drop_ids is not None:
            raise NotImplementedError("CaptionEmbedder: caption drop (training / force_drop_ids) is not part of this "
                                      "port; pass the null caption y_embedding as y")
        return self.y_proj(caption)


# ---- fixed sine/cosine positional tables (numpy, float64 maths, as upstream) -------------------------------------
def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False, extra_tokens=0, scale=1.0, base_size=None):
    """(H·W, embed_dim) float64 for a grid (H, W), tokens row-major. First half of the channels: the **column (w)**
    coordinate; second half: the row (h) coordinate. Coordinates are ``arange/scale`` in float32."""
    if not isinstance(grid_size, tuple):
        grid_size = (grid_size, grid_size)
    grid_h = np.arange(grid_size[0], dtype=np.float32) / scale
    grid_w = np.arange(grid_size[1], dtype=np.float32) / scale
    if base_size is not None:
        grid_h *= base_size / grid_size[0]
        grid_w *= base_size / grid_size[1]
    w_coord, h_coord = np.meshgrid(grid_w, grid_h)  # each (H, W)
    emb = np.concatenate([get_1d_sincos_pos_embed_from_grid(embed_dim // 2, w_coord),
                          get_1d_sincos_pos_embed_from_grid(embed_dim // 2, h_coord)], axis=1)
    if cls_token and extra_tokens > 0:
        emb = np.concatenate([np.zeros([extra_tokens, embed_dim]), emb], axis=0)
    return emb


def get_1d_sincos_pos_embed(embed_dim, length, scale=1.0):
    """(length, embed_dim) float64; positions ``arange(length)/scale`` in float64."""
    return get_1d_sincos_pos_embed_from_grid(embed_dim, np.arange(0, length)[..., None] / scale)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    """(M, embed_dim) float64 ``[sin(pos·ω), cos(pos·ω)]`` (**sin first**), ω_i = 10000^(-i/(embed_dim/2))."""
    if embed_dim % 2 != 0:
        raise ValueError(f"1D sincos: embed_dim {embed_dim} must be even")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.multiply.outer(np.asarray(pos).reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


# ==================================================================================================================
# opensora/models/stdit/stdit.py @ v1.0.0
# ==================================================================================================================
class STDiTBlock(Cell):
    """One spatial-temporal block on (B, T·S, C) tokens, modulated by ``t`` (B, 6·C): spatial attention on norm1 +
    modulation (gate_msa); temporal attention on the un-normalised tokens (+ ``tpe`` in block 0), gated by the
    same gate_msa; cross-attention (no norm, no gate); MLP on norm2 + modulation (gate_mlp)."""

    def __init__(self, hidden_size, num_heads, d_s=None, d_t=None, mlp_ratio=4.0, drop_path=0.0,
                 enable_flashattn=False, enable_layernorm_kernel=False, enable_sequence_parallelism=False):
        super().__init__()
        if enable_sequence_parallelism:
            raise ValueError("STDiTBlock: sequence parallelism is not part of this port (same math in one process): "
                             "set enable_sequence_parallelism=False")
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
        self.scale_shift_table = Parameter(initializer(Normal(sigma=hidden_size ** -0.5), (6, hidden_size),
                                                       ms.float32))
        self.d_s = d_s
        self.d_t = d_t
        self.attn_temp = self.attn_cls(hidden_size, num_heads=num_heads, qkv_bias=True,
                                       enable_flashattn=self.enable_flashattn)

    def construct(self, x, y, t, mask=None, tpe=None):
        r = self.numerics
        B, N, C = x.shape
        T, S = self.d_t, self.d_s
        modulation = r(self.scale_shift_table[None] + t.reshape(B, 6, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.chunk(modulation, 6, axis=1)
        x_m = t2i_modulate(self.norm1(x), shift_msa, scale_msa, r)

        # spatial branch: B (T S) C -> (B T) S C
        x_s = self.attn(x_m.reshape(B * T, S, C)).reshape(B, T * S, C)
        x = r(x + self.drop_path(r(gate_msa * x_s)))

        # temporal branch: B (T S) C -> (B S) T C, on x itself (no norm, no modulation)
        x_t = x.reshape(B, T, S, C).transpose(0, 2, 1, 3).reshape(B * S, T, C)
        if tpe is not None:
            x_t = r(x_t + tpe)
        x_t = self.attn_temp(x_t, round_before_bias=(B == 1 or S == 1) and N > 1)  # a strided view (above)
        x_t = x_t.reshape(B, S, T, C).transpose(0, 2, 1, 3).reshape(B, T * S, C)
        x = r(x + self.drop_path(r(gate_msa * x_t)))  # gate_msa again: there is no temporal gate

        # cross attn
        x = r(x + self.cross_attn(x, y, mask))

        # mlp
        h = self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp, r))
        return r(x + self.drop_path(r(gate_mlp * h)))


class STDiT(Cell):
    """Spatial-temporal DiT of Open-Sora 1.0 (constructor keywords are upstream's). ``construct(x, timestep, y,
    mask)`` -> (B, out_channels, T, H, W) float32. The working dtype is the model's precision (``set_precision``);
    the ``dtype`` keyword is accepted for upstream's signature."""

    def __init__(self, input_size=(1, 32, 32), in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, drop_path=0.0,
                 no_temporal_pos_emb=False, caption_channels=4096, model_max_length=120, dtype=None,
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
        self.no_temporal_pos_emb = no_temporal_pos_emb  # stored, never read (as upstream)
        self.depth = depth
        self.mlp_ratio = mlp_ratio
        self.enable_flashattn = enable_flashattn
        self.enable_layernorm_kernel = enable_layernorm_kernel
        self.space_scale = space_scale
        self.time_scale = time_scale
        self.freeze = freeze  # training only (which parameters upstream trains)

        self.register_buffer("pos_embed", self.get_spatial_pos_embed())
        self.register_buffer("pos_embed_temporal", self.get_temporal_pos_embed())

        self.x_embedder = PatchEmbed3D(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.SequentialCell(SiLU(), Linear(hidden_size, 6 * hidden_size, bias=True))
        self.y_embedder = CaptionEmbedder(in_channels=caption_channels, hidden_size=hidden_size,
                                          uncond_prob=class_dropout_prob, act_layer=approx_gelu,
                                          token_num=model_max_length)
        drop_path = np.linspace(0, drop_path, depth, dtype=np.float32)
        self.blocks = nn.CellList([
            STDiTBlock(self.hidden_size, self.num_heads, mlp_ratio=self.mlp_ratio, drop_path=float(drop_path[i]),
                       enable_flashattn=self.enable_flashattn, enable_layernorm_kernel=self.enable_layernorm_kernel,
                       enable_sequence_parallelism=enable_sequence_parallelism, d_t=self.num_temporal,
                       d_s=self.num_spatial)
            for i in range(self.depth)
        ])
        self.final_layer = T2IFinalLayer(hidden_size, int(np.prod(self.patch_size)), self.out_channels)
        self.set_train(False)

    @classmethod
    def from_config(cls, config: Mapping, **overrides) -> "STDiT":
        """Build from upstream's model keywords; ``type`` "STDiT-XL/2" applies the factory's fixed sizes."""
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

    @property
    def dtype(self):
        """The working dtype MindSpore computes in (float32 under bf16 emulation)."""
        return self.numerics.dtype

    def set_precision(self, precision: str, device: str = "CPU") -> "STDiT":
        set_precision(self, precision, device)
        return self

    def construct(self, x, timestep, y, mask=None):
        r = self.numerics
        x = r(x.astype(self.dtype))
        timestep = r(timestep.astype(self.dtype))  # rounded to the working dtype before the sinusoid, as upstream
        y = r(y.astype(self.dtype))

        # embedding
        x = self.x_embedder(x)  # B N C
        B, N, C = x.shape
        x = r(x.reshape(B, self.num_temporal, self.num_spatial, C) + self.pos_embed).reshape(B, N, C)

        t = self.t_embedder(timestep, dtype=x.dtype)  # B C
        t0 = self.t_block(t)  # B 6C
        y = self.y_embedder(y, self.training)  # B 1 L C

        y, y_lens = self.pack_text(y, mask)

        for i, block in enumerate(self.blocks):
            tpe = self.pos_embed_temporal if i == 0 else None
            x = block(x, y, t0, y_lens, tpe)

        x = self.final_layer(x, t)
        x = self.unpatchify(x)
        return x.astype(ms.float32)

    @staticmethod
    def pack_text(y, mask=None):
        """(B, 1, L, C) -> the packed valid tokens (1, ΣL_i, C) and ``y_lens``, as upstream's ``masked_select``: the
        (B_m, L) mask (1 = real token) is tiled to the batch; without a mask every token is real."""
        b, _, length, c = y.shape
        if mask is None:
            return y.reshape(1, b * length, c), [length] * b
        keep = np.asarray(mask.asnumpy() if isinstance(mask, Tensor) else mask)
        keep = keep.reshape(keep.shape[0], -1) != 0
        if keep.shape[0] != b:
            keep = np.tile(keep, (b // keep.shape[0], 1))
        index = Tensor(np.flatnonzero(keep.reshape(-1)).astype(np.int32))
        return ops.gather(y.reshape(b * length, c), index, 0)[None], [int(n) for n in keep.sum(axis=1)]

    def unpatchify(self, x):
        """B (N_t N_h N_w) (T_p H_p W_p C_out) -> B C_out (N_t T_p) (N_h H_p) (N_w W_p)."""
        N_t, N_h, N_w = [self.input_size[i] // self.patch_size[i] for i in range(3)]
        T_p, H_p, W_p = self.patch_size
        x = x.reshape(x.shape[0], N_t, N_h, N_w, T_p, H_p, W_p, self.out_channels)
        x = x.transpose(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], self.out_channels, N_t * T_p, N_h * H_p, N_w * W_p)

    def get_spatial_pos_embed(self, grid_size=None):
        if grid_size is None:
            grid_size = self.input_size[1:]
        pos_embed = get_2d_sincos_pos_embed(self.hidden_size, (grid_size[0] // self.patch_size[1],
                                                               grid_size[1] // self.patch_size[2]),
                                            scale=self.space_scale)
        return Tensor(pos_embed.astype(np.float32)[None])

    def get_temporal_pos_embed(self):
        pos_embed = get_1d_sincos_pos_embed(self.hidden_size, self.input_size[0] // self.patch_size[0],
                                            scale=self.time_scale)
        return Tensor(pos_embed.astype(np.float32)[None])


def STDiT_XL_2(from_pretrained=None, **kwargs):
    """Upstream's registered "STDiT-XL/2": depth 28, hidden 1152, patch (1, 2, 2), 16 heads."""
    if from_pretrained is not None:
        raise ValueError("STDiT_XL_2: load the weights with load_state_dict (from_pretrained is not supported)")
    return STDiT(**XL_2_SIZES, **kwargs)


# ==================================================================================================================
# precision and backends
# ==================================================================================================================
def set_precision(cell: nn.Cell, precision: str, device: str = "CPU") -> Numerics:
    """Cast ``cell``'s parameters and buffers to ``precision`` (as torch's ``model.to(dtype)`` does; rounded to bf16
    values under emulation) and set the numerics of every sub-cell."""
    numerics = numerics_for(precision, device)
    for _, sub in cell.cells_and_names():
        if isinstance(sub, Cell):
            sub.numerics = numerics
    for _, param in cell.parameters_and_names():
        if param.has_init:
            param.set_dtype(numerics.dtype)
            continue
        if param.dtype == numerics.dtype and numerics.logical == "float32":
            continue
        data = param.astype(ms.float32).asnumpy()
        if param.dtype != numerics.dtype:
            param.set_dtype(numerics.dtype)
        param.set_data(Tensor(numerics.table(data)).astype(numerics.dtype))
    for _, sub in cell.cells_and_names():
        for name, buf in list(sub._buffers.items()):
            if buf is not None and not (buf.dtype == numerics.dtype and numerics.logical == "float32"):
                sub._buffers[name] = Tensor(numerics.table(buf.astype(ms.float32).asnumpy())).astype(numerics.dtype)
    return numerics


def set_attention_backend(cell: nn.Cell, backend: str | None) -> None:
    """Make every attention cell in ``cell`` use ``backend`` (None: follow ``ms_impl.attention``'s setting). Only
    the seam's paths use it: the cross-attention, and the self-attention with ``enable_flashattn``."""
    if backend is not None and backend not in attention_seam.BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; use one of {', '.join(attention_seam.BACKENDS)}")
    for _, sub in cell.cells_and_names():
        if isinstance(sub, (Attention, MultiHeadCrossAttention)):
            sub.attention_backend = backend
