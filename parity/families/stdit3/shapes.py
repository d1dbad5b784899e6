"""Shape arithmetic of ``STDiT3`` in plain numpy/Python (upstream ``get_dynamic_size`` and forward's pos-emb sizes)."""

from __future__ import annotations


def dynamic_size(frames: int, height: int, width: int, patch_size) -> tuple[int, int, int]:
    """Token grid (T, H, W): each axis zero-padded up to a multiple of its patch, then divided."""
    return tuple(-(-n // p) for n, p in zip((frames, height, width), patch_size))


def base_size(tokens_per_frame: int) -> int:
    """``round(S ** 0.5)`` as upstream's forward computes it (Python's round, ties to even)."""
    return round(tokens_per_frame ** 0.5)


def pos_embed_scale(pixel_height: float, pixel_width: float, input_sq_size: float) -> float:
    """``sqrt(height[0] * width[0]) / input_sq_size``: from the *pixel* size of the video, not the latent."""
    return (pixel_height * pixel_width) ** 0.5 / input_sq_size


def grid_of(x_shape, patch_size) -> dict:
    """Sizes upstream's forward derives from x (B, C, Tx, Hx, Wx): the token grid, tokens per frame, all tokens."""
    b, _, tx, hx, wx = x_shape
    t, h, w = dynamic_size(tx, hx, wx, patch_size)
    return dict(B=int(b), T=t, H=h, W=w, S=h * w, N=t * h * w, Tx=int(tx), Hx=int(hx), Wx=int(wx))

