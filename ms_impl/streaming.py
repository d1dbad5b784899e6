"""Opt-in memory machinery for the MindSpore ``OpenSoraT2V_v1_3`` at real sizes, beside the model (like diffusers'
``enable_forward_chunking``). Nothing here is active until switched on:

* ``enable_feed_forward_chunking(model, max_elements)``: a feed-forward whose inner activations (tokens · 4·D)
  exceed ``max_elements`` runs in token chunks (every token's FFN is independent of the others). fp32 values are
  those of one call (the CPU matmul gives the same rows from 16 rows on); under bf16 a chunk boundary can flip an
  ULP here and there.
* ``enable_token_streaming(model, min_elements=..., ...)``: a block whose hidden states hold more than
  ``min_elements`` elements runs token-streamed with the portable attention path: the same math, holding only the
  residual stream (updated in place), the self-attention outputs of all tokens, one head group's keys and values,
  and one chunk of tokens. The patch embedding then runs in bands of ``chunk_tokens`` tokens and the output head per
  token chunk. Hooks on a block fire; hooks inside it do not on this path. Bit-identical to the plain blocks (tested
  with every block forced onto it, fp32 and bf16).
  ``host_buffers`` (the CPU build): the long-lived buffers (residual stream, attention outputs, a head group's keys
  and values, the cross-attention text keys/values, the projected caption) are numpy-backed tensors outside
  MindSpore's CPU memory pool. That pool is one ``malloc`` that never returns memory and keeps the high-water mark
  of live op outputs *plus* the holes between them, so what lowers the real-size peak is fewer, evenly sized large
  temporaries and nothing long-lived among them; the defaults below are measured for it.

``describe(model)`` lists what is switched on (for reports).

Size: the token-streamed block restates the block's whole math in chunks (it must stay bit-identical to it),
so it cannot be shorter than the block plus its chunk loops.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from ms_impl import attention as attention_seam
from ms_impl.cpu_kernels import CpuKernels
from ms_impl.modeling_opensora import zero_pad_tokens

# The feed-forward runs in token chunks once its inner activations (tokens · 4·D) would exceed this many elements
# (released width: 120 tokens x 9,216, half a streamed chunk: at the released size its temporaries are the largest
# in the chunk loop, and halved they leave MindSpore's pool 14 MB lower).
FFN_CHUNK_ELEMENTS = 120 * 9216
# Blocks whose hidden states hold more than this many elements (B·S·D; released size 21,120 x 2,304) run token-
# streamed when the harness switches streaming on. Lower than torch's: MindSpore's CPU pool keeps the high-water mark
# of an unstreamed block's temporaries (~17 hidden states at 6,144 x 1,152) for the whole run.
REAL_SIZE_ELEMENTS = 4 * 1024 * 1024


@dataclass(frozen=True)
class TokenStreaming:
    """What ``enable_token_streaming`` installs. ``chunk_tokens``: 240 tokens (15 Skiparse units) divide the
    released 21,120 tokens, so there is no odd-sized last chunk, whose temporaries split the pool's holes (8 MB lower
    than 256). ``group_heads``: self-attention heads per group (released 24 heads: 12 groups; a group's keys and
    values = 1/6 of a hidden state; one-head groups: +0.01 GB, the pool grows by more than the buffers shrink).
    ``attention_scores``: scores per streamed attention call, 240 x 9,216, the size of a chunk's norm/modulation
    temporaries at the released width, so the pool's holes fit every large temporary (1 Mi: 2x slower and no lower).
    ``query_chunks``: keys, values and queries are built that many token chunks at a time (every round of chunk
    temporaries can leave the pool a little more fragmented: fewer, longer calls; 480/512-token chunks: +0.02 GB)."""

    min_elements: int = 0
    chunk_tokens: int = 240
    group_heads: int = 2
    attention_scores: int = 240 * 9216
    query_chunks: int = 4
    host_buffers: bool = False

    def engaged(self, elements: int) -> bool:
        return elements > self.min_elements

    def buffer(self, shape, dtype):
        """A zero buffer written in slices: outside the pool with ``host_buffers``; bfloat16 values held as float32
        (exact; the CPU backend has no bf16 slice assignment)."""
        dtype = _assignable(dtype)
        if self.host_buffers:
            return Tensor.from_numpy(np.zeros(shape, ms.dtype_to_nptype(dtype)))
        return ops.zeros(shape, dtype)

    def outside_pool(self, x):
        """``x`` copied outside MindSpore's pool (with ``host_buffers``): for a tensor that stays alive while a loop
        of chunk temporaries runs around it in the pool, where it would split the holes the temporaries reuse."""
        return Tensor.from_numpy(np.array(x.asnumpy(), copy=True)) if self.host_buffers else x


def _assignable(dtype):
    return ms.float32 if dtype == ms.bfloat16 else dtype


def _as(x, dtype):
    return x if x.dtype == dtype else x.astype(dtype)


def zeros_to_none(bias):
    """None for an additive attention bias of zeros (nothing masked or padded), else ``bias``: adding zeros changes
    no score, and the streamed attention then holds one score-sized buffer less per call."""
    return None if bias is None or not np.any(bias.asnumpy()) else bias


# ----------------------------------------------------------------------------------------------------------------
# switching on and off
# ----------------------------------------------------------------------------------------------------------------
def _override(cell, name, fn):
    object.__setattr__(cell, name, types.MethodType(fn, cell))


def enable_feed_forward_chunking(model, max_elements: int = FFN_CHUNK_ELEMENTS) -> None:
    """Every block's feed-forward runs in token chunks of at most ``max_elements`` inner activations."""
    def construct(ff, hidden_states):
        return _chunked_feed_forward(ff, hidden_states, max_elements)
    for block in model.transformer_blocks:
        _override(block.ff, "construct", construct)
        object.__setattr__(block.ff, "_chunk_elements", max_elements)


def enable_token_streaming(model, **options) -> TokenStreaming:
    """Stream ``model``'s blocks, patch embedding and output head above ``min_elements`` elements (see
    ``TokenStreaming``). Returns the installed settings."""
    stream = TokenStreaming(**options)
    disable_token_streaming(model)
    for block in model.transformer_blocks:
        _override(block, "construct", _streamed_construct_of(stream))
    install_banded_patch_embed(model.pos_embed, stream)
    _override(model, "_operate_on_patched_inputs", _caption_outside_pool_of(stream))
    _override(model, "_get_output_for_patched_inputs", _chunked_output_of(stream))
    object.__setattr__(model, "_token_streaming", stream)
    return stream


def install_banded_patch_embed(pos_embed, stream: TokenStreaming) -> None:
    """The patch embedding ``pos_embed`` in bands of about ``stream.chunk_tokens`` tokens above
    ``stream.min_elements`` output elements (part of ``enable_token_streaming``)."""
    _override(pos_embed, "construct", _banded_patch_embed_of(stream))


def disable_token_streaming(model) -> None:
    for cell in list(model.transformer_blocks) + [model.pos_embed]:
        cell.__dict__.pop("construct", None)
    for name in ("_operate_on_patched_inputs", "_get_output_for_patched_inputs", "_token_streaming"):
        model.__dict__.pop(name, None)


def describe(model) -> list[str]:
    """One line per switched-on piece of machinery (empty: the plain model)."""
    lines = []
    chunk = model.transformer_blocks[0].ff.__dict__.get("_chunk_elements") if len(model.transformer_blocks) else None
    if chunk:
        lines.append(f"feed-forward in token chunks above {chunk:,} inner activations")
    stream = model.__dict__.get("_token_streaming")
    if stream:
        lines.append(f"token-streamed blocks above {stream.min_elements:,} elements per hidden state "
                     f"({stream.chunk_tokens}-token chunks, {stream.group_heads}-head groups"
                     f"{', buffers outside the memory pool' if stream.host_buffers else ''})")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# the pieces
# ----------------------------------------------------------------------------------------------------------------
def _chunked_feed_forward(ff, hidden_states, max_elements):
    inner = ff.net[0].proj.out_features
    tokens = hidden_states.size // hidden_states.shape[-1]
    if tokens * inner <= max_elements:
        return type(ff).construct(ff, hidden_states)
    flat = hidden_states.reshape(tokens, hidden_states.shape[-1])
    step = max(32, max_elements // inner)
    out = None
    for start in range(0, tokens, step):
        y = type(ff).construct(ff, flat[start:start + step])
        if out is None:
            out = ops.zeros((tokens, y.shape[-1]), _assignable(y.dtype))
        out[start:start + step] = _as(y, out.dtype)
    return _as(out, hidden_states.dtype).reshape(*hidden_states.shape[:-1], out.shape[-1])


def _rescaled(attn, x):
    """``x / attn.rescale_output_factor``, skipped for the factor 1 (no chunk-sized temporary)."""
    return x if attn.rescale_output_factor == 1.0 else x / attn.rescale_output_factor


def _modulate(kernels, x, shift, scale):
    """``x * (1 + scale) + shift`` on a chunk (the small operands broadcast per the kernel policy)."""
    return x * kernels.expand_as(1 + scale, x) + kernels.expand_as(shift, x)


def _caption_outside_pool_of(stream: TokenStreaming):
    def operate(model, hidden_states, encoder_hidden_states, timestep, batch_size, frame):
        out = type(model)._operate_on_patched_inputs(model, hidden_states, encoder_hidden_states, timestep,
                                                     batch_size, frame)
        if not stream.engaged(out[0].size):
            return out
        return (out[0], stream.outside_pool(out[1])) + tuple(out[2:])  # it stays alive through every block
    return operate


def _banded_patch_embed_of(stream: TokenStreaming):
    def construct(pos_embed, latent):
        """The patch embedding in bands of about ``chunk_tokens`` tokens into a token buffer (with stride = kernel
        every output patch is its own dot product: the values are unchanged)."""
        b, c, t, h, w = latent.shape
        p = pos_embed.proj.kernel_size[0]
        hp, wp = h // p, w // p
        d = pos_embed.proj.out_channels
        if not stream.engaged(b * t * hp * wp * d):
            return type(pos_embed).construct(pos_embed, latent)
        kernels = pos_embed.kernels
        if isinstance(kernels, CpuKernels):
            return _patch_matmul_bands(pos_embed, kernels, stream, latent)
        out = None
        band = max(1, stream.chunk_tokens // wp)
        for f in range(t):
            for r0 in range(0, hp, band):
                r1 = min(hp, r0 + band)
                x = kernels.conv2d(pos_embed.proj, latent[:, :, f, r0 * p:r1 * p])   # b D rows w'
                if out is None:
                    out = stream.buffer((b, t * hp * wp, d), x.dtype)
                start = (f * hp + r0) * wp
                out[:, start:start + (r1 - r0) * wp] = _as(x.transpose(0, 2, 3, 1).reshape(b, (r1 - r0) * wp, -1),
                                                           out.dtype)
        return _as(out, latent.dtype)
    return construct


def _patch_matmul_bands(pos_embed, kernels, stream, latent):
    """The CPU patch matmul (``CpuKernels.conv2d``) in bands of ``chunk_tokens`` patch rows into the token buffer."""
    dtype = latent.dtype
    if kernels.upcasts(latent):
        latent = latent.astype(ms.float32)
    b, c, t, h, w = latent.shape
    p = pos_embed.proj.kernel_size[0]
    hp, wp = h // p, w // p
    latent = latent[..., :hp * p, :wp * p]
    # b c t (hp p) (wp q) -> (b t hp wp) (p q c)
    patches = latent.reshape(b, c, t, hp, p, wp, p).transpose(0, 2, 3, 5, 4, 6, 1).reshape(-1, p * p * c)
    weight = kernels.patch_weight(pos_embed.proj, latent.dtype)
    rows = patches.shape[0]
    out = None
    for r0 in range(0, rows, stream.chunk_tokens):
        y = kernels.patch_rows(patches[r0:r0 + stream.chunk_tokens], weight, pos_embed.proj.bias)
        if out is None:
            out = stream.buffer((rows, weight.shape[0]), y.dtype)  # the residual stream: outside the pool
        out[r0:r0 + y.shape[0]] = _as(_as(y, dtype), out.dtype)
    return _as(out, dtype).reshape(b, t * hp * wp, -1)


def _chunked_output_of(stream: TokenStreaming):
    def output(model, hidden_states, timestep, embedded_timestep, num_frames, height, width):
        """The output head per token chunk (norm, modulation and projection are per token), then unpatchify."""
        if not stream.engaged(hidden_states.size):
            return type(model)._get_output_for_patched_inputs(model, hidden_states, timestep, embedded_timestep,
                                                              num_frames, height, width)
        k = model.kernels
        shift, scale = ops.chunk(model.scale_shift_table[None] + embedded_timestep[:, None], 2, axis=1)
        out = None
        step = stream.chunk_tokens
        for s0 in range(0, hidden_states.shape[1], step):
            x = model.proj_out(_modulate(k, model.norm_out(hidden_states[:, s0:s0 + step]), shift, scale))
            if out is None:
                out = ops.zeros((hidden_states.shape[0], hidden_states.shape[1], x.shape[-1]), _assignable(x.dtype))
            out[:, s0:s0 + step] = _as(x, out.dtype)
        return model._unpatchify(_as(out, hidden_states.dtype), num_frames, height, width)
    return output


def _streamed_construct_of(stream: TokenStreaming):
    def construct(block, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                  timestep=None, frame=None, height=None, width=None):
        if not stream.engaged(hidden_states.size):
            return type(block).construct(block, hidden_states, attention_mask, encoder_hidden_states,
                                         encoder_attention_mask, timestep, frame, height, width)
        if attention_seam.resolve_backend(block.attn1.attention_backend) != "portable":
            raise ValueError("token-streamed blocks run the portable attention path; switch streaming off "
                             "(disable_token_streaming) for another attention backend")
        return _streamed_block(block, stream, hidden_states, attention_mask, encoder_hidden_states,
                               encoder_attention_mask, timestep, frame, height, width)
    return construct


def _streamed_block(block, stream, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                    timestep, frame, height, width):
    """``BasicTransformerBlock.construct`` in token chunks. (1) Self-attention runs one group of heads at a time
    (``_streamed_self_attention``) into a buffer of the attention outputs of all tokens (the output projection's
    input); (2) per chunk of tokens (aligned to sparse_n² so a chunk maps to a contiguous run of every
    sub-sequence): output projection and gated residual, cross-attention and the modulated FFN, written back into
    ``hidden_states`` in place (a float32 copy of bfloat16 hidden states)."""
    k = block.kernels
    dtype = hidden_states.dtype
    h = hidden_states if _assignable(dtype) == dtype else hidden_states.astype(_assignable(dtype))   # (B, S, D)
    batch, seq, _ = h.shape
    modulation = block.scale_shift_table[None] + timestep.reshape(batch, 6, -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.chunk(modulation, 6, axis=1)
    attn1, attn2 = block.attn1, block.attn2
    chunks = _TokenChunks(attn1, stream, batch, seq, frame, height, width)
    attended = _streamed_self_attention(block, stream, chunks, h, dtype, shift_msa, scale_msa,
                                        zeros_to_none(attention_mask))

    # Cross-attention keys/values once per batch element, not tiled to the k Skiparse sub-batches as upstream does:
    # every sub-batch sees the same text and the same (k-major tiled) text mask, so the chunk's queries attend in
    # token order (per query row the same computation; tested bit-identical).
    text_k_t, text_v = attention_seam.prepare_keys(attn2.to_k(encoder_hidden_states),
                                                   attn2.to_v(encoder_hidden_states), attn2.heads)
    text_k_t, text_v = stream.outside_pool(text_k_t), stream.outside_pool(text_v)  # alive through the chunk loop
    text_mask = None if encoder_attention_mask is None else zeros_to_none(encoder_attention_mask[:batch])

    for s0, s1, _ in chunks():
        chunk = _as(h[:, s0:s1], dtype)
        a = _rescaled(attn1, attn1.to_out[1](attn1.to_out[0](_as(attended[:, s0:s1], dtype))))
        chunk = k.expand_as(gate_msa, a) * a + chunk                                  # hidden = gate·attn + hidden
        a = attention_seam.attend_prepared(attn2.to_q(chunk), text_k_t, text_v, text_mask, heads=attn2.heads,
                                           scale=attn2.scale, chunk_elements=stream.attention_scores)
        a = _rescaled(attn2, attn2.to_out[1](attn2.to_out[0](a)))
        chunk = a + chunk
        n = _modulate(k, block.norm2(chunk), shift_mlp, scale_mlp)
        f = block.ff(n)
        del n
        h[:, s0:s1] = _as(k.expand_as(gate_mlp, f) * f + chunk, h.dtype)               # hidden = gate·ff + hidden
        del f, a, chunk
    return _as(h, dtype)


def _streamed_self_attention(block, stream, chunks, h, dtype, shift_msa, scale_msa, attention_mask):
    """Self-attention outputs of all tokens (B, S, inner), before the output projection, one group of
    ``stream.group_heads`` heads at a time: the group's keys (transposed) and values (the portable seam's layout) of
    every token (RoPE'd, Skiparse regrouped, zero padding as ``_sparse_1d`` pads; projections restricted to the
    group's output rows), then attention for chunks of queries (``_sparse_1d`` layout, built per chunk from the same
    normalised tokens: recomputing the norm costs less than holding a group's queries) against all keys."""
    k = block.kernels
    attn1 = block.attn1
    batch, seq, _ = h.shape
    head_dim = attn1.inner_dim // attn1.heads
    kb, g_all = chunks.k * batch, chunks.seq_pad // chunks.k
    attended = stream.buffer((batch, seq, attn1.inner_dim), dtype)

    def normed(s0, s1):
        return _modulate(k, block.norm1(_as(h[:, s0:s1], dtype)), shift_msa, scale_msa)

    def grouped(linear, n, s0, s1, rows, c0, c1, rope=True):
        """the group's output features of tokens s0..s1, RoPE'd, padded to ``rows`` and Skiparse regrouped"""
        x = linear_rows(linear, n, c0, c1)
        if rope:
            x = chunks.roped(x, s0, s1)
        return chunks.regroup(zero_pad_tokens(x, rows))

    group_heads = None
    for h0 in range(0, attn1.heads, stream.group_heads):
        h1 = min(attn1.heads, h0 + stream.group_heads)
        c0, c1 = h0 * head_dim, h1 * head_dim
        if h1 - h0 != group_heads:  # one set per block (each group rewrites every element; re-allocated per group
            group_heads = h1 - h0   # they fragmented the pool)
            key_t = stream.buffer((kb, group_heads, head_dim, g_all), ms.float32)
            values = stream.buffer((kb, group_heads, g_all, head_dim), ms.float32)
        for s0, s1, rows in chunks(stream.query_chunks):
            n = normed(s0, s1)
            g0 = s0 // chunks.k
            kc = grouped(attn1.to_k, n, s0, s1, rows, c0, c1)
            vc = grouped(attn1.to_v, n, s0, s1, rows, c0, c1, rope=False)
            del n
            kc, vc = attention_seam.prepare_keys(kc, vc, h1 - h0)
            key_t[:, :, :, g0:g0 + kc.shape[-1]] = kc
            values[:, :, g0:g0 + vc.shape[2]] = vc
            del kc, vc
        for s0, s1, rows in chunks(stream.query_chunks):
            q = grouped(attn1.to_q, normed(s0, s1), s0, s1, rows, c0, c1)
            a = attention_seam.attend_prepared(q, key_t, values, attention_mask, heads=h1 - h0, scale=attn1.scale,
                                               chunk_elements=stream.attention_scores)
            del q
            attended[:, s0:s1, c0:c1] = _as(chunks.ungroup(a, rows)[:, :s1 - s0], attended.dtype)
            del a
    return attended


def linear_rows(linear, x, start, stop):
    """``linear(x)[..., start:stop]``, computing only those output features (bit-identical: each output feature is
    its own dot product over the same inputs)."""
    bias = None if linear.bias is None else linear.bias[start:stop]
    return linear.kernels.linear(x, linear.weight[start:stop], bias)


def token_chunks(seq: int, step: int, unit: int):
    """(start, stop, rows): chunks of ``step`` tokens (a multiple of ``unit``, the Skiparse sparse_n² group),
    ``rows`` the chunk's length rounded up to whole units (the padded tail)."""
    for s0 in range(0, seq, step):
        s1 = min(seq, s0 + step)
        yield s0, s1, -(-(s1 - s0) // unit) * unit


class _TokenChunks:
    """Token-chunk bookkeeping of a streamed block: chunks of whole Skiparse units (sparse_n² tokens; a unit maps
    to one contiguous run of every sub-sequence), RoPE on a chunk's own grid positions, and the Skiparse regrouping
    of a unit-aligned run of tokens (a run of ``_sparse_1d``'s layout)."""

    def __init__(self, attn1, stream, batch, seq, frame, height, width):
        self.proc = proc = attn1.processor
        self.batch, self.seq = batch, seq
        self.head_dim = attn1.inner_dim // attn1.heads
        self.k = proc.sparse_n if proc.sparse1d else 1
        self.unit = self.k * self.k if proc.sparse1d else 1
        self.seq_pad = seq + (-seq % self.unit)
        self.step = max(self.unit, stream.chunk_tokens // self.unit * self.unit)
        self.positions = proc.position_getter(batch, t=frame, h=height, w=width)

    def __call__(self, steps: int = 1):
        """(start, stop, rows): token chunks of ``steps`` steps."""
        return token_chunks(self.seq, self.step * steps, self.unit)

    def roped(self, x, s0, s1):
        """(B, L, heads·d) tokens s0..s1: the processor's RoPE on their own grid positions."""
        poses, max_poses = self.positions
        x = self.proc.rope(x.reshape(self.batch, s1 - s0, -1, self.head_dim),
                           (tuple(p[s0:s1] for p in poses), max_poses))
        return x.reshape(self.batch, s1 - s0, -1)

    def regroup(self, x):
        """(B, L, C), L unit-aligned -> (k·B, L/k, C)"""
        if not self.proc.sparse1d:
            return x
        k, unit = self.k, self.unit
        b, n_tok, c = x.shape
        if not self.proc.sparse_group:
            return x.reshape(b, n_tok // k, k, c).transpose(2, 0, 1, 3).reshape(k * b, n_tok // k, c)
        return x.reshape(b, n_tok // unit, k, k, c).transpose(2, 0, 1, 3, 4).reshape(k * b, n_tok // k, c)

    def ungroup(self, x, n_tok):
        """inverse of ``regroup``: (k·B, L/k, C) -> (B, L, C)"""
        if not self.proc.sparse1d:
            return x
        k, unit = self.k, self.unit
        kb, g, c = x.shape
        if not self.proc.sparse_group:
            return x.reshape(k, kb // k, g, c).transpose(1, 2, 0, 3).reshape(kb // k, n_tok, c)
        return x.reshape(k, kb // k, n_tok // unit, k, c).transpose(1, 2, 0, 3, 4).reshape(kb // k, n_tok, c)
