"""What a run of ``OpenSoraT2V_v1_3`` needs, computed from the config and the input *shapes* alone (nothing is
built or loaded): the parameter count, the shape of every probe, and a lower bound of the memory a forward
pass takes, checked against the machine before anything is allocated.
"""

from __future__ import annotations

import math
from typing import Mapping

from parity.families.schema import check_memory as _check_memory

from .config import OpenSoraConfig
from .probes import INPUT_NAMES, SPARSE_NS, block_probe, probe_names, sparse_mask_probe
from .shapes import patch_grid, sparse_padded_length

TIMESTEP_EMBED = 256  # sinusoid width of the timestep embedder (upstream Timesteps(256))
HIDDEN_STATES_LIVE = 4  # lower bound of hidden-state-sized buffers alive in a block (residual, norm, attn, FFN)


def parameter_count(cfg: OpenSoraConfig) -> int:
    """Number of parameters, in closed form (equals the sum over ``statedict.expected_shapes``)."""
    d, dc, c, p, kv, f = (cfg.hidden_size, cfg.caption_channels, cfg.in_channels, cfg.patch_size, cfg.kv_dim,
                          cfg.ff_inner_dim)
    before = 2 * d + (d * dc + d) + (d * d + d) + (d * c * p * p + d)
    block = 6 * d + 4 * (d * d + d) + 2 * (d * d + d) + 2 * (d * kv + d) + (f * d + f) + (d * f + d)
    after = (cfg.patch_out_features * d + cfg.patch_out_features) + (d * TIMESTEP_EMBED + d) + (d * d + d) \
        + (6 * d * d + 6 * d)
    return before + cfg.num_layers * block + after


def _dims(cfg: OpenSoraConfig, shapes: Mapping[str, tuple]) -> tuple[int, int, int, int, int, int]:
    """(B, T, H, W, S tokens, L text tokens) of normalised input shapes."""
    b, _, t, h, w = shapes["hidden_states"]
    tt, hh, ww = patch_grid(t, h, w, cfg.patch_size, cfg.patch_size_t)
    return b, t, h, w, tt * hh * ww, shapes["encoder_hidden_states"][-2]


def probe_shapes(cfg: OpenSoraConfig, shapes: Mapping[str, tuple]) -> dict[str, tuple]:
    """The shape of every probe (``probes.probe_names`` order) for inputs of ``shapes`` (normalised: text as
    (B,1,L,Dc) and (B,1,L)); see probes.py for the layouts."""
    b, t, h, w, s, L = _dims(cfg, shapes)
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    tt, hh, ww = patch_grid(t, h, w, cfg.patch_size, cfg.patch_size_t)
    out = {f"{n}_input": tuple(shapes[n]) for n in INPUT_NAMES}
    out.update({
        "attention_mask_converted": (b, 1, s), "encoder_attention_mask_converted": (b, 1, L),
        "hidden_states_operate_on_patched_inputs": (b, s, d), "encoder_hidden_states_operate_on_patched_inputs": (b, L, d),
        "timestep_operate_on_patched_inputs": (b, 6 * d), "embedded_timestep_operate_on_patched_inputs": (b, d),
    })
    for n in SPARSE_NS:
        for group in (False, True):
            out[sparse_mask_probe("attention_mask", n, group)] = (n * b, heads, 1, sparse_padded_length(s, n) // n)
            out[sparse_mask_probe("encoder_attention_mask", n, group)] = (n * b, heads, 1, L)
    out["hidden_states_before_block"] = (s, b, d)
    for i in range(cfg.num_layers):
        out[block_probe(i)] = (s, b, d)
    out["hidden_states_output"] = (b, cfg.output_channels, tt * cfg.patch_size_t, hh * cfg.patch_size,
                                   ww * cfg.patch_size)
    return {k: out[k] for k in probe_names(cfg.num_layers)}


def memory_needed(cfg: OpenSoraConfig, shapes: Mapping[str, tuple]) -> int:
    """A lower bound, in bytes, of what one forward pass at fp32 holds: the weights once, the inputs, and
    ``HIDDEN_STATES_LIVE`` hidden states plus the projected text."""
    b, t, h, w, s, L = _dims(cfg, shapes)
    inputs = sum(math.prod(v) for v in shapes.values()) * 4
    return 4 * (parameter_count(cfg) + HIDDEN_STATES_LIVE * b * s * cfg.hidden_size + b * L * cfg.hidden_size) \
        + inputs


def check_memory(cfg: OpenSoraConfig, shapes: Mapping[str, tuple], source: str) -> None:
    """Refuse a config/inputs whose forward pass cannot fit in this machine's memory (before anything is built)."""
    need = memory_needed(cfg, shapes)
    _check_memory(need, f"the model ({parameter_count(cfg):,} parameters) on inputs of {_dims(cfg, shapes)[4]:,} "
                  "tokens", source, "use a smaller config or smaller inputs, or run on a machine with more memory")


def check_state_shapes(cfg: OpenSoraConfig, input_shapes: Mapping[str, tuple], states: Mapping[str, tuple],
                       where) -> list[str]:
    """One problem line per state whose shape does not fit the config and inputs (``where(name)`` names its
    file)."""
    expected = probe_shapes(cfg, input_shapes)
    problems = []
    for name, shape in states.items():
        if name in expected and tuple(shape) != expected[name]:
            problems.append(f"{where(name)}: probe {name} has shape {tuple(shape)} but the config and inputs imply "
                            f"{expected[name]}; re-create the dump with 'parity dump' from the model and inputs this "
                            "config describes")
    return problems


def check_input_header(cfg: OpenSoraConfig, header: Mapping[str, tuple], source: str) -> None:
    """``header`` ({name: (dtype, shape)}) of an inputs file, checked before its arrays are read: the ranks and
    sizes the config fixes, and the memory the inputs imply."""
    from .inputs import check_shapes

    shapes = check_shapes({k: v[1] for k, v in header.items()}, cfg, source)
    check_memory(cfg, shapes, source)
