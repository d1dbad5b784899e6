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


def rope_positions(t: int, h: int, w: int) -> np.ndarray:
    """(S, 3) integer grid positions (t, h, w) in token order (t-major), like ``torch.cartesian_prod``."""
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=1)


def token_chunks(seq: int, step: int, unit: int):
    """(start, stop, rows) of the token-streamed paths: chunks of ``step`` tokens (a multiple of ``unit``, the
    Skiparse sparse_n² group), ``rows`` the chunk's length rounded up to whole units (the padded tail)."""
    for s0 in range(0, seq, step):
        s1 = min(seq, s0 + step)
        yield s0, s1, -(-(s1 - s0) // unit) * unit
