"""Building and running the PyTorch ``STDiT`` (Open-Sora 1.0) for the ``torch-reference`` plug-in.

``build_model(config, weights, precision)``: upstream's construction (``STDiT(..., dtype=)`` then ``.to(dtype)``) with
``weights`` checked strictly against the state dict (buffers included) and loaded as upstream's ``find_model``
does: the fixed positional tables ``pos_embed``/``pos_embed_temporal`` dropped, so the model keeps its own. ``model_inputs``: ``forward(x, timestep, y, mask)``
tensors as upstream's sampler hands them (the model casts x, timestep and y itself). ``random_weights``: the family's
seeded draw (``statedict.random_weights``, N(0, 1/fan_in)) rather than upstream's init, which zeroes the
cross-attention, temporal-attention and final projections: a port that got those paths wrong would pass on such
weights. The positional tables are the model's own.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from parity.errors import ParityError
from parity.families.stdit.config import STDiTConfig
from parity.families.stdit.inputs import normalize_inputs
from parity.families.stdit.statedict import DERIVED_BUFFERS, expected_shapes, random_weights as family_weights
from parity.weights import state_dict_problems
from reference_torch.modeling_stdit import STDiT

from reference_torch.dtypes import PRECISION_DTYPES  # noqa: E402
FORWARD_OPTIONS: dict = {}   # STDiT's forward returns the tensor itself (no return_dict)


def _config(config) -> STDiTConfig:
    return config if isinstance(config, STDiTConfig) else STDiTConfig.from_dict(config)


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """The whole state dict for ``seed``: the family's seeded parameters (``statedict.random_weights``) and the
    model's own positional tables, in state-dict order."""
    cfg = _config(config)
    drawn = family_weights(cfg, int(seed))
    with torch.device("meta"):  # parameters unallocated; the tables are numpy-built CPU buffers
        model = STDiT(**cfg.model_kwargs())
    tables = {k: model.state_dict()[k].numpy().copy() for k in DERIVED_BUFFERS}
    return {k: drawn[k] if k in drawn else tables[k] for k in expected_shapes(cfg)}


def build_model(config: dict, weights: Mapping[str, np.ndarray], precision: str) -> STDiT:
    cfg = _config(config)
    if precision not in PRECISION_DTYPES:
        raise ParityError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_DTYPES)}")
    dtype = PRECISION_DTYPES[precision]
    problems = state_dict_problems(weights, expected_shapes(cfg))
    if problems:
        raise ParityError(f"weights do not match the STDiT config (hidden size {cfg.hidden_size}, depth {cfg.depth}, "
                          f"input_size {list(cfg.input_size)}): {'; '.join(problems)}; use the config.json that "
                          f"belongs to these weights")
    with torch.device("meta"):
        model = STDiT(**cfg.model_kwargs(), dtype=dtype)
    state = {k: torch.from_numpy(np.array(weights[k], dtype=np.float32, order="C")) for k in expected_shapes(cfg)
             if k not in DERIVED_BUFFERS}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    assert sorted(missing) == sorted(DERIVED_BUFFERS) and not unexpected, (missing, unexpected)
    model.parity_config = cfg
    return model.to(device="cpu", dtype=dtype).eval()


def model_inputs(model: STDiT, inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``forward(x, timestep, y, mask)`` keywords: the family's ``normalize_inputs`` (checks, (B,L,Dc) ->
    (B,1,L,Dc), int64 mask), as CPU tensors with the arrays' own dtypes."""
    arrays = normalize_inputs(inputs, model.parity_config)
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}
