"""Reference glue for the ``mt5_encoder`` family: transformers' ``MT5EncoderModel`` itself, as plain functions.

* ``random_weights(config, seed)``: transformers' own init under ``torch.manual_seed(seed)``, fp32 numpy.
* ``meta_state_dict_shapes(config)``: the state dict's names and shapes of a model built on the meta device.
* ``build_model(config, weights, precision)``: ``MT5EncoderModel.from_pretrained(None, config=..., state_dict=...,
  dtype=...)`` — the loading path of Open-Sora-Plan's ``from_pretrained("google/mt5-xxl", torch_dtype=fp16)``,
  so an fp16 model keeps ``wo`` in fp32 (``_keep_in_fp32_modules``) exactly as the pipeline's does.
* ``forward(model, inputs, specs=None, on_probe=None)``: ``last_hidden_state`` as numpy, capturing ``specs``
  (``parity.families.mt5_encoder.capture.capture_specs``) into ``on_probe(name, array, dtype_name)``.
* ``run_step(model, step, teacher)``: one step of the family's ``teacher_plan`` on teacher tensors (numpy, used
  at their own dtype).

No hub access: configs and weights are made or given here.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from transformers import MT5Config, MT5EncoderModel

from parity.capture_torch import TorchCapture, to_numpy
from parity.errors import ParityError
from parity.families.mt5_encoder.config import MT5EncoderConfig
from parity.families.mt5_encoder.statedict import SEQ2SEQ_ONLY_PREFIXES
from parity.teacher import TeacherStep

from reference_torch.dtypes import PRECISION_DTYPES  # noqa: E402
FORWARD_OPTIONS = {"return_dict": False}   # transformers models return a tuple with it


def _config(config: "Mapping | MT5EncoderConfig") -> MT5EncoderConfig:
    return config if isinstance(config, MT5EncoderConfig) else MT5EncoderConfig.from_dict(config)


def hf_config(config: "Mapping | MT5EncoderConfig") -> MT5Config:
    """transformers' ``MT5Config`` for a family config (informational keys passed through)."""
    return MT5Config(**_config(config).to_dict())


def _dtype(precision: str) -> torch.dtype:
    try:
        return PRECISION_DTYPES[precision]
    except (KeyError, TypeError):
        raise ParityError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_DTYPES)}") from None


def random_weights(config, seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(int(seed))
    with torch.device("cpu"):
        model = MT5EncoderModel(hf_config(config))
    return {k: v.detach().to(torch.float32).numpy().copy() for k, v in model.state_dict().items()}


def meta_state_dict_shapes(config) -> dict[str, tuple]:
    with torch.device("meta"):
        model = MT5EncoderModel(hf_config(config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_model(config, weights: Mapping[str, np.ndarray], precision: str = "fp32") -> MT5EncoderModel:
    dtype = _dtype(precision)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()}
    model, info = MT5EncoderModel.from_pretrained(None, config=hf_config(config), state_dict=state, dtype=dtype,
                                                  output_loading_info=True)
    info["unexpected_keys"] = [k for k in info.get("unexpected_keys", ()) if not k.startswith(SEQ2SEQ_ONLY_PREFIXES)]
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise ParityError(f"mT5 weights do not match the config: {problems or info['error_msgs']}; "
                          f"pass the encoder's own weights")
    return model.eval()


def _long(arr) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.long)


def model_inputs(model: MT5EncoderModel, inputs: Mapping[str, np.ndarray]) -> dict:
    """The forward's keyword tensors (the ``torch-reference`` plug-in's glue)."""
    return {"input_ids": _long(inputs["input_ids"]), "attention_mask": _long(inputs["attention_mask"])}


def forward(model: MT5EncoderModel, inputs: Mapping[str, np.ndarray], specs=None,
            on_probe: Callable[[str, np.ndarray, str], None] | None = None) -> np.ndarray:
    kwargs = {"input_ids": _long(inputs["input_ids"]), "attention_mask": _long(inputs["attention_mask"])}
    with torch.no_grad():
        if specs:
            with TorchCapture(model, list(specs), on_probe):
                out = model(**kwargs)
        else:
            out = model(**kwargs)
    return to_numpy(out.last_hidden_state)[0]


def _tensor(arr) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True))


def run_step(model: MT5EncoderModel, step: TeacherStep, teacher: Mapping[str, np.ndarray]) -> np.ndarray:
    enc = model.encoder
    with torch.no_grad():
        if step.kind == "embedding":
            out = model.shared(_long(teacher["input_ids"]))
        elif step.kind == "relative_position_bias":
            out = enc.block[0].layer[0].SelfAttention.compute_bias(step.params["query_length"], step.params["key_length"])
        elif step.kind in ("block", "block_position_bias"):
            block = enc.block[step.index]
            # transformers' stack passes cache_position; an encoder block only uses it when it computes the bias
            length = teacher["hidden_states"].shape[1]
            out = block(_tensor(teacher["hidden_states"]), _tensor(teacher["attention_mask"]),
                        _tensor(teacher["position_bias"]) if "position_bias" in teacher else None,
                        cache_position=torch.arange(length))
            out = out[1] if step.kind == "block_position_bias" else out[0]
        elif step.kind == "output":
            out = enc.dropout(enc.final_layer_norm(_tensor(teacher["hidden_states"])))
        else:
            raise ParityError(f"step {step.probe}: unknown mT5 step kind {step.kind!r}")
    return to_numpy(out)[0]
