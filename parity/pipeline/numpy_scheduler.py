"""Euler-Ancestral in float64 numpy from the formulas (``schedule``): a third, framework-free scheduler adapter.

It runs the loop's own tests without torch or MindSpore and takes the same config keys as the library schedulers
(``prediction_type`` epsilon / v_prediction, ``timestep_spacing`` trailing / leading, ``rescale_betas_zero_snr``),
so the sampler variants apply to it too. Results are cast to the sample's dtype like the libraries' ``step``.
"""

from __future__ import annotations

import numpy as np

from .schedule import SCHEDULER_CONFIG, ancestral_sigmas, zero_snr_alphas_cumprod


class NumpyEulerAncestral:
    def __init__(self, num_steps: int, config: dict | None = None):
        cfg = dict(SCHEDULER_CONFIG, **(config or {}))
        n_train = cfg["num_train_timesteps"]
        if cfg["rescale_betas_zero_snr"]:
            ac = zero_snr_alphas_cumprod(n_train, cfg["beta_start"], cfg["beta_end"])
        else:
            ac = np.cumprod(1.0 - np.linspace(cfg["beta_start"], cfg["beta_end"], n_train))
        if cfg["timestep_spacing"] == "trailing":
            ts = np.round(np.arange(n_train, 0, -n_train / num_steps)) - 1
        elif cfg["timestep_spacing"] == "leading":
            ts = (np.arange(num_steps) * (n_train // num_steps))[::-1] + cfg["steps_offset"]
        else:
            raise ValueError(f"timestep_spacing {cfg['timestep_spacing']!r} is not implemented here")
        self.prediction_type = cfg["prediction_type"]
        self.timesteps = ts.astype(np.float32)
        self.sigmas = np.concatenate([np.interp(ts, np.arange(n_train), np.sqrt((1 - ac) / ac)), [0.0]])
        sigma_max = float(self.sigmas.max())  # diffusers: sqrt(max² + 1) unless linspace/trailing spacing
        self.init_noise_sigma = sigma_max if cfg["timestep_spacing"] == "trailing" else float(np.sqrt(sigma_max ** 2 + 1))

    def scale_model_input(self, sample: np.ndarray, k: int) -> np.ndarray:
        return (sample / np.sqrt(self.sigmas[k] ** 2 + 1)).astype(sample.dtype)

    def step(self, model_output: np.ndarray, k: int, sample: np.ndarray, noise: np.ndarray) -> np.ndarray:
        sigma, x, out = self.sigmas[k], sample.astype(np.float64), model_output.astype(np.float64)
        if self.prediction_type == "epsilon":
            x0 = x - sigma * out
        else:  # v_prediction
            x0 = out * (-sigma / np.sqrt(sigma ** 2 + 1)) + x / (sigma ** 2 + 1)
        up, down = ancestral_sigmas(sigma, self.sigmas[k + 1])
        prev = x + (x - x0) / sigma * (down - sigma) + noise.astype(np.float64) * up
        return prev.astype(model_output.dtype)
