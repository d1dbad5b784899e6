"""Probe names of ``STDiT3``: what a migration engineer would ``np.save`` by hand from upstream's ``forward()`` on
the first denoising step, named after forward()'s arguments and variables, in the order forward() produces them.

Layouts are upstream's at the point of capture: inputs as passed; ``pos_emb`` (1, S, C); timestep/fps
embeddings and ``t``/``t0`` (B, C); ``t_mlp``/``t0_mlp`` (B, 6C); the projected caption (B, 1, L, C), the packed
text ``y`` (1, Σy_lens, C) and ``y_lens`` (B,); the token stream (B, T·S, C) through the patch embedding, the
position embedding, every spatial and temporal block; the final layer (B, T·S, prod(patch)·C_out) and the output
(B, C_out, T, H, W).
"""

from __future__ import annotations

import re

from parity.probemap import PROBE_CLASSES  # noqa: F401 (the harness's classes; re-exported for the family)


INPUT_NAMES = ("x", "timestep", "y", "mask", "x_mask", "fps", "height", "width")

CONDITIONING = ("pos_emb", "t_embedding", "fps_embedding", "t", "t_mlp", "t0", "t0_mlp", "y_projected", "y",
                "y_lens")
STREAM_BEFORE_BLOCKS = ("hidden_states_patch_embedding", "hidden_states_before_blocks")
FINAL_LAYER = "hidden_states_final_layer"
OUTPUT = "hidden_states_output"
BLOCK_KINDS = ("spatial", "temporal")

_BLOCK_RE = re.compile(r"^hidden_states_(\d+)_(spatial|temporal)_block$")


def input_probe(name: str) -> str:
    return f"{name}_input"


def block_probe(i: int, kind: str) -> str:
    if kind not in BLOCK_KINDS:
        raise ValueError(f"block kind must be one of {BLOCK_KINDS}, got {kind!r}")
    return f"hidden_states_{i}_{kind}_block"


def block_of(name: str) -> tuple[int, str] | None:
    """``(i, "spatial"|"temporal")`` of a block probe name, else None."""
    m = _BLOCK_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def probe_names(depth: int) -> list[str]:
    """Every probe in data-flow order: blocks interleave (spatial i, then temporal i) as forward() runs them."""
    names = [input_probe(n) for n in INPUT_NAMES]
    names += list(CONDITIONING)
    names += list(STREAM_BEFORE_BLOCKS)
    for i in range(depth):
        names += [block_probe(i, kind) for kind in BLOCK_KINDS]
    names += [FINAL_LAYER, OUTPUT]
    return names


def probe_class(name: str) -> str:
    if name.endswith("_input") and name[: -len("_input")] in INPUT_NAMES:
        return "input"
    if name == "y_lens":
        return "mask"
    if name in CONDITIONING or name in STREAM_BEFORE_BLOCKS:
        return "embedding"
    if block_of(name) is not None:
        return "block"
    if name in (FINAL_LAYER, OUTPUT):
        return "output"
    raise KeyError(name)


def is_known_probe(name: str, depth: int | None = None) -> bool:
    if depth is not None:
        return name in probe_names(depth)
    try:
        probe_class(name)
    except KeyError:
        return False
    return True
