"""Isolated mode of ``STDiT`` as data: which upstream call produces each teacher-forced probe, and which reference
probes feed its arguments (roles are upstream's argument names)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.teacher import TeacherStep
from .config import STDiTConfig
from .inputs import normalize_inputs
from .probes import (FINAL_LAYER, OUTPUT, PACKED_TEXT, POS_EMBED, TEMPORAL_POS_EMBED, TEXT_LENGTHS, TIMESTEP_EMBED,
                     TIMESTEP_MODULATION, block_probe)
from .shapes import text_lengths


def teacher_plan(config: STDiTConfig, inputs: Mapping[str, np.ndarray] | None = None) -> list[TeacherStep]:
    """Block i: ``blocks[i](x, y, t, mask, tpe)`` with x = the reference's input to block i (``hidden_states_pos_embed``
    for block 0), y = the packed text, t = ``t0`` (the modulation), mask = ``y_lens``, and for block 0 only tpe = the
    temporal table. Then ``final_layer(x, t)`` on the last block's output and the *raw* timestep embedding, and
    ``unpatchify`` on the final layer's output. The plan does not depend on the inputs."""
    grid = {"d_t": config.num_temporal, "d_s": config.num_spatial}
    steps = []
    for i in range(config.depth):
        roles = {"x": POS_EMBED if i == 0 else block_probe(i - 1), "y": PACKED_TEXT, "t": TIMESTEP_MODULATION,
                 "mask": TEXT_LENGTHS}
        if i == 0:
            roles["tpe"] = TEMPORAL_POS_EMBED
        steps.append(TeacherStep(block_probe(i), "block", i, roles, dict(grid)))
    steps.append(TeacherStep(FINAL_LAYER, "final_layer", None,
                             {"x": block_probe(config.depth - 1), "t": TIMESTEP_EMBED}, {}))
    steps.append(TeacherStep(OUTPUT, "output", None, {"x": FINAL_LAYER},
                             {"grid": config.grid, "patch_size": config.patch_size,
                              "out_channels": config.out_channels}))
    return steps


def adapter_context(config: STDiTConfig, inputs: Mapping[str, np.ndarray]) -> dict:
    """Keyword context for layout adapters: heads, widths, the token grid and the text packing of these inputs."""
    arrays = normalize_inputs(inputs, config)
    batch = arrays["x"].shape[0]
    return {"num_heads": config.num_heads, "hidden_size": config.hidden_size, "batch": batch,
            "grid": config.grid, "num_temporal": config.num_temporal, "num_spatial": config.num_spatial,
            "text_len": arrays["y"].shape[2], "y_lens": text_lengths(arrays["mask"], batch)}
