"""Pipeline parity: a denoiser family's model sampled by Euler-Ancestral with classifier-free guidance.

The "model" of this family is the whole sampling loop (``parity.pipeline``); its blocks are denoising steps and its
probes every step's records. The denoiser runs through a plug-in of its own family (the one the user names); the
family wraps it (``wrap_plugin``) into a plug-in of this family, so dumps, ``parity compare``, reports and the
pytest plug-in treat a pipeline like any model: isolated mode is per step (teacher-forced), accumulated mode is
free-running. Denoiser families take part through three hooks: ``pipeline_inputs``, ``pipeline_text``,
``pipeline_prediction_shape`` (and ``PIPELINE_OUTPUT_PROBE``, the probe holding the prediction). An optional text
encoder (``text_encoder``) adds its probes once, before the loop's (``adjust_probes``).
"""

from __future__ import annotations

from .config import PipelineConfig
from .inputs import INPUT_NAMES  # noqa: F401
from .steps import MODE_LABELS  # noqa: F401

NAME = "pipeline"
from .text_encoder import CLASSES as _TE_CLASSES, probe_class as _te_class  # noqa: E402

PROBE_CLASSES = ("input", "latents", "scaled_input", "timestep", "prediction", "guided") + tuple(
    _te_class(c) for c in _TE_CLASSES)
FP32_SHADOW = False   # a low-precision loop is judged against its own tolerances, not relative to an fp32 loop


def recognizes(config: dict) -> bool:
    return "pipeline" in config


def parse_config(data, source="config") -> PipelineConfig:
    return PipelineConfig.from_dict(data, source=source)


def num_layers(config) -> int:
    return config.num_inference_steps


def normalize_inputs(inputs, config, source="inputs"):
    from .inputs import normalize_inputs as _normalize
    return _normalize(inputs, config, source)


def expected_state_dict_shapes(config) -> dict:
    """The denoiser's weights (and the text encoder's, under ``text_encoder.``)."""
    from .text_encoder import expected_shapes
    return {**config.denoiser_module().expected_state_dict_shapes(config.denoiser), **expected_shapes(config)}


def adjust_probes(config, probes: list) -> list:
    """With a text encoder: its probes, recorded once, before the loop's; ``encoder_hidden_states`` is then its
    output and is judged as one."""
    from .text_encoder import adjust_probes as _adjust
    return _adjust(config, probes)


def probe_names(config) -> list[str]:
    from parity.probemap import load_probe_map
    from .text_encoder import probe_names as te_names
    return te_names(config) + load_probe_map(NAME).names(config.num_inference_steps)


def builtin_cases():
    from .cases import CASES
    return CASES


def default_case_name() -> str:
    from .cases import DEFAULT_CASE
    return DEFAULT_CASE


def teacher_plan(config, inputs=None):
    from .steps import teacher_plan as _plan
    from .text_encoder import teacher_plan as te_plan
    return te_plan(config, inputs) + _plan(config, inputs)


def adapter_context(config, inputs) -> dict:
    return {}


def atol_scale(config, probe: str) -> float:
    """Latents are compared in model-input units (docs/pipeline.md, σ_max ≈ 4096): atol × √(σ²+1)."""
    from .steps import latent_scale, parse_step_probe, schedule
    parsed = parse_step_probe(probe)
    return 1.0 if parsed is None else latent_scale(schedule(config).sigmas, *parsed)


def summarize(config, probes: list[dict]) -> dict:
    from .steps import summarize as _summarize
    return _summarize(config, probes)


def wrap_plugin(plugin, side: str):
    """A plug-in of the denoiser's family, run inside the loop (``parity.pipeline.plugin``)."""
    from parity.pipeline.plugin import PipelinePlugin
    return PipelinePlugin(plugin, side=side)
