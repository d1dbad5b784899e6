"""Opt-in memory machinery for ``OpenSoraT2V_v1_3`` at real sizes, beside the model (like diffusers'
``SlicedAttnProcessor`` and ``enable_forward_chunking``). Nothing here is active until switched on:

* ``enable_attention_slicing(model, max_scores)``: every attention call whose scores (batch · heads · queries ·
  keys) exceed ``max_scores`` runs over query slices (``SlicedOpenSoraAttnProcessor``). Every query row still
  attends to all keys with the same bias row, so the values equal one SDPA call (tested, fp32/bf16/fp16).
* ``enable_feed_forward_chunking(model, max_elements)``: a feed-forward whose inner activations (tokens · 4·D)
  exceed ``max_elements`` runs in token chunks (every token's FFN is independent of the others: same values).
* ``enable_token_streaming(model, min_elements=..., ...)``: a block whose hidden states hold more than
  ``min_elements`` elements runs token-streamed, inference only: the same math, holding the residual stream
  (updated in place), the self-attention outputs of all tokens, one head group's queries, keys and values and one
  token chunk, i.e. under three hidden states instead of eight. The patch embedding then runs per frame and the
  output head per token chunk. Hooks on the block fire; hooks inside it (``attn1``/``attn2``, the processors) do
  not on this path. Bit-identical to the plain blocks (tested with every block forced onto it).

``describe(model)`` lists what is switched on (for reports). The defaults are the values the parity harness uses
(measured at the released size: 21,120 tokens x 2,304 hidden, 24 heads).

Size: the token-streamed block restates the block's whole math in chunks (it must stay bit-identical to it),
so it cannot be shorter than the block plus its chunk loops.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reference_torch.modeling_opensora import Attention, OpenSoraAttnProcessor2_0

# Attention is evaluated in query slices once a single call would hold more scores than this. At the released
# size a dense block would otherwise materialise ~10.7e9 scores (43 GB in fp32); with this budget a slice holds
# two 64 MiB score buffers.
ATTENTION_SLICE_SCORES = 16 * 1024 * 1024
SLICE_MIN_ROWS = 32
# The feed-forward runs in token chunks once its inner activations (tokens · 4·D) would exceed this many elements
# (at the released size: 21,120 x 9,216 = 778 MB per intermediate, two of them alive at once).
FFN_CHUNK_ELEMENTS = 16 * 1024 * 1024
# Blocks whose hidden states hold more than this many elements (S·B·D; the released size is 21,120 x 2,304 =
# 48.7 M) run token-streamed when the harness switches streaming on.
REAL_SIZE_ELEMENTS = 32 * 1024 * 1024


# ----------------------------------------------------------------------------------------------------------
# attention in query slices
# ----------------------------------------------------------------------------------------------------------


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def attention_in_row_chunks(query, key_t, value, attn_mask, root_scale, max_scores):
    """softmax((q·√s)·key_t + mask)·v over balanced query-row chunks, ``key_t`` = kᵀ·√s in the compute dtype:
    SDPA's math backend written out (it computes in float32 for half/bf16 inputs, scales q and k by √scale each,
    adds the bias, softmax, multiplies by v). Two score buffers are reused; returns (B, N, S_q, d_v) in the query's
    dtype."""
    b, n, s_q, _ = query.shape
    s_k = key_t.shape[-1]
    compute = key_t.dtype
    # Balanced chunks of at least SLICE_MIN_ROWS // 2 rows: BLAS kernels take a different (small-M) path for a
    # sliver of 1-3 query rows, which would round differently from the unchunked call.
    rows = max(SLICE_MIN_ROWS, max_scores // max(1, b * n * s_k))
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


class SlicedOpenSoraAttnProcessor(OpenSoraAttnProcessor2_0):
    """``OpenSoraAttnProcessor2_0`` whose attention runs in query slices once it holds more than ``max_scores``
    scores (below that: one SDPA call, exactly as the plain processor)."""

    max_scores = ATTENTION_SLICE_SCORES

    @classmethod
    def replacing(cls, processor: OpenSoraAttnProcessor2_0, max_scores: int) -> "SlicedOpenSoraAttnProcessor":
        """A sliced processor with ``processor``'s settings and RoPE caches."""
        sliced = cls.__new__(cls)
        sliced.__dict__.update(processor.__dict__)
        sliced.max_scores = int(max_scores)
        return sliced

    def scaled_dot_product_attention(self, query, key, value, attn_mask):
        b, n, s_q, _ = query.shape
        if b * n * s_q * key.shape[-2] <= self.max_scores:
            return super().scaled_dot_product_attention(query, key, value, attn_mask)
        compute = _compute_dtype(query.dtype)
        root_scale = math.sqrt(1.0 / math.sqrt(query.shape[-1]))
        # what does not depend on the query rows is done once (SDPA per slice would re-scale a copy of k each time)
        key_t = key.to(compute).transpose(-2, -1) * root_scale
        return attention_in_row_chunks(query, key_t, value.to(compute), attn_mask, root_scale, self.max_scores)


def enable_attention_slicing(model, max_scores: int = ATTENTION_SLICE_SCORES) -> None:
    """Give every ``Attention`` of ``model`` a ``SlicedOpenSoraAttnProcessor`` (same settings)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.processor = SlicedOpenSoraAttnProcessor.replacing(module.processor, max_scores)


# ----------------------------------------------------------------------------------------------------------
# feed-forward in token chunks
# ----------------------------------------------------------------------------------------------------------


def _chunked_feed_forward(ff, hidden_states, max_elements):
    inner = ff.net[0].proj.out_features
    tokens = hidden_states.numel() // hidden_states.shape[-1]
    if tokens * inner <= max_elements:
        return type(ff).forward(ff, hidden_states)
    flat = hidden_states.reshape(tokens, hidden_states.shape[-1])
    out = None
    step = max(SLICE_MIN_ROWS, max_elements // inner)
    for start in range(0, tokens, step):
        y = type(ff).forward(ff, flat[start:start + step])
        if out is None:
            out = torch.empty(tokens, y.shape[-1], dtype=y.dtype, device=y.device)
        out[start:start + step] = y
    return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def enable_feed_forward_chunking(model, max_elements: int = FFN_CHUNK_ELEMENTS) -> None:
    """Every block's feed-forward runs in token chunks of at most ``max_elements`` inner activations."""
    for block in model.transformer_blocks:
        block.ff.forward = types.MethodType(lambda ff, x: _chunked_feed_forward(ff, x, max_elements), block.ff)
        block.ff._chunk_elements = max_elements


# ----------------------------------------------------------------------------------------------------------
# token-streamed blocks
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenStreaming:
    """What ``enable_token_streaming`` installs: blocks whose hidden states hold more than ``min_elements`` elements
    run streamed in chunks of ``chunk_tokens`` tokens (whole Skiparse units), self-attention ``group_heads`` heads at
    a time (at the released 24 heads: 12 groups, a group's queries, keys and values = 1/4 of a hidden state), every
    attention call holding at most ``attention_scores`` scores (two 8 MiB fp32 buffers) and taking queries
    ``query_chunks`` token chunks at a time (its score buffers are capped anyway: a longer query chunk only saves
    per-call overhead)."""

    min_elements: int = 0
    chunk_tokens: int = 256
    group_heads: int = 2
    attention_scores: int = 2 * 1024 * 1024
    query_chunks: int = 4

    def engaged(self, elements: int) -> bool:
        """Whether a tensor of ``elements`` elements takes the streamed path (inference only)."""
        if elements <= self.min_elements:
            return False
        if torch.is_grad_enabled():
            raise RuntimeError("token streaming is inference-only (it updates the residual stream in place); run "
                               "under torch.no_grad(), or disable it with disable_token_streaming(model)")
        return True


def enable_token_streaming(model, **options) -> TokenStreaming:
    """Stream ``model``'s blocks, patch embedding and output head above ``min_elements`` elements (see
    ``TokenStreaming`` for the options). Returns the installed settings."""
    stream = TokenStreaming(**options)
    disable_token_streaming(model)
    for block in model.transformer_blocks:
        block.forward = types.MethodType(_streamed_forward_of(stream), block)
    model.pos_embed.forward = types.MethodType(_per_frame_patch_embed_of(stream), model.pos_embed)
    model._get_output_for_patched_inputs = types.MethodType(_chunked_output_of(stream), model)
    model._token_streaming = stream
    return stream


def disable_token_streaming(model) -> None:
    for module in list(model.transformer_blocks) + [model.pos_embed]:
        module.__dict__.pop("forward", None)
    model.__dict__.pop("_get_output_for_patched_inputs", None)
    model.__dict__.pop("_token_streaming", None)


def describe(model) -> list[str]:
    """One line per switched-on piece of machinery (empty: the plain model)."""
    lines = []
    procs = [m.processor for m in model.modules() if isinstance(m, Attention)]
    if procs and isinstance(procs[0], SlicedOpenSoraAttnProcessor):
        lines.append(f"attention in query slices above {procs[0].max_scores:,} scores")
    chunk = getattr(model.transformer_blocks[0].ff, "_chunk_elements", None) if len(model.transformer_blocks) else None
    if chunk:
        lines.append(f"feed-forward in token chunks above {chunk:,} inner activations")
    stream = model.__dict__.get("_token_streaming")
    if stream:
        lines.append(f"token-streamed blocks above {stream.min_elements:,} elements per hidden state "
                     f"({stream.chunk_tokens}-token chunks, {stream.group_heads}-head groups)")
    return lines


def _per_frame_patch_embed_of(stream: TokenStreaming):
    def forward(pos_embed, latent):
        """The patch embedding one frame at a time into the token layout (the convolution's output and its
        permuted copy exist for one frame only; the convolution is per frame anyway)."""
        b, _, t, h, w = latent.shape
        p = pos_embed.proj.stride
        if not stream.engaged(b * t * (h // p[0]) * (w // p[1]) * pos_embed.proj.out_channels):
            return type(pos_embed).forward(pos_embed, latent)
        out = None
        for f in range(t):
            x = pos_embed.proj(latent[:, :, f])  # b D h' w'
            _, d, hp, wp = x.shape
            if out is None:
                out = x.new_empty(b, t * hp * wp, d)
            out[:, f * hp * wp:(f + 1) * hp * wp] = x.permute(0, 2, 3, 1).reshape(b, hp * wp, d)
        return out
    return forward


def _chunked_output_of(stream: TokenStreaming):
    def output(model, hidden_states, timestep, embedded_timestep, num_frames, height, width):
        """The output head per token chunk (norm, modulation and projection are per token), then unpatchify."""
        if not stream.engaged(hidden_states.numel()):
            return type(model)._get_output_for_patched_inputs(model, hidden_states, timestep, embedded_timestep,
                                                              num_frames, height, width)
        shift, scale = (model.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        out = None
        step = stream.chunk_tokens
        for s0 in range(0, hidden_states.shape[1], step):
            x = model.norm_out(hidden_states[:, s0:s0 + step])
            x = model.proj_out(x * (1 + scale) + shift)
            if out is None:
                out = x.new_empty(hidden_states.shape[0], hidden_states.shape[1], x.shape[-1])
            out[:, s0:s0 + step] = x
        return model._unpatchify(out, num_frames, height, width)
    return output


def _streamed_forward_of(stream: TokenStreaming):
    def forward(block, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, frame=None, height=None, width=None):
        if not stream.engaged(hidden_states.numel()):
            return type(block).forward(block, hidden_states, attention_mask, encoder_hidden_states,
                                       encoder_attention_mask, timestep, frame, height, width)
        return _streamed_block(block, stream, hidden_states, attention_mask, encoder_hidden_states,
                               encoder_attention_mask, timestep, frame, height, width)
    return forward


def _streamed_block(block, stream, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                    timestep, frame, height, width):
    """The block in token chunks. Every operation of ``BasicTransformerBlock.forward`` is per token except
    attention's mixing over keys, and attention is per head. So: (1) self-attention runs one group of heads at a
    time (``_streamed_self_attention``) into a buffer of the attention outputs of all tokens (the output
    projection's input); (2) per chunk of tokens: output projection and gated residual, cross-attention and the
    modulated FFN, written back into ``hidden_states`` in place. A query's Skiparse sub-sequence is fixed by its
    position, so chunks are aligned to sparse_n² tokens (cross-attention is regrouped the same way, as upstream)."""
    h = hidden_states                                                       # (S, B, D)
    seq, batch, _ = h.shape
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        block.scale_shift_table[:, None] + timestep.reshape(6, batch, -1)).chunk(6, dim=0)
    attn1, attn2 = block.attn1, block.attn2
    chunks = _TokenChunks(attn1, stream, batch, seq, frame, height, width, h.device)
    attended = _streamed_self_attention(block, h, chunks, stream, shift_msa, scale_msa, attention_mask)

    # cross-attention keys/values (text, small), tiled to every Skiparse sub-sequence as upstream does
    compute = _compute_dtype(h.dtype)
    text_k = attn2.to_k(encoder_hidden_states).view(-1, batch, attn2.inner_dim)
    text_v = attn2.to_v(encoder_hidden_states).view(-1, batch, attn2.inner_dim)
    if attn2.processor.sparse1d:
        text_k, text_v = attn2.processor._sparse_1d_kv(text_k), attn2.processor._sparse_1d_kv(text_v)
    text_k_t = _heads_first(text_k, attn2.heads).to(compute).transpose(-2, -1) * chunks.root_scale
    text_v = _heads_first(text_v, attn2.heads).to(compute)

    for s0, s1, rows in chunks():
        chunk = h[s0:s1]
        a = attn1.to_out[1](attn1.to_out[0](attended[s0:s1])) / attn1.rescale_output_factor
        chunk.add_(gate_msa * a)                                            # hidden = gate·attn + hidden
        q = _heads_first(chunks.regroup(chunks.padded(attn2.to_q(chunk).view(-1, batch, attn2.inner_dim), rows)),
                         attn2.heads)
        a = attention_in_row_chunks(q, text_k_t, text_v, encoder_attention_mask, chunks.root_scale,
                                    stream.attention_scores)
        a = chunks.ungroup(_heads_last(a), rows)[: s1 - s0]
        chunk.add_(attn2.to_out[1](attn2.to_out[0](a.to(h.dtype))) / attn2.rescale_output_factor)
        n = block.norm2(chunk)
        n = n * (1 + scale_mlp) + shift_mlp
        chunk.add_(gate_mlp * block.ff(n))                                  # hidden = gate·ff + hidden
        del n, a, q
    return h


def _streamed_self_attention(block, h, chunks, stream, shift_msa, scale_msa, attention_mask):
    """Self-attention outputs of all tokens (S, B, inner), before the output projection, computed one group of
    ``stream.group_heads`` heads at a time: the group's queries, keys (·√scale, compute dtype) and values of every
    token in its Skiparse layout (RoPE'd, zero padding rows as ``F.pad`` gives; q/k/v projections restricted to the
    group's output rows), then attention for chunks of queries against all keys."""
    attn1 = block.attn1
    seq, batch, _ = h.shape
    compute = _compute_dtype(h.dtype)
    head_dim = attn1.inner_dim // attn1.heads
    attended = torch.empty(seq, batch, attn1.inner_dim, dtype=h.dtype, device=h.device)
    for h0 in range(0, attn1.heads, stream.group_heads):
        h1 = min(attn1.heads, h0 + stream.group_heads)
        cols = slice(h0 * head_dim, h1 * head_dim)
        shape = (chunks.seq_pad // chunks.k, chunks.k * batch, cols.stop - cols.start)
        queries = torch.zeros(shape, dtype=h.dtype, device=h.device)
        keys = torch.zeros(shape, dtype=compute, device=h.device)
        values = torch.zeros(shape, dtype=compute, device=h.device)
        for s0, s1, rows in chunks():
            n = block.norm1(h[s0:s1])
            n = n * (1 + scale_msa) + shift_msa
            g = slice(s0 // chunks.k, (s0 + rows) // chunks.k)
            queries[g] = chunks.regroup(chunks.padded(chunks.roped(_linear_rows(attn1.to_q, n, cols), s0, s1), rows))
            k = chunks.padded(chunks.roped(_linear_rows(attn1.to_k, n, cols), s0, s1).to(compute), rows)
            keys[g] = chunks.regroup(k) * chunks.root_scale
            values[g] = chunks.regroup(chunks.padded(_linear_rows(attn1.to_v, n, cols).to(compute), rows))
            del n, k
        heads = h1 - h0
        key_t = _heads_first(keys, heads).transpose(-2, -1)
        value_h = _heads_first(values, heads)
        mask = None if attention_mask is None else attention_mask[:, h0:h1]
        for s0, s1, rows in chunks(stream.query_chunks):
            q = _heads_first(queries[s0 // chunks.k:(s0 + rows) // chunks.k], heads)
            a = attention_in_row_chunks(q, key_t, value_h, mask, chunks.root_scale, stream.attention_scores)
            attended[s0:s1, :, cols] = chunks.ungroup(_heads_last(a), rows)[: s1 - s0]
        del queries, keys, values, key_t, value_h
    return attended


def _heads_first(x, heads):
    """(s, b, heads·d) -> (b, heads, s, d), a view."""
    return x.view(x.shape[0], x.shape[1], heads, -1).permute(1, 2, 0, 3)


def _heads_last(x):
    """(b, heads, s, d) -> (s, b, heads·d)."""
    b, n, s, d = x.shape
    return x.permute(2, 0, 1, 3).reshape(s, b, n * d)


def _linear_rows(linear, x, rows: slice):
    """``linear(x)[..., rows]``, computing only those output features (bit-identical: each output feature is
    its own dot product over the same inputs)."""
    bias = None if linear.bias is None else linear.bias[rows]
    return F.linear(x, linear.weight[rows], bias)


def token_chunks(seq: int, step: int, unit: int):
    """(start, stop, rows): chunks of ``step`` tokens (a multiple of ``unit``, the Skiparse sparse_n² group),
    ``rows`` the chunk's length rounded up to whole units (the padded tail)."""
    for s0 in range(0, seq, step):
        s1 = min(seq, s0 + step)
        yield s0, s1, -(-(s1 - s0) // unit) * unit


class _TokenChunks:
    """Token-chunk bookkeeping of a streamed block: chunks of whole Skiparse units (sparse_n² tokens; a unit
    maps to one contiguous run of every sub-sequence), RoPE on a chunk's own grid positions, and the Skiparse
    regrouping of a unit-aligned run of tokens ('(g k) b d -> g (k b) d', group skip '(n m k) b d -> (n k) (m b) d').
    """

    def __init__(self, attn1, stream, batch, seq, frame, height, width, device):
        self.proc = proc = attn1.processor
        self.batch, self.seq = batch, seq
        self.head_dim = attn1.inner_dim // attn1.heads
        self.k = proc.sparse_n if proc.sparse1d else 1
        self.unit = self.k * self.k if proc.sparse1d else 1
        self.seq_pad = seq + (-seq % self.unit)
        self.step = max(self.unit, stream.chunk_tokens // self.unit * self.unit)
        self.root_scale = math.sqrt(1.0 / math.sqrt(self.head_dim))
        self.positions = proc.position_getter(batch, t=frame, h=height, w=width, device=device)

    def __call__(self, steps: int = 1):
        """(start, stop, rows): token chunks of ``steps`` steps."""
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
