"""Open-Sora-Plan v1.3 ``OpenSoraT2V_v1_3``: shared, framework-free knowledge used by both implementations."""

from parity.errors import ParityError
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


def check_input_header(config, header, source="inputs"):
    """{name: (dtype, shape)} of an inputs file, checked against the config and the machine's memory before the
    arrays are read."""
    from .resources import check_input_header as _check
    _check(config, header, source)


def check_memory(config, inputs, precision=None, source="config"):
    """Refuse a run whose forward pass cannot fit this machine's memory (before the model is built)."""
    from .resources import check_memory as _check
    _check(config, {k: tuple(v.shape) for k, v in inputs.items()}, source)


def check_run(config, inputs, dump=None, precision=None, source="config"):
    """Everything about a comparison the family checks before the subject is built: every reference state has
    the shape the config and inputs imply (a flattened or 0-d state is refused here, not deep in a model), and
    the forward pass fits this machine's memory."""
    from .resources import check_state_shapes
    if dump is not None and not dump.stats_only:
        import os
        problems = check_state_shapes(config, {k: tuple(v.shape) for k, v in inputs.items()},
                                      {p: dump.state_shape(p) for p in dump.probes},
                                      lambda name: os.path.join(dump.path, "states", f"{name}.npy"))
        if problems:
            raise ParityError(problems[0])
    check_memory(config, inputs, precision, source)


def probe_shapes(config, inputs) -> dict:
    """{probe: shape} the reference produces for ``inputs`` (normalised arrays or shapes)."""
    from .resources import probe_shapes as _shapes
    return _shapes(config, {k: tuple(getattr(v, "shape", v)) for k, v in inputs.items()})


# ---- pipeline hooks (parity.families.pipeline): how Open-Sora-Plan's sampler calls the DiT (fact sheet §6) ----
PIPELINE_OUTPUT_PROBE = "hidden_states_output"


def pipeline_inputs(latent_model_input, timestep, encoder_hidden_states, encoder_attention_mask) -> dict:
    """The DiT's inputs at one step: ``attention_mask = ones_like(latents)[:, 0]``, text rows as given."""
    import numpy as np

    b, _, t, h, w = latent_model_input.shape
    return {"hidden_states": latent_model_input, "timestep": timestep,
            "encoder_hidden_states": encoder_hidden_states,
            "attention_mask": np.ones((b, t, h, w), dtype=latent_model_input.dtype),
            "encoder_attention_mask": encoder_attention_mask}


def pipeline_text(normalized: dict) -> dict:
    return {k: normalized[k] for k in ("encoder_hidden_states", "encoder_attention_mask")}


def pipeline_prediction_shape(config, latent_shape) -> tuple:
    """The prediction the sampler uses: the output, or its first half when the DiT also predicts variances."""
    c = latent_shape[1]
    return tuple(latent_shape) if config.out_channels in (c, 2 * c) else (latent_shape[0], config.out_channels,
                                                                         *latent_shape[2:])
