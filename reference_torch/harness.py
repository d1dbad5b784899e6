"""Building and running the PyTorch ``OpenSoraT2V_v1_3`` for the ``torch-reference`` plug-in (``reference_torch.plugin``).

Everything the parity CLI needs from PyTorch: random weights, expected state-dict shapes (on the meta device),
a strictly loaded model at a precision, input normalisation, a forward pass and probe capture. Inputs and
outputs are numpy; bfloat16 tensors leave this module as exact float32 with the dtype name "bfloat16"
(float16 stays float16).

Inputs (numpy), as upstream's pipeline hands them to the DiT:
    hidden_states          (B, C, T, H, W) float
    timestep               (B,) float
    encoder_hidden_states  (B, 1, L, Dc) float   — (B, L, Dc) is accepted and unsqueezed
    attention_mask         (B, T, H, W) 0/1      — 1 = valid latent pixel
    encoder_attention_mask (B, 1, L) 0/1         — (B, L) is accepted and unsqueezed
"""

from __future__ import annotations

from typing import Any, Callable, Mapping


import numpy as np
import torch

from parity.capture_torch import TorchCapture, module_paths as _module_paths, to_numpy
from parity.errors import ParityError
from parity.weights import state_dict_problems
from parity.families.opensora_v13.config import OpenSoraConfig
from parity.families.opensora_v13.inputs import normalize_inputs
from reference_torch import streaming
from reference_torch.modeling_opensora import OpenSoraT2V_v1_3

from reference_torch.dtypes import PRECISION_DTYPES  # noqa: E402
FORWARD_OPTIONS = {"return_dict": False}   # the plug-in's forward keywords besides the inputs

# expected rank(s) of each input; the first of two ranks is the one the model takes


def _config(config: "Mapping[str, Any] | OpenSoraConfig") -> OpenSoraConfig:
    if isinstance(config, OpenSoraConfig):
        return config
    return OpenSoraConfig.from_dict(config)


def _precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISION_DTYPES[precision]
    except (KeyError, TypeError):
        raise ParityError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_DTYPES)}") from None


# ---------------------------------------------------------------------------------------------------------
# weights and model
# ---------------------------------------------------------------------------------------------------------


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random fp32 weights: ``torch.manual_seed(seed)``, then the model's own (upstream) init
    on CPU. Same seed and config -> same weights, in state-dict order."""
    cfg = _config(config)
    torch.manual_seed(int(seed))
    with torch.device("cpu"):
        model = OpenSoraT2V_v1_3.from_config(cfg.to_dict())
    # the arrays take over the parameters' storage (no second copy: the 2.7B model is 11 GB in fp32)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def expected_state_dict_shapes(config: dict) -> dict[str, tuple]:
    """Parameter names and shapes of the model for ``config``, built on the meta device (nothing allocated)."""
    cfg = _config(config)
    with torch.device("meta"):
        model = OpenSoraT2V_v1_3.from_config(cfg.to_dict())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_model(config: dict, weights: dict[str, np.ndarray], precision: str) -> torch.nn.Module:
    """The model for ``config`` with exactly ``weights`` loaded (strict), cast to ``precision``, eval, CPU.

    Missing, unexpected and shape-mismatched keys are all reported, by name, in one ParityError.
    At fp32 the parameters share memory with the (writable, C-contiguous) arrays of ``weights``.
    """
    cfg = _config(config)
    dtype = _precision_dtype(precision)
    if not isinstance(weights, Mapping):
        raise ParityError(f"weights: expected a mapping of parameter name -> array, got {type(weights).__name__}")
    expected = expected_state_dict_shapes(cfg)
    problems = state_dict_problems(weights, expected)
    if problems:
        raise ParityError(
            f"weights do not match the config (hidden size {cfg.hidden_size}, {cfg.num_layers} layers, "
            f"in_channels {cfg.in_channels}, caption_channels {cfg.caption_channels}): {'; '.join(problems)}; "
            f"use the config.json that belongs to these weights, or regenerate the weights for this config")
    state = {}
    for k in expected:
        arr = weights[k]
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
        if arr.dtype.kind != "f":
            raise ParityError(f"weights: {k} has dtype {arr.dtype}, expected a float array; "
                              f"convert the checkpoint to float32")
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, copy=True, order="C")
        state[k] = torch.from_numpy(arr).to(dtype)
    with torch.device("meta"):
        model = OpenSoraT2V_v1_3.from_config(cfg.to_dict())
    model.load_state_dict(state, strict=True, assign=True)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:  # pragma: no cover - strict loading above makes this impossible
            raise ParityError(f"weights: {name} was not loaded; the checkpoint is incomplete")
    model = model.to(device="cpu", dtype=dtype).eval()
    enable_memory_machinery(model)
    return model


def enable_memory_machinery(model: torch.nn.Module) -> None:
    """The memory machinery every harness-built model runs with (``reference_torch.streaming``): attention in
    query slices, the feed-forward in token chunks, and token-streamed blocks at real sizes. Values are those of
    the plain model (tested bit-identical)."""
    streaming.enable_attention_slicing(model, streaming.ATTENTION_SLICE_SCORES)
    streaming.enable_feed_forward_chunking(model, streaming.FFN_CHUNK_ELEMENTS)
    streaming.enable_token_streaming(model, min_elements=streaming.REAL_SIZE_ELEMENTS)


def machinery_notes(model: torch.nn.Module) -> list[str]:
    """What ``enable_memory_machinery`` switched on in ``model``, one line each (for the report's notes)."""
    return [f"reference_torch.streaming: {line} (bit-identical to the plain model)"
            for line in streaming.describe(model)]


# ---------------------------------------------------------------------------------------------------------
# inputs and forward
# ---------------------------------------------------------------------------------------------------------


def to_torch_inputs(inputs: dict[str, np.ndarray], config) -> dict[str, torch.Tensor]:
    """The family's ``normalize_inputs`` (checks, (B,L,Dc) -> (B,1,L,Dc)), then CPU tensors with the arrays' own
    dtypes (no casting here)."""
    cfg = _config(config)
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in normalize_inputs(inputs, cfg).items()}


def model_inputs(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors for ``model(**tensors)``, cast only where upstream's forward needs it.

    ``encoder_hidden_states`` goes straight into the caption Linear, so it must already be in the model dtype
    (upstream's pipeline passes prompt embeddings in the DiT dtype): it is cast. Everything else is passed as
    given: the model itself casts ``hidden_states`` at the patch embedding and converts the masks to biases in
    its dtype, and ``timestep`` stays float32 — the sinusoid is computed in fp32 from it anyway. (A bf16
    pipeline would round t=999 to 1000 before the call; we deliberately don't, so low-precision runs differ
    from fp32 only by the model's own arithmetic and the subject can replay the dumped inputs as they are.)
    """
    tensors = to_torch_inputs(inputs, OpenSoraConfig.from_dict(vars(model.config)))
    dtype = next(model.parameters()).dtype
    tensors["encoder_hidden_states"] = tensors["encoder_hidden_states"].to(dtype)
    return tensors


def _output_numpy(output: torch.Tensor) -> np.ndarray:
    arr, _ = to_numpy(output)
    return arr


def forward(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One forward pass (no_grad, ``return_dict=False``); the output (B, C, T, H, W) as numpy in the model's
    precision (float32, float16; bfloat16 as exact float32)."""
    tensors = model_inputs(model, inputs)
    with torch.no_grad():
        (output,) = model(**tensors, return_dict=False)
    return _output_numpy(output)


def capture(model: torch.nn.Module, inputs: dict[str, np.ndarray], specs: list,
            on_probe: Callable[[str, np.ndarray, str], None]) -> np.ndarray:
    """``forward`` with every probe of ``specs`` (``load_probe_map().probes(num_layers)``) reported to
    ``on_probe(name, array, dtype_name)``; returns the output."""
    tensors = model_inputs(model, inputs)
    with TorchCapture(model, specs, on_probe), torch.no_grad():
        (output,) = model(**tensors, return_dict=False)
    return _output_numpy(output)


def module_paths(model: torch.nn.Module) -> set[str]:
    """Dotted names of all submodules of ``model`` ("" = the root)."""
    return _module_paths(model)
