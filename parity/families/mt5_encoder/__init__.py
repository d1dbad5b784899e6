"""mT5 encoder (``MT5EncoderModel``, the text encoder of Open-Sora-Plan v1.3): framework-free family data.

The reference is transformers' ``MT5EncoderModel`` (glue: ``reference_torch.mt5``), the subject mindone's
(glue: ``ms_impl.mindone_mt5``). Configs are transformers ``MT5Config`` keys.
"""

from .config import MT5EncoderConfig, released_xxl_config  # noqa: F401
from .probes import INPUT_NAMES  # noqa: F401

NAME = "mt5_encoder"


def recognizes(config: dict) -> bool:
    """A transformers ``MT5Config`` (``model_type`` "mt5")."""
    return config.get("model_type") == "mt5"


def parse_config(data, source="config"):
    return MT5EncoderConfig.from_dict(data, source=source)


def num_layers(config) -> int:
    return config.num_layers


def normalize_inputs(inputs, config, source="inputs"):
    from .inputs import normalize_inputs as _normalize
    return _normalize(inputs, config, source)


def expected_state_dict_shapes(config) -> dict:
    """``{name: shape}`` of transformers' ``MT5EncoderModel.state_dict()`` for ``config``, in order."""
    from .statedict import expected_shapes
    return expected_shapes(config)


def probe_names(config) -> list[str]:
    from .probes import probe_names as _names
    return _names(config.num_layers)


def builtin_cases():
    from .cases import CASES
    return CASES


def default_case_name() -> str:
    from .cases import DEFAULT_CASE
    return DEFAULT_CASE


def teacher_plan(config, inputs) -> list:
    from .plan import teacher_plan as _plan
    return _plan(config, inputs)


def adapter_context(config, inputs) -> dict:
    from .plan import adapter_context as _context
    return _context(config, inputs)
