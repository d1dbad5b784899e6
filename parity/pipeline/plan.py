"""The sampling loop as a family whose blocks are denoising steps (contract of issue 12): per-step mode is
isolated mode with ``TeacherStep`` kind ``"step"``, free-running is accumulated mode.

Probe names: the recorded noise (``initial_latents``, ``noise_{k}``) as inputs, then ``step_{k}_{record}`` in
data-flow order. Step k is fed the reference's ``step_{k}_latents_in`` (= its ``step_{k-1}_latents_out``) and the
recorded draw ``noise_{k}``; a subject runs it with ``parity.pipeline.loop.run_step``.
"""

from __future__ import annotations

from parity.teacher import TeacherStep
from .loop import PREDICTION_RECORDS, step_probe, step_probe_names


def noise_probe(k: int) -> str:
    return f"noise_{k}"


def probe_names(num_steps: int) -> list[str]:
    return ["initial_latents"] + [noise_probe(k) for k in range(num_steps)] + step_probe_names(num_steps)


def teacher_plan(num_steps: int, with_predictions: bool = False) -> list[TeacherStep]:
    """One step per denoising step, producing ``step_{k}_latents_out``. ``with_predictions`` also feeds the
    reference's model predictions (the step then measures the scheduler and the guidance alone)."""
    plan = []
    for k in range(num_steps):
        inputs = {"latents": step_probe(k, "latents_in"), "noise": noise_probe(k)}
        if with_predictions:
            inputs.update({r: step_probe(k, r) for r in PREDICTION_RECORDS})
        plan.append(TeacherStep(step_probe(k, "latents_out"), "step", k, inputs, {}))
    return plan
