"""Per-step tolerances of the sampling loop and the first step/record that leaves them.

An element passes when ``|sub − ref| <= scale·atol + rtol·|ref|``. ``scale`` is 1 except for latents, which are
compared in model-input units: latents about to be used at sigma σ are divided by √(σ²+1) before the model sees
them (``scale_model_input``), so an absolute error δ there is δ/√(σ²+1) at the model — near σ_max ≈ 4096 the
latents are ~4096·N(0,1) and an fp32 rounding of 2 ULP (9.8e-4 at 4.5e3) is 2.4e-7 at the model, while the same
absolute error at σ ≈ 0.04 would matter 4096 times more. ``latents_in`` of step k is used at σ_k, ``latents_out`` at
σ_{k+1} (σ = 0 after the last step: scale 1).

The guided prediction ``u + g·(t − u)`` carries ``|1 − g|·δu + g·δt``: up to (|1 − g| + g) = 14× (g = 7.5) the
error of the two predictions, so its tolerance is the predictions' times that factor.

Figures (docs/pipeline.md): mindone.diffusers vs diffusers, the same toy model on both sides, 100 steps, two seeds,
B = 2. Per step (every step from the reference latents), fp32: model input ≤ 2.9e-6, predictions ≤ 9.5e-7 (guided
5.7e-6), latents ≤ 5.7e-6 in model-input units; fp16: one fp16 ULP of the element (7.4e-3 at |z| ≈ 8) where the
two schedulers' float32 sigmas (up to 1.6e-5 apart) round differently. Free-running, the fp32 drift reaches 1.3e-4
(guided prediction 2.4e-4) and the fp16 drift 3.9e-2 (guided 6.6e-2) after 100 steps.
"""

from __future__ import annotations

import numpy as np

from .loop import STEP_RECORDS

_PRED = ("noise_pred_uncond", "noise_pred_text")
FP16_ULP = 2.0 ** -10   # relative spacing of fp16 just above a power of two

# (precision, mode) -> record kind -> (atol, rtol); kinds: latents, model_input, timestep, prediction
TOLERANCES = {
    # >= 3.5x the worst per-step figure: fp32 roundings of a few 1e-6 at the model
    ("fp32", "per_step"): {"latents": (2e-5, 1e-5), "model_input": (2e-5, 1e-5), "timestep": (0.0, 0.0),
                           "prediction": (2e-5, 1e-5)},
    # one fp16 ULP of the element (the schedulers' float32 sigmas differ in the 5th digit and flip roundings)
    ("fp16", "per_step"): {"latents": (2e-3, FP16_ULP), "model_input": (2e-3, FP16_ULP), "timestep": (0.0, 0.0),
                           "prediction": (2e-3, 2 * FP16_ULP)},
    # drift after k steps: ~4x the worst 100-step figure of a correct port (toy model; recalibrate with the DiT,
    # whose sensitivity to its input sets how fast roundings grow)
    ("fp32", "free_running"): {"latents": (5e-4, 1e-5), "model_input": (5e-4, 1e-5), "timestep": (0.0, 0.0),
                               "prediction": (5e-4, 1e-5)},
    ("fp16", "free_running"): {"latents": (0.15, FP16_ULP), "model_input": (0.15, FP16_ULP), "timestep": (0.0, 0.0),
                               "prediction": (0.15, 2 * FP16_ULP)},
}


def record_kind(record: str) -> str:
    if record.startswith("latents"):
        return "latents"
    if record in ("model_input", "timestep"):
        return record
    return "prediction"


def allowed(record: str, precision: str, mode: str, guidance_scale: float) -> tuple[float, float]:
    atol, rtol = TOLERANCES[(precision, mode)][record_kind(record)]
    if record == "noise_pred":
        factor = abs(1.0 - guidance_scale) + abs(guidance_scale)
        atol, rtol = atol * factor, rtol * factor
    return atol, rtol


def latent_scale(record: str, step: int, sigmas: np.ndarray) -> float:
    if record == "latents_in":
        sigma = float(sigmas[step])
    elif record == "latents_out":
        sigma = float(sigmas[step + 1]) if step + 1 < len(sigmas) else 0.0
    else:
        return 1.0
    return float(np.sqrt(sigma * sigma + 1.0))


def step_errors(ref: dict, sub: dict, step: int, sigmas: np.ndarray, precision: str, mode: str,
                guidance_scale: float) -> dict:
    """``{record: (max |Δ| / scale, worst excess over the tolerance (<= 0 passes))}`` for one step."""
    out = {}
    for record in STEP_RECORDS:
        a = np.asarray(ref[record], dtype=np.float64)
        b = np.asarray(sub[record], dtype=np.float64)
        scale = latent_scale(record, step, sigmas)
        atol, rtol = allowed(record, precision, mode, guidance_scale)
        diff = np.abs(a - b) if a.shape == b.shape else np.full(a.shape, np.inf)
        diff = np.where(np.isnan(diff), np.inf, diff)
        excess = float(np.max(diff - (scale * atol + rtol * np.abs(a))))
        out[record] = (float(np.max(diff)) / scale, excess)
    return out


def first_divergence(ref: list, sub: list, sigmas: np.ndarray, precision: str, mode: str,
                     guidance_scale: float) -> tuple[int, str] | None:
    """The first (step, record) outside tolerance, in step then data-flow order; None if every step passes."""
    for k, (r, s) in enumerate(zip(ref, sub)):
        for record, (_, excess) in step_errors(r, s, k, sigmas, precision, mode, guidance_scale).items():
            if excess > 0:
                return k, record
    return None
