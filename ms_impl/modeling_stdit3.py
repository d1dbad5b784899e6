"""Open-Sora 1.2 ``STDiT3`` in MindSpore 2.x (PyNative), module for module the upstream model.

Classes, attributes, methods and parameter names are upstream's (hpcaitech/Open-Sora v1.2.0,
``opensora/models/stdit/stdit3.py`` and ``opensora/models/layers/blocks.py``), so ``parameters_and_names()`` equals
torch's ``state_dict()`` keys with the same shapes and an upstream checkpoint loads by name: ``rope.freqs`` is a
Parameter on both sides, ``y_embedder.y_embedding`` a persistent buffer upstream and a Parameter without gradient
here (MindSpore has no buffers), same key. mindone's renames (RMSNorm ``gamma``) are not followed: a mindone
checkpoint needs a strict conversion map.

Layouts are upstream's throughout (tokens (B, T·S, C); packed text (1, Σy_lens, C) with ``y_lens`` a list), so
every probe compares without an adapter. Blocks and the final layer are callable on their own with explicit
conditioning, exactly as upstream's forward calls them (teacher forcing).

Attention. Upstream has two self-attention paths and one cross-attention path, and so does this port:
* self-attention with ``enable_flash_attn`` and N > B (upstream: ``flash_attn_func``) and the cross-attention
  (upstream: xformers ``memory_efficient_attention`` on packed text with a block-diagonal mask) go through the
  attention seam ``ms_impl.attention.attention``: the portable path (float32 softmax attention, one rounding) on
  CPU/GPU, ``flash_attention_score`` on Ascend. The packed text is laid out padded per sample with an additive
  -inf bias on the padding (per sample the same attention; the seam's Ascend branch turns the bias into its
  discard mask);
* self-attention otherwise (upstream's manual path, the CPU configuration) is written out with upstream's rounding
  points: ``q·scale``, ``q @ kᵀ`` and ``attn @ v`` in the activation dtype, the softmax in float32.

Numerics: ``numerics(x)`` (``ms_impl.precision``) marks every point where PyTorch's model materialises a tensor in
the activation dtype; it is the identity for fp32/fp16 and rounds to bf16 under ``bf16-emulated``. On CPU the
matmuls (Linear, Conv3d as a matmul, attention) accumulate in float32 and round once to the activation dtype, as
torch's CPU kernels do, and fp16 activations (SiLU, GELU) are computed in float32. Where torch's input to a Linear
is a non-contiguous view, ``F.linear`` rounds the matmul and the bias add separately, and so does the port
(``Linear.unfused``): upstream's residual stream into ``cross_attn.q_linear`` (it keeps the patch embedding's
transposed layout) and, for B = 1, the temporal rearrange into ``attn.qkv``. Host-side tables (numpy), because MindSpore's CPU fp32 ``exp``/``sin`` are several ULP off
torch's (~1e-3 in a sinusoid at t=999): the timestep/fps sinusoid (upstream's float32 chain, cos/sin in float64
rounded once), the 2D position embedding (float32 grid as torch forms it, ``inv_freq`` rounded to the model dtype
as ``model.to(dtype)`` rounds the buffer, sin/cos in float64) and the RoPE angles (positions in the activation
dtype times ``rope.freqs`` as loaded, rounded to the activation dtype as upstream's bf16 model does, cos/sin in
float64 rounded to the activation dtype). torch's own float32 ``exp`` is an ULP off in a few timestep frequencies,
which leaves ~|t|·1e-7 rad in the sinusoid (~2e-6 in t_embedding at t = 900, fp32).

Memory: no token streaming or chunking here yet; attention holds (B·heads, N, N) scores at once.

Size: one modeling file per family, as upstream keeps it (``stdit3.py`` + the blocks it uses).
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

TIMESTEP_CHANNELS = 256
MAX_PERIOD = 10000
ROPE_THETA = 10000.0
POS_EMBED_BASE = 10000.0
NORM_EPS = 1e-6
TEXT_PAD_BIAS = float("-inf")   # additive bias of a padding text token in the padded cross-attention layout


# ================================================================================================================
# configuration (upstream: a transformers.PretrainedConfig subclass; here a plain class, same keys and defaults)
# ================================================================================================================
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
        self.extra = dict(kwargs)

    @classmethod
    def from_any(cls, config) -> "STDiT3Config":
        if isinstance(config, cls):
            return config
        if not isinstance(config, Mapping) and hasattr(config, "to_dict"):
            config = config.to_dict()
        if not isinstance(config, Mapping):
            raise TypeError(f"STDiT3: expected a config mapping, got {type(config).__name__}")
        return cls(**dict(config))


# ================================================================================================================
# helpers: the model-wide precision, explicit broadcasting on CPU, float32-accumulating matmuls
# ================================================================================================================
class Cell(nn.Cell):
    """Base of every cell here: ``numerics`` is the model-wide precision (set by ``set_precision``)."""

    numerics: Numerics = FP32


def on_cpu() -> bool:
    return ms.get_context("device_target") == "CPU"


def bcast(small, like):
    """``small`` broadcast to ``like``'s shape explicitly on CPU (``ops.tile``: MindSpore's CPU kernels broadcast
    implicitly through per-element offset tables, slower and memory-hungry; the values are the same)."""
    if not on_cpu() or tuple(small.shape) == tuple(like.shape):
        return small
    return attention_seam.tile_to(small, like.shape)


def host(x) -> np.ndarray:
    """A numpy view of a tensor / array / list (for the host-side tables and the text mask)."""
    if isinstance(x, Tensor):
        return (x.astype(ms.float32) if x.dtype == ms.bfloat16 else x).asnumpy()
    return np.asarray(x)


_matmul = ops.BatchMatMul()
_matmul_nt = ops.BatchMatMul(transpose_b=True)
_linear_matmul = ops.MatMul(transpose_b=True)


def matmul(a, b, r: Numerics, transpose_b: bool = False):
    """``a @ b`` (or ``a @ bᵀ``) accumulated in float32 and rounded once to the activation dtype."""
    out = (_matmul_nt if transpose_b else _matmul)(a.astype(ms.float32), b.astype(ms.float32))
    return r(out.astype(r.dtype))


def mul_scalar(x, value: float, r: Numerics):
    """``x * value`` for a Python scalar as torch computes it: in float32 (the scalar as float32), one rounding to
    the activation dtype (MindSpore would round the scalar to fp16 first in an fp16 multiply)."""
    return r((x.astype(ms.float32) * value).astype(r.dtype))


def gelu_tanh(x):
    """tanh-GELU. On CPU in float32 as ``x·sigmoid(2u)``, ``u = β(x + κx³)`` (the same function; MindSpore's CPU
    ``gelu`` kernel's tanh is up to 1e-4 off, its fp32 sigmoid keeps this within 6e-7 of torch's kernel)."""
    if on_cpu():
        two_u = (2 * math.sqrt(2.0 / math.pi)) * (x + 0.044715 * (x * x * x))
        return x * ops.sigmoid(two_u)
    return ops.gelu(x, approximate="tanh")


def t2i_modulate(x, shift, scale, r: Numerics):
    """``x * (1 + scale) + shift`` with each step materialised like torch does."""
    y = r(x * bcast(r(1 + scale), x))
    return r(y + bcast(shift, y))


def as_lengths(mask):
    """``y_lens`` as a list of ints (from a list, a numpy array or a tensor), or None."""
    if mask is None:
        return None
    return [int(n) for n in np.asarray(host(mask)).reshape(-1)]


# ================================================================================================================
# opensora/models/layers/blocks.py: building blocks
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
        r = self.numerics
        if on_cpu():  # float32 accumulation, bias added in float32, one rounding (torch's addmm)
            y = self._matmul(x)
            if self.bias is not None:
                y = y + bcast(self.bias.astype(ms.float32), y)
            return r(y.astype(r.dtype))
        return r(ops.dense(x, self.weight, self.bias))

    def unfused(self, x):
        """``construct`` as torch's ``F.linear`` computes it on a non-contiguous 3-D input: the matmul rounded to
        the activation dtype, then the bias added and rounded again (``matmul`` + ``add_`` instead of ``addmm``)."""
        r = self.numerics
        y = r(self._matmul(x).astype(r.dtype)) if on_cpu() else r(ops.dense(x, self.weight, None))
        return y if self.bias is None else r(y + bcast(self.bias, y))

    def _matmul(self, x):
        y = _linear_matmul(x.reshape(-1, x.shape[-1]).astype(ms.float32), self.weight.astype(ms.float32))
        return y.reshape(*x.shape[:-1], self.out_features)


class Sequential(nn.SequentialCell):
    """``nn.Sequential``: children "0", "1", ... and ``construct(input)`` (torch's argument name, for captures)."""

    def construct(self, input):  # noqa: A002 - torch's name
        for cell in self.cell_list:
            input = cell(input)
        return input


def in_float32(fn, x, r: Numerics):
    """An elementwise function computed in float32 and rounded once to the activation dtype, as torch's CPU
    kernels compute half-precision activations (MindSpore's fp16 kernels would compute in fp16)."""
    return r(fn(x.astype(ms.float32)).astype(r.dtype))


class SiLU(Cell):
    def construct(self, x):
        return in_float32(ops.silu, x, self.numerics)


class GELU(Cell):
    """``nn.GELU(approximate="tanh")`` (upstream's ``approx_gelu``)."""

    def construct(self, x):
        return in_float32(gelu_tanh, x, self.numerics)


class LayerNorm(Cell):
    """``nn.LayerNorm(dim, eps, elementwise_affine=False)``: no parameters, float32 statistics, one rounding."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = False):
        super().__init__()
        if elementwise_affine:
            raise ValueError("LayerNorm: STDiT3's LayerNorms have no affine parameters")
        self.dim, self.eps = dim, eps
        self._layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self._gamma = Tensor(np.ones((dim,), np.float32))
        self._beta = Tensor(np.zeros((dim,), np.float32))

    def construct(self, x):
        y = self._layer_norm(x.astype(ms.float32), self._gamma, self._beta)[0]
        return self.numerics(y.astype(x.dtype))


def get_layernorm(hidden_size, eps: float, affine: bool, use_kernel: bool):
    # use_kernel (apex FusedLayerNorm upstream): the same normalisation
    return LayerNorm(hidden_size, eps=eps, elementwise_affine=affine)


class LlamaRMSNorm(Cell):
    """RMSNorm over the last dim (written out: MindSpore 2.10 has no CPU ``rms_norm`` kernel): statistics in float32,
    cast back to the input dtype, then times ``weight`` (upstream's name; mindone calls it ``gamma``)."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = Parameter(initializer("ones", (hidden_size,), ms.float32))
        self.variance_epsilon = eps

    def construct(self, hidden_states):
        r = self.numerics
        input_dtype = hidden_states.dtype
        h = hidden_states.astype(ms.float32)
        variance = (h * h).mean(-1, keep_dims=True)
        h = h * ops.rsqrt(variance + self.variance_epsilon)
        h = r(h.astype(input_dtype))
        return r(bcast(self.weight, h) * h)


class Mlp(Cell):
    """timm's ``Mlp`` as STDiT3 builds it: fc1 -> tanh-GELU -> fc2 (dropouts 0, norm Identity)."""

    def __init__(self, in_features, hidden_features=None, out_features=None):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = Linear(hidden_features, out_features)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed3D(Cell):
    """Zero-pad W, H, T (right/bottom/back) to the patch, Conv3d k = s = patch -> (B, N, C), tokens t-major."""

    def __init__(self, patch_size=(2, 4, 4), in_chans=3, embed_dim=96):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        bound = 1.0 / math.sqrt(in_chans * int(np.prod(patch_size)))
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size,
                              pad_mode="valid", has_bias=True, weight_init=Uniform(bound), bias_init=Uniform(bound))

    def construct(self, x):
        _, _, D, H, W = x.shape
        pt, ph, pw = self.patch_size
        pad = ((-W) % pw, (-H) % ph, (-D) % pt)
        if any(pad):
            x = ops.pad(x, (0, pad[0], 0, pad[1], 0, pad[2]))
        if on_cpu():
            return self._construct_as_matmul(x)
        x = self.numerics(self.proj(x))                       # (B C T H W)
        b, c = x.shape[0], x.shape[1]
        return x.reshape(b, c, -1).transpose(0, 2, 1)        # BCTHW -> BNC

    def _construct_as_matmul(self, x):
        """The stride = kernel convolution as one matmul over non-overlapping patches flattened channels-last
        ``(pt, ph, pw, c)`` (MindSpore's CPU Conv3d is slow; this order matches torch's CPU Conv3d to float32
        rounding, bit for bit at some sizes)."""
        b, c, d, h, w = x.shape
        pt, ph, pw = self.patch_size
        nt, nh, nw = d // pt, h // ph, w // pw
        patches = (x.reshape(b, c, nt, pt, nh, ph, nw, pw).transpose(0, 2, 4, 6, 3, 5, 7, 1)
                   .reshape(b * nt * nh * nw, pt * ph * pw * c))
        weight = self.proj.weight.transpose(0, 2, 3, 4, 1).reshape(self.embed_dim, -1)
        y = _linear_matmul(patches.astype(ms.float32), weight.astype(ms.float32))
        y = y + bcast(self.proj.bias.astype(ms.float32), y)
        r = self.numerics
        return r(y.astype(r.dtype)).reshape(b, nt * nh * nw, self.embed_dim)


def timestep_frequencies(half: int, max_period: int = MAX_PERIOD) -> np.ndarray:
    """``exp(-ln(max_period) * arange(half, fp32) / half)`` in upstream's float32 steps (exp in float64, rounded)."""
    exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)).astype(np.float32)
    exponent = (exponent / np.float32(half)).astype(np.float32)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


class TimestepEmbedder(Cell):
    """Sinusoid of the timestep (**cos first**, 256 channels) -> Linear -> SiLU -> Linear (``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size, frequency_embedding_size=TIMESTEP_CHANNELS):
        super().__init__()
        self.mlp = Sequential([Linear(frequency_embedding_size, hidden_size), SiLU(),
                                      Linear(hidden_size, hidden_size)])
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=MAX_PERIOD) -> np.ndarray:
        """On the host: ``t.float()[:, None] * freqs`` (a float32 product), [cos, sin] in float64 rounded to float32."""
        half = dim // 2
        args = (host(t).astype(np.float32)[:, None] * timestep_frequencies(half, max_period)[None]).astype(np.float32)
        args = args.astype(np.float64)
        embedding = np.concatenate([np.cos(args), np.sin(args)], axis=-1).astype(np.float32)
        if dim % 2:
            embedding = np.concatenate([embedding, np.zeros_like(embedding[:, :1])], axis=-1)
        return embedding

    def embed(self, t_freq: np.ndarray):
        r = self.numerics
        return self.mlp(r(Tensor(t_freq).astype(r.dtype)))

    def construct(self, t, dtype=None):
        return self.embed(self.timestep_embedding(t, self.frequency_embedding_size))


class SizeEmbedder(TimestepEmbedder):
    """The fps embedder: same sinusoid and MLP; ``b`` values are tiled (``repeat``) to the batch ``bs``."""

    def __init__(self, hidden_size, frequency_embedding_size=TIMESTEP_CHANNELS):
        super().__init__(hidden_size=hidden_size, frequency_embedding_size=frequency_embedding_size)
        self.outdim = hidden_size

    def construct(self, s, bs):
        s = host(s)
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2:
            raise ValueError(f"SizeEmbedder: expected (b, d) sizes, got shape {s.shape}")
        if s.shape[0] != bs:
            s = np.tile(s, (bs // s.shape[0], 1))
            if s.shape[0] != bs:
                raise ValueError(f"SizeEmbedder: {s.shape[0]} values cannot be tiled to batch {bs}")
        b, dims = s.shape
        s_emb = self.embed(self.timestep_embedding(s.reshape(b * dims), self.frequency_embedding_size))
        return s_emb.reshape(b, dims * self.outdim)


class CaptionEmbedder(Cell):
    """``y_proj`` (Mlp with tanh-GELU) of the T5 features; ``y_embedding`` (the learned null caption used for
    classifier-free guidance) is a Parameter without gradient here, a persistent buffer upstream — same key."""

    def __init__(self, in_channels, hidden_size, uncond_prob, token_num=120):
        super().__init__()
        self.y_proj = Mlp(in_features=in_channels, hidden_features=hidden_size, out_features=hidden_size)
        self.y_embedding = Parameter(initializer(Normal(sigma=in_channels ** -0.5), (token_num, in_channels),
                                                 ms.float32), requires_grad=False)
        self.uncond_prob = uncond_prob

    def construct(self, caption, train=False, force_drop_ids=None):
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            raise ValueError("CaptionEmbedder: caption token drop (training, CFG dropout) is not implemented")
        return self.y_proj(caption)


def inverse_powers(base: float, exponent: np.ndarray) -> np.ndarray:
    """``1.0 / (base ** exponent)`` for a float32 exponent as torch computes it: the power rounded once to float32
    (torch's float32 pow is within an ULP of that; numpy's float32 pow is not), then a float32 reciprocal."""
    power = np.power(np.float64(base), np.asarray(exponent, np.float32).astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / power).astype(np.float32)


def pos_embed_inv_freq(dim: int) -> np.ndarray:
    """``1 / 10000 ** (arange(0, dim/2, 2).float() / (dim/2))`` (the non-persistent buffer ``inv_freq``)."""
    half_dim = dim // 2
    return inverse_powers(POS_EMBED_BASE, np.arange(0, half_dim, 2, dtype=np.float32) / np.float32(half_dim))


class PositionEmbedding2D(Cell):
    """2D sincos embedding per token grid, on the host: grid ``arange / scale · base_size / size`` in float32 as
    torch forms it, first half of the channels from the column (w) coordinate, second from the row (h) one, each
    [sin, cos]. ``inv_freq`` is a non-persistent buffer upstream, so ``model.to(dtype)`` rounds it: so here."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 4 != 0:
            raise ValueError("dim must be divisible by 4")
        self.dim = dim
        self.inv_freq = pos_embed_inv_freq(dim)
        self._cache = {}

    def _get_sin_cos_emb(self, t: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
        out = np.outer(t, inv_freq).astype(np.float32).astype(np.float64)   # a float32 product, like einsum
        return np.concatenate((np.sin(out), np.cos(out)), axis=-1).astype(np.float32)

    def _get_cached_emb(self, numerics: Numerics, h: int, w: int, scale: float = 1.0, base_size=None):
        key = (numerics.logical, h, w, float(scale), base_size)
        if key not in self._cache:
            grid_h = (np.arange(h, dtype=np.float32) / np.float32(scale)).astype(np.float32)
            grid_w = (np.arange(w, dtype=np.float32) / np.float32(scale)).astype(np.float32)
            if base_size is not None:
                grid_h = (grid_h * np.float32(base_size / h)).astype(np.float32)
                grid_w = (grid_w * np.float32(base_size / w)).astype(np.float32)
            col = np.tile(grid_w, h)                # per token (row-major over (h, w)): its w coordinate
            row = np.repeat(grid_h, w)              # and its h coordinate
            inv_freq = numerics.table(self.inv_freq).astype(np.float32)
            emb = np.concatenate([self._get_sin_cos_emb(col, inv_freq), self._get_sin_cos_emb(row, inv_freq)], -1)
            self._cache[key] = numerics.table(emb[None])
        return self._cache[key]

    def construct(self, x, h: int, w: int, scale=1.0, base_size=None):
        r = self.numerics
        return Tensor(self._get_cached_emb(r, h, w, scale, base_size)).astype(r.dtype)


# ---- rotary embedding (rotary_embedding_torch 0.5.3 as STDiT3 uses it) ----------------------------------------
def rotate_half(x):
    """Interleaved pairs: (x0, x1), (x2, x3), ... -> (-x1, x0), (-x3, x2), ..."""
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    return ops.stack((-pairs[..., 1], pairs[..., 0]), -1).reshape(x.shape)


class RotaryEmbedding(Cell):
    """``rope.freqs`` (head_dim/2,) as a Parameter (as upstream), shared by all temporal blocks through the bound
    ``rotate_queries_or_keys``; rotates along dim -2 (the frames of (B·S, heads, T, d)) with positions 0..T-1."""

    def __init__(self, dim, theta=ROPE_THETA):
        super().__init__()
        freqs = inverse_powers(theta, np.arange(0, dim, 2, dtype=np.float32)[: dim // 2] / np.float32(dim))
        self.freqs = Parameter(Tensor(freqs), requires_grad=False)
        self.default_seq_dim = -2

    def cos_sin(self, seq_len: int):
        """cos/sin tables (seq_len, d) as upstream's model computes them in its dtype: positions in the activation
        dtype, angle = position · freq rounded to the activation dtype, each frequency repeated for its pair."""
        r = self.numerics
        positions = r.table(np.arange(seq_len, dtype=np.float32)).astype(np.float32)
        freqs = host(self.freqs).astype(np.float32)
        angles = r.table((positions[:, None] * freqs[None]).astype(np.float32)).astype(np.float64)
        angles = np.repeat(angles, 2, axis=-1)
        return r.table(np.cos(angles)), r.table(np.sin(angles))

    def rotate_queries_or_keys(self, t, seq_dim=None):
        seq_dim = self.default_seq_dim if seq_dim is None else seq_dim
        if seq_dim != -2:
            raise ValueError("RotaryEmbedding: STDiT3 rotates along dim -2")
        r = self.numerics
        cos, sin = self.cos_sin(t.shape[-2])
        cos = bcast(Tensor(cos).astype(r.dtype), t)
        sin = bcast(Tensor(sin).astype(r.dtype), t)
        return r(r(t * cos) + r(rotate_half(t) * sin))


# ---- attention -----------------------------------------------------------------------------------------------
class Attention(Cell):
    """Self-attention: qkv -> per-head RMSNorm (qk_norm) -> RoPE (temporal blocks) -> attention -> proj."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 enable_flash_attn: bool = False, rope=None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError("dim should be divisible by num_heads")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.enable_flash_attn = enable_flash_attn
        self.attention_backend = None   # None: the seam's module-level setting (set_attention_backend)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = LlamaRMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = LlamaRMSNorm(self.head_dim) if qk_norm else None
        self.proj = Linear(dim, dim)
        self.rope = rope is not None
        self.rotary_emb = rope

    def construct(self, x, qkv_unfused=False):
        """``qkv_unfused``: torch's ``x`` is a non-contiguous view (see ``STDiT3Block``), so its qkv Linear rounds
        the matmul and the bias add separately."""
        r = self.numerics
        B, N, C = x.shape
        enable_flash_attn = self.enable_flash_attn and (N > B)   # upstream's switch
        qkv = self.qkv.unfused(x) if qkv_unfused else self.qkv(x)
        qkv = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                            # (B, heads, N, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q = self.rotary_emb(q)
            k = self.rotary_emb(k)
        if enable_flash_attn:
            merge = attention_seam.merge_heads                      # (B, heads, N, d) -> (B, N, heads·d)
            x = r(attention_seam.attention(merge(q), merge(k), merge(v), None, heads=self.num_heads,
                                           scale=self.scale, backend=self.attention_backend,
                                           kernel_dtype=r.kernel_dtype))
        else:
            q = mul_scalar(q, self.scale, r)
            attn = matmul(q, k, r, transpose_b=True)
            attn = attention_seam.softmax_precise(attn.astype(ms.float32))   # float32 softmax, cast back
            attn = r(attn.astype(r.dtype))
            x = matmul(attn, v, r).transpose(0, 2, 1, 3).reshape(B, N, C)
        return self.proj(x)


class MultiHeadCrossAttention(Cell):
    """Cross-attention of the video tokens to the packed text: sample i's N queries attend to its own y_lens[i]
    tokens (upstream: xformers with ``BlockDiagonalMask.from_seqlens([N] * B, y_lens)``). Without ``mask`` all
    B·N queries attend to all keys (upstream's behaviour when called with mask=None)."""

    def __init__(self, d_model, num_heads):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError("d_model must be divisible by num_heads")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scale = self.head_dim ** -0.5
        self.attention_backend = None
        self.q_linear = Linear(d_model, d_model)
        self.kv_linear = Linear(d_model, d_model * 2)
        self.proj = Linear(d_model, d_model)

    def construct(self, x, cond, mask=None):
        r = self.numerics
        B, N, C = x.shape
        # Upstream's residual stream keeps the channel-first memory layout of the patch embedding's
        # ``flatten(2).transpose(1, 2)`` through every residual add; for N > 1 tokens it is not contiguous, and
        # torch's F.linear on it is a matmul and a separate bias add (two roundings in bf16/fp16). q_linear is the
        # one Linear that reads the stream.
        q = self.q_linear.unfused(x) if N > 1 else self.q_linear(x)   # (B, N, C)
        kv = self.kv_linear(cond).reshape(1, -1, 2, C)
        k, v = kv[:, :, 0], kv[:, :, 1]                                # (1, Σy_lens, C)
        lens = as_lengths(mask)
        if lens is None:
            out = attention_seam.attention(q.reshape(1, B * N, C), k, v, None, heads=self.num_heads,
                                           scale=self.scale, backend=self.attention_backend,
                                           kernel_dtype=r.kernel_dtype)
        else:
            k, v, bias = self.padded_text(k, v, lens, B)
            out = attention_seam.attention(q, k, v, bias, heads=self.num_heads, scale=self.scale,
                                           backend=self.attention_backend, kernel_dtype=r.kernel_dtype)
        return self.proj(r(out.reshape(B, N, C)))

    def padded_text(self, k, v, lens, batch: int):
        """Packed (1, Σlens, C) keys/values -> (B, max(lens), C) per sample, and the additive bias (B, 1, 1, max)
        that drops the padding (None when nothing is padded)."""
        if len(lens) != batch or sum(lens) != k.shape[1] or min(lens) < 1:
            raise ValueError(f"MultiHeadCrossAttention: y_lens {lens} do not split {k.shape[1]} text tokens over "
                             f"{batch} samples (each needs at least one)")
        longest = max(lens)
        starts = np.cumsum([0] + list(lens[:-1]))
        index = np.minimum(starts[:, None] + np.arange(longest)[None], starts[:, None] + np.asarray(lens)[:, None] - 1)
        index = Tensor(index.reshape(-1).astype(np.int32))
        k = ops.gather(k[0], index, 0).reshape(batch, longest, -1)
        v = ops.gather(v[0], index, 0).reshape(batch, longest, -1)
        if min(lens) == longest:
            return k, v, None
        pad = np.arange(longest)[None] >= np.asarray(lens)[:, None]
        bias = np.where(pad, np.float32(TEXT_PAD_BIAS), np.float32(0.0)).reshape(batch, 1, 1, longest)
        return k, v, Tensor(bias).astype(self.numerics.dtype)


# ---- final layer ------------------------------------------------------------------------------------------------
def t_mask_select(x_mask, x, masked_x, T, S):
    """x, masked_x (B, T·S, C); x_mask (B, T) bool: the frames where it is False take ``masked_x``."""
    B, _, C = x.shape
    x4 = x.reshape(B, T, S, C)
    cond = bcast(Tensor(host(x_mask).astype(bool))[:, :, None, None], x4)
    return ops.where(cond, x4, masked_x.reshape(B, T, S, C)).reshape(B, T * S, C)


class T2IFinalLayer(Cell):
    """LayerNorm, modulation by ``scale_shift_table + t`` (per frame: t, or t0 where x_mask is False), Linear."""

    def __init__(self, hidden_size, num_patch, out_channels):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size, eps=NORM_EPS)
        self.linear = Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = Parameter(initializer(Normal(sigma=hidden_size ** -0.5), (2, hidden_size),
                                                       ms.float32))
        self.out_channels = out_channels

    def construct(self, x, t, x_mask=None, t0=None, T=None, S=None):
        r = self.numerics
        shift, scale = ops.chunk(r(self.scale_shift_table[None] + t[:, None]), 2, axis=1)
        x = t2i_modulate(self.norm_final(x), shift, scale, r)
        if x_mask is not None:
            shift_zero, scale_zero = ops.chunk(r(self.scale_shift_table[None] + t0[:, None]), 2, axis=1)
            x_zero = t2i_modulate(self.norm_final(x), shift_zero, scale_zero, r)
            x = t_mask_select(x_mask, x, x_zero, T, S)
        return self.linear(x)


# ================================================================================================================
# opensora/models/stdit/stdit3.py
# ================================================================================================================
class STDiT3Block(Cell):
    """One spatial (attention within each frame) or temporal (attention along time, RoPE) block.

    construct(x (B, T·S, C), y (1, Σy_lens, C) packed text, t (B, 6C), mask = y_lens, x_mask (B, T) bool,
    t0 (B, 6C) the timestep-0 modulation, T, S)."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, rope=None, qk_norm=False, temporal=False,
                 enable_flash_attn=False, enable_layernorm_kernel=False):
        super().__init__()
        self.temporal = temporal
        self.hidden_size = hidden_size
        self.enable_flash_attn = enable_flash_attn
        self.norm1 = get_layernorm(hidden_size, eps=NORM_EPS, affine=False, use_kernel=enable_layernorm_kernel)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, qk_norm=qk_norm, rope=rope,
                              enable_flash_attn=enable_flash_attn)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.norm2 = get_layernorm(hidden_size, eps=NORM_EPS, affine=False, use_kernel=enable_layernorm_kernel)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio))
        self.scale_shift_table = Parameter(initializer(Normal(sigma=hidden_size ** -0.5), (6, hidden_size),
                                                       ms.float32))

    def construct(self, x, y, t, mask=None, x_mask=None, t0=None, T=None, S=None):
        r = self.numerics
        B, N, C = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.chunk(
            r(self.scale_shift_table[None] + t.reshape(B, 6, -1)), 6, axis=1)
        if x_mask is not None:
            shift_msa_zero, scale_msa_zero, gate_msa_zero, shift_mlp_zero, scale_mlp_zero, gate_mlp_zero = ops.chunk(
                r(self.scale_shift_table[None] + t0.reshape(B, 6, -1)), 6, axis=1)

        # modulate (attention)
        norm1 = self.norm1(x)
        x_m = t2i_modulate(norm1, shift_msa, scale_msa, r)
        if x_mask is not None:
            x_m = t_mask_select(x_mask, x_m, t2i_modulate(norm1, shift_msa_zero, scale_msa_zero, r), T, S)

        # attention: B (T S) C -> (B S) T C (temporal) or (B T) S C (spatial), and back
        if self.temporal:
            x_m = x_m.reshape(B, T, S, C).transpose(0, 2, 1, 3).reshape(B * S, T, C)
            # for B = 1 torch's rearrange to (B S) T C is a non-contiguous view when T, S > 1 (a contiguous copy
            # otherwise), and F.linear on it rounds the matmul and the bias add separately
            x_m = self.attn(x_m, qkv_unfused=B == 1 and T > 1 and S > 1)
            x_m = x_m.reshape(B, S, T, C).transpose(0, 2, 1, 3).reshape(B, T * S, C)
        else:
            x_m = self.attn(x_m.reshape(B * T, S, C)).reshape(B, T * S, C)

        # gate and residual
        x_m_s = r(bcast(gate_msa, x_m) * x_m)
        if x_mask is not None:
            x_m_s = t_mask_select(x_mask, x_m_s, r(bcast(gate_msa_zero, x_m) * x_m), T, S)
        x = r(x + x_m_s)

        # cross attention
        x = r(x + self.cross_attn(x, y, mask))

        # modulate (MLP)
        norm2 = self.norm2(x)
        x_m = t2i_modulate(norm2, shift_mlp, scale_mlp, r)
        if x_mask is not None:
            x_m = t_mask_select(x_mask, x_m, t2i_modulate(norm2, shift_mlp_zero, scale_mlp_zero, r), T, S)

        # MLP, gate and residual
        x_m = self.mlp(x_m)
        x_m_s = r(bcast(gate_mlp, x_m) * x_m)
        if x_mask is not None:
            x_m_s = t_mask_select(x_mask, x_m_s, r(bcast(gate_mlp_zero, x_m) * x_m), T, S)
        return r(x + x_m_s)


class STDiT3(Cell):
    """Open-Sora 1.2's STDiT3. ``construct(x, timestep, y, mask, x_mask, fps, height, width)`` -> (B, C_out, T, H, W)
    float32; ``height``/``width`` are the *pixel* size (element 0 is read). Tensors or numpy arrays."""

    def __init__(self, config):
        super().__init__()
        config = STDiT3Config.from_any(config)
        if config.enable_sequence_parallelism:
            raise ValueError("STDiT3: enable_sequence_parallelism=True is not supported by this port")
        if config.skip_y_embedder:
            raise ValueError("STDiT3: skip_y_embedder=True (pre-embedded, packed text) is not supported")
        self.config = config
        self.pred_sigma = config.pred_sigma
        self.in_channels = config.in_channels
        self.out_channels = config.in_channels * 2 if config.pred_sigma else config.in_channels
        self.depth = config.depth
        self.mlp_ratio = config.mlp_ratio
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_heads
        self.enable_flash_attn = config.enable_flash_attn
        self.patch_size = tuple(config.patch_size)
        self.input_sq_size = config.input_sq_size
        self.pos_embed = PositionEmbedding2D(config.hidden_size)
        self.rope = RotaryEmbedding(dim=self.hidden_size // self.num_heads)

        # embedding
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, config.hidden_size)
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.fps_embedder = SizeEmbedder(self.hidden_size)
        self.t_block = Sequential([SiLU(), Linear(config.hidden_size, 6 * config.hidden_size)])
        self.y_embedder = CaptionEmbedder(in_channels=config.caption_channels, hidden_size=config.hidden_size,
                                          uncond_prob=config.class_dropout_prob, token_num=config.model_max_length)

        block_kwargs = dict(hidden_size=config.hidden_size, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                            qk_norm=config.qk_norm, enable_flash_attn=config.enable_flash_attn,
                            enable_layernorm_kernel=config.enable_layernorm_kernel)
        self.spatial_blocks = nn.CellList([STDiT3Block(**block_kwargs) for _ in range(config.depth)])
        self.temporal_blocks = nn.CellList([
            STDiT3Block(**block_kwargs, temporal=True, rope=self.rope.rotate_queries_or_keys)
            for _ in range(config.depth)])
        self.final_layer = T2IFinalLayer(config.hidden_size, int(np.prod(self.patch_size)), self.out_channels)
        self.set_train(False)

    @property
    def dtype(self):
        """Activation dtype MindSpore computes in (float32 under bf16 emulation)."""
        return self.numerics.dtype

    def set_precision(self, precision: str, device: str = "CPU") -> "STDiT3":
        set_precision(self, precision, device)
        return self

    def get_dynamic_size(self, x):
        _, _, T, H, W = x.shape
        pt, ph, pw = self.patch_size
        return -(-T // pt), -(-H // ph), -(-W // pw)

    def encode_text(self, y, mask=None):
        """-> packed text (1, Σy_lens, C) of every sample's valid tokens (in order), and ``y_lens`` (a list)."""
        y = self.y_embedder(y, False)                                   # (B, 1, L, C)
        B, _, L, C = y.shape
        if mask is not None:
            mask = host(mask)
            if mask.shape[0] != B:
                mask = np.tile(mask, (B // mask.shape[0], 1))
            mask = mask.reshape(B, L) != 0
            y = ops.gather(y.reshape(B * L, C), Tensor(np.flatnonzero(mask).astype(np.int32)), 0).reshape(1, -1, C)
            y_lens = [int(n) for n in mask.sum(axis=1)]
        else:
            y_lens = [L] * B
            y = y.reshape(1, B * L, C)
        return y, y_lens

    def construct(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, **kwargs):
        r = self.numerics
        x, y = _tensor(x), _tensor(y)
        B = x.shape[0]
        x = r(x.astype(self.dtype))
        timestep = r.table(host(timestep))                    # upstream: timestep.to(dtype)
        y = r(y.astype(self.dtype))

        # === get pos embed ===
        _, _, Tx, Hx, Wx = x.shape
        T, H, W = self.get_dynamic_size(x)
        S = H * W
        base_size = round(S ** 0.5)
        resolution_sq = (float(host(height).reshape(-1)[0]) * float(host(width).reshape(-1)[0])) ** 0.5
        scale = resolution_sq / self.input_sq_size
        pos_emb = self.pos_embed(x, H, W, scale=scale, base_size=base_size)

        # === get timestep embed ===
        t = self.t_embedder(timestep, dtype=self.dtype)      # [B, C]
        fps = self.fps_embedder(host(fps)[:, None], B)
        t = r(t + fps)
        t_mlp = self.t_block(t)
        t0 = t0_mlp = None
        if x_mask is not None:
            t0 = self.t_embedder(np.zeros_like(timestep), dtype=self.dtype)
            t0 = r(t0 + fps)
            t0_mlp = self.t_block(t0)

        # === get y embed ===
        y, y_lens = self.encode_text(y, mask)

        # === get x embed ===
        x = self.x_embedder(x)                                # [B, N, C]
        x = x.reshape(B, T, S, -1)
        x = r(x + bcast(pos_emb[:, None], x))
        x = x.reshape(B, T * S, -1)

        # === blocks ===
        for spatial_block, temporal_block in zip(self.spatial_blocks, self.temporal_blocks):
            x = spatial_block(x, y, t_mlp, y_lens, x_mask, t0_mlp, T, S)
            x = temporal_block(x, y, t_mlp, y_lens, x_mask, t0_mlp, T, S)

        # === final layer ===
        x = self.final_layer(x, t, x_mask, t0, T, S)
        x = self.unpatchify(x, T, H, W, Tx, Hx, Wx)
        return x.astype(ms.float32)

    def unpatchify(self, x, N_t, N_h, N_w, R_t, R_h, R_w):
        """(B, N, T_p·H_p·W_p·C_out) -> (B, C_out, T, H, W), cropped back to the unpadded input size."""
        T_p, H_p, W_p = self.patch_size
        B = x.shape[0]
        x = x.reshape(B, N_t, N_h, N_w, T_p, H_p, W_p, self.out_channels).transpose(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.reshape(B, self.out_channels, N_t * T_p, N_h * H_p, N_w * W_p)
        if (R_t, R_h, R_w) != (N_t * T_p, N_h * H_p, N_w * W_p):
            x = x[:, :, :R_t, :R_h, :R_w]
        return x


def _tensor(x):
    return x if isinstance(x, Tensor) else Tensor(np.ascontiguousarray(x))


def STDiT3_XL_2(**kwargs):
    """Upstream's ``STDiT3-XL/2`` (without ``from_pretrained``): depth 28, hidden 1152, 16 heads, patch (1, 2, 2)."""
    return STDiT3(STDiT3Config(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16, **kwargs))


# ================================================================================================================
# precision and attention backend
# ================================================================================================================
def set_precision(cell: nn.Cell, precision: str, device: str = "CPU") -> Numerics:
    """Cast ``cell``'s parameters to ``precision`` (rounded to bf16 values under emulation; ``rope.freqs`` and
    ``y_embedding`` included, as torch's ``model.to(dtype)`` casts them) and set every sub-cell's numerics."""
    numerics = numerics_for(precision, device)
    for _, sub in cell.cells_and_names():
        if isinstance(sub, Cell):
            sub.numerics = numerics
    for _, param in cell.parameters_and_names():
        if param.has_init:
            param.set_dtype(numerics.dtype)
            continue
        data = host(param).astype(np.float32)
        if param.dtype != numerics.dtype:
            param.set_dtype(numerics.dtype)
        param.set_data(Tensor(numerics.table(data)).astype(numerics.dtype))
    return numerics


def set_attention_backend(cell: nn.Cell, backend: str | None) -> None:
    """Make every attention in ``cell`` use ``backend`` (None: follow ``ms_impl.attention``'s module setting)."""
    if backend is not None and backend not in attention_seam.BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; use one of {', '.join(attention_seam.BACKENDS)}")
    for _, sub in cell.cells_and_names():
        if isinstance(sub, (Attention, MultiHeadCrossAttention)):
            sub.attention_backend = backend
