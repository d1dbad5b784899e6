"""The pipeline family's config: a denoiser (any family with pipeline hooks) sampled by Euler-Ancestral with CFG.

``config.json`` of a pipeline dump::

    {"pipeline": "euler_ancestral_cfg", "denoiser_family": "opensora_v13", "denoiser": {...the DiT's config...},
     "num_inference_steps": 10, "guidance_scale": 7.5, "scheduler": {...EulerAncestralDiscreteScheduler kwargs...},
     "text_encoder_family": "mt5_encoder", "text_encoder": {...the MT5Config...}}   # optional, both or neither

With a text encoder the dump records its probes once (``text_encoder.<probe>``) and its ``prompt_embeds`` are
the loop's ``encoder_hidden_states`` (``parity.families.pipeline.text_encoder``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from parity.errors import ParityError, shown
from parity.pipeline.schedule import GUIDANCE_SCALE, SCHEDULER_CONFIG

PIPELINE = "euler_ancestral_cfg"
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0   # upstream samples at 7.5; far beyond, the guided prediction overflows fp16
_KEYS = {"pipeline", "denoiser_family", "denoiser", "num_inference_steps", "guidance_scale", "scheduler",
         "text_encoder_family", "text_encoder"}
TEXT_ENCODER_FAMILIES = ("mt5_encoder",)
SCHEDULER_CHOICES = {"prediction_type": ("v_prediction", "epsilon"), "timestep_spacing": ("trailing", "leading"),
                     "beta_schedule": ("linear",)}


@dataclass(frozen=True)
class PipelineConfig:
    denoiser_family: str
    denoiser: Any                      # the denoiser family's parsed config
    num_inference_steps: int
    guidance_scale: float = GUIDANCE_SCALE
    scheduler: dict = field(default_factory=lambda: dict(SCHEDULER_CONFIG))
    text_encoder_family: str | None = None
    text_encoder: Any = None           # the text encoder family's parsed config, or None (prompt embeddings given)

    @property
    def hidden_size(self) -> int:
        return self.denoiser.hidden_size

    def denoiser_module(self):
        from parity.families import get_family
        return get_family(self.denoiser_family)

    def text_encoder_module(self):
        from parity.families import get_family
        return None if self.text_encoder_family is None else get_family(self.text_encoder_family)

    def to_dict(self) -> dict:
        out = {"pipeline": PIPELINE, "denoiser_family": self.denoiser_family, "denoiser": self.denoiser.to_dict(),
               "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
               "scheduler": dict(self.scheduler)}
        if self.text_encoder_family is not None:
            out.update(text_encoder_family=self.text_encoder_family, text_encoder=self.text_encoder.to_dict())
        return out

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "config") -> "PipelineConfig":
        from parity.families import FAMILIES, get_family

        if not isinstance(data, Mapping) or data.get("pipeline") != PIPELINE:
            raise ParityError(f"{source}: not a pipeline config (needs \"pipeline\": \"{PIPELINE}\"); make one with "
                              "'parity dump --pipeline'")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ParityError(f"{source}: unknown pipeline key(s) {', '.join(map(shown, unknown[:5]))}; allowed: "
                              f"{', '.join(sorted(_KEYS))}")
        fam_name = data.get("denoiser_family")
        if fam_name not in FAMILIES or not hasattr(get_family(fam_name), "pipeline_inputs"):
            able = [f for f in FAMILIES if hasattr(get_family(f), "pipeline_inputs")]
            raise ParityError(f"{source}: denoiser_family {shown(fam_name, 40)} cannot be sampled by the pipeline; "
                              f"use one of: {', '.join(able)}")
        denoiser = get_family(fam_name).parse_config(data.get("denoiser"), source=f"{source} (denoiser)")
        steps = data.get("num_inference_steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ParityError(f"{source}: num_inference_steps must be an integer in [1, {MAX_STEPS}], got "
                              f"{shown(steps, 40)}")
        g = data.get("guidance_scale", GUIDANCE_SCALE)
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or abs(g) > MAX_GUIDANCE:
            raise ParityError(f"{source}: guidance_scale must be a number in [-{MAX_GUIDANCE:g}, {MAX_GUIDANCE:g}], "
                              f"got {shown(g, 40)}")
        sched = data.get("scheduler", {})
        if not isinstance(sched, Mapping) or set(sched) - set(SCHEDULER_CONFIG):
            raise ParityError(f"{source}: scheduler must be an object with keys from {', '.join(SCHEDULER_CONFIG)}")
        sched = dict(SCHEDULER_CONFIG, **sched)
        for key, choices in SCHEDULER_CHOICES.items():
            if sched[key] not in choices:
                raise ParityError(f"{source}: scheduler.{key} {shown(sched[key], 40)} is not supported; use one of "
                                  f"{', '.join(choices)}")
        if sched["num_train_timesteps"] != 1000 or steps > sched["num_train_timesteps"]:
            raise ParityError(f"{source}: scheduler.num_train_timesteps must be 1000 (and steps <= 1000)")
        te_family, te = _text_encoder(data, source)
        width = getattr(denoiser, "caption_channels", None)
        if te is not None and width is not None and te.hidden_size != width:
            raise ParityError(f"{source}: the text encoder's width {te.hidden_size} is not the denoiser's "
                              f"caption_channels {width}; pair a matching encoder and denoiser")
        return cls(fam_name, denoiser, steps, float(g), sched, te_family, te)


def _text_encoder(data: Mapping, source: str):
    """(family, parsed config) of the optional text encoder, or (None, None)."""
    from parity.families import get_family

    te_family, te = data.get("text_encoder_family"), data.get("text_encoder")
    if te_family is None and te is None:
        return None, None
    if te_family not in TEXT_ENCODER_FAMILIES or te is None:
        raise ParityError(f"{source}: a text encoder needs text_encoder_family (one of "
                          f"{', '.join(TEXT_ENCODER_FAMILIES)}; got {shown(te_family, 40)}) and its config under "
                          "text_encoder")
    return te_family, get_family(te_family).parse_config(te, source=f"{source} (text_encoder)")
