"""A compact MindSpore Open-Sora-Plan v1.3 text-to-video DiT, written from scratch the way a third party ports it.

It computes what upstream's ``OpenSoraT2V_v1_3`` computes, but keeps things its own way — which is the point: the
parity harness reaches it through its plug-in (``plugin.py``) and overlay (``overlay.json``) alone.

* names: ``VideoDiT`` with ``patchify``, ``time_embed``, ``text_proj``, ``layers`` (``DiTBlock``: ``self_attn``,
  ``cross_attn``, ``mlp``, ``ada_table``) and ``head``; forward arguments ``latents, timesteps, context,
  video_mask, context_mask``; parameters named accordingly (the plug-in maps upstream checkpoints onto them);
* layout: the token states between blocks are **frame-major** ``(B, T', H'·W', D)`` (upstream: sequence-first
  ``(S, B, D)``); the timestep modulation is ``(B, 6, D)`` (upstream: ``(B, 6·D)``);
* masks: boolean **keep** masks (True = attend), repeated per query — ``(k·B, 1, Sq, Sk)`` — instead of additive
  −10000 / −9980 biases; Skiparse padding is simply "not kept"; Skiparse masks for ratio k are built only when
  Skiparse is on;
* it returns the output tensor itself (upstream: a tuple or a ``Transformer2DModelOutput``) and has no
  teacher-forcing API: a block or the head is called like any cell.

Numerics: fp32 only. Tables (the timestep sinusoid, the RoPE cos/sin) are computed on the host from float32
angles with float64 ``sin``/``cos``/``exp`` rounded once to float32 (MindSpore's CPU fp32 ``exp`` is a few ULP off,
which would show in the sinusoid at t≈1000); the tanh-GELU is evaluated as ``x·sigmoid(2u)`` (the same function;
MindSpore's CPU fp32 ``tanh`` is less accurate than its ``sigmoid``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

MASK_PENALTY = 10000.0          # what a masked key's score loses (upstream's additive bias)
TIMESTEP_CHANNELS = 256
ROPE_BASE = 10000.0
FIRST_SKIPARSE_LAYER, FIRST_DENSE_TAIL_LAYER = 2, 30   # upstream: layers 2..29 may be Skiparse, the rest dense


@dataclass(frozen=True)
class DiTConfig:
    heads: int
    head_dim: int
    layers: int
    in_channels: int
    out_channels: int
    patch: int
    caption_channels: int
    cross_dim: int
    eps: float
    skiparse: bool
    ratio: int
    interpolation: tuple  # (t, h, w) RoPE position divisors

    @classmethod
    def from_upstream(cls, cfg: dict) -> "DiTConfig":
        """From upstream's ``config.json`` keys."""
        if cfg.get("patch_size_t", 1) != 1:
            raise ValueError("VideoDiT: only patch_size_t = 1 is supported (upstream embeds patches per frame)")
        if cfg.get("activation_fn") != "gelu-approximate" or cfg.get("norm_elementwise_affine"):
            raise ValueError("VideoDiT: needs activation_fn 'gelu-approximate' and norms without affine parameters")
        hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        return cls(heads=cfg["num_attention_heads"], head_dim=cfg["attention_head_dim"], layers=cfg["num_layers"],
                   in_channels=cfg["in_channels"], out_channels=cfg.get("out_channels") or cfg["in_channels"],
                   patch=cfg["patch_size"], caption_channels=cfg["caption_channels"],
                   cross_dim=cfg.get("cross_attention_dim") or hidden, eps=cfg.get("norm_eps", 1e-6),
                   skiparse=bool(cfg.get("sparse1d", False)), ratio=int(cfg.get("sparse_n", 1)),
                   interpolation=(cfg.get("interpolation_scale_t", 1.0), cfg.get("interpolation_scale_h", 1.0),
                                  cfg.get("interpolation_scale_w", 1.0)))

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    def layer_kind(self, i: int) -> tuple[int, bool]:
        """(Skiparse ratio, group-skip) of layer ``i``; ratio 1 = dense attention."""
        sparse = self.skiparse and FIRST_SKIPARSE_LAYER <= i < FIRST_DENSE_TAIL_LAYER
        return (self.ratio if sparse else 1), i % 2 == 1


def _param(*shape) -> Parameter:
    return Parameter(Tensor(np.zeros(shape, np.float32)))


# ---- building blocks -----------------------------------------------------------------------------------------
class Dense(nn.Cell):
    """y = x·Wᵀ + b with W stored (out, in)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = _param(n_out, n_in)
        self.bias = _param(n_out)
        self._matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        y = self._matmul(x.reshape(-1, x.shape[-1]), self.weight) + self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])


class Norm(nn.Cell):
    """LayerNorm over the last axis without affine parameters."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self._norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self._ones = Tensor(np.ones(dim, np.float32))
        self._zeros = Tensor(np.zeros(dim, np.float32))

    def construct(self, x):
        return self._norm(x, self._ones, self._zeros)[0]


def gelu_tanh(x):
    """½x(1 + tanh(β(x + κx³))) = x·sigmoid(2β(x + κx³))."""
    return x * ops.sigmoid((2 * math.sqrt(2.0 / math.pi)) * (x + 0.044715 * (x * x * x)))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class MLP(nn.Cell):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.fc1 = Dense(dim, inner)
        self.fc2 = Dense(inner, dim)

    def construct(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


# ---- tables (host) ---------------------------------------------------------------------------------------------
def timestep_sinusoid(timesteps: np.ndarray, channels: int = TIMESTEP_CHANNELS) -> np.ndarray:
    """[cos | sin] of t·f_i, f_i = exp(−ln(10000)·i/half) with the exponent formed in float32 (as upstream does),
    angles as float32 products."""
    half = channels // 2
    exponent = (np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32)).astype(np.float32)
    freqs = np.exp((exponent / np.float32(half)).astype(np.float64)).astype(np.float32)
    angles = (np.asarray(timesteps, np.float32)[:, None] * freqs[None, :]).astype(np.float64)
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)


class Rope3D:
    """Rotary embedding over three thirds of the head dim — [t | h | w] — each rotated "half against half"."""

    def __init__(self, head_dim: int, interpolation: tuple):
        if head_dim % 3 or (head_dim // 3) % 2:
            raise ValueError(f"Rope3D: head_dim {head_dim} must split in three even thirds")
        self.third = head_dim // 3
        self.interpolation = interpolation
        exponent = (np.arange(0, self.third, 2, dtype=np.float32) / np.float32(self.third)).astype(np.float32)
        self.inv_freq = (np.float32(1.0) / np.power(np.float32(ROPE_BASE), exponent)).astype(np.float32)
        self._tables = {}   # grid -> ((cos, sin) per axis)

    def axis_positions(self, grid):
        """Integer (t, h, w) coordinates of the tokens, t-major."""
        t, h, w = grid
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        return tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)

    def tables(self, positions, scale):
        angle = (np.asarray(positions, np.float32) / np.float32(scale)).astype(np.float32)
        angle = np.outer(angle, self.inv_freq).astype(np.float32)
        angle = np.concatenate([angle, angle], axis=-1).astype(np.float64)
        return (Tensor(np.cos(angle).astype(np.float32)[None, :, None, :]),
                Tensor(np.sin(angle).astype(np.float32)[None, :, None, :]))

    def __call__(self, x, grid):
        """x (B, S, heads, head_dim)."""
        if grid not in self._tables:
            self._tables[grid] = [self.tables(pos, scale) for pos, scale in zip(self.axis_positions(grid),
                                                                                 self.interpolation)]
        out = []
        for part, (cos, sin) in zip(ops.chunk(x, 3, axis=-1), self._tables[grid]):
            half = self.third // 2
            rotated = ops.cat((-part[..., half:], part[..., :half]), -1)
            out.append(part * cos + rotated * sin)
        return ops.cat(out, -1)


# ---- Skiparse regrouping (batch-first) -------------------------------------------------------------------------
def skiparse_pad(n_tokens: int, ratio: int) -> int:
    return -n_tokens % (ratio * ratio)


def regroup(x, ratio: int, group: bool):
    """(B, S, C), S a multiple of ratio² -> (ratio·B, S/ratio, C), sub-batch-major. Single skip: sub-batch j holds
    tokens i ≡ j (mod ratio); group skip: the runs of ``ratio`` tokens with (i // ratio) ≡ j (mod ratio)."""
    b, s, c = x.shape
    if group:
        x = x.reshape(b, s // (ratio * ratio), ratio, ratio, c).transpose(2, 0, 1, 3, 4)
    else:
        x = x.reshape(b, s // ratio, ratio, c).transpose(2, 0, 1, 3)
    return x.reshape(ratio * b, s // ratio, c)


def ungroup(x, ratio: int, group: bool):
    kb, g, c = x.shape
    b = kb // ratio
    if group:
        x = x.reshape(ratio, b, g // ratio, ratio, c).transpose(1, 2, 0, 3, 4)
    else:
        x = x.reshape(ratio, b, g, c).transpose(1, 2, 0, 3)
    return x.reshape(b, g * ratio, c)


# ---- attention -------------------------------------------------------------------------------------------------
def attend(q, k, v, keep, heads: int):
    """softmax(q·kᵀ/√d − 10000·(1 − keep))·v; q (B, Sq, heads·d), k/v (B, Sk, heads·d), keep broadcastable to
    (B, heads, Sq, Sk)."""
    b, sq, inner = q.shape
    d = inner // heads
    q = q.reshape(b, sq, heads, d).transpose(0, 2, 1, 3)
    k = k.reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
    v = v.reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
    scores = ops.BatchMatMul(transpose_b=True)(q, k) * (d ** -0.5)
    scores = scores + (keep.astype(ms.float32) - 1) * MASK_PENALTY
    out = ops.BatchMatMul()(ops.softmax(scores, -1), v)
    return out.transpose(0, 2, 1, 3).reshape(b, sq, inner)


class SelfAttention(nn.Cell):
    def __init__(self, dim: int, heads: int, ratio: int, group: bool, rope: Rope3D):
        super().__init__()
        self.heads, self.ratio, self.group, self.rope = heads, ratio, group, rope
        self.wq, self.wk, self.wv, self.wo = Dense(dim, dim), Dense(dim, dim), Dense(dim, dim), Dense(dim, dim)

    def construct(self, x, keep, grid):
        b, s, dim = x.shape
        q = self.rope(self.wq(x).reshape(b, s, self.heads, -1), grid).reshape(b, s, dim)
        k = self.rope(self.wk(x).reshape(b, s, self.heads, -1), grid).reshape(b, s, dim)
        v = self.wv(x)
        if self.ratio > 1:
            pad = skiparse_pad(s, self.ratio)
            q, k, v = (regroup(ops.pad(t, (0, 0, 0, pad)), self.ratio, self.group) for t in (q, k, v))
            out = ungroup(attend(q, k, v, keep, self.heads), self.ratio, self.group)[:, :s]
        else:
            out = attend(q, k, v, keep, self.heads)
        return self.wo(out)


class CrossAttention(nn.Cell):
    """Queries from the video tokens (regrouped like the layer's self-attention), keys and values from the text."""

    def __init__(self, dim: int, cross_dim: int, heads: int, ratio: int, group: bool):
        super().__init__()
        self.heads, self.ratio, self.group = heads, ratio, group
        self.wq, self.wk, self.wv, self.wo = Dense(dim, dim), Dense(cross_dim, dim), Dense(cross_dim, dim), \
            Dense(dim, dim)

    def construct(self, x, context, keep):
        s = x.shape[1]
        q, k, v = self.wq(x), self.wk(context), self.wv(context)
        if self.ratio > 1:
            q = regroup(ops.pad(q, (0, 0, 0, skiparse_pad(s, self.ratio))), self.ratio, self.group)
            k, v = k.tile((self.ratio, 1, 1)), v.tile((self.ratio, 1, 1))
            out = ungroup(attend(q, k, v, keep, self.heads), self.ratio, self.group)[:, :s]
        else:
            out = attend(q, k, v, keep, self.heads)
        return self.wo(out)


class DiTBlock(nn.Cell):
    """adaLN-single self-attention (RoPE, Skiparse), plain cross-attention, adaLN-single MLP. x is frame-major
    (B, T', H'·W', D); modulation (B, 6, D)."""

    def __init__(self, cfg: DiTConfig, ratio: int, group: bool, rope: Rope3D):
        super().__init__()
        d = cfg.hidden
        self.norm_attn, self.norm_mlp = Norm(d, cfg.eps), Norm(d, cfg.eps)
        self.self_attn = SelfAttention(d, cfg.heads, ratio, group, rope)
        self.cross_attn = CrossAttention(d, cfg.cross_dim, cfg.heads, ratio, group)
        self.mlp = MLP(d, 4 * d)
        self.ada_table = _param(6, d)

    def construct(self, x, context, modulation, self_keep, context_keep, grid):
        b, t, hw, d = x.shape
        h = x.reshape(b, t * hw, d)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = ops.chunk(self.ada_table[None] + modulation, 6, axis=1)
        h = h + gate_a * self.self_attn(modulate(self.norm_attn(h), shift_a, scale_a), self_keep, grid)
        h = h + self.cross_attn(h, context, context_keep)
        h = h + gate_m * self.mlp(modulate(self.norm_mlp(h), shift_m, scale_m))
        return h.reshape(b, t, hw, d)


# ---- embeddings and head ---------------------------------------------------------------------------------------
class Patchify(nn.Cell):
    """Non-overlapping p×p patches of every frame -> frame-major tokens (B, T, H'·W', D)."""

    def __init__(self, channels: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.weight = _param(dim, channels, patch, patch)
        self.bias = _param(dim)
        self._matmul = ops.MatMul(transpose_b=True)

    def construct(self, latents):
        b, c, t, h, w = latents.shape
        p = self.patch
        hp, wp = h // p, w // p
        x = latents[..., :hp * p, :wp * p].reshape(b, c, t, hp, p, wp, p).transpose(0, 2, 3, 5, 1, 4, 6)
        y = self._matmul(x.reshape(-1, c * p * p), self.weight.reshape(self.weight.shape[0], -1)) + self.bias
        return y.reshape(b, t, hp * wp, -1)


class TimeEmbed(nn.Cell):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp_in = Dense(TIMESTEP_CHANNELS, dim)
        self.mlp_out = Dense(dim, dim)
        self.to_modulation = Dense(dim, 6 * dim)

    def construct(self, timesteps):
        """-> (modulation (B, 6, D), embedding (B, D))."""
        emb = self.mlp_out(ops.silu(self.mlp_in(Tensor(timestep_sinusoid(timesteps.asnumpy())))))
        return self.to_modulation(ops.silu(emb)).reshape(emb.shape[0], 6, -1), emb


class TextProjection(nn.Cell):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.fc_in = Dense(channels, dim)
        self.fc_out = Dense(dim, dim)

    def construct(self, context):
        """(B, 1, L, Dc) -> (B, L, D)."""
        return self.fc_out(gelu_tanh(self.fc_in(context[:, 0])))


class Head(nn.Cell):
    """adaLN-modulated final norm, projection to patches, and back to latents (B, C, T, H, W)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.patch, self.out_channels = cfg.patch, cfg.out_channels
        self.norm = Norm(cfg.hidden, 1e-6)
        self.shift_scale = _param(2, cfg.hidden)
        self.linear = Dense(cfg.hidden, cfg.patch * cfg.patch * cfg.out_channels)

    def construct(self, x, embedding, grid):
        b, t, hw, d = x.shape
        _, hp, wp = grid
        p, c = self.patch, self.out_channels
        shift, scale = ops.chunk(self.shift_scale[None] + embedding[:, None], 2, axis=1)
        y = self.linear(modulate(self.norm(x.reshape(b, t * hw, d)), shift, scale))
        y = y.reshape(b, t, hp, wp, p, p, c).transpose(0, 6, 1, 2, 4, 3, 5)
        return y.reshape(b, c, t, hp * p, wp * p)


# ---- the model -------------------------------------------------------------------------------------------------
class VideoDiT(nn.Cell):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.patchify = Patchify(cfg.in_channels, d, cfg.patch)
        self.time_embed = TimeEmbed(d)
        self.text_proj = TextProjection(cfg.caption_channels, d)
        rope = Rope3D(cfg.head_dim, cfg.interpolation)
        self.layers = nn.CellList([DiTBlock(cfg, *cfg.layer_kind(i), rope) for i in range(cfg.layers)])
        self.head = Head(cfg)

    def embed(self, latents, timesteps, context):
        modulation, t_embedding = self.time_embed(timesteps)
        return {"tokens": self.patchify(latents), "context": self.text_proj(context), "modulation": modulation,
                "t_embedding": t_embedding}

    def video_keep(self, video_mask):
        """(B, T, H, W) 0/1 -> (B, 1, T·H'·W') bool: a patch is kept if any of its pixels is valid."""
        b, t, h, w = video_mask.shape
        p = self.cfg.patch
        hp, wp = h // p, w // p
        m = video_mask[..., :hp * p, :wp * p].astype(ms.float32).reshape(b, t, hp, p, wp, p)
        return m.transpose(0, 1, 2, 4, 3, 5).reshape(b, 1, t * hp * wp, p * p).max(axis=-1) != 0

    def skiparse_keep_masks(self, video_keep, text_keep, ratio):
        """Keep masks for ratio ``ratio`` (1 = dense): (single-skip video, group-skip video, text), each
        (ratio·B, 1, queries, keys) with queries = the regrouped sequence length."""
        b, _, s = video_keep.shape
        padded = ops.pad(video_keep.astype(ms.float32), (0, skiparse_pad(s, ratio))).astype(ms.bool_)
        queries = padded.shape[-1] // ratio
        single = regroup(padded.reshape(b, -1, 1), ratio, False).reshape(ratio * b, 1, 1, queries)
        group = regroup(padded.reshape(b, -1, 1), ratio, True).reshape(ratio * b, 1, 1, queries)
        text = text_keep.tile((ratio, 1, 1))[:, :, None]
        return (ops.broadcast_to(single, (ratio * b, 1, queries, queries)),
                ops.broadcast_to(group, (ratio * b, 1, queries, queries)),
                ops.broadcast_to(text, (ratio * b, 1, queries, text.shape[-1])))

    def construct(self, latents, timesteps, context, video_mask, context_mask):
        cfg = self.cfg
        _, _, t, h, w = latents.shape
        grid = (t, h // cfg.patch, w // cfg.patch)
        video_keep = self.video_keep(video_mask)
        text_keep = context_mask != 0
        masks = {1: self.skiparse_keep_masks(video_keep, text_keep, 1)}
        if cfg.skiparse and cfg.layers > FIRST_SKIPARSE_LAYER:
            masks[cfg.ratio] = self.skiparse_keep_masks(video_keep, text_keep, cfg.ratio)
        e = self.embed(latents, timesteps, context)
        x = e["tokens"]
        for i, layer in enumerate(self.layers):
            ratio, group = cfg.layer_kind(i)
            single, grouped, text = masks[ratio]
            x = layer(x, e["context"], e["modulation"], grouped if group else single, text, grid)
        return self.head(x, e["t_embedding"], grid)
