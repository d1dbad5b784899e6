"""Small configs and deterministic inputs for the tests of both frameworks (plain numpy)."""

from __future__ import annotations

import numpy as np


def tiny_config(num_layers: int = 4, heads: int = 2, head_dim: int = 24, sparse1d: bool = True, sparse_n: int = 4,
                caption_channels: int = 32, channels: int = 8, **overrides) -> dict:
    """The fact sheet's tiny instance by default: D = 48 (2 heads x 24), Dc = 32, C = 8, 4 layers."""
    cfg = dict(num_layers=num_layers, num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
               out_channels=channels, patch_size=2, patch_size_t=1, caption_channels=caption_channels,
               cross_attention_dim=heads * head_dim, activation_fn="gelu-approximate", attention_bias=True,
               norm_elementwise_affine=False, norm_eps=1e-6, sparse1d=sparse1d, sparse_n=sparse_n)
    cfg.update(overrides)
    return cfg


def make_inputs(seed: int = 0, batch: int = 2, channels: int = 8, frames: int = 3, height: int = 10, width: int = 6,
                text_len: int = 5, caption_channels: int = 32, text_lens=None, mask_video: bool = True) -> dict:
    """Random latents/text; sample 0 has its right columns masked, text masks are ragged (padded text)."""
    rng = np.random.default_rng(seed)
    inputs = {
        "hidden_states": rng.standard_normal((batch, channels, frames, height, width)).astype(np.float32),
        "timestep": np.array([999.0, 10.0, 500.0, 1.0][:batch], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 1, text_len, caption_channels)).astype(np.float32),
    }
    video = np.ones((batch, frames, height, width), np.float32)
    if mask_video:
        video[0, :, :, width // 2 + 1:] = 0
        if batch > 1:
            video[1, -1] = 0
    text = np.zeros((batch, 1, text_len), np.float32)
    for b, n in enumerate(text_lens or [max(1, text_len - 2 * b) for b in range(batch)]):
        text[b, 0, :n] = 1
    inputs["attention_mask"] = video
    inputs["encoder_attention_mask"] = text
    return inputs
