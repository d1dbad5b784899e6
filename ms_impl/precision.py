"""Precisions of the MindSpore port and the one rounding helper that materialises activations.

``fp32`` and ``fp16`` run natively on every device (MindSpore's CPU kernels have fp16). ``bf16`` runs natively
where the device has bf16 kernels (Ascend). MindSpore 2.10 on CPU has no bf16 matmul, softmax, exp, sum or
rsqrt, so on CPU ``bf16`` becomes **``bf16-emulated``**: parameters are stored as float32 holding bf16 values,
every op computes in float32, and the result is rounded to bf16 (round-to-nearest-even; ``round_to_bf16_split``,
bit-identical to ``ops.cast`` to bfloat16 and back but cheaper) exactly where PyTorch's bf16 model materialises a
bf16 tensor: parameters, Linear/Conv outputs, LayerNorm outputs, each elementwise step of the modulation and
residual adds, GELU/SiLU outputs, attention outputs (torch's CPU math SDPA computes bf16 attention in float32 and
rounds once), the RoPE cos/sin tables and products, and the mask biases. Against torch bf16 on CPU this is
bit-exact except for rare one-ULP flips where the two libraries' float32 accumulation orders straddle a bf16
rounding boundary.

The modeling code calls ``numerics(x)`` ("materialise x in the activation dtype") at those points; for native
precisions it is the identity (MindSpore's own kernels already produce the dtype), so the calls cost nothing
and the file reads the same for every precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np

from parity.dtypes import round_to_bf16 as round_bf16_np
from parity.errors import ParityError

PRECISIONS = ("fp32", "fp16", "bf16", "bf16-emulated")
_NATIVE_BF16_DEVICES = ("Ascend",)


@dataclass(frozen=True)
class Numerics:
    """How activations are represented: ``dtype`` is what MindSpore computes in, ``logical`` what the values are."""

    label: str            # "fp32" | "fp16" | "bf16" | "bf16-emulated"
    dtype: object         # mindspore dtype of parameters and activations
    logical: str          # dtype name of the values ("float32", "float16", "bfloat16")
    emulate_bf16: bool = False

    def __call__(self, x):
        """Materialise ``x`` in the activation dtype (bf16 rounding under emulation, identity otherwise)."""
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
        v32 = np.asarray(values, dtype=np.float32)
        if self.logical == "bfloat16":
            return round_bf16_np(v32)  # float32 storage of bf16 values (emulated and native alike)
        if self.logical == "float16":
            return v32.astype(np.float16)
        return v32

    @property
    def kernel_dtype(self):
        """dtype attention kernels are fed with (bf16 emulation feeds real bf16 to a bf16 kernel)."""
        return ms.bfloat16 if self.logical == "bfloat16" else self.dtype


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
    if precision not in ("fp32", "fp16", "bf16", "bf16-emulated"):
        raise ParityError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
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
        raise ParityError(f"unknown device {device!r}; use CPU, GPU or Ascend")
    return names[key]
