"""Test helpers of the STDiT reference: build at a precision from the family's weights, forward with capture, and
the reference-side replay of a teacher-plan step (what a plug-in calls to run block i / the head)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from parity.capture_torch import TorchCapture
from parity.families.stdit.config import STDiTConfig
from parity.families.stdit.statedict import DERIVED_BUFFERS, random_weights
from reference_torch.modeling_stdit import STDiT

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INPUT_ORDER = ("x", "timestep", "y", "mask")


def config_of(config) -> STDiTConfig:
    return config if isinstance(config, STDiTConfig) else STDiTConfig.from_dict(config)


def build_model(config, weights: Mapping[str, np.ndarray] | None = None, precision: str = "fp32",
                seed: int = 0) -> STDiT:
    """The reference for ``config`` with ``weights`` (default: the family's random weights of ``seed``) and its own
    positional tables, cast to ``precision`` like upstream's scripts (``dtype=`` and ``.to(dtype)``), eval mode."""
    cfg = config_of(config)
    dtype = TORCH_DTYPES[precision]
    weights = random_weights(cfg, seed) if weights is None else weights
    model = STDiT(**cfg.model_kwargs(), dtype=dtype)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                                                strict=False)
    assert sorted(missing) == sorted(DERIVED_BUFFERS) and not unexpected, (missing, unexpected)
    return model.to(dtype).eval()


def full_state(model: STDiT) -> dict[str, np.ndarray]:
    """Every state-dict entry (parameters and buffers) as float32 numpy (bf16 values exactly)."""
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def torch_inputs(inputs: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.array(inputs[k])) for k in INPUT_ORDER]


def forward(model: STDiT, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*torch_inputs(inputs)).numpy()


def capture(model: STDiT, inputs: Mapping[str, np.ndarray], specs: list) -> tuple[np.ndarray, dict]:
    """Forward with every probe of ``specs``: (output, {probe: (float32 array, dtype name)})."""
    probes = {}
    with TorchCapture(model, specs, lambda n, a, d: probes.__setitem__(n, (np.asarray(a), d))), torch.no_grad():
        out = model(*torch_inputs(inputs)).numpy()
    return out, probes


def run_step(model: STDiT, step, teacher: Mapping[str, np.ndarray]) -> np.ndarray:
    """One teacher-plan step on the reference itself, fed the given reference tensors (float32 arrays of the
    working dtype's values; ``mask`` = y_lens)."""
    dtype = model.dtype

    def t(role):
        return torch.from_numpy(np.asarray(teacher[role], np.float32)).to(dtype)

    def stream(role):
        # the residual stream in upstream's forward layout: (B, N, C) viewed from a (B, C, N) buffer (the patch
        # embedding's flatten(2).transpose(1, 2)); torch's bf16/fp16 Linear rounds differently on that layout
        return t(role).transpose(1, 2).contiguous().transpose(1, 2)

    with torch.no_grad():
        if step.kind == "block":
            tpe = t("tpe") if "tpe" in step.inputs else None
            out = model.blocks[step.index](stream("x"), t("y"), t("t"), [int(n) for n in teacher["mask"]], tpe)
        elif step.kind == "final_layer":
            out = model.final_layer(stream("x"), t("t"))
        elif step.kind == "output":
            out = model.unpatchify(t("x")).to(torch.float32)
        else:
            raise ValueError(f"unknown step kind {step.kind!r}")
    return out.float().numpy()
