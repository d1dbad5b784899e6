"""Precisions of the MindSpore port: which dtype a model's parameters and activations are held in, and the labels.

``fp32`` and ``fp16`` run natively on every device (MindSpore's CPU kernels have fp16). ``bf16`` runs natively
where the device has bf16 kernels (Ascend). MindSpore 2.10 on CPU has no bf16 matmul, convolution, softmax, GELU,
SiLU or LayerNorm, so on CPU (and GPU) ``bf16`` runs as **``bf16-emulated``**:

* parameters and activations are real bfloat16 tensors (``Numerics.activation_dtype``), exactly as in PyTorch's
  bf16 model, so every elementwise op of the model (the adaLN modulation, gates, residual adds, RoPE products)
  materialises its result in bf16 by itself: MindSpore's CPU bf16 add/sub/mul compute in float32 and round to
  nearest even, bit for bit what torch's do (tested over all bf16 bit patterns' ranges);
* the kernels the CPU lacks in bf16 compute in float32 and round their output once (the CPU kernel policy,
  ``ms_impl.cpu_kernels``; PyTorch's CPU bf16 kernels do the same): Linear/Conv outputs, GELU/SiLU, LayerNorm
  (statistics in float32 for every dtype, like torch on CPU), attention (the seam computes in float32);
* the model's few float32 steps (mask biases, RoPE and timestep tables built on the host) round where upstream's
  ops round, named in the model.

Against torch bf16 on CPU this is bit-exact except for rare one-ULP flips where the two libraries' float32
accumulation orders straddle a bf16 rounding boundary.

``Numerics`` describes a precision. ``Numerics.__call__`` (round a float32 tensor to bf16 values, staying float32)
and ``dtype`` (float32 under emulation) serve models that hold bf16 values in float32 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Tensor

PRECISIONS = ("fp32", "fp16", "bf16", "bf16-emulated")
_NATIVE_BF16_DEVICES = ("Ascend",)


def round_bf16_np(values) -> np.ndarray:
    """Numpy float32 values rounded to bf16 (round to nearest even), returned as float32 (MindSpore's cast)."""
    return Tensor(np.asarray(values, dtype=np.float32)).astype(ms.bfloat16).astype(ms.float32).asnumpy()


@dataclass(frozen=True)
class Numerics:
    """How activations are represented: ``activation_dtype`` is what tensors hold, ``dtype`` what MindSpore's kernels
    compute in (float32 under bf16 emulation), ``logical`` the dtype name of the values."""

    label: str            # "fp32" | "fp16" | "bf16" | "bf16-emulated"
    dtype: object         # mindspore dtype the kernels compute in
    logical: str          # dtype name of the values ("float32", "float16", "bfloat16")
    emulate_bf16: bool = False

    def __call__(self, x):
        """``x`` (float32) rounded to bf16 values under emulation, staying float32; the identity otherwise."""
        if self.emulate_bf16:
            return round_to_bf16_split(x)
        return x

    def scalar(self, value: float) -> float:
        """A Python scalar as the activation dtype would hold it (e.g. -9980.0 -> -9984.0 in bf16/fp16)."""
        if self.logical == "bfloat16":
            return float(round_bf16_np(np.float32(value)))
        if self.logical == "float16":
            return float(np.float16(value))
        return float(np.float32(value))

    def table(self, values: np.ndarray) -> np.ndarray:
        """Round a float32/float64 numpy table to the activation dtype; returned with the storage dtype."""
        return round_table(values, self.activation_dtype)

    @property
    def activation_dtype(self):
        """dtype of parameters and activations: the logical dtype (bfloat16 for bf16-emulated too)."""
        return ms.bfloat16 if self.logical == "bfloat16" else self.dtype

    @property
    def kernel_dtype(self):
        """dtype attention kernels are fed with (bf16 emulation feeds real bf16 to a bf16 kernel)."""
        return self.activation_dtype


def round_table(values: np.ndarray, dtype) -> np.ndarray:
    """A host table rounded to MindSpore ``dtype``: float32 storage of bf16 values, float16, or float32."""
    v32 = np.asarray(values, dtype=np.float32)
    if dtype == ms.bfloat16:
        return round_bf16_np(v32)
    if dtype == ms.float16:
        return v32.astype(np.float16)
    return v32


BF16_SPLIT_CONSTANT = 65537.0  # 2**16 + 1: Veltkamp split keeping 24 - 16 = 8 significant bits


def round_to_bf16_split(x):
    """float32 ``x`` rounded to the nearest bf16 value (ties to even), staying float32.

    Veltkamp's splitting ``g = x·(2^16+1); hi = g + (x - g)`` in IEEE float32 arithmetic. It equals
    ``x.astype(bfloat16).astype(float32)`` for every normal float with ``|x| < 2.6e33`` (checked exhaustively over
    all 2^31 non-negative float32 bit patterns in numpy, and against MindSpore's cast in the tests); subnormals
    (``|x| < 1.2e-38``) may differ by less than 1e-38. Three elementwise ops are ~4x cheaper on MindSpore's CPU
    backend than the two casts, whose kernel launch alone costs ~0.4 ms.
    """
    g = x * BF16_SPLIT_CONSTANT
    return g + (x - g)


def round_to_bf16_cast(x):
    """The same rounding through ``ops.cast`` to bfloat16 and back (reference for ``round_to_bf16_split``)."""
    return x.astype(ms.bfloat16).astype(ms.float32)


FP32 = Numerics("fp32", ms.float32, "float32")
FP16 = Numerics("fp16", ms.float16, "float16")
BF16 = Numerics("bf16", ms.bfloat16, "bfloat16")
BF16_EMULATED = Numerics("bf16-emulated", ms.float32, "bfloat16", emulate_bf16=True)
_BY_LABEL = {n.label: n for n in (FP32, FP16, BF16, BF16_EMULATED)}


def precision_label(precision: str, device: str) -> str:
    """What a requested precision actually runs as on ``device``: "bf16" on CPU/GPU -> "bf16-emulated"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
    dev = normalize_device(device)
    if precision == "bf16":
        return "bf16" if dev in _NATIVE_BF16_DEVICES else "bf16-emulated"
    return precision


def numerics_for(precision: str, device: str = "CPU") -> Numerics:
    return _BY_LABEL[precision_label(precision, device)]


def normalize_device(device: str) -> str:
    names = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend", "npu": "Ascend"}
    key = str(device).split(":")[0].strip().lower()
    if key not in names:
        raise ValueError(f"unknown device {device!r}; use CPU, GPU or Ascend")
    return names[key]


def set_precision(cell, precision: str, device: str = "CPU") -> Numerics:
    """Cast ``cell``'s parameters to ``precision``'s activation dtype (values rounded to it) and record the
    ``Numerics`` as ``cell.numerics``. Lazily initialised parameters (``no_init_parameters``) only change dtype."""
    numerics = numerics_for(precision, device)
    dtype = numerics.activation_dtype
    for _, param in cell.parameters_and_names():
        if param.has_init:
            param.set_dtype(dtype)
            continue
        if param.dtype == dtype:
            continue  # already there: a round trip would only copy the values (3 transient copies)
        data = param.asnumpy().astype(np.float32) if param.dtype != ms.bfloat16 else \
            param.astype(ms.float32).asnumpy()
        param.set_dtype(dtype)
        param.set_data(Tensor(round_table(data, dtype)).astype(dtype))
    object.__setattr__(cell, "numerics", numerics)
    return numerics
