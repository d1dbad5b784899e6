"""Open-Sora-Plan v1.3's sampler settings and an independent float64 computation of its schedule.

``sample_t2v_v1_3.sh`` builds ``EulerAncestralDiscreteScheduler(prediction_type="v_prediction",
rescale_betas_zero_snr=True, timestep_spacing="trailing")`` with diffusers' defaults (1000 training steps, linear
betas 1e-4 -> 0.02), samples 100 steps with guidance 7.5 (fact sheet §6). The functions below redo the schedule
in float64 from the papers' formulas — the hand check the library schedulers (which compute in float32) are
tested against: zero terminal SNR (Lin et al. 2023, Algorithm 1), the last ᾱ replaced by 2^-24 so that the
first sigma is finite, sigma = sqrt((1 - ᾱ) / ᾱ), trailing timesteps round(1000 - k·1000/n) - 1.
"""

from __future__ import annotations

import numpy as np

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
    "steps_offset": 0,
}
NUM_INFERENCE_STEPS = 100
GUIDANCE_SCALE = 7.5
LAST_ALPHA_CUMPROD = 2.0 ** -24   # "FP16 smallest positive subnormal", diffusers' zero-SNR stand-in for 0


def trailing_timesteps(num_steps: int, num_train: int = 1000) -> np.ndarray:
    ratio = num_train / num_steps
    return np.round(np.arange(num_train, 0, -ratio)) - 1


def zero_snr_alphas_cumprod(num_train: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    betas = np.linspace(beta_start, beta_end, num_train, dtype=np.float64)
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)   # shift the last to 0, keep the first
    alphas_cumprod = sqrt_ab ** 2
    alphas_cumprod[-1] = LAST_ALPHA_CUMPROD
    return alphas_cumprod


def sigmas(num_steps: int, num_train: int = 1000) -> np.ndarray:
    """The sampling sigmas at the trailing timesteps, then the final 0 (length ``num_steps + 1``)."""
    ac = zero_snr_alphas_cumprod(num_train)
    all_sigmas = np.sqrt((1.0 - ac) / ac)
    picked = np.interp(trailing_timesteps(num_steps, num_train), np.arange(num_train), all_sigmas)
    return np.concatenate([picked, [0.0]])


def ancestral_sigmas(sigma_from: float, sigma_to: float) -> tuple[float, float]:
    """Euler-Ancestral's split of the step: (sigma_up, sigma_down) with sigma_up² + sigma_down² = sigma_to²."""
    up = np.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2)
    return float(up), float(np.sqrt(sigma_to ** 2 - up ** 2))
