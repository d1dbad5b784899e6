"""Building and running the MindSpore ``OpenSoraT2V_v1_3`` for the ``ms_impl`` plug-in (``ms_impl.plugin``).

A strictly loaded model at a precision, its inputs as MindSpore tensors, a forward pass, probe capture, module
paths, the memory machinery (``enable_memory_machinery``) and the CPU kernel policy it switches on. Inputs and
outputs are numpy; arrays handed to ``on_probe`` are float32 in the MindSpore layout (the engine applies the probe
map's adapters), with the dtype name of the values. The model raises ordinary exceptions; bad requests (device,
precision) become ``ParityError`` here.

Inputs as the torch reference takes them: ``hidden_states (B,C,T,H,W)``, ``timestep (B,)``,
``encoder_hidden_states (B,1,L,Dc)`` or ``(B,L,Dc)``, ``attention_mask (B,T,H,W)``, ``encoder_attention_mask
(B,1,L)`` or ``(B,L)``. As in the reference harness, only ``encoder_hidden_states`` is cast to the model dtype
(it goes straight into the caption Linear); everything else is passed as given: the model casts
``hidden_states`` at the patch embedding, computes the sinusoid from the float32 ``timestep``, and converts the
masks to biases in its dtype. Also exported for the CLI: ``convert_torch_to_ms`` / ``convert_ms_to_torch``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

import mindspore as ms
from mindspore.nn.utils import no_init_parameters

from ms_impl import attention as attention_seam, streaming
from ms_impl.convert import convert_ms_to_torch, convert_torch_to_ms, load_into  # noqa: F401 (CLI uses both)
from ms_impl.cpu_kernels import CpuKernels
from ms_impl.kernels import Kernels, set_default_kernels, use_kernels
from ms_impl.modeling_opensora import OpenSoraT2V_v1_3
from ms_impl.precision import FP32, normalize_device, precision_label as _precision_label, set_precision
from parity.capture_ms import MsCapture, module_paths as _module_paths, tensor_dtype_name, to_numpy
from parity.errors import ParityError
from parity.families.opensora_v13.config import OpenSoraConfig
from parity.families.opensora_v13.inputs import normalize_inputs

_CONTEXT: dict[str, str] = {}
_CAST_INPUTS = ("encoder_hidden_states",)


def setup_context(device: str = "CPU") -> None:
    """MindSpore context, once per process: device, PyNative (hooks need it), deterministic kernels, seed 0.

    On CPU, kernels are launched synchronously (``launch_blocking``): errors surface at the failing op instead
    of at a later ``.asnumpy()``, and small-op models run 10-20x faster on a loaded 2-core machine than with the
    asynchronous launch pipeline; and the port's cells use the CPU kernel policy (``ms_impl.cpu_kernels``).
    """
    dev = _device(device)
    if _CONTEXT.get("device") == dev:
        return
    if _CONTEXT and _CONTEXT["device"] != dev:
        raise ParityError(f"MindSpore is already set up for {_CONTEXT['device']} in this process; "
                          f"cannot switch to {dev}")
    ms.set_device(dev)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_deterministic(True)
    ms.set_seed(0)
    if dev == "CPU":
        ms.runtime.launch_blocking()
        set_default_kernels(CpuKernels())
    _CONTEXT["device"] = dev


def _device(device: str) -> str:
    try:
        return normalize_device(device)
    except ValueError as exc:
        raise ParityError(str(exc)) from None


def precision_label(precision: str, device: str) -> str:
    """What ``precision`` runs as on ``device``: "bf16" on CPU/GPU is "bf16-emulated" (see ms_impl.precision)."""
    try:
        return _precision_label(precision, device)
    except ValueError as exc:
        raise ParityError(str(exc)) from None


def _config(config: Mapping | OpenSoraConfig) -> OpenSoraConfig:
    return config if isinstance(config, OpenSoraConfig) else OpenSoraConfig.from_dict(config)


def build_model(config: dict, weights: dict[str, np.ndarray], precision: str, device: str = "CPU",
                attention_backend: str | None = None) -> OpenSoraT2V_v1_3:
    """The MindSpore model for ``config`` with exactly ``weights`` (torch ``state_dict`` names) loaded, in eval
    mode at ``precision`` on ``device``. Weight problems are one ParityError listing every bad key."""
    setup_context(device)
    cfg = _config(config)
    label = precision_label(precision, device)
    ms_weights = convert_torch_to_ms(weights, cfg)
    with no_init_parameters():
        model = OpenSoraT2V_v1_3.from_config(cfg.to_dict())
    load_into(model, ms_weights)
    set_precision(model, label, device)
    if label == "bf16-emulated" and _device(device) != "CPU":  # (CPU: the process's CpuKernels upcast bf16)
        use_kernels(model, Kernels(bf16_in_float32=True))
    # explicit argument, else the seam's process-wide setting, else the device default; kept per model
    backend = (attention_backend or attention_seam.get_backend()
               or attention_seam.default_backend(_device(device), precision))
    attention_seam.set_attention_backend(model, backend)
    model.attention_backend = backend
    enable_memory_machinery(model, backend, _device(device))
    model.set_train(False)
    return model


def enable_memory_machinery(model: OpenSoraT2V_v1_3, backend: str, device: str = "CPU") -> None:
    """The memory machinery every harness-built model runs with (``ms_impl.streaming``): the feed-forward in
    token chunks, and token-streamed blocks at real sizes (portable attention only; on CPU with its long-lived
    buffers outside MindSpore's memory pool). Values are those of the plain model (tested)."""
    streaming.enable_feed_forward_chunking(model, streaming.FFN_CHUNK_ELEMENTS)
    if backend == "portable":
        streaming.enable_token_streaming(model, min_elements=streaming.REAL_SIZE_ELEMENTS,
                                         host_buffers=device == "CPU")


def machinery_notes(model: OpenSoraT2V_v1_3) -> list[str]:
    """What the build switched on in ``model``, one line each (for the report's notes): the memory machinery and
    the kernel policy."""
    kernels = model.kernels
    notes = [f"ms_impl.streaming: {line}" for line in streaming.describe(model)]
    notes.append(f"kernels: {type(kernels).__module__}.{kernels!r}" + (
        " (CPU substitutes; MindSpore's own kernels give the same model within 2e-6 fp32, one bf16 ULP)"
        if isinstance(kernels, CpuKernels) else ""))
    return notes


# ---------------------------------------------------------------------------------------------------------
# inputs, forward, capture
# ---------------------------------------------------------------------------------------------------------
def model_inputs(model: OpenSoraT2V_v1_3, inputs: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """MindSpore tensors for ``model(**tensors)`` and the dtype names torch would report for them."""
    arrays = normalize_inputs(inputs, model.config)
    nx = getattr(model, "numerics", FP32)  # (set_precision records it; a model built as is: fp32)
    tensors, names = {}, {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if name in _CAST_INPUTS:
            # the float32 copy is the tensor's storage (no second copy; at real size the caption alone is 8 MB)
            t = ms.Tensor.from_numpy(arr.astype(np.float32))
            t = t if nx.activation_dtype == ms.float32 else t.astype(nx.activation_dtype)
            names[name] = nx.logical
        else:
            t = ms.Tensor(arr)
            names[name] = str(arr.dtype)
        tensors[name] = t
    return tensors, names


def dtype_namer(model: OpenSoraT2V_v1_3, known: Mapping[int, str] | None = None) -> Callable[[Any], str]:
    nx = getattr(model, "numerics", FP32)  # (set_precision records it; a model built as is: fp32)
    known = dict(known or {})

    def name(value: Any) -> str:
        if id(value) in known:
            return known[id(value)]
        if isinstance(value, ms.Tensor) and value.dtype == nx.dtype:
            return nx.logical
        return tensor_dtype_name(value)
    return name


def forward(model: OpenSoraT2V_v1_3, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One forward pass; the output (B, C, T, H, W) as float32 numpy."""
    tensors, _ = model_inputs(model, inputs)
    (output,) = model(**tensors)
    return to_numpy(output)


def capture(model: OpenSoraT2V_v1_3, inputs: dict[str, np.ndarray], specs: list,
            on_probe: Callable[[str, np.ndarray, str], None]) -> np.ndarray:
    """``forward`` with every probe of ``specs`` reported to ``on_probe(name, array, dtype_name)``."""
    tensors, names = model_inputs(model, inputs)
    namer = dtype_namer(model, {id(tensors[k]): v for k, v in names.items()})
    with MsCapture(model, specs, on_probe, dtype_name=namer):
        (output,) = model(**tensors)
    return to_numpy(output)


def module_paths(model: OpenSoraT2V_v1_3) -> set[str]:
    return _module_paths(model)


def run_step(model: OpenSoraT2V_v1_3, step, teacher: dict) -> np.ndarray:
    """Isolated mode (the family's teacher plan): block ``step.index`` or the output head on the reference's
    tensors (already in the port's layout), through upstream's own pieces."""
    nx = getattr(model, "numerics", FP32)
    t = {role: ms.Tensor(arr).astype(nx.activation_dtype) for role, arr in teacher.items()}
    grid = step.params
    if step.kind == "block":
        out = model.transformer_blocks[step.index](
            t["hidden_states"], attention_mask=t["attention_mask"], encoder_hidden_states=t["encoder_hidden_states"],
            encoder_attention_mask=t["encoder_attention_mask"], timestep=t["timestep"], frame=grid["frame"],
            height=grid["height"], width=grid["width"])
    elif step.kind == "output":
        out = model._get_output_for_patched_inputs(t["hidden_states"], None, t["embedded_timestep"], grid["frame"],
                                                   grid["height"], grid["width"])
    else:
        raise ValueError(f"ms_impl: unknown teacher step kind {step.kind!r}")
    return to_numpy(out)


__all__ = ["build_model", "precision_label", "forward", "capture", "model_inputs", "dtype_namer", "module_paths",
           "run_step", "setup_context", "convert_torch_to_ms", "convert_ms_to_torch",
           "enable_memory_machinery", "machinery_notes"]
