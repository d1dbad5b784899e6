"""Deliberately wrong variants of the MindSpore ``STDiT``, for the stdit teeth tests (the bugs issue 13 lists).

Each mutant patches a *built* model for the duration of a ``with`` block and restores it on exit; the modeling
file is not edited and has no test flags. The seams are the model's own: its positional-table buffers, and a cell's
``construct`` wrapped on the instance (the block, the temporal attention, the cross-attention, the final layer).
``first_divergence`` is the first probe (in the family's data-flow order) the bug changes, in isolated mode.

    with MUTANTS["temporal_pos_embed_every_block"].apply(model):
        ...
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
from mindspore import Tensor, ops

from ms_impl.mutants import Mutant


@contextlib.contextmanager
def _wrapped(cells: list, make: Callable) -> Iterator[None]:
    """Each cell's ``construct`` replaced by ``make(cell, original_construct)`` on the instance; restored on exit."""
    try:
        for cell in cells:
            cell.construct = make(cell, cell.construct)
        yield
    finally:
        for cell in cells:
            del cell.construct


@contextlib.contextmanager
def _tables(model, change: Callable[[str, np.ndarray], np.ndarray]) -> Iterator[None]:
    """The positional-table buffers replaced by ``change(name, table)`` (float32, rounded to the working dtype)."""
    saved = {k: model._buffers[k] for k in ("pos_embed", "pos_embed_temporal")}
    try:
        for name, buf in saved.items():
            table = change(name, buf.astype("float32").asnumpy())
            model._buffers[name] = Tensor(model.numerics.table(table)).astype(buf.dtype)
        yield
    finally:
        model._buffers.update(saved)


def _swap_halves(table: np.ndarray) -> np.ndarray:
    half = table.shape[-1] // 2
    return np.concatenate([table[..., half:], table[..., :half]], axis=-1)


# ---- the wrong variants --------------------------------------------------------------------------------------
def _temporal_pos_embed_every_block(model):
    def make(block, construct):
        return lambda x, y, t, mask=None, tpe=None: construct(x, y, t, mask, model.pos_embed_temporal)
    return _wrapped(list(model.blocks), make)


def _temporal_own_norm_modulation(model):
    """The temporal branch gets norm1 + the msa modulation like the spatial one (upstream has neither)."""
    def make_block(block, construct):
        def run(x, y, t, mask=None, tpe=None):
            shift, scale = ops.chunk(block.scale_shift_table[None] + t.reshape(x.shape[0], 6, -1), 6, axis=1)[:2]
            block.attn_temp.modulation = (shift, scale, block.d_s, block.norm1)
            return construct(x, y, t, mask, tpe)
        return run

    def make_attn(attn, construct):
        def run(x, round_before_bias=False):
            shift, scale, s, norm = attn.modulation      # (B, 1, C) each; x is (B·S, T, C), rows b-major
            shift, scale = ops.repeat_interleave(shift, s, 0), ops.repeat_interleave(scale, s, 0)
            return construct(norm(x) * (1 + scale) + shift, round_before_bias)
        return run

    blocks = list(model.blocks)
    return _chain(_wrapped(blocks, make_block), _wrapped([b.attn_temp for b in blocks], make_attn))


def _sincos_cos_first(model):
    """Every positional sincos table [cos, sin] instead of [sin, cos] (the 2D table: within each coordinate's half)."""
    def change(name, table):
        if name == "pos_embed_temporal":
            return _swap_halves(table)
        half = table.shape[-1] // 2
        return np.concatenate([_swap_halves(table[..., :half]), _swap_halves(table[..., half:])], axis=-1)
    return _tables(model, change)


def _pos_embed_hw(model):
    """The 2D table's halves in (h, w) order instead of upstream's (w, h)."""
    return _tables(model, lambda name, table: _swap_halves(table) if name == "pos_embed" else table)


def _final_layer_on_t_block(model):
    """The final layer modulated by t_block's output (its first chunk of C) instead of the raw timestep embedding."""
    def make(layer, construct):
        return lambda x, t: construct(x, model.t_block(t).reshape(t.shape[0], 6, -1)[:, 0])
    return _wrapped([model.final_layer], make)


def _text_mask_dropped(model):
    """Cross-attention called without the text lengths: every query attends to the whole packed text of the batch
    (upstream's block with ``mask=None`` at B > 1)."""
    def make(attn, construct):
        return lambda x, cond, mask=None: construct(x, cond, None)
    return _wrapped([b.cross_attn for b in model.blocks], make)


@contextlib.contextmanager
def _chain(*contexts) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


MUTANTS: dict[str, Mutant] = {m.name: m for m in (
    Mutant("temporal_pos_embed_every_block", "the temporal positional table added in every block, not block 0 only",
           "hidden_states_1_block", _temporal_pos_embed_every_block),
    Mutant("temporal_own_norm_modulation", "the temporal branch given norm1 and the msa modulation",
           "hidden_states_0_block", _temporal_own_norm_modulation),
    Mutant("sincos_cos_first", "positional sincos tables [cos, sin] instead of [sin, cos]",
           "hidden_states_pos_embed", _sincos_cos_first),
    Mutant("pos_embed_hw", "2D positional table halves (h, w) instead of (w, h)",
           "hidden_states_pos_embed", _pos_embed_hw),
    Mutant("final_layer_on_t_block", "final layer modulated by t_block's output instead of the raw t",
           "hidden_states_final_layer", _final_layer_on_t_block),
    Mutant("text_mask_dropped", "text padding not dropped per sample: cross-attention over the whole batch's text",
           "hidden_states_0_block", _text_mask_dropped),
)}
