"""Subject scheduler adapter: mindone.diffusers' ``EulerAncestralDiscreteScheduler`` (mindone 0.5.0), numpy in/out.

It runs unmodified on MindSpore 2.10 CPU. Its ``step`` draws the ancestral noise through mindone's
``randn_tensor``, which calls ``generator.standard_normal(shape)`` on the numpy ``Generator`` passed as
``generator=``; the adapter passes a ``parity.pipeline.noise.NoiseReplay`` holding the recorded draw instead (an
object with that one method), so the recorded noise is consumed without any patch.
The caller sets up the MindSpore context (``ms_impl.harness.setup_context``).
"""

from __future__ import annotations

import numpy as np

import mindspore as ms
from mindone.diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler

from parity.pipeline.noise import NoiseReplay
from parity.pipeline.schedule import SCHEDULER_CONFIG


class MindoneEulerAncestral:
    """``EulerAncestralDiscreteScheduler(**config)`` after ``set_timesteps(num_steps)``."""

    def __init__(self, num_steps: int, config: dict | None = None):
        self.scheduler = EulerAncestralDiscreteScheduler(**(SCHEDULER_CONFIG if config is None else config))
        self.scheduler.set_timesteps(int(num_steps))
        self.timesteps = self.scheduler.timesteps.asnumpy().copy()
        self.sigmas = self.scheduler.sigmas.asnumpy().copy()
        self.init_noise_sigma = float(self.scheduler.init_noise_sigma.asnumpy())
        self.alphas_cumprod = self.scheduler.alphas_cumprod.asnumpy().copy()

    def _t(self, k: int) -> ms.Tensor:
        """Step ``k``'s timestep, with the scheduler's step index set to ``k`` (the library sets it from the
        timestep on the first call and counts up; per-step mode runs any step directly)."""
        self.scheduler._step_index = int(k)
        return self.scheduler.timesteps[k]

    def scale_model_input(self, sample: np.ndarray, k: int) -> np.ndarray:
        return self.scheduler.scale_model_input(ms.Tensor(np.array(sample, copy=True)), self._t(k)).asnumpy().copy()

    def step(self, model_output: np.ndarray, k: int, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        replay = NoiseReplay([noise])
        out = self.scheduler.step(ms.Tensor(np.array(model_output, copy=True)), self._t(k),
                                  ms.Tensor(np.array(sample, copy=True)), generator=replay, return_dict=False)[0]
        if replay.used != 1:
            raise RuntimeError(f"the scheduler consumed {replay.used} noise draws in one step, expected 1")
        return out.asnumpy().copy()
