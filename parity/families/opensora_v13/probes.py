"""Probe names of ``OpenSoraT2V_v1_3``: what migration engineers dump by hand from a patched upstream
``forward()`` on the first denoising step, in data-flow order (the embedded timestep before the modulation
vector computed from it).

Layouts are upstream's at the point of capture: ``*_input`` as passed to forward(); converted masks (B,1,S)
and (B,1,L); ``*_operate_on_patched_inputs`` batch-first as returned by ``_operate_on_patched_inputs``;
Skiparse masks (n*B, heads, 1, len); hidden states before/after blocks sequence-first (S,B,D); the output
(B,C,T,H,W).
"""

from __future__ import annotations

from parity.families.naming import block_index, block_probe  # noqa: F401 (the family's block names)
from parity.probemap import PROBE_CLASSES  # noqa: F401 (re-exported for the family's users)


INPUT_NAMES = ("hidden_states", "timestep", "encoder_hidden_states", "attention_mask", "encoder_attention_mask")
SPARSE_NS = (1, 4)


def sparse_mask_probe(which: str, n: int, group: bool) -> str:
    """``which`` is ``attention_mask`` or ``encoder_attention_mask``."""
    return f"{which}_sparse_{n}_{bool(group)}"


def probe_names(num_layers: int) -> list[str]:
    """Every probe in data-flow order (as in probe_map.json): a probe never comes after one it feeds."""
    names = [f"{n}_input" for n in INPUT_NAMES]
    names += ["attention_mask_converted", "encoder_attention_mask_converted"]
    names += [f"{n}_operate_on_patched_inputs" for n in
              ("hidden_states", "embedded_timestep", "timestep", "encoder_hidden_states")]
    for n in SPARSE_NS:
        for which in ("attention_mask", "encoder_attention_mask"):
            for group in (False, True):
                names.append(sparse_mask_probe(which, n, group))
    names.append("hidden_states_before_block")
    names += [block_probe(i) for i in range(num_layers)]
    names.append("hidden_states_output")
    return names


def probe_class(name: str) -> str:
    if name.endswith("_input"):
        return "input"
    if name.startswith(("attention_mask", "encoder_attention_mask")):
        return "mask"
    if name.endswith("_operate_on_patched_inputs") or name == "hidden_states_before_block":
        return "embedding"
    if block_index(name) is not None:
        return "block"
    if name == "hidden_states_output":
        return "output"
    raise KeyError(name)


def is_known_probe(name: str, num_layers: int | None = None) -> bool:
    if num_layers is not None:
        return name in probe_names(num_layers)
    try:
        probe_class(name)
    except KeyError:
        return False
    return block_index(name) is not None or name in probe_names(0)
