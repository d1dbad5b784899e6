"""Shared helpers of the MindSpore-side tests: tiny configs, numpy weights and inputs (no torch needed)."""

from __future__ import annotations

import numpy as np

from hypothesis import settings

from ms_impl.convert import expected_parameter_shapes

# small example counts: every example runs MindSpore (and often torch) kernels
FAST = settings(max_examples=10, deadline=None)
FASTER = settings(max_examples=6, deadline=None)


def tiny_config(num_layers: int = 4, heads: int = 2, head_dim: int = 24, sparse1d: bool = True, sparse_n: int = 4,
                caption_channels: int = 32, channels: int = 8, **overrides) -> dict:
    cfg = dict(num_layers=num_layers, num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
               out_channels=channels, patch_size=2, patch_size_t=1, caption_channels=caption_channels,
               cross_attention_dim=heads * head_dim, activation_fn="gelu-approximate", attention_bias=True,
               norm_elementwise_affine=False, norm_eps=1e-6, sparse1d=sparse1d, sparse_n=sparse_n)
    cfg.update(overrides)
    return cfg


def numpy_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with the model's names and shapes (roughly PyTorch-default scaled)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_parameter_shapes(config).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        out[name] = (rng.uniform(-1, 1, size=shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


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


def is_bf16_valued(x: np.ndarray) -> bool:
    from parity.dtypes import round_to_bf16
    x = np.asarray(x, dtype=np.float32)
    return bool(np.array_equal(round_to_bf16(x), x))
