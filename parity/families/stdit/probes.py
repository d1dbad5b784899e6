"""Probe names of ``STDiT``: what an engineer would ``np.save`` by hand from a patched upstream ``forward()``,
in the order the data flows (the first divergence follows this order).

Layouts are upstream's at the point of capture: the four forward inputs as passed; the x stream (B, N, C) with N =
T'·H'·W' tokens t-major; the temporal table (1, T', C) handed to block 0; the timestep embedding ``t`` (B, C) and
the blocks' modulation ``t0`` (B, 6·C); the projected caption (B, 1, L, C); the packed text (1, ΣL_i, C) of the
valid tokens and their counts ``y_lens`` (B,); the final layer's output (B, N, prod(patch)·C_out); the output
(B, C_out, T, H, W).
"""

from __future__ import annotations

from parity.families.naming import block_index, block_probe  # noqa: F401 (the family's block names)
from parity.probemap import PROBE_CLASSES  # noqa: F401 (the harness's classes; re-exported for the family)


INPUT_NAMES = ("x", "timestep", "y", "mask")

PATCH_EMBED = "hidden_states_patch_embed"          # x_embedder(x)
POS_EMBED = "hidden_states_pos_embed"              # + pos_embed: the input of block 0
TEMPORAL_POS_EMBED = "pos_embed_temporal"          # tpe of block 0
TIMESTEP_EMBED = "timestep_embed"                  # t = t_embedder(timestep): the final layer's conditioning
TIMESTEP_MODULATION = "timestep_modulation"        # t0 = t_block(t): every block's modulation
CAPTION_EMBED = "y_embed"                          # y_embedder(y)
PACKED_TEXT = "y_packed"                           # valid tokens of every sample, packed (1, ΣL, C)
TEXT_LENGTHS = "y_lens"                            # valid tokens per sample
FINAL_LAYER = "hidden_states_final_layer"
OUTPUT = "hidden_states_output"

_EMBEDDINGS = (PATCH_EMBED, POS_EMBED, TEMPORAL_POS_EMBED, TIMESTEP_EMBED, TIMESTEP_MODULATION, CAPTION_EMBED,
               PACKED_TEXT)


def input_probe(name: str) -> str:
    return f"{name}_input"


def probe_names(num_layers: int) -> list[str]:
    names = [input_probe(n) for n in INPUT_NAMES]
    names += [PATCH_EMBED, POS_EMBED, TEMPORAL_POS_EMBED, TIMESTEP_EMBED, TIMESTEP_MODULATION, CAPTION_EMBED,
              PACKED_TEXT, TEXT_LENGTHS]
    names += [block_probe(i) for i in range(num_layers)]
    names += [FINAL_LAYER, OUTPUT]
    return names


def probe_class(name: str) -> str:
    if name in {input_probe(n) for n in INPUT_NAMES}:
        return "input"
    if name == TEXT_LENGTHS:
        return "mask"
    if name in _EMBEDDINGS:
        return "embedding"
    if block_index(name) is not None:
        return "block"
    if name in (FINAL_LAYER, OUTPUT):
        return "output"
    raise KeyError(name)


def is_known_probe(name: str, num_layers: int | None = None) -> bool:
    if num_layers is not None:
        return name in probe_names(num_layers)
    try:
        probe_class(name)
    except KeyError:
        return False
    return True
