"""Model inputs of ``STDiT``: names, accepted ranks, and their normalisation (plain numpy).

forward() takes ``x (B, C, T, H, W)`` — exactly the latent size the model was built for (``input_size``: its
positional tables and token grid are fixed at construction) —, ``timestep (B,)``, ``y (B, 1, L, Dc)`` (also
accepted as (B, L, Dc)) and ``mask (B_m, L)`` (also (B_m, 1, L)) with 1 = real token, where B_m divides B: the
model tiles it (classifier-free guidance hands the conditional mask once for [cond; uncond]). The mask becomes
int64 0/1. Upstream accepts ``mask=None`` (every token real); an all-ones mask is the same computation.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.errors import ParityError
from .config import STDiTConfig
from .probes import INPUT_NAMES
from .shapes import tiled_mask

MAX_BATCH = 1 << 12
MAX_TEXT_LEN = 1 << 16
MAX_ABS_TIMESTEP = 1e6


def _bad(message: str) -> ParityError:
    return ParityError(f"{message}; fix the inputs (or use the config they were made for)")


def normalize_inputs(inputs: Mapping[str, np.ndarray], config: STDiTConfig,
                     source: str = "inputs") -> dict[str, np.ndarray]:
    missing = [n for n in INPUT_NAMES if n not in inputs]
    unknown = sorted(set(inputs) - set(INPUT_NAMES))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise _bad(f"{source}: {'; '.join(parts)}; expected exactly the keys {', '.join(INPUT_NAMES)}")
    out = {n: np.asarray(inputs[n]) for n in INPUT_NAMES}
    if out["y"].ndim == 3:
        out["y"] = out["y"][:, None]
    if out["mask"].ndim == 3 and out["mask"].shape[1] == 1:
        out["mask"] = out["mask"][:, 0]
    layouts = {"x": "(B,C,T,H,W)", "timestep": "(B,)", "y": "(B,1,L,Dc)", "mask": "(B,L)"}
    for name, layout in layouts.items():
        arr = out[name]
        if arr.ndim != layout.count(",") + (0 if layout == "(B,)" else 1):
            raise _bad(f"{source}: {name} has shape {arr.shape}, expected {layout}")
        if arr.size == 0:
            raise _bad(f"{source}: {name} is empty (shape {arr.shape})")
        if arr.dtype.kind not in "fiub":
            raise _bad(f"{source}: {name} has dtype {arr.dtype}; expected a numeric array")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise _bad(f"{source}: {name} contains NaN or Inf; inputs must be finite")
    x, t, y, mask = out["x"], out["timestep"], out["y"], out["mask"]
    b = x.shape[0]
    if b > MAX_BATCH:
        raise _bad(f"{source}: batch {b} is larger than {MAX_BATCH}")
    if t.shape[0] != b or y.shape[0] != b:
        raise _bad(f"{source}: inconsistent batch sizes (x {b}, timestep {t.shape[0]}, y {y.shape[0]}); "
                   f"all need the same B")
    if mask.shape[0] == 0 or b % mask.shape[0]:
        raise _bad(f"{source}: mask has batch {mask.shape[0]}, which does not divide B = {b} (upstream tiles the "
                   f"mask to the batch)")
    if x.shape[1] != config.in_channels:
        raise _bad(f"{source}: x has {x.shape[1]} channels but the config says in_channels={config.in_channels}")
    if tuple(x.shape[2:]) != tuple(config.input_size):
        raise _bad(f"{source}: x has latent size {tuple(x.shape[2:])} but the model is built for input_size "
                   f"{tuple(config.input_size)} (its positional tables and token grid are fixed); set input_size "
                   f"in the config to the latent (T, H, W)")
    if not np.all(np.abs(t) <= MAX_ABS_TIMESTEP):
        raise _bad(f"{source}: timestep values beyond ±{MAX_ABS_TIMESTEP:g}")
    if y.shape[1] != 1:
        raise _bad(f"{source}: y has shape {y.shape}; dim 1 must be the singleton (B,1,L,Dc)")
    if y.shape[3] != config.caption_channels:
        raise _bad(f"{source}: y has {y.shape[3]} features but the config says caption_channels="
                   f"{config.caption_channels}")
    length = y.shape[2]
    if not 2 <= length <= MAX_TEXT_LEN:
        raise _bad(f"{source}: y has {length} text tokens; use 2..{MAX_TEXT_LEN} (upstream's mask.squeeze(1) "
                   f"breaks a single-token text)")
    if mask.shape[1] != length:
        raise _bad(f"{source}: mask has {mask.shape[1]} tokens but y has {length}")
    if not np.all((mask == 0) | (mask == 1)):
        raise _bad(f"{source}: mask must hold 0/1 (1 = real text token)")
    empty = [i for i, row in enumerate(tiled_mask(mask, b)) if not np.any(row)]
    if empty:
        raise _bad(f"{source}: sample(s) {empty} have no real text token; every sample needs at least one "
                   f"(what xformers returns for an empty text block is not defined on CPU)")
    out["mask"] = mask.astype(np.int64)
    return out
