"""Model inputs of ``OpenSoraT2V_v1_3``: names, accepted ranks, and their normalisation (plain numpy).

forward() takes ``hidden_states (B,C,T,H,W)``, ``timestep (B,)``, ``encoder_hidden_states (B,1,L,Dc)``,
``attention_mask (B,T,H,W)`` and ``encoder_attention_mask (B,1,L)``. The text inputs are also accepted
without the singleton dim, as (B,L,Dc) and (B,L), and get it added: upstream converts only a 3-D text mask
to a bias (a 2-D one would pass through raw and be silently wrong).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.errors import ParityError
from .config import OpenSoraConfig
from .probes import INPUT_NAMES


def _bad(message: str) -> ParityError:
    return ParityError(f"{message}; fix the inputs (or use the config they were made for)")


LAYOUTS = {"hidden_states": "(B,C,T,H,W)", "timestep": "(B,)", "encoder_hidden_states": "(B,1,L,Dc)",
           "attention_mask": "(B,T,H,W)", "encoder_attention_mask": "(B,1,L)"}
MAX_TIMESTEP = 2**24  # integers up to here are exact in float32; the scheduler's timesteps are 0..999


def _names(keys, source: str) -> None:
    missing = [n for n in INPUT_NAMES if n not in keys]
    unknown = sorted(set(keys) - set(INPUT_NAMES))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(str(u)[:60] for u in unknown[:5])}")
        raise _bad(f"{source}: {'; '.join(parts)}; expected exactly the keys {', '.join(INPUT_NAMES)}")


def check_shapes(shapes: Mapping[str, tuple], config: OpenSoraConfig, source: str = "inputs") -> dict[str, tuple]:
    """The input shapes checked against each other and the config, text shapes normalised to (B,1,L,Dc) and
    (B,1,L); works on shapes alone (an inputs file's headers), before any array is read."""
    _names(shapes, source)
    out = {n: tuple(int(d) for d in shapes[n]) for n in INPUT_NAMES}
    if len(out["encoder_hidden_states"]) == 3:
        b, L, dc = out["encoder_hidden_states"]
        out["encoder_hidden_states"] = (b, 1, L, dc)
    if len(out["encoder_attention_mask"]) == 2:
        b, L = out["encoder_attention_mask"]
        out["encoder_attention_mask"] = (b, 1, L)
    for name, layout in LAYOUTS.items():
        rank = layout.count(",") + 1 if layout != "(B,)" else 1
        if len(out[name]) != rank:
            raise _bad(f"{source}: {name} has shape {out[name]}, expected {layout}")
        if 0 in out[name]:
            raise _bad(f"{source}: {name} has shape {out[name]} with a zero-size dimension; every dimension of "
                       f"{layout} must be at least 1")
    hs, ehs = out["hidden_states"], out["encoder_hidden_states"]
    batch = {n: s[0] for n, s in out.items()}
    if len(set(batch.values())) != 1:
        raise _bad(f"{source}: inconsistent batch sizes {batch}; all inputs need the same B")
    b, c, t, h, w = hs
    if c != config.in_channels:
        raise _bad(f"{source}: hidden_states has {c} channels but the config says in_channels={config.in_channels}")
    if h < config.patch_size or w < config.patch_size:
        raise _bad(f"{source}: hidden_states H, W = {h}, {w} smaller than patch_size {config.patch_size}")
    if t < config.patch_size_t:
        raise _bad(f"{source}: hidden_states T = {t} smaller than patch_size_t {config.patch_size_t}")
    if ehs[1] != 1:
        raise _bad(f"{source}: encoder_hidden_states has shape {ehs}; dim 1 must be the singleton (B,1,L,Dc)")
    if ehs[3] != config.caption_channels:
        raise _bad(f"{source}: encoder_hidden_states has {ehs[3]} features but the config says "
                   f"caption_channels={config.caption_channels}")
    if out["attention_mask"] != (b, t, h, w):
        raise _bad(f"{source}: attention_mask has shape {out['attention_mask']}, expected {(b, t, h, w)}")
    if out["encoder_attention_mask"] != (b, 1, ehs[2]):
        raise _bad(f"{source}: encoder_attention_mask has shape {out['encoder_attention_mask']}, "
                   f"expected {(b, 1, ehs[2])}")
    return out


def normalize_inputs(inputs: Mapping[str, np.ndarray], config: OpenSoraConfig,
                     source: str = "inputs") -> dict[str, np.ndarray]:
    _names(inputs, source)
    out = {n: np.asarray(inputs[n]) for n in INPUT_NAMES}
    for name in LAYOUTS:
        arr = out[name]
        if arr.dtype.kind not in "fiub":
            raise _bad(f"{source}: {name} has dtype {arr.dtype}; expected a numeric array")
    shapes = check_shapes({n: a.shape for n, a in out.items()}, config, source)
    out = {n: a.reshape(shapes[n]) for n, a in out.items()}
    for name, arr in out.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise _bad(f"{source}: {name} contains NaN or Inf; inputs must be finite")
    t = out["timestep"]
    if t.dtype.kind in "iu":
        big = (t > MAX_TIMESTEP) | ((t < -MAX_TIMESTEP) if t.dtype.kind == "i" else False)
    else:
        big = np.abs(t.astype(np.float64)) > MAX_TIMESTEP
    if np.any(big):
        raise _bad(f"{source}: timestep holds {t[big].reshape(-1)[0]!r}, outside [-2^24, 2^24] (the values a float32 "
                   "sinusoid can represent exactly; the scheduler's timesteps are 0..999)")
    return out
