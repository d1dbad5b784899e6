"""The ``stdit3`` family in the ``ms_impl`` plug-in: build and run ``ms_impl.modeling_stdit3.STDiT3``.

``build_model``, ``model_inputs``, ``run_step`` (isolated mode, driven by the family's teacher plan), ``dtype_namer``
and the strict weight conversions (see ``ms_impl.plugin``). The port keeps upstream's names, module paths and
layouts, so there is no overlay and the conversion to the port is a checked identity. A mindone checkpoint
(``examples/opensora_hpcai``) converts to the reference's names strictly: its RMSNorm ``gamma``, its
``network.`` / ``._backbone`` prefixes, and a ``patchify_conv3d_replace`` patch-embedding weight ((C, in·p) or
(C, in, ph, pw)) are mapped back; every other key must be upstream's (``y_embedding`` and ``rope.freqs`` are
Parameters there, same keys).
"""

from __future__ import annotations

import re
from typing import Mapping

import mindspore as ms
import numpy as np
from mindspore import Tensor
from mindspore.nn.utils import no_init_parameters

from ms_impl.convert import check_tensors, load_into
from ms_impl.harness import dtype_namer, setup_context  # noqa: F401 (the plug-in calls dtype_namer)
from ms_impl.glue_common import finish_build
from ms_impl.modeling_stdit3 import STDiT3, set_attention_backend, set_precision
from parity.capture_ms import to_numpy
from parity.errors import ParityError
from parity.families import stdit3 as family

MINDONE_PREFIX = re.compile(r"^network\.|\._backbone")
MINDONE_RENAMES = ((".q_norm.gamma", ".q_norm.weight"), (".k_norm.gamma", ".k_norm.weight"))
PATCH_WEIGHT = "x_embedder.proj.weight"


def _config(config):
    return config if hasattr(config, "to_dict") else family.parse_config(config)


def build_model(config, weights: Mapping[str, np.ndarray], precision: str, device: str = "CPU",
                attention_backend: str | None = None) -> STDiT3:
    """The port for ``config`` with exactly ``weights`` (reference names, strict), at ``precision`` on ``device``."""
    setup_context(device)
    cfg = _config(config)
    with no_init_parameters():
        model = STDiT3(cfg.to_dict())
    load_into(model, convert_torch_to_ms(weights, cfg))
    return finish_build(model, cfg, precision, device, attention_backend, set_precision, set_attention_backend)


def model_inputs(model: STDiT3, inputs: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """MindSpore tensors for ``model(**tensors)`` (dtypes kept: the model casts ``x``, ``timestep``, ``y``) and the
    dtype names torch reports for them."""
    arrays = family.normalize_inputs(inputs, model.parity_config)
    tensors = {k: Tensor(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return tensors, {k: str(np.asarray(v).dtype) for k, v in arrays.items()}


def run_step(model: STDiT3, step, teacher: Mapping[str, np.ndarray]) -> np.ndarray:
    """One teacher-plan step on the reference's tensors (upstream's layouts; ``mask`` = y_lens, ``x_mask`` bool):
    ``t_block``, ``spatial_blocks[i]`` / ``temporal_blocks[i]``, ``final_layer`` or ``unpatchify``."""
    nx = model.numerics

    def act(role):
        return nx(Tensor(np.ascontiguousarray(teacher[role], np.float32)).astype(nx.dtype))

    p = step.params
    if step.kind == "t_block":
        out = model.t_block(act("t"))
    elif step.kind in ("spatial_block", "temporal_block"):
        blocks = model.spatial_blocks if step.kind == "spatial_block" else model.temporal_blocks
        out = blocks[step.index](act("x"), act("y"), act("t"), [int(n) for n in np.asarray(teacher["mask"])],
                                 np.asarray(teacher["x_mask"], bool), act("t0"), p["T"], p["S"])
    elif step.kind == "final_layer":
        out = model.final_layer(act("x"), act("t"), np.asarray(teacher["x_mask"], bool), act("t0"), p["T"], p["S"])
    elif step.kind == "output":
        out = model.unpatchify(act("x"), p["N_t"], p["N_h"], p["N_w"], p["R_t"], p["R_h"], p["R_w"])
    else:
        raise ValueError(f"ms_impl: unknown stdit3 teacher step kind {step.kind!r}")
    return to_numpy(out.astype(ms.float32))


def convert_torch_to_ms(tensors: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """Reference ``state_dict`` arrays -> the port's parameters (the same names and shapes; strictly checked)."""
    expected = family.expected_state_dict_shapes(_config(config))
    check_tensors(tensors, expected, "torch -> mindspore weight conversion (stdit3)")
    return {name: tensors[name] for name in expected}


def convert_ms_to_torch(tensors: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """The port's or a mindone checkpoint's arrays -> reference ``state_dict`` arrays, strictly (every key mapped,
    nothing left over, shapes checked)."""
    expected = family.expected_state_dict_shapes(_config(config))
    renamed: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        name = MINDONE_PREFIX.sub("", key)
        for old, new in MINDONE_RENAMES:
            if name.endswith(old):
                name = name[: -len(old)] + new
        if name == PATCH_WEIGHT and PATCH_WEIGHT in expected and np.ndim(value) in (2, 4):
            value = np.reshape(value, expected[PATCH_WEIGHT])      # mindone's linear / conv2d patchify
        if name in renamed:
            raise ParityError(f"mindspore -> torch weight conversion (stdit3): {key} and another key both map to "
                              f"{name}; keep one of them in the checkpoint")
        renamed[name] = value
    check_tensors(renamed, expected, "mindspore -> torch weight conversion (stdit3)")
    return {name: renamed[name] for name in expected}
