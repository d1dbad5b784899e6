"""Isolated mode of ``STDiT3`` as data: the teacher-forced steps and the reference probes feeding each.

Block i's spatial block reads the reference stream before it (``hidden_states_before_blocks`` for i = 0, else
``hidden_states_{i-1}_temporal_block``), its temporal block the reference output of spatial block i; both take
the packed text ``y``, ``y_lens``, the modulation ``t_mlp`` and (x_mask) ``t0_mlp``. The final layer reads the
last temporal block with the *raw* ``t``/``t0`` (not the t_block outputs); the output step unpatchifies the
reference final-layer output and crops the padding. ``t_block`` maps ``t``/``t0`` to ``t_mlp``/``t0_mlp``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.teacher import TeacherStep
from .config import STDiT3Config
from .probes import FINAL_LAYER, OUTPUT, block_probe, input_probe
from .shapes import grid_of

BLOCK_ROLES = ("x", "y", "t", "mask", "x_mask", "t0")   # STDiT3Block.forward's arguments fed from the reference


def teacher_plan(config: STDiT3Config, inputs: Mapping[str, np.ndarray]) -> list[TeacherStep]:
    g = grid_of(np.shape(inputs["x"]), config.patch_size)
    grid = {"T": g["T"], "S": g["S"]}
    steps = [TeacherStep("t_mlp", "t_block", None, {"t": "t"}, {}),
             TeacherStep("t0_mlp", "t_block", None, {"t": "t0"}, {})]
    previous = "hidden_states_before_blocks"
    for i in range(config.depth):
        for kind in ("spatial", "temporal"):
            probe = block_probe(i, kind)
            feeds = {"x": previous, "y": "y", "t": "t_mlp", "mask": "y_lens", "x_mask": input_probe("x_mask"),
                     "t0": "t0_mlp"}
            steps.append(TeacherStep(probe, f"{kind}_block", i, feeds, dict(grid)))
            previous = probe
    steps.append(TeacherStep(FINAL_LAYER, "final_layer", None,
                             {"x": previous, "t": "t", "x_mask": input_probe("x_mask"), "t0": "t0"}, dict(grid)))
    steps.append(TeacherStep(OUTPUT, "output", None, {"x": FINAL_LAYER},
                             {"N_t": g["T"], "N_h": g["H"], "N_w": g["W"], "R_t": g["Tx"], "R_h": g["Hx"],
                              "R_w": g["Wx"]}))
    return steps


def text_lengths(mask: np.ndarray, batch: int) -> tuple[int, ...]:
    """``y_lens`` as upstream's encode_text computes them (the mask tiled to the batch, summed per row)."""
    mask = np.asarray(mask)
    if mask.shape[0] != batch:
        mask = np.tile(mask, (batch // mask.shape[0], 1))
    return tuple(int(n) for n in mask.sum(axis=1))


def adapter_context(config: STDiT3Config, inputs: Mapping[str, np.ndarray]) -> dict:
    g = grid_of(np.shape(inputs["x"]), config.patch_size)
    ctx = dict(num_heads=config.num_heads, head_dim=config.head_dim, hidden_size=config.hidden_size,
               batch=g["B"], T=g["T"], H=g["H"], W=g["W"], S=g["S"], tokens=g["N"],
               patch_size=tuple(config.patch_size), out_channels=config.out_channels)
    if "mask" in inputs:
        ctx["text_lens"] = text_lengths(inputs["mask"], g["B"])
    return ctx
