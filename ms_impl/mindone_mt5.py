"""Subject glue for the ``mt5_encoder`` family: mindone.transformers' ``MT5EncoderModel`` (mindone 0.5.0), as is.

It runs unmodified on MindSpore 2.10 CPU in PyNative mode, fp32 and fp16, so there is no port in ``ms_impl``. It
does not compute transformers' relative-position buckets on CPU (MindSpore's fp32 ``log`` puts distances ±16, ±32,
±64 of the released 32-bucket config one bucket low; ``docs/pipeline.md``); ``substitutions=
("host_relative_position_buckets",)`` applies the labelled runtime substitute of ``ms_impl.mindone_patches``.

* ``build_model(config, weights, precision, substitutions=())``: ``MT5EncoderModel.from_pretrained(None, config=..., state_dict=...,
  dtype=...)`` — the loading path mindone's Open-Sora-Plan pipeline uses (``from_pretrained(..., mindspore_dtype=
  fp16)``), which keeps ``wo`` in fp32 for fp16 (``_keep_in_fp32_modules``) like transformers. ``weights`` are
  transformers' state-dict names (``shared.weight`` ...); mindone maps embeddings to ``embedding_table`` itself.
* ``forward(model, inputs, specs=None, on_probe=None)``: ``last_hidden_state`` as numpy in its own dtype (fp16
  stays fp16), capturing ``specs`` into ``on_probe(name, array, dtype_name)`` (float32 arrays, as ``MsCapture``).
* ``run_step(model, step, teacher)``: one step of the family's ``teacher_plan`` on teacher tensors (numpy, used at
  their own dtype); the result in its own dtype.

The caller sets up the MindSpore context (PyNative; ``ms_impl.harness.setup_context``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

import mindspore as ms
from transformers import MT5Config
from mindone.transformers.models.mt5.modeling_mt5 import MT5EncoderModel

from parity.capture_ms import MsCapture
from parity.errors import ParityError
from parity.families.mt5_encoder.config import MT5EncoderConfig
from parity.families.mt5_encoder.statedict import SEQ2SEQ_ONLY_PREFIXES
from parity.teacher import TeacherStep
from ms_impl.mindone_patches import apply_substitutions

PRECISION_DTYPES = {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}
# The encoder's embedding is the model's ``shared`` cell; mindone reports its second name as not loaded.
_TIED = {"encoder.embed_tokens.embedding_table", "encoder.embed_tokens.weight"}


def _config(config: "Mapping | MT5EncoderConfig") -> MT5EncoderConfig:
    return config if isinstance(config, MT5EncoderConfig) else MT5EncoderConfig.from_dict(config)


def _dtype(precision: str):
    try:
        return PRECISION_DTYPES[precision]
    except (KeyError, TypeError):
        raise ParityError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_DTYPES)}") from None


def build_model(config, weights: Mapping[str, np.ndarray], precision: str = "fp32",
                substitutions=(), device: str | None = None) -> MT5EncoderModel:
    """``device`` given (the ``ms_impl`` plug-in): the MindSpore context is set up for it first."""
    if device is not None:
        from ms_impl.harness import setup_context
        setup_context(device)
    if ms.get_context("mode") != ms.PYNATIVE_MODE:
        raise ParityError("mindone's MT5EncoderModel is driven in PyNative mode; call ms_impl.harness.setup_context()")
    dtype = _dtype(precision)
    state = {k: ms.Tensor(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()}
    model, info = MT5EncoderModel.from_pretrained(None, config=MT5Config(**_config(config).to_dict()),
                                                  state_dict=state, dtype=dtype, output_loading_info=True)
    missing = sorted(set(info.get("missing_keys", ())) - _TIED)
    unexpected = sorted(k for k in set(info.get("unexpected_keys", ())) - _TIED
                        if not k.startswith(SEQ2SEQ_ONLY_PREFIXES))
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        raise ParityError(f"mT5 weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                          f"mismatched {mismatched[:3]}); pass the encoder's own weights")
    model.set_train(False)
    try:
        apply_substitutions(model, substitutions)
    except ValueError as exc:
        raise ParityError(str(exc)) from None
    return model


def _numpy(value: ms.Tensor) -> np.ndarray:
    """A copy in the tensor's own dtype (numpy has no bfloat16: bf16 becomes its exact float32)."""
    if value.dtype == ms.bfloat16:
        value = value.astype(ms.float32)
    return np.array(value.asnumpy(), copy=True)


def model_inputs(model: MT5EncoderModel, inputs: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """The forward's keyword tensors (the ``ms_impl`` plug-in's glue) and their dtype names."""
    tensors = {k: ms.Tensor(np.ascontiguousarray(inputs[k], dtype=np.int64)) for k in ("input_ids", "attention_mask")}
    return tensors, {k: "int64" for k in tensors}


def dtype_namer(model: MT5EncoderModel):
    from parity.capture_ms import tensor_dtype_name
    return tensor_dtype_name


def forward(model: MT5EncoderModel, inputs: Mapping[str, np.ndarray], specs=None,
            on_probe: Callable[[str, np.ndarray, str], None] | None = None) -> np.ndarray:
    ids = ms.Tensor(np.ascontiguousarray(inputs["input_ids"], dtype=np.int64))
    mask = ms.Tensor(np.ascontiguousarray(inputs["attention_mask"], dtype=np.int64))
    if specs:
        with MsCapture(model, list(specs), on_probe):
            out = model(input_ids=ids, attention_mask=mask)
    else:
        out = model(input_ids=ids, attention_mask=mask)
    return _numpy(out[0])


def _tensor(arr) -> ms.Tensor:
    return ms.Tensor(np.array(arr, copy=True))


def _model_dtype_teacher(model: MT5EncoderModel, step: TeacherStep, teacher: Mapping[str, np.ndarray]) -> dict:
    """The plug-in contract hands teacher tensors as float32; a low-precision model gets back the dtype the
    reference ran them at: the mask, the position bias and block 0's input (the embeddings) in the model's dtype,
    later blocks' inputs and the final norm's in float32 (the fp32 ``wo`` promotes the residual stream)."""
    low = np.float16 if model.shared.embedding_table.dtype == ms.float16 else None
    if low is None:
        return dict(teacher)
    out = dict(teacher)
    for role in ("attention_mask", "position_bias"):
        if role in out:
            out[role] = np.asarray(out[role]).astype(low)
    if step.kind in ("block", "block_position_bias") and step.index == 0:
        out["hidden_states"] = np.asarray(out["hidden_states"]).astype(low)
    return out


def run_step(model: MT5EncoderModel, step: TeacherStep, teacher: Mapping[str, np.ndarray]) -> np.ndarray:
    enc = model.encoder
    teacher = _model_dtype_teacher(model, step, teacher)
    if step.kind == "embedding":
        out = model.shared(ms.Tensor(np.ascontiguousarray(teacher["input_ids"], dtype=np.int64)))
    elif step.kind == "relative_position_bias":
        out = enc.block[0].layer[0].SelfAttention.compute_bias(step.params["query_length"], step.params["key_length"])
    elif step.kind in ("block", "block_position_bias"):
        block = enc.block[step.index]
        bias = _tensor(teacher["position_bias"]) if "position_bias" in teacher else None
        out = block(_tensor(teacher["hidden_states"]), attention_mask=_tensor(teacher["attention_mask"]),
                    position_bias=bias)
        out = out[1] if step.kind == "block_position_bias" else out[0]
    elif step.kind == "output":
        out = enc.dropout(enc.final_layer_norm(_tensor(teacher["hidden_states"])))
    else:
        raise ParityError(f"step {step.probe}: unknown mT5 step kind {step.kind!r}")
    return _numpy(out)
