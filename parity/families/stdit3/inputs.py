"""Model inputs of ``STDiT3``: names, accepted shapes, and their normalisation (plain numpy).

forward(x, timestep, y, mask, x_mask, fps, height, width), as Open-Sora 1.2's sampler calls it:

    x         (B, C, T, H, W) float latents
    timestep  (B,) float (rectified-flow t in [0, 1000], fractional)
    y         (B, 1, L, Dc) T5 features — (B, L, Dc) is accepted and gets the singleton dim
    mask      (b, L) 0/1 text mask, b dividing B (the sampler passes the prompts' mask for [cond; uncond]:
              forward tiles it); optional: absent = every token valid (upstream's mask=None gives the same values)
    x_mask    (B, T') bool, T' the token frames; False = a conditioning frame, modulated with timestep 0;
              optional: absent = all True (bit-identical to upstream's x_mask=None, checked on upstream's code)
    fps       (b,) float, b dividing B (tiled like upstream's SizeEmbedder)
    height, width  (n,) the *pixel* size of the video; only element 0 is read

Output: the dict with every name present (mask int64, x_mask bool), y 4-D; other arrays keep their dtypes.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.errors import ParityError
from .config import STDiT3Config
from .probes import INPUT_NAMES
from .shapes import dynamic_size

REQUIRED = ("x", "timestep", "y", "fps", "height", "width")
OPTIONAL = ("mask", "x_mask")
MAX_ELEMENTS = 1 << 34          # refuse absurd tensors before any work
MAX_TIMESTEP = 1e6
MAX_PIXELS = 1 << 20            # height / width


def _bad(message: str) -> ParityError:
    return ParityError(f"{message}; fix the inputs (or use the config they were made for)")


def _numeric(name: str, arr: np.ndarray, source: str) -> None:
    if arr.dtype.kind not in "fiub":
        raise _bad(f"{source}: {name} has dtype {arr.dtype}; expected a numeric array")
    if arr.size == 0:
        raise _bad(f"{source}: {name} has shape {arr.shape} with no elements")
    if arr.size > MAX_ELEMENTS:
        raise _bad(f"{source}: {name} has {arr.size} elements, more than this harness accepts")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise _bad(f"{source}: {name} contains NaN or Inf; inputs must be finite")


def _zero_one(name: str, arr: np.ndarray, source: str) -> None:
    if not np.all((arr == 0) | (arr == 1)):
        raise _bad(f"{source}: {name} must hold only 0/1 (or booleans); upstream sums the text mask for y_lens")


def _divides(name: str, n: int, batch: int, source: str) -> None:
    if batch % n != 0:
        raise _bad(f"{source}: {name} has {n} rows, which does not divide the batch {batch} (upstream tiles it)")


def normalize_inputs(inputs: Mapping[str, np.ndarray], config: STDiT3Config,
                     source: str = "inputs") -> dict[str, np.ndarray]:
    missing = [n for n in REQUIRED if n not in inputs]
    unknown = sorted(set(inputs) - set(INPUT_NAMES))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(unknown)}")
        raise _bad(f"{source}: {'; '.join(parts)}; expected the keys {', '.join(REQUIRED)} "
                   f"(and optionally {', '.join(OPTIONAL)})")
    out = {n: np.asarray(inputs[n]) for n in INPUT_NAMES if n in inputs}
    for name, arr in out.items():
        _numeric(name, arr, source)

    x = out["x"]
    if x.ndim != 5:
        raise _bad(f"{source}: x has shape {x.shape}, expected (B, C, T, H, W)")
    if x.dtype.kind != "f":
        raise _bad(f"{source}: x has dtype {x.dtype}; expected float latents")
    b, c, tx, hx, wx = x.shape
    if c != config.in_channels:
        raise _bad(f"{source}: x has {c} channels but the config says in_channels={config.in_channels}")
    t_tok = dynamic_size(tx, hx, wx, config.patch_size)[0]

    ts = out["timestep"]
    if ts.shape != (b,):
        raise _bad(f"{source}: timestep has shape {ts.shape}, expected ({b},)")
    if np.any(np.abs(ts.astype(np.float64)) > MAX_TIMESTEP):
        raise _bad(f"{source}: timestep values must lie within ±{MAX_TIMESTEP:g}")

    y = out["y"]
    if y.ndim == 3:
        y = out["y"] = y[:, None]
    if y.ndim != 4 or y.shape[0] != b or y.shape[1] != 1:
        raise _bad(f"{source}: y has shape {out['y'].shape}, expected ({b}, 1, L, {config.caption_channels})")
    if y.shape[3] != config.caption_channels:
        raise _bad(f"{source}: y has {y.shape[3]} features but the config says "
                   f"caption_channels={config.caption_channels}")
    length = y.shape[2]
    if length < 2:
        raise _bad(f"{source}: y has {length} text token(s); upstream's encode_text squeezes the mask's dim 1 and "
                   f"fails on L=1, use L >= 2")

    if "mask" in out:
        mask = out["mask"]
        if mask.ndim != 2 or mask.shape[1] != length:
            raise _bad(f"{source}: mask has shape {mask.shape}, expected (b, {length}) with b dividing {b}")
        _divides("mask", mask.shape[0], b, source)
        _zero_one("mask", mask, source)
        mask = mask.astype(np.int64)
        if np.any(mask.sum(axis=1) == 0):
            raise _bad(f"{source}: mask has a sample without any valid text token (rows "
                       f"{np.flatnonzero(mask.sum(axis=1) == 0).tolist()}); cross-attention needs at least one")
    else:
        mask = np.ones((b, length), np.int64)
    out["mask"] = mask

    if "x_mask" in out:
        xm = out["x_mask"]
        if xm.shape != (b, t_tok):
            raise _bad(f"{source}: x_mask has shape {xm.shape}, expected ({b}, {t_tok}) (one flag per token frame)")
        _zero_one("x_mask", xm, source)
        xm = xm.astype(bool)
    else:
        xm = np.ones((b, t_tok), bool)
    out["x_mask"] = xm

    fps = out["fps"]
    if fps.ndim != 1:
        raise _bad(f"{source}: fps has shape {fps.shape}, expected (b,) with b dividing {b}")
    _divides("fps", fps.shape[0], b, source)
    for name in ("height", "width"):
        arr = out[name]
        if arr.ndim != 1:
            raise _bad(f"{source}: {name} has shape {arr.shape}, expected (n,) (the pixel size; element 0 is read)")
        v = float(arr[0])
        if not 0 < v <= MAX_PIXELS:
            raise _bad(f"{source}: {name}[0] = {v:g} is not a pixel size in (0, {MAX_PIXELS}]")
    return out
