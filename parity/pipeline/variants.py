"""Deliberately wrong samplers (teeth): each a patch to the scheduler config or the loop options that a
per-step comparison must catch at a known step and probe.

``apply(config, options)`` returns the patched copies; nothing global changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .loop import LoopOptions


@dataclass(frozen=True)
class SamplerVariant:
    name: str
    description: str
    scheduler_overrides: dict = field(default_factory=dict)
    loop_overrides: dict = field(default_factory=dict)
    caught_at: tuple = (0, "latents_out")   # (step, first failing record) in per-step mode

    def apply(self, config: dict, options: LoopOptions = LoopOptions()) -> tuple[dict, LoopOptions]:
        return dict(config, **self.scheduler_overrides), dataclasses.replace(options, **self.loop_overrides)


VARIANTS = {v.name: v for v in (
    SamplerVariant("epsilon", "prediction_type 'epsilon' instead of 'v_prediction': x0 = x - sigma*eps",
                   scheduler_overrides={"prediction_type": "epsilon"}, caught_at=(0, "latents_out")),
    SamplerVariant("leading", "timestep_spacing 'leading' (990, 980, ..., 0) instead of 'trailing' (999, ..., 9)",
                   scheduler_overrides={"timestep_spacing": "leading"}, caught_at=(0, "model_input")),
    SamplerVariant("cfg-swapped", "CFG halves swapped: [positive, negative] read as [uncond, text]",
                   loop_overrides={"negative_first": False}, caught_at=(0, "noise_pred_uncond")),
    SamplerVariant("no-zero-snr", "rescale_betas_zero_snr off: sigma_max 157 instead of 4096",
                   scheduler_overrides={"rescale_betas_zero_snr": False}, caught_at=(0, "model_input")),
    SamplerVariant("unscaled-input", "latents passed to the model without scale_model_input",
                   loop_overrides={"scale_model_input": False}, caught_at=(0, "model_input")),
)}
