"""Recorded noise: the initial latents and every ancestral draw of a run, replayed into any scheduler.

Random streams are not comparable across frameworks, so the reference run draws its noise from numpy, rounds
it to the latents' dtype (the values the scheduler actually adds) and records it; the subject consumes the same
arrays. ``NoiseReplay`` hands them out in order and refuses a draw of the wrong shape or one too many.
"""

from __future__ import annotations

import numpy as np


def draw(rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    """One standard-normal draw in ``dtype`` (float32 values rounded once to fp16 when the latents are fp16)."""
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


class NoiseReplay:
    """The recorded ancestral draws, one per scheduler step, handed out in order.

    ``standard_normal(size)`` makes it usable where a library expects a numpy ``Generator`` (mindone.diffusers'
    ``randn_tensor`` calls exactly that)."""

    def __init__(self, draws):
        self._draws = [np.asarray(d) for d in draws]
        self.used = 0

    def __len__(self) -> int:
        return len(self._draws)

    def next(self, shape) -> np.ndarray:
        if self.used >= len(self._draws):
            raise ValueError(f"noise replay: draw {self.used + 1} requested but only {len(self._draws)} were recorded")
        arr = self._draws[self.used]
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"noise replay: draw {self.used} has shape {arr.shape}, the scheduler asked for {tuple(shape)}")
        self.used += 1
        return arr

    def standard_normal(self, size=None, dtype=None, out=None):
        return self.next(size)
