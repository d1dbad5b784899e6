"""Reference scheduler adapter: diffusers' ``EulerAncestralDiscreteScheduler`` (diffusers 0.35.1), numpy in/out.

The pipeline calls ``scale_model_input(sample, t)`` and ``step(model_output, t, sample, generator=...)`` with ``t``
taken from ``scheduler.timesteps``; the adapter does exactly that for step index ``k``. The ancestral noise is
drawn inside ``step`` by ``randn_tensor(shape, generator=..., device=..., dtype=model_output.dtype)``, a name
``scheduling_euler_ancestral_discrete`` imports into its module globals; torch generators cannot replay given
values, so — LABELLED RUNTIME PATCH — during each ``step`` call (and only then) that module global is replaced by
a function returning the recorded draw (shape checked, cast to the requested dtype) and restored afterwards.
No library file is edited.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler
from diffusers.schedulers import scheduling_euler_ancestral_discrete as _module

from parity.pipeline.schedule import SCHEDULER_CONFIG


@contextlib.contextmanager
def replay_noise(draw: np.ndarray):
    """Within the block, the scheduler module's ``randn_tensor`` returns ``draw`` (once)."""
    original = _module.randn_tensor
    handed = []

    def recorded_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        if handed:
            raise RuntimeError("replay_noise: the scheduler drew noise twice in one step")
        if tuple(shape) != tuple(draw.shape):
            raise ValueError(f"replay_noise: recorded draw {draw.shape}, scheduler asked for {tuple(shape)}")
        handed.append(True)
        return torch.from_numpy(np.array(draw, copy=True)).to(device=device or "cpu", dtype=dtype)

    _module.randn_tensor = recorded_randn_tensor
    try:
        yield
    finally:
        _module.randn_tensor = original


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


class DiffusersEulerAncestral:
    """``EulerAncestralDiscreteScheduler(**config)`` after ``set_timesteps(num_steps)``."""

    def __init__(self, num_steps: int, config: dict | None = None):
        self.scheduler = EulerAncestralDiscreteScheduler(**(SCHEDULER_CONFIG if config is None else config))
        self.scheduler.set_timesteps(int(num_steps))
        self.timesteps = _numpy(self.scheduler.timesteps)
        self.sigmas = _numpy(self.scheduler.sigmas)
        self.init_noise_sigma = float(self.scheduler.init_noise_sigma)
        self.alphas_cumprod = _numpy(self.scheduler.alphas_cumprod)

    def _t(self, k: int) -> torch.Tensor:
        """Step ``k``'s timestep, with the scheduler's step index set to ``k`` (the library sets it from the
        timestep on the first call and counts up; per-step mode runs any step directly)."""
        self.scheduler._step_index = int(k)
        return self.scheduler.timesteps[k]

    def scale_model_input(self, sample: np.ndarray, k: int) -> np.ndarray:
        return _numpy(self.scheduler.scale_model_input(torch.from_numpy(np.array(sample, copy=True)), self._t(k)))

    def step(self, model_output: np.ndarray, k: int, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        t = self._t(k)
        with replay_noise(noise):
            out = self.scheduler.step(torch.from_numpy(np.array(model_output, copy=True)), t,
                                      torch.from_numpy(np.array(sample, copy=True)), return_dict=False)[0]
        return _numpy(out)
