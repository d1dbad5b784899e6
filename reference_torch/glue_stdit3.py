"""The ``stdit3`` family in the ``torch-reference`` plug-in: build and run ``reference_torch.modeling_stdit3.STDiT3``.

``build_model(config, weights, precision)``, ``model_inputs(model, inputs)``, ``random_weights(config, seed)`` (see
``reference_torch.plugin``). The model keeps upstream's module paths and layouts, which is what the family's probe
map describes. ``forward(x, timestep, y, mask, x_mask, fps, height, width, **kwargs)`` swallows the plug-in's
``return_dict=False`` as upstream's does.

Random weights are the family's (``parity.families.stdit3.testing``), not upstream's ``initialize_weights``: that
zeroes the fps embedder's output layer and every block's ``attn.proj``/``cross_attn.proj``/``mlp.fc2``, so a dump
made with it could not tell a wrong RoPE, cross-attention or fps path from a right one.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from parity.errors import ParityError
from parity.families import stdit3 as family
from parity.families.stdit3.testing import random_weights as _family_random_weights
from parity.weights import state_dict_problems
from reference_torch.modeling_stdit3 import STDiT3

from reference_torch.dtypes import PRECISION_DTYPES  # noqa: E402
FORWARD_OPTIONS: dict = {}   # STDiT3's forward returns the tensor itself (no return_dict)


def _config(config):
    return config if hasattr(config, "to_dict") else family.parse_config(config)


def random_weights(config, seed: int) -> dict[str, np.ndarray]:
    return _family_random_weights(_config(config), int(seed))


def build_model(config, weights: Mapping[str, np.ndarray], precision: str) -> STDiT3:
    """``STDiT3`` for ``config`` with exactly ``weights`` (upstream's state-dict names, strict), cast to
    ``precision`` as upstream's scripts do (``model.to(dtype)``: ``rope.freqs`` and ``y_embedding`` included)."""
    cfg = _config(config)
    if precision not in PRECISION_DTYPES:
        raise ParityError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_DTYPES)}")
    problems = state_dict_problems(weights, family.expected_state_dict_shapes(cfg))
    if problems:
        raise ParityError(f"weights do not match the STDiT3 config (depth {cfg.depth}, hidden size "
                          f"{cfg.hidden_size}): {'; '.join(problems)}; use the config.json that belongs to these "
                          f"weights")
    model = STDiT3(cfg.to_dict())
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.items()}, strict=True)
    model.parity_config = cfg
    return model.to(PRECISION_DTYPES[precision]).eval()


def model_inputs(model: STDiT3, inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The family's normalised inputs as CPU tensors, dtypes kept: the model casts ``x``, ``timestep`` and ``y``."""
    return {k: torch.from_numpy(np.array(v, copy=True))
            for k, v in family.normalize_inputs(inputs, model.parity_config).items()}
