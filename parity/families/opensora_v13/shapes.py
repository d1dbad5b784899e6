"""Shape arithmetic and index maps of ``OpenSoraT2V_v1_3`` in plain numpy (shared by both frameworks' tests)."""

from __future__ import annotations

import numpy as np


def patch_grid(frames: int, height: int, width: int, patch_size: int, patch_size_t: int) -> tuple[int, int, int]:
    """Token grid (T', H', W') as upstream forward() computes it (odd T: (T-1)//pt + 1; odd H/W floored)."""
    t = (frames - 1) // patch_size_t + 1 if frames % 2 == 1 else frames // patch_size_t
    return t, height // patch_size, width // patch_size


def sparse_padded_length(seq_len: int, sparse_n: int) -> int:
    """Skiparse pads the sequence to a multiple of ``sparse_n ** 2``."""
    block = sparse_n * sparse_n
    return -(-seq_len // block) * block


def skiparse_token_order(seq_len: int, sparse_n: int, group: bool) -> np.ndarray:
    """Token index at each (sub-batch j, position) after Skiparse regrouping, shape (n, S_pad/n).

    single skip: ``(g k) -> g (k)``: sub-batch j holds tokens i with i % n == j.
    group skip:  ``(n m k) -> (n k) (m)``: sub-batch j holds runs of n consecutive tokens with (i // n) % n == j.
    Indices >= seq_len are padding tokens.
    """
    s_pad = sparse_padded_length(seq_len, sparse_n)
    idx = np.arange(s_pad)
    n = sparse_n
    if not group:
        return idx.reshape(s_pad // n, n).T.copy()
    return idx.reshape(s_pad // (n * n), n, n).transpose(1, 0, 2).reshape(n, s_pad // n).copy()


def skiparse_allowed(seq_len: int, sparse_n: int, group: bool) -> np.ndarray:
    """Dense (S, S) boolean matrix: query i may attend key j under Skiparse (padding excluded)."""
    i = np.arange(seq_len)
    if group:
        cls = (i // sparse_n) % sparse_n
    else:
        cls = i % sparse_n
    return cls[:, None] == cls[None, :]
