"""The classifier-free-guidance denoising loop of Open-Sora-Plan v1.3, framework-free and recorded step by step.

Per step ``k`` with timestep ``t`` (``pipeline_opensora.py``'s loop, fact sheet §6)::

    latent_model_input = cat([latents] * 2)                  # batch order [negative, positive]
    latent_model_input = scheduler.scale_model_input(latent_model_input, t)     # / sqrt(sigma_k^2 + 1)
    timestep           = [t] * 2B in the latents' dtype
    noise_pred         = model(latent_model_input, timestep, **model_kwargs)
    uncond, text       = noise_pred.chunk(2)
    noise_pred         = uncond + guidance_scale * (text - uncond)
    latents            = scheduler.step(noise_pred, t, latents, <the recorded draw>)

``model`` is any callable ``model(latent_model_input, timestep, **model_kwargs) -> numpy`` (the DiT through a
plug-in, or a toy in tests); ``scheduler`` is an adapter with ``timesteps``, ``sigmas``, ``init_noise_sigma``,
``scale_model_input(sample, k)`` and ``step(model_output, k, sample, noise)`` on numpy arrays
(``reference_torch.euler_ancestral``, ``ms_impl.mindone_euler_ancestral``). Arrays keep the latents' dtype; the
guidance arithmetic runs in numpy in that dtype, one rounding per operation as torch's and MindSpore's
elementwise kernels do for fp16 (tested equal to torch bit for bit).

Modes: free-running (the subject's own latents flow from step to step) and per step (``teacher=`` the reference's
records: every step starts from the reference's ``latents_in``; with ``teacher_predictions=True`` the reference's
model predictions are used too, so the step measures the scheduler and the guidance alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .noise import NoiseReplay, draw
from .schedule import GUIDANCE_SCALE

# What each step records, in data-flow order.
STEP_RECORDS = ("latents_in", "model_input", "timestep", "noise_pred_uncond", "noise_pred_text", "noise_pred",
                "latents_out")
PREDICTION_RECORDS = ("noise_pred_uncond", "noise_pred_text")


@dataclass(frozen=True)
class LoopOptions:
    guidance_scale: float = GUIDANCE_SCALE
    negative_first: bool = True       # the CFG batch order: [negative, positive] (upstream)
    scale_model_input: bool = True    # upstream scales for every scheduler but flow matching


def step_probe(step: int, record: str) -> str:
    return f"step_{step}_{record}"


def step_probe_names(num_steps: int) -> list[str]:
    """Per-step probe names in data-flow order (the noise draws are inputs: ``initial_latents``, ``noise_{k}``)."""
    return [step_probe(k, r) for k in range(num_steps) for r in STEP_RECORDS]


def guide(uncond: np.ndarray, text: np.ndarray, guidance_scale: float) -> np.ndarray:
    return uncond + guidance_scale * (text - uncond)


def run_step(model: Callable[..., np.ndarray] | None, scheduler, k: int, latents: np.ndarray, noise: np.ndarray, *,
             options: LoopOptions = LoopOptions(), model_kwargs: dict | None = None,
             predictions: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Denoising step ``k`` from ``latents`` with the ancestral draw ``noise``; returns its record.

    ``predictions=(uncond, text)`` skips the model (the reference's predictions in per-step mode). Steps of one
    scheduler adapter run in order (it counts steps like the library schedulers do)."""
    latents = np.asarray(latents)
    rec = {"latents_in": latents}
    model_input = np.concatenate([latents, latents], axis=0)
    if options.scale_model_input:
        model_input = scheduler.scale_model_input(model_input, k)
    else:
        scheduler.scale_model_input(latents, k)  # keeps the scheduler's step bookkeeping; result unused
    rec["model_input"] = model_input
    rec["timestep"] = np.full((model_input.shape[0],), scheduler.timesteps[k], dtype=latents.dtype)
    if predictions is not None:
        uncond, text = (np.asarray(p) for p in predictions)
    else:
        pred = np.asarray(model(model_input, rec["timestep"], **(model_kwargs or {})))
        first, second = np.split(pred, 2, axis=0)
        uncond, text = (first, second) if options.negative_first else (second, first)
    rec["noise_pred_uncond"], rec["noise_pred_text"] = uncond, text
    rec["noise_pred"] = guide(uncond, text, options.guidance_scale)
    rec["latents_out"] = scheduler.step(rec["noise_pred"], k, latents, np.asarray(noise))
    return rec


def run_cfg_loop(model: Callable[..., np.ndarray], scheduler, initial_latents: np.ndarray,
                 noise: "Sequence[np.ndarray] | NoiseReplay", *, options: LoopOptions = LoopOptions(),
                 model_kwargs: dict | None = None, teacher: Sequence[dict] | None = None,
                 teacher_predictions: bool = False, num_steps: int | None = None,
                 on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Run the loop; returns one ``{record: array}`` per step (``STEP_RECORDS``).

    ``noise`` holds one draw per step (the latents' shape). ``teacher``: the reference's records for per-step
    mode. ``on_step(k, record)`` sees each step's record as soon as it exists.
    """
    steps = len(scheduler.timesteps) if num_steps is None else int(num_steps)
    if teacher is not None and len(teacher) < steps:
        raise ValueError(f"per-step mode needs the reference's records of {steps} steps, got {len(teacher)}")
    if teacher_predictions and teacher is None:
        raise ValueError("teacher_predictions needs teacher records")
    replay = noise if isinstance(noise, NoiseReplay) else NoiseReplay(noise)
    latents = np.asarray(initial_latents)
    records = []
    for k in range(steps):
        if teacher is not None:
            latents = np.asarray(teacher[k]["latents_in"])
        predictions = tuple(teacher[k][r] for r in PREDICTION_RECORDS) if teacher_predictions else None
        rec = run_step(model, scheduler, k, latents, replay.next(latents.shape), options=options,
                       model_kwargs=model_kwargs, predictions=predictions)
        latents = rec["latents_out"]
        records.append(rec)
        if on_step is not None:
            on_step(k, rec)
    return records


def make_noise(seed: int, shape: tuple, num_steps: int, dtype, init_noise_sigma: float) -> tuple[np.ndarray, list]:
    """Initial latents (``randn * init_noise_sigma`` in ``dtype``, as ``prepare_latents``) and one ancestral draw
    per step, from one numpy generator."""
    rng = np.random.default_rng(seed)
    base = draw(rng, shape, dtype)
    initial = (base * np.asarray(init_noise_sigma, dtype=np.float32)).astype(dtype)
    return initial, [draw(rng, shape, dtype) for _ in range(num_steps)]
