"""Open-Sora 1.0 ``STDiT`` (STDiT-XL/2): shared, framework-free knowledge used by both implementations."""

from .config import STDiTConfig  # noqa: F401
from .probes import INPUT_NAMES  # noqa: F401

NAME = "stdit"


def recognizes(config: dict) -> bool:
    """An Open-Sora 1.0 model config: upstream's ``type`` names an STDiT (``STDiT``, ``STDiT-XL/2``)."""
    from .config import MODEL_TYPES
    return config.get("type") in MODEL_TYPES


def parse_config(data, source="config"):
    return STDiTConfig.from_dict(data, source=source)


def num_layers(config) -> int:
    return config.depth


def normalize_inputs(inputs, config, source="inputs"):
    from .inputs import normalize_inputs as _normalize
    return _normalize(inputs, config, source)


def expected_state_dict_shapes(config) -> dict:
    """``{name: shape}`` of the model's ``state_dict()`` (parameters and persistent buffers), in order."""
    from .statedict import expected_shapes
    return expected_shapes(config)


def probe_names(config) -> list[str]:
    from .probes import probe_names as _names
    return _names(config.depth)


def builtin_cases():
    from .cases import CASES
    return CASES


def default_case_name() -> str:
    from .cases import DEFAULT_CASE
    return DEFAULT_CASE


def teacher_plan(config, inputs=None):
    from .teacher import teacher_plan as _plan
    return _plan(config, inputs)


def adapter_context(config, inputs) -> dict:
    from .teacher import adapter_context as _context
    return _context(config, inputs)
