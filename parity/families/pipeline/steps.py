"""The loop's steps as probes: names, the teacher plan of per-step mode, latents in model-input units, and the
per-step summary the report shows.

Every record of step k is a probe ``step_{k}_{record}``; in per-step mode (isolated) each is produced by the subject
running step k from the reference's ``step_{k}_latents_in`` with the recorded draw ``step_{k}_noise``, so every
record of a step is that step's local error; free-running (accumulated) is the subject's own loop.
"""

from __future__ import annotations

import re

import numpy as np

from parity.pipeline.loop import STEP_RECORDS
from parity.pipeline.tolerances import latent_scale as _latent_scale
from parity.pipeline.numpy_scheduler import NumpyEulerAncestral
from parity.teacher import TeacherStep

RECORDS = STEP_RECORDS[:-1] + ("noise",) + STEP_RECORDS[-1:]   # the draw is used by the step's last record
MODE_LABELS = {"isolated": "per step (teacher-forced)", "accumulated": "free-running"}
_STEP_PROBE = re.compile(r"^step_(\d+)_(.+)$")


def step_probe(k: int, record: str) -> str:
    return f"step_{k}_{record}"


def parse_step_probe(name: str) -> tuple[int, str] | None:
    m = _STEP_PROBE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def teacher_plan(config, inputs=None) -> list[TeacherStep]:
    plan = []
    for k in range(config.num_inference_steps):
        fed = {"latents": step_probe(k, "latents_in"), "noise": step_probe(k, "noise"),
               "encoder_hidden_states": "encoder_hidden_states", "encoder_attention_mask": "encoder_attention_mask"}
        plan += [TeacherStep(step_probe(k, r), "step", k, fed, {"record": r}) for r in RECORDS]
    return plan


def schedule(config) -> NumpyEulerAncestral:
    """The float64 schedule (hand-checked formulas) of ``config``: timesteps, sigmas, init_noise_sigma."""
    return NumpyEulerAncestral(config.num_inference_steps, config.scheduler)


def latent_scale(sigmas: np.ndarray, k: int, record: str) -> float:
    """√(σ²+1) of the sigma at which these latents are next divided (``parity.pipeline.tolerances``)."""
    return _latent_scale(record, k, sigmas)


def summarize(config, probes: list[dict]) -> dict:
    """Per step and mode: the error of ``latents_out`` (model-input units) and of the guided prediction, the
    worst record (|Δ| over what its tolerance allows there) and the first failing record; and the first step
    that leaves tolerance."""
    sched = schedule(config)
    rows = [{"step": k, "timestep": float(sched.timesteps[k]), "sigma": float(sched.sigmas[k])}
            for k in range(config.num_inference_steps)]
    first = {}
    for p in probes:
        parsed = parse_step_probe(p["name"])
        if parsed is None:
            continue
        k, record = parsed
        cell = rows[k].setdefault(p["mode"], {"latents_out": None, "noise_pred": None, "worst": None,
                                              "worst_ratio": None, "first_failing": None})
        scale = latent_scale(sched.sigmas, k, record)
        if record in ("latents_out", "noise_pred") and p.get("max_abs") is not None:
            cell[record] = p["max_abs"] / scale
        ratio = _ratio(p)
        if ratio is not None and (cell["worst_ratio"] is None or ratio > cell["worst_ratio"]):
            cell["worst"], cell["worst_ratio"] = record, ratio
        if not p["passed"]:
            cell["first_failing"] = cell["first_failing"] or record
            if p["mode"] not in first:
                first[p["mode"]] = {"step": k, "probe": p["name"], "record": record}
    return {"mode_labels": MODE_LABELS, "rows": rows, "first_failing": first}


def _ratio(p: dict) -> float | None:
    """How much of its tolerance a probe used: the smallest passing atol over the atol (inf when the bound is 0
    and it differs; None when not measured)."""
    need, atol = p.get("min_passing_atol"), p.get("atol")
    if need is None:
        return None if p["passed"] else float("inf")
    if not atol:
        return 0.0 if need <= 0 else float("inf")
    return max(need, 0.0) / atol
