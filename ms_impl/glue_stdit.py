"""Building and running the MindSpore ``STDiT`` (Open-Sora 1.0) for the ``ms_impl`` plug-in.

The port keeps upstream's state-dict names and every probe where the family map says (no overlay). Isolated mode
runs upstream's own pieces: ``blocks[i](x, y, t0, y_lens, tpe)``, ``final_layer(x, t)``, ``unpatchify(x)``.

Weight conversion (``parity convert``) is to and from mindone's checkpoint convention (examples/opensora_hpcai):
the same names, but without the derived positional tables ``pos_embed``/``pos_embed_temporal`` (mindone never
stores them; here they are recomputed from the config, as upstream's ``find_model`` does), ``y_embedder.y_embedding``
a Parameter of the same name, ``network.`` / ``._backbone`` prefixes of its training wrapper stripped, and a
patchify weight stored for its ``patchify_conv3d_replace`` ("linear": (C, in·4), "conv2d": (C, in, 2, 2)) reshaped
to the Conv3d's (C, in, 1, 2, 2). Everything else must match by name and shape, strictly.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

import mindspore as ms
from mindspore import Tensor

from ms_impl.convert import check_tensors
from ms_impl.glue_common import finish_build
from ms_impl.harness import setup_context
from ms_impl.modeling_stdit import STDiT, get_1d_sincos_pos_embed, get_2d_sincos_pos_embed, set_attention_backend, \
    set_precision, text_lengths
from parity.capture_ms import tensor_dtype_name, to_numpy
from parity.families.stdit.config import STDiTConfig
from parity.families.stdit.inputs import normalize_inputs
from parity.families.stdit.statedict import DERIVED_BUFFERS, expected_shapes

MINDONE_PREFIXES = ("network.", "_backbone.")
PATCHIFY_WEIGHT = "x_embedder.proj.weight"


def _config(config) -> STDiTConfig:
    return config if isinstance(config, STDiTConfig) else STDiTConfig.from_dict(config)


def build_model(config: dict, weights: Mapping[str, np.ndarray], precision: str, device: str = "CPU",
                attention_backend: str | None = None) -> STDiT:
    """The port for ``config`` with exactly ``weights`` (the torch state dict, strictly checked) loaded, eval mode,
    at ``precision`` on ``device``. The positional tables are the port's own, computed from the config: upstream's
    ``find_model`` deletes them from a checkpoint and mindone never stores them, so a port's tables are its own
    work, checked by the ``hidden_states_pos_embed`` and ``pos_embed_temporal`` probes."""
    setup_context(device)
    cfg = _config(config)
    check_tensors(weights, expected_shapes(cfg), "loading weights into the MindSpore STDiT")
    model = STDiT(**cfg.model_kwargs())
    result = model.load_state_dict({k: Tensor(np.ascontiguousarray(weights[k], np.float32))
                                    for k in expected_shapes(cfg) if k not in DERIVED_BUFFERS}, strict=False)
    assert set(result.missing_keys) == set(DERIVED_BUFFERS) and not result.unexpected_keys, result
    return finish_build(model, cfg, precision, device, attention_backend, set_precision, set_attention_backend)


def model_inputs(model: STDiT, inputs: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """``construct(x, timestep, y, mask)`` keywords as given (the model casts x, timestep and y itself) and their
    dtype names."""
    arrays = normalize_inputs(inputs, model.parity_config)
    tensors = {k: Tensor(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return tensors, {k: str(v.dtype) for k, v in arrays.items()}


def dtype_namer(model: STDiT):
    """Emulated bf16 values (float32 tensors of the working dtype) are reported as "bfloat16"."""
    nx = model.numerics

    def name(value):
        if isinstance(value, Tensor) and value.dtype == nx.dtype:
            return nx.logical
        return tensor_dtype_name(value)
    return name


def run_step(model: STDiT, step, teacher: Mapping[str, np.ndarray]) -> np.ndarray:
    """One step of the family's teacher plan on the reference's tensors (upstream's layouts; ``mask`` = y_lens)."""
    nx = model.numerics

    def t(role):
        return nx(Tensor(np.ascontiguousarray(teacher[role], np.float32)).astype(nx.dtype))

    if step.kind == "block":
        tpe = t("tpe") if "tpe" in step.inputs else None
        out = model.blocks[step.index](t("x"), t("y"), t("t"), text_lengths(teacher["mask"]), tpe)
    elif step.kind == "final_layer":
        out = model.final_layer(t("x"), t("t"))
    elif step.kind == "output":
        out = model.unpatchify(t("x")).astype(ms.float32)
    else:
        raise ValueError(f"ms_impl: unknown STDiT teacher step kind {step.kind!r}")
    return to_numpy(out)


# ---- weight conversion (mindone's checkpoint convention) ------------------------------------------------------
def derived_tables(cfg: STDiTConfig) -> dict[str, np.ndarray]:
    """``pos_embed`` (1, S, C) and ``pos_embed_temporal`` (1, T', C) of ``cfg``, as the model builds them."""
    (t, h, w), (pt, ph, pw) = cfg.input_size, cfg.patch_size
    spatial = get_2d_sincos_pos_embed(cfg.hidden_size, (h // ph, w // pw), scale=cfg.space_scale)
    temporal = get_1d_sincos_pos_embed(cfg.hidden_size, t // pt, scale=cfg.time_scale)
    return {"pos_embed": spatial.astype(np.float32)[None], "pos_embed_temporal": temporal.astype(np.float32)[None]}


def _mindone_shapes(cfg: STDiTConfig) -> dict[str, tuple]:
    return {k: s for k, s in expected_shapes(cfg).items() if k not in DERIVED_BUFFERS}


def convert_torch_to_ms(tensors: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """A torch state dict -> mindone's parameters (the derived tables dropped; strictly checked)."""
    cfg = _config(config)
    check_tensors(tensors, expected_shapes(cfg), "torch -> mindspore STDiT weight conversion")
    return {k: tensors[k] for k in _mindone_shapes(cfg)}


def convert_ms_to_torch(tensors: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """mindone's parameters -> the torch state dict (prefixes stripped, patchify weight reshaped, tables
    recomputed; strictly checked)."""
    cfg = _config(config)
    out = {}
    for name, arr in tensors.items():
        for prefix in MINDONE_PREFIXES:
            name = name[len(prefix):] if name.startswith(prefix) else name
        out[name] = arr
    conv_shape = expected_shapes(cfg)[PATCHIFY_WEIGHT]
    w = out.get(PATCHIFY_WEIGHT)
    if w is not None and np.shape(w) != conv_shape and int(np.prod(np.shape(w))) == int(np.prod(conv_shape)) \
            and np.shape(w)[0] == conv_shape[0]:
        out[PATCHIFY_WEIGHT] = np.asarray(w).reshape(conv_shape)
    check_tensors(out, _mindone_shapes(cfg), "mindspore -> torch STDiT weight conversion")
    tables = derived_tables(cfg)
    return {k: tables[k] if k in tables else out[k] for k in expected_shapes(cfg)}
