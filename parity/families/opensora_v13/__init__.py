"""Open-Sora-Plan v1.3 ``OpenSoraT2V_v1_3``: shared, framework-free knowledge used by both implementations."""

from .config import OpenSoraConfig, load_config  # noqa: F401

NAME = "opensora_v13"
CLASS_NAMES = ("OpenSoraT2V_v1_3", "OpenSoraT2V_v1_3-2B/122")


def recognizes(config: dict) -> bool:
    """An upstream ``config.json`` of this model: its ``_class_name``, else the Skiparse keys only v1.3 has."""
    if "_class_name" in config:
        return config["_class_name"] in CLASS_NAMES
    return "sparse1d" in config and "caption_channels" in config


def parse_config(data, source="config"):
    return OpenSoraConfig.from_dict(data, source=source)


def num_layers(config) -> int:
    return config.num_layers


def normalize_inputs(inputs, config, source="inputs"):
    from .inputs import normalize_inputs as _normalize
    return _normalize(inputs, config, source)


def expected_state_dict_shapes(config) -> dict:
    """``{parameter name: shape}`` of the model for ``config`` (torch ``state_dict`` names = MindSpore names)."""
    from .statedict import expected_shapes
    return expected_shapes(config)


def infer_config(shapes, source="checkpoint") -> dict:
    """The config a state dict's names and shapes imply (``parity convert`` without ``--config``)."""
    from .statedict import infer_config as _infer
    return _infer(shapes, source)


def probe_names(config) -> list[str]:
    from .probes import probe_names as _names
    return _names(config.num_layers)


def teacher_plan(config, inputs):
    """Isolated mode: which reference probes feed each block and the output head (``parity.teacher``)."""
    from .teacher import teacher_plan as _plan
    return _plan(config, inputs)


def adapter_context(config, inputs) -> dict:
    from .teacher import adapter_context as _context
    return _context(config, inputs)


def forward_signatures() -> dict:
    """``{class name: leading positional parameter names of its forward}`` (see ``signatures``)."""
    from .signatures import FORWARD_SIGNATURES
    return dict(FORWARD_SIGNATURES)


def builtin_cases():
    from .cases import CASES
    return CASES


def default_case_name() -> str:
    from .cases import DEFAULT_CASE
    return DEFAULT_CASE
