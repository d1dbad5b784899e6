"""Test helpers of the STDiT MindSpore port (no torch): build at a precision, forward with capture, and the subject
side of a teacher-plan step — what a subject plug-in calls to run block i / the final layer / unpatchify on
reference tensors."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from mindspore import Tensor

import ms_impl.modeling_stdit as M
from ms_impl.glue_stdit import dtype_namer, run_step  # noqa: F401 (the plug-in's own, used by the tests)
from ms_impl.precision import numerics_for
from parity.capture_ms import MsCapture
from parity.families.stdit.config import STDiTConfig
from parity.families.stdit.statedict import DERIVED_BUFFERS, random_weights

INPUT_ORDER = ("x", "timestep", "y", "mask")


def config_of(config) -> STDiTConfig:
    return config if isinstance(config, STDiTConfig) else STDiTConfig.from_dict(config)


def build_model(config, weights: Mapping[str, np.ndarray] | None = None, precision: str = "fp32", seed: int = 0,
                backend: str | None = None) -> M.STDiT:
    """The port for ``config`` with ``weights`` (torch state-dict names; the derived positional tables may be left
    out: the model computes them), strictly checked, at ``precision`` ("bf16" = emulated on CPU)."""
    cfg = config_of(config)
    weights = random_weights(cfg, seed) if weights is None else weights
    model = M.STDiT(**cfg.model_kwargs())
    result = model.load_state_dict({k: Tensor(np.ascontiguousarray(v, np.float32)) for k, v in weights.items()},
                                   strict=False)
    assert set(result.missing_keys) <= set(DERIVED_BUFFERS) and not result.unexpected_keys, result
    M.set_precision(model, numerics_for(precision).label)
    M.set_attention_backend(model, backend)
    return model


def ms_inputs(inputs: Mapping[str, np.ndarray]) -> list[Tensor]:
    return [Tensor(np.ascontiguousarray(inputs[k])) for k in INPUT_ORDER]


def forward(model: M.STDiT, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    return model(*ms_inputs(inputs)).asnumpy()


def capture(model: M.STDiT, inputs: Mapping[str, np.ndarray], specs: list) -> tuple[np.ndarray, dict]:
    """Forward with every probe of ``specs``: (output, {probe: (float32 array, dtype name)})."""
    probes = {}
    tensors = ms_inputs(inputs)
    names = {id(t): str(np.asarray(inputs[k]).dtype) for k, t in zip(INPUT_ORDER, tensors)}
    base = dtype_namer(model)
    with MsCapture(model, specs, lambda n, a, d: probes.__setitem__(n, (np.asarray(a), d)),
                   dtype_name=lambda v: names.get(id(v)) or base(v)):
        out = model(*tensors).asnumpy()
    if "hidden_states_output" in probes:  # forward() ends with a cast to float32 (bf16 values, a float32 tensor)
        probes["hidden_states_output"] = (probes["hidden_states_output"][0], "float32")
    return out, probes


def assert_twin(ms_arr, torch_arr, precision: str, fp32_atol: float = 2e-6, low_ulps: float = 2.0,
                max_frac: float = 0.05, what: str = "") -> None:
    """The twin criterion of the v1.3 port's tests. fp32: max |d| <= fp32_atol x the tensor's scale (max |ref|, at
    least 1). bf16 (emulated vs torch bf16): at most ``max_frac`` of the elements differ (one-ULP flips where the
    two libraries' float32 accumulation orders straddle a rounding boundary), each by at most ``low_ulps`` bf16
    ULPs of the scale. fp16: at most 4·low_ulps fp16 ULPs of the scale. NaN/Inf must sit at the same places."""
    a, r = np.asarray(ms_arr, np.float64), np.asarray(torch_arr, np.float64)
    assert a.shape == r.shape, (what, a.shape, r.shape)
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(r), err_msg=f"{what}: non-finite positions differ")
    fin = np.isfinite(r)
    a, r = a[fin], r[fin]
    scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
    diff = float(np.abs(a - r).max()) if r.size else 0.0
    if precision == "fp32":
        assert diff <= fp32_atol * scale, f"{what}: max |d| {diff:.3e} > {fp32_atol:g} x scale {scale:.3f}"
    elif precision == "fp16":
        assert diff <= 4 * low_ulps * 2.0 ** -10 * scale, f"{what}: max |d| {diff:.3e} at scale {scale:.3f}"
    else:
        frac = float(np.mean(a != r)) if r.size else 0.0
        assert frac <= max_frac and diff <= low_ulps * 2.0 ** -7 * scale, \
            f"{what}: {frac:.1%} of the elements differ, max |d| {diff:.3e} at scale {scale:.3f}"
