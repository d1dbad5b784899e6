"""Open-Sora 1.2 ``STDiT3`` (``STDiT3-XL/2``, hpcai-tech/OpenSora-STDiT-v3): shared, framework-free knowledge
used by the torch reference and the MindSpore port."""

from .config import STDiT3Config, is_stdit3_config, load_config  # noqa: F401
from .probes import INPUT_NAMES  # noqa: F401

NAME = "stdit3"


def recognizes(config: dict) -> bool:
    """An upstream (HF) config of STDiT3: its architectures / model_type, else the keys only STDiT3 has."""
    return is_stdit3_config(config)


def parse_config(data, source="config"):
    return STDiT3Config.from_dict(data, source=source)


def num_layers(config) -> int:
    """Range of ``{i}`` in the probe templates: one spatial and one temporal block per index."""
    return config.depth


def normalize_inputs(inputs, config, source="inputs"):
    from .inputs import normalize_inputs as _normalize
    return _normalize(inputs, config, source)


def expected_state_dict_shapes(config) -> dict:
    """``{name: shape}`` of the reference's ``state_dict()`` for ``config``, in order."""
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


def teacher_plan(config, inputs):
    from .teacher import teacher_plan as _plan
    return _plan(config, inputs)


def adapter_context(config, inputs) -> dict:
    from .teacher import adapter_context as _context
    return _context(config, inputs)
