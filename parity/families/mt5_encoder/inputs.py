"""Inputs of ``MT5EncoderModel.forward``: ``input_ids`` (B, L) integer token ids and ``attention_mask`` (B, L)
0/1 (1 = token, 0 = padding), as a tokenizer with ``padding="max_length"`` returns them. Plain numpy."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.errors import ParityError
from .config import MT5EncoderConfig
from .probes import INPUT_NAMES

# Open-Sora-Plan pads prompts to 512 tokens; the bound only refuses absurd sizes.
MAX_TOKENS = 1 << 16
MAX_BATCH = 1 << 12


def _bad(message: str) -> ParityError:
    return ParityError(f"{message}; fix the inputs (or use the config they were made for)")


def normalize_inputs(inputs: Mapping[str, np.ndarray], config: MT5EncoderConfig,
                     source: str = "inputs") -> dict[str, np.ndarray]:
    missing = [n for n in INPUT_NAMES if n not in inputs]
    unknown = sorted(set(inputs) - set(INPUT_NAMES))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise _bad(f"{source}: {'; '.join(parts)}; expected exactly the keys {', '.join(INPUT_NAMES)}")
    ids, mask = np.asarray(inputs["input_ids"]), np.asarray(inputs["attention_mask"])
    for name, arr in (("input_ids", ids), ("attention_mask", mask)):
        if arr.ndim != 2:
            raise _bad(f"{source}: {name} has shape {arr.shape}, expected (B, L)")
        if arr.size == 0:
            raise _bad(f"{source}: {name} has zero size {arr.shape}")
    if ids.dtype.kind not in "iu":
        raise _bad(f"{source}: input_ids has dtype {ids.dtype}; expected integer token ids")
    if mask.dtype.kind not in "iufb":
        raise _bad(f"{source}: attention_mask has dtype {mask.dtype}; expected 0/1 integers")
    if ids.shape != mask.shape:
        raise _bad(f"{source}: input_ids {ids.shape} and attention_mask {mask.shape} differ in shape")
    b, length = ids.shape
    if b > MAX_BATCH or length > MAX_TOKENS:
        raise _bad(f"{source}: input_ids shape {ids.shape} exceeds batch {MAX_BATCH} / length {MAX_TOKENS}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= config.vocab_size:
        raise _bad(f"{source}: input_ids has token ids in [{lo}, {hi}] outside the vocabulary 0..{config.vocab_size - 1}")
    if not np.all((mask == 0) | (mask == 1)):
        raise _bad(f"{source}: attention_mask has values other than 0 and 1")
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
