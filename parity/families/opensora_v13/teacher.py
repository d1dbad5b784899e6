"""Isolated mode for ``OpenSoraT2V_v1_3``: which reference probes feed each block and the output head.

Block i takes the reference's input to it (``hidden_states_before_block`` for block 0, else
``hidden_states_{i-1}_block``), the projected caption and the timestep modulation from
``_operate_on_patched_inputs``, and the Skiparse masks upstream's block loop hands it
(``sparse_mask[n][group]`` with n = sparse_n for blocks 2..29, else 1; group = i odd). The output head takes the
last block's output and the embedded timestep. All tensors are in the reference's layout here; a subject's
overlay adapters convert them to its own.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.teacher import TeacherStep

from .config import OpenSoraConfig
from .probes import block_probe, sparse_mask_probe
from .shapes import patch_grid

BLOCK_INPUT = "hidden_states_before_block"
OUTPUT_PROBE = "hidden_states_output"


def token_grid(config: OpenSoraConfig, inputs: Mapping[str, np.ndarray]) -> dict:
    _, _, t, h, w = inputs["hidden_states"].shape
    frame, height, width = patch_grid(t, h, w, config.patch_size, config.patch_size_t)
    return {"frame": frame, "height": height, "width": width}


def teacher_plan(config: OpenSoraConfig, inputs: Mapping[str, np.ndarray]) -> list[TeacherStep]:
    grid = token_grid(config, inputs)
    steps = []
    previous = BLOCK_INPUT
    for i in range(config.num_layers):
        n, group = config.block_mask_key(i)
        steps.append(TeacherStep(block_probe(i), "block", i, inputs={
            "hidden_states": previous,
            "encoder_hidden_states": "encoder_hidden_states_operate_on_patched_inputs",
            "timestep": "timestep_operate_on_patched_inputs",
            "attention_mask": sparse_mask_probe("attention_mask", n, group),
            "encoder_attention_mask": sparse_mask_probe("encoder_attention_mask", n, group),
        }, params=dict(grid)))
        previous = block_probe(i)
    steps.append(TeacherStep(OUTPUT_PROBE, "output", None, inputs={
        "hidden_states": previous,
        "embedded_timestep": "embedded_timestep_operate_on_patched_inputs",
    }, params=dict(grid)))
    return steps


def adapter_context(config: OpenSoraConfig, inputs: Mapping[str, np.ndarray]) -> dict:
    """What layout adapters may need: heads, the token grid, batch, text length, the Skiparse ratio."""
    grid = token_grid(config, inputs)
    batch = int(inputs["hidden_states"].shape[0])
    text_len = int(inputs["encoder_hidden_states"].shape[-2])
    return {"num_heads": config.num_attention_heads, "head_dim": config.attention_head_dim, "batch": batch,
            "text_len": text_len, "sparse_n": config.sparse_n, "seq_len": grid["frame"] * grid["height"] * grid["width"],
            **grid}
