"""A toy conditional denoiser in numpy: the model callable of the loop's own tests and measurements.

``ToyDenoiser(channels, text_dim, seed)(latent_model_input, timestep, prompt_embeds=...)`` returns a v-like
prediction of the input's shape and dtype, bounded by 1, that depends on every input: a channel mix of the
latents, the timestep and each sample's pooled prompt embedding. Identical on every side of a comparison, it
leaves the scheduler and the guidance as the only difference between two loops.
"""

from __future__ import annotations

import numpy as np


class ToyDenoiser:
    def __init__(self, channels: int, text_dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.mix = (rng.standard_normal((channels, channels)) / np.sqrt(channels)).astype(np.float32)
        self.time = rng.standard_normal(channels).astype(np.float32)
        self.text = (rng.standard_normal((text_dim, channels)) / np.sqrt(text_dim)).astype(np.float32)

    def __call__(self, latent_model_input: np.ndarray, timestep: np.ndarray, prompt_embeds: np.ndarray) -> np.ndarray:
        x = np.asarray(latent_model_input, dtype=np.float32)
        b, c = x.shape[:2]
        mixed = np.einsum("dc,bc...->bd...", self.mix, x)
        cond = np.asarray(prompt_embeds, dtype=np.float32).mean(axis=1) @ self.text            # (B, C)
        shift = np.outer(np.asarray(timestep, dtype=np.float32) / 1000.0, self.time) + cond     # (B, C)
        out = np.tanh(mixed + shift.reshape((b, c) + (1,) * (x.ndim - 2)))
        return out.astype(latent_model_input.dtype)
