"""Generic probe capture on a MindSpore model, driven by ``parity.probemap.CaptureSpec`` (each item's ``capture``).

``MsCapture(model, specs, on_probe)`` is the context manager of ``parity.capture_common.CaptureBase`` for
``mindspore.nn.Cell`` models (PyNative mode only: MindSpore runs Cell hooks there); hooks bind arguments to
``cell.construct``. Values are copied to numpy — floating point as float32 (float16/bfloat16 convert exactly),
other dtypes as they are — and handed to ``on_probe(name, array, dtype_name)``; ``dtype_name`` comes from the
``dtype_name`` callable given to ``MsCapture`` (default: the tensor's own dtype), which lets a harness report
emulated-bf16 values as ``"bfloat16"``.

mindspore is imported here and only here within ``parity``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

import mindspore as ms
from mindspore import nn

from parity.capture_common import MISSING, CaptureBase, OnProbe
from parity.errors import ParityError
from parity.probemap import CaptureItem

_DTYPE_NAMES = {
    ms.float64: "float64", ms.float32: "float32", ms.float16: "float16", ms.bfloat16: "bfloat16",
    ms.int64: "int64", ms.int32: "int32", ms.int16: "int16", ms.int8: "int8", ms.uint8: "uint8",
    ms.bool_: "bool",
}


def module_paths(model: nn.Cell) -> set[str]:
    """Dotted names of all cells ("" = the root), as in ``cells_and_names()``."""
    return {name for name, _ in model.cells_and_names()}


def dtype_name(dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).lower())


def tensor_dtype_name(value: Any) -> str:
    return dtype_name(value.dtype) if isinstance(value, ms.Tensor) else str(np.asarray(value).dtype)


def to_numpy(value: Any) -> np.ndarray:
    """Numpy copy of a tensor (floating -> float32, exact for float16/bfloat16) or scalar."""
    if isinstance(value, ms.Tensor):
        if value.dtype in (ms.bfloat16, ms.float16):
            value = value.astype(ms.float32)
        arr = np.array(value.asnumpy(), copy=True)
        return arr.astype(np.float32) if arr.dtype.kind == "f" and arr.dtype != np.float32 else arr
    arr = np.array(value)
    if arr.dtype == object:
        raise TypeError(f"cannot convert a {type(value).__name__} to an array")
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr


class MsCapture(CaptureBase):
    """Context manager capturing ``specs`` from ``model`` into ``on_probe(name, array, dtype_name)``."""

    framework = "mindspore"
    forward_name = "construct"
    module_word = "cell"

    def __init__(self, model: nn.Cell, specs: list[CaptureItem], on_probe: OnProbe,
                 dtype_name: Callable[[Any], str] | None = None):
        super().__init__(model, specs, on_probe, dtype_name or tensor_dtype_name)

    def _check_can_capture(self) -> None:
        if ms.get_context("mode") != ms.PYNATIVE_MODE:
            raise ParityError("MsCapture needs PyNative mode (MindSpore runs Cell hooks only there); "
                              "call ms.set_context(mode=ms.PYNATIVE_MODE)")

    def _named_submodules(self) -> dict[str, nn.Cell]:
        return dict(self.model.cells_and_names())

    def _is_submodule(self, value: Any) -> bool:
        return isinstance(value, nn.Cell)

    def _to_numpy(self, value: Any) -> tuple[np.ndarray, str]:
        return to_numpy(value), self.dtype_name(value)

    def _scalar_value(self, value: Any) -> Any:
        if isinstance(value, ms.Tensor):
            return value.asnumpy().item() if value.size == 1 else MISSING
        return value
