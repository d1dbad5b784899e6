"""Shared helpers of the MindSpore-side tests: tiny configs, numpy weights and inputs (no torch needed)."""

from __future__ import annotations

import numpy as np

from hypothesis import settings

from ms_impl.convert import expected_parameter_shapes
from parity.families.opensora_v13.testing import make_inputs, tiny_config  # noqa: F401

# small example counts: every example runs MindSpore (and often torch) kernels
FAST = settings(max_examples=10, deadline=None)
FASTER = settings(max_examples=6, deadline=None)


def numpy_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with the model's names and shapes (roughly PyTorch-default scaled)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_parameter_shapes(config).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        out[name] = (rng.uniform(-1, 1, size=shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


def family_items(num_layers: int, names=None):
    """The opensora_v13 probe map's capture rules (the port keeps every probe at the same module path)."""
    from parity.probemap import family_capture_items
    return family_capture_items("opensora_v13", num_layers, names)


def subject_run(config: dict, model=None):
    """The ``ms_impl`` plug-in's view of ``config`` (probes with its overlay, teacher forcing), on ``model``."""
    from ms_impl.plugin import make_plugin
    from parity.runner import ModelRun

    run = ModelRun(make_plugin(), "opensora_v13", config)
    run.model = model
    return run


def is_bf16_valued(x: np.ndarray) -> bool:
    from parity.dtypes import round_to_bf16
    x = np.asarray(x, dtype=np.float32)
    return bool(np.array_equal(round_to_bf16(x), x))
