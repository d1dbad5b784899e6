"""Shape arithmetic and the text packing of ``STDiT`` in plain numpy (shared by both frameworks' tests)."""

from __future__ import annotations

import numpy as np


def tiled_mask(mask: np.ndarray, batch: int) -> np.ndarray:
    """Upstream's ``mask.repeat(B // B_mask, 1)``: a (B_mask, L) text mask tiled to the model batch (classifier-
    free guidance passes the conditional half's mask once for [cond; uncond])."""
    mask = np.asarray(mask)
    if mask.shape[0] == batch:
        return mask
    return np.tile(mask, (batch // mask.shape[0], 1))


def text_lengths(mask: np.ndarray, batch: int) -> tuple[int, ...]:
    """``y_lens``: valid (non-zero) text tokens per sample after tiling."""
    return tuple(int(n) for n in (tiled_mask(mask, batch) != 0).sum(axis=1))


def pack_text(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, 1, L, C) projected text -> (1, ΣL_i, C): the valid tokens of sample 0, then of sample 1, ... in token
    order (upstream's ``masked_select``)."""
    b = y.shape[0]
    keep = tiled_mask(mask, b) != 0
    return y[:, 0][keep][None]


def unpack_text(packed: np.ndarray, y_lens, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(1, ΣL_i, C) -> zero-padded (B, length, C) and the (B, length) bool mask of real tokens (prefix layout:
    attention does not depend on where the real tokens sit, so the padded form is equivalent per sample)."""
    y_lens = [int(n) for n in y_lens]
    out = np.zeros((len(y_lens), length, packed.shape[-1]), packed.dtype)
    valid = np.zeros((len(y_lens), length), bool)
    start = 0
    for i, n in enumerate(y_lens):
        out[i, :n] = packed[0, start:start + n]
        valid[i, :n] = True
        start += n
    return out, valid


def spatial_token_grid(height: int, width: int) -> np.ndarray:
    """(H'·W', 2) (h, w) coordinates of the spatial tokens in token order (row-major: h, then w)."""
    hh, ww = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([hh.ravel(), ww.ravel()], axis=1)
