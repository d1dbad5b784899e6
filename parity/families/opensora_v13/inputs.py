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


def normalize_inputs(inputs: Mapping[str, np.ndarray], config: OpenSoraConfig,
                     source: str = "inputs") -> dict[str, np.ndarray]:
    missing = [n for n in INPUT_NAMES if n not in inputs]
    unknown = sorted(set(inputs) - set(INPUT_NAMES))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(unknown)}")
        raise _bad(f"{source}: {'; '.join(parts)}; expected exactly the keys {', '.join(INPUT_NAMES)}")
    out = {n: np.asarray(inputs[n]) for n in INPUT_NAMES}
    if out["encoder_hidden_states"].ndim == 3:
        out["encoder_hidden_states"] = out["encoder_hidden_states"][:, None]
    if out["encoder_attention_mask"].ndim == 2:
        out["encoder_attention_mask"] = out["encoder_attention_mask"][:, None]
    expected = {"hidden_states": "(B,C,T,H,W)", "timestep": "(B,)", "encoder_hidden_states": "(B,1,L,Dc)",
                "attention_mask": "(B,T,H,W)", "encoder_attention_mask": "(B,1,L)"}
    for name, layout in expected.items():
        arr = out[name]
        rank = layout.count(",") + 1 if layout != "(B,)" else 1
        if arr.ndim != rank:
            raise _bad(f"{source}: {name} has shape {arr.shape}, expected {layout}")
        if arr.dtype.kind not in "fiub":
            raise _bad(f"{source}: {name} has dtype {arr.dtype}; expected a numeric array")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise _bad(f"{source}: {name} contains NaN or Inf; inputs must be finite")
    hs, ehs = out["hidden_states"], out["encoder_hidden_states"]
    batch = {n: a.shape[0] for n, a in out.items()}
    if len(set(batch.values())) != 1:
        raise _bad(f"{source}: inconsistent batch sizes {batch}; all inputs need the same B")
    b, c, t, h, w = hs.shape
    if c != config.in_channels:
        raise _bad(f"{source}: hidden_states has {c} channels but the config says in_channels={config.in_channels}")
    if h < config.patch_size or w < config.patch_size:
        raise _bad(f"{source}: hidden_states H, W = {h}, {w} smaller than patch_size {config.patch_size}")
    if ehs.shape[1] != 1:
        raise _bad(f"{source}: encoder_hidden_states has shape {ehs.shape}; dim 1 must be the singleton (B,1,L,Dc)")
    if ehs.shape[3] != config.caption_channels:
        raise _bad(f"{source}: encoder_hidden_states has {ehs.shape[3]} features but the config says "
                   f"caption_channels={config.caption_channels}")
    if out["attention_mask"].shape != (b, t, h, w):
        raise _bad(f"{source}: attention_mask has shape {out['attention_mask'].shape}, expected {(b, t, h, w)}")
    if out["encoder_attention_mask"].shape != (b, 1, ehs.shape[2]):
        raise _bad(f"{source}: encoder_attention_mask has shape {out['encoder_attention_mask'].shape}, "
                   f"expected {(b, 1, ehs.shape[2])}")
    return out
