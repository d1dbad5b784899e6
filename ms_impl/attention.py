"""The attention seam of the MindSpore port: ``attention()`` is the ONE place that decides how attention runs.

Callers (``OpenSoraAttnProcessor``) hand over batch-first ``query (B, Sq, heads*d)``, ``key/value (B, Sk, heads*d)``
and the model's additive bias ``(B, 1, 1, Sk)`` (0 = keep, -10000 masked token, -9980 Skiparse padding; values
as the activation dtype holds them), and get ``(B, Sq, heads*d)`` back in the query's dtype.

Backends: the ``backend`` argument, else the module-level setting (``set_backend`` / ``use_backend``), else the
device default. ``harness.build_model`` resolves one when it builds a model and pins it on the model's
``Attention`` cells (``set_attention_backend``), so two models in one process cannot change each other's backend:

``portable`` (default on CPU and GPU, and for fp32 everywhere)
    ``softmax(q·kᵀ·scale + bias)·v`` written out, computed in float32 whatever the activation dtype (as PyTorch's
    math SDPA does for half/bf16 on CPU and the GPU kernels do internally), the softmax on MindSpore's fp32 kernel.
    Its CPU ``exp`` is up to ~100 ULP (~6e-6 relative) off, so attention outputs sit about twice as far from
    torch's as torch's own from float64 — well inside the block tolerances. ``PRECISE_SOFTMAX = True`` normalises
    in float64 instead (within 1 ULP of torch, ~10x slower: a single-threaded fp64 kernel). Chunked over queries
    so at most ``PORTABLE_CHUNK_ELEMENTS`` scores exist at once (21,120-token sequences stay bounded).

``ascend`` (default on Ascend for fp16/bf16)
    ``mindspore.ops.flash_attention_score`` with its own conventions: a **boolean** mask (True = discard) of shape
    (B, 1, Sq, Sk) made from the bias by ``bias_to_discard_mask`` (non-zero = discard, as upstream's NPU branch
    does), layout ``ASCEND_LAYOUT`` ("BNSD" or "BSH"), head_dim zero-padded to a multiple of 16 (the kernel's
    documented constraint; zero columns change no dot product and are cropped from the output) with the scale
    passed explicitly as ``scalar_value = 1/sqrt(d)`` of the *unpadded* d, fp16/bf16 inputs only.
    **The real kernel has not been run on NPU hardware in this project**; what is tested is everything around it.

``ascend-emulated`` (CI)
    The whole Ascend branch above runs on CPU with the kernel replaced by ``emulated_flash_attention_score``, a
    portable implementation of the kernel's documented contract (argument checks, layouts, ``attn_mask`` True =
    discard with a *hard* mask, ``scalar_value``, ``keep_prob`` = 1, ``pre_tokens``/``next_tokens`` band).

Additive bias versus hard mask: with the -10000 bias a masked key still gets weight ``exp(-10000)`` relative to a
kept one, which is exactly 0 in float32, so both agree whenever a query keeps at least one key. A query whose keys
are *all* masked differs: the additive path gives ``softmax(scores - 10000)`` = ordinary attention over all keys
(with -9980 padding keys winning over -10000 ones by e^20), the hard mask gives every key the same "negative
extreme" score, i.e. a uniform average of all values (the kernel documentation says masked scores become a
negative extreme value; NaN-free uniform output for fully masked rows is this emulation's reading of it). In
this model such rows only occur for degenerate masks (a batch element or a whole Skiparse sub-sequence fully
masked); ``tests/test_attention.py`` pins the difference.
"""

from __future__ import annotations

import contextlib

import mindspore as ms
import numpy as np
from mindspore import mint, ops

BACKENDS = ("portable", "ascend", "ascend-emulated")
ASCEND_LAYOUTS = ("BNSD", "BSH")
FA_HEAD_DIM_MULTIPLE = 16
FA_MAX_HEAD_DIM = 512
FA_DTYPES = (ms.float16, ms.bfloat16)

# module-level settings (the seam's knobs)
_backend: str | None = None
ASCEND_LAYOUT = "BNSD"
PRECISE_SOFTMAX = False  # True: normalise in float64 (1 ULP from torch, ~10x slower on CPU; see above)
PORTABLE_CHUNK_ELEMENTS = 1 << 23  # scores per chunk: 32 MiB of float32 (64 MiB as float64 in the softmax)


# ---- backend selection --------------------------------------------------------------------------------------
def set_backend(name: str | None) -> None:
    """Select the attention backend for the whole process (``None`` = device default)."""
    global _backend
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {', '.join(BACKENDS)}")
    _backend = name


def get_backend() -> str | None:
    return _backend


@contextlib.contextmanager
def use_backend(name: str | None):
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def default_backend(device: str, precision: str = "fp32") -> str:
    """``ascend`` on Ascend for fp16/bf16 (the kernel has no fp32), else ``portable``."""
    on_ascend = str(device).lower().startswith(("ascend", "npu"))
    return "ascend" if on_ascend and precision in ("fp16", "bf16") else "portable"


def set_attention_backend(cell, backend: str | None) -> None:
    """Pin ``backend`` on every sub-cell of ``cell`` that has an ``attention_backend`` attribute (None: follow the
    module-level setting)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; use one of {', '.join(BACKENDS)}")
    for _, sub in cell.cells_and_names():
        if hasattr(sub, "attention_backend"):
            sub.attention_backend = backend


def resolve_backend(backend: str | None = None) -> str:
    name = backend or _backend
    if name is None:
        name = default_backend(ms.get_context("device_target") or "CPU")
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {', '.join(BACKENDS)}")
    return name


# ---- the seam -----------------------------------------------------------------------------------------------
def attention(query, key, value, bias, *, heads: int, scale: float, backend: str | None = None,
              kernel_dtype=None):
    """Multi-head attention, batch-first. ``bias`` is additive ``(B, 1, 1, Sk)`` or None.

    ``kernel_dtype`` is the dtype a fused kernel is fed with (bf16 emulation feeds bf16 to a bf16 kernel); the
    portable path ignores it. Returns ``(B, Sq, heads*d)`` in ``query.dtype``.
    """
    name = resolve_backend(backend)
    if name == "portable":
        return portable_attention(query, key, value, bias, heads=heads, scale=scale)
    kernel = ops.flash_attention_score if name == "ascend" else emulated_flash_attention_score
    return ascend_attention(query, key, value, bias, heads=heads, scale=scale, kernel=kernel,
                            kernel_dtype=kernel_dtype)


# ---- portable path ------------------------------------------------------------------------------------------
def split_heads(x, heads: int):
    """(B, S, heads*d) -> (B, heads, S, d)."""
    b, s, h = x.shape
    return x.reshape(b, s, heads, h // heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, heads, S, d) -> (B, S, heads*d)."""
    b, n, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)


def softmax_precise(scores):
    """Softmax over the last axis of float32 scores, normalised in float64 if ``PRECISE_SOFTMAX`` (float32 out)."""
    if not PRECISE_SOFTMAX:
        return ops.softmax(scores, -1)
    return ops.softmax(scores.astype(ms.float64), -1).astype(ms.float32)


def portable_attention(query, key, value, bias, *, heads: int, scale: float, chunk_elements: int | None = None):
    b, sq, _ = query.shape
    budget = PORTABLE_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    if b * heads * sq * key.shape[1] <= budget:
        return attend_whole(query, key, value, bias, heads=heads, scale=scale)
    k_t, v = prepare_keys(key, value, heads)
    return attend_prepared(query, k_t, v, bias, heads=heads, scale=scale, chunk_elements=chunk_elements)


# Batched matmuls as BatchMatMul primitives: ``mint.matmul`` on 4-D operands copies its operands into a workspace
# of MindSpore's CPU pool on every call (a chunk's q·kᵀ against 5,280 released-size keys of 2 heads: +24 MB per
# call, and the pool keeps its high-water mark); BatchMatMul reads them in place, bit-identically (tested).
_matmul = ops.BatchMatMul()
_matmul_nt = ops.BatchMatMul(transpose_b=True)


def attend_whole(query, key, value, bias, *, heads: int, scale: float):
    """The portable path in one chunk: q·kᵀ as a matmul with a transposed second operand (no kᵀ copy, no
    chunk loop). Agrees with ``attend_prepared`` to rounding: same softmax and value matmul, but the transposed-
    operand score matmul can round a score 1 ULP differently from the matmul on prepared kᵀ at some shapes."""
    q = split_heads(query.astype(ms.float32), heads)
    k = split_heads(key.astype(ms.float32), heads)
    scores = _matmul_nt(q, k) * scale
    if bias is not None:
        scores = scores + _bcast(bias.astype(ms.float32), scores)
    probs = softmax_precise(scores)
    return merge_heads(_matmul(probs, split_heads(value.astype(ms.float32), heads))).astype(query.dtype)


def prepare_keys(key, value, heads: int):
    """(kᵀ (B, heads, d, Sk), v (B, heads, Sk, d)) in float32, laid out once, contiguously: a transposed view
    handed to matmul is copied by the kernel on every call, i.e. once per query chunk (a full copy of k per
    chunk at real token counts)."""
    k_t = split_heads(key.astype(ms.float32), heads).transpose(0, 1, 3, 2).contiguous()
    v = split_heads(value.astype(ms.float32), heads).contiguous()
    return k_t, v


def attend_prepared(query, k_t, v, bias, *, heads: int, scale: float, chunk_elements: int | None = None):
    """The portable path on prepared keys (``prepare_keys``), query rows in chunks of at most
    ``PORTABLE_CHUNK_ELEMENTS`` scores. Returns (B, Sq, heads·d) in the query's dtype."""
    out_dtype = query.dtype
    b, sq, _ = query.shape
    sk = k_t.shape[-1]
    bias32 = None if bias is None else bias.astype(ms.float32)
    budget = PORTABLE_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    rows = max(1, int(budget) // max(1, b * heads * sk))
    out = None
    for start in range(0, sq, rows):
        stop = min(sq, start + rows)
        q = split_heads(query[:, start:stop].astype(ms.float32), heads)
        scores = _matmul(q, k_t) * scale
        del q
        if bias32 is not None:
            scores = scores + _bcast(bias32, scores)
        piece = merge_heads(_matmul(softmax_precise(scores), v)).astype(out_dtype)
        del scores
        if stop - start == sq:
            return piece
        if out is None:  # chunk outputs land in one preallocated result (no list of pieces + concatenation)
            out = ops.zeros((b, sq, piece.shape[-1]), _assignable(out_dtype))
        out[:, start:stop] = piece if piece.dtype == out.dtype else piece.astype(out.dtype)
    return out if out.dtype == out_dtype else out.astype(out_dtype)


def _assignable(dtype):
    """The dtype of a buffer written in slices: bfloat16 values are held as float32 (exact; the CPU backend has
    no bf16 slice assignment)."""
    return ms.float32 if dtype == ms.bfloat16 else dtype


def _bcast(small, like):
    """The bias broadcast explicitly on CPU (see ``ms_impl.cpu_kernels``: same values, no offset tables)."""
    if ms.get_context("device_target") != "CPU" or tuple(small.shape) == tuple(like.shape):
        return small
    return tile_to(small, like.shape)


def tile_to(small, shape):
    """``broadcast_to(small, shape)`` as ``ops.tile``: the same values in one new buffer. On CPU, ``tile`` runs
    10-25x faster than ``broadcast_to`` (or an implicitly broadcasting binary op), e.g. 0.15 vs 3.5 ms for
    (1, 1, 576) -> (1, 2304, 576)."""
    full = (1,) * (len(shape) - small.ndim) + tuple(small.shape)
    return ops.tile(small.reshape(full), tuple(n // m for n, m in zip(shape, full)))


# ---- Ascend path: plain functions, unit-tested on CPU -------------------------------------------------------
def bias_to_discard_mask(bias, query_len: int):
    """Additive bias (B, 1, 1, Sk) -> flash-attention mask (B, 1, Sq, Sk) bool, True = discard (bias != 0)."""
    if bias is None:
        return None
    if bias.ndim != 4 or bias.shape[1] != 1 or bias.shape[2] != 1:
        raise ValueError(f"attention: expected an additive bias of shape (B, 1, 1, Sk), got {tuple(bias.shape)}")
    discard = bias.astype(ms.float32) != 0  # (exact; the CPU backend has no bf16 comparison)
    return ops.broadcast_to(discard, (bias.shape[0], 1, query_len, bias.shape[3]))


def padded_head_dim(head_dim: int) -> int:
    if head_dim > FA_MAX_HEAD_DIM:
        raise ValueError(f"attention: head_dim {head_dim} exceeds flash_attention_score's maximum {FA_MAX_HEAD_DIM}")
    m = FA_HEAD_DIM_MULTIPLE
    return -(-head_dim // m) * m


def to_fa_layout(x, heads: int, head_dim_padded: int, layout: str):
    """(B, S, heads*d) -> the kernel layout with head_dim zero-padded: BNSD (B, N, S, Dp) or BSH (B, S, N*Dp)."""
    b, s, h = x.shape
    d = h // heads
    x = x.reshape(b, s, heads, d)
    if head_dim_padded != d:  # zero columns (concatenated: the CPU backend has no bf16 pad)
        x = ops.cat((x, ops.zeros((b, s, heads, head_dim_padded - d), x.dtype)), -1)
    if layout == "BNSD":
        return x.transpose(0, 2, 1, 3)
    if layout == "BSH":
        return x.reshape(b, s, heads * head_dim_padded)
    raise ValueError(f"attention: unsupported flash-attention layout {layout!r}; use one of {ASCEND_LAYOUTS}")


def from_fa_layout(x, heads: int, head_dim: int, layout: str):
    """Inverse of ``to_fa_layout``: back to (B, S, heads*d), padding cropped."""
    if layout == "BNSD":
        x = x.transpose(0, 2, 1, 3)
    else:
        b, s, _ = x.shape
        x = x.reshape(b, s, heads, -1)
    b, s = x.shape[0], x.shape[1]
    return x[..., :head_dim].reshape(b, s, heads * head_dim)


def ascend_attention(query, key, value, bias, *, heads: int, scale: float, kernel, kernel_dtype=None,
                     layout: str | None = None):
    layout = layout or ASCEND_LAYOUT
    out_dtype = query.dtype
    feed = kernel_dtype or query.dtype
    if feed not in FA_DTYPES:
        raise ValueError(f"attention: flash_attention_score takes float16/bfloat16, not {feed}; run fp32 with "
                          f"attention_backend='portable'")
    head_dim = query.shape[-1] // heads
    dp = padded_head_dim(head_dim)
    # layout work in the activation dtype, the dtype change right at the kernel boundary
    q, k, v = (to_fa_layout(t, heads, dp, layout).astype(feed) for t in (query, key, value))
    mask = bias_to_discard_mask(bias, query.shape[1])
    out = kernel(q, k, v, heads, attn_mask=mask, keep_prob=1.0, scalar_value=float(scale),
                 input_layout=layout)
    return from_fa_layout(out.astype(out_dtype), heads, head_dim, layout)


# ---- CPU emulation of flash_attention_score's documented contract --------------------------------------------
_INT_MAX = 2147483647


def emulated_flash_attention_score(query, key, value, head_num, real_shift=None, drop_mask=None, padding_mask=None,
                                   attn_mask=None, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None,
                                   keep_prob=1.0, scalar_value=1.0, pre_tokens=_INT_MAX, next_tokens=_INT_MAX,
                                   inner_precise=0, input_layout="BSH", sparse_mode=0):
    """Portable stand-in for ``ops.flash_attention_score`` (same signature), enforcing its documented contract.

    Supported: layouts BSH/BNSD/SBH/BSND, fp16/bf16 inputs (computed in float32, output in the input dtype),
    ``attn_mask`` bool/uint8 of shape (B, N1, S1, S2), (B, 1, S1, S2) or (S1, S2) with True/1 = discard as a hard
    mask (masked scores get the float32 minimum), ``scalar_value`` applied to q·kᵀ, ``keep_prob`` 1.0 only,
    ``pre_tokens``/``next_tokens`` band (sparse_mode 0). Everything else is rejected.
    """
    def need(cond, what):
        if not cond:
            raise ValueError(f"flash_attention_score (emulated): {what}")

    need(query.dtype in FA_DTYPES, f"query dtype must be float16 or bfloat16, got {query.dtype}")
    need(key.dtype == query.dtype and value.dtype == query.dtype, "query, key and value must share a dtype")
    need(input_layout in ("BSH", "BNSD", "SBH", "BSND"), f"input_layout {input_layout!r} not emulated")
    need(real_shift is None and drop_mask is None and padding_mask is None and prefix is None
         and actual_seq_qlen is None and actual_seq_kvlen is None, "only attn_mask is emulated among optional inputs")
    need(sparse_mode == 0, "only sparse_mode 0 is emulated")
    need(keep_prob == 1.0, "keep_prob must be 1.0 (no dropout) in inference")
    need(isinstance(scalar_value, float), "scalar_value must be a float")

    def to_bnsd(x):
        if input_layout == "BNSD":
            return x
        if input_layout == "BSND":
            return x.transpose(0, 2, 1, 3)
        if input_layout == "SBH":
            x = x.transpose(1, 0, 2)
        b, s, h = x.shape
        need(h % head_num == 0, f"hidden size {h} not divisible by head_num {head_num}")
        return x.reshape(b, s, head_num, h // head_num).transpose(0, 2, 1, 3)

    q, k, v = to_bnsd(query), to_bnsd(key), to_bnsd(value)
    b, n1, s1, d = q.shape
    n2, s2 = k.shape[1], k.shape[2]
    need(n1 == head_num, f"head_num {head_num} does not match the query's {n1} heads")
    need(n1 % n2 == 0, "N2 must divide N1")
    need(k.shape[3] == d and v.shape == k.shape, "D-axis of query, key and value must match")
    need(d % FA_HEAD_DIM_MULTIPLE == 0 and d <= FA_MAX_HEAD_DIM, f"head size D={d} must be a multiple of 16, <= 512")
    if n2 != n1:
        k = k.repeat_interleave(n1 // n2, 1)
        v = v.repeat_interleave(n1 // n2, 1)

    scores = mint.matmul(q.astype(ms.float32), k.astype(ms.float32).transpose(0, 1, 3, 2)) * scalar_value
    discard = None
    if attn_mask is not None:
        need(attn_mask.dtype in (ms.bool_, ms.uint8), f"attn_mask must be bool or uint8, got {attn_mask.dtype}")
        shape = tuple(attn_mask.shape)
        need(shape in ((b, n1, s1, s2), (b, 1, s1, s2), (s1, s2)),
             f"attn_mask shape {shape} is not (B,N1,S1,S2), (B,1,S1,S2) or (S1,S2) = ({b},{n1},{s1},{s2})")
        discard = attn_mask.astype(ms.bool_)
    if pre_tokens < _INT_MAX or next_tokens < _INT_MAX:
        i = np.arange(s1)[:, None]
        j = np.arange(s2)[None, :]
        band = ms.Tensor((j < i - pre_tokens) | (j > i + next_tokens))
        discard = band if discard is None else ops.logical_or(discard, band)
    if discard is not None:
        scores = ops.masked_fill(scores, ops.broadcast_to(discard, scores.shape), float(np.finfo(np.float32).min))
    probs = softmax_precise(scores)
    out = mint.matmul(probs, v.astype(ms.float32)).astype(query.dtype)  # (B, N1, S1, D)
    if input_layout == "BNSD":
        return out
    if input_layout == "BSND":
        return out.transpose(0, 2, 1, 3)
    out = out.transpose(0, 2, 1, 3).reshape(b, s1, n1 * d)
    return out.transpose(1, 0, 2) if input_layout == "SBH" else out
