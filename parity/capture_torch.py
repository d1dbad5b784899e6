"""Generic probe capture on a PyTorch model, driven by ``parity.probemap.CaptureSpec`` (no model knowledge here).

``TorchCapture(model, specs, on_probe)`` is the context manager of ``parity.capture_common.CaptureBase`` for
``torch.nn.Module`` models, reading each spec's ``capture``: hooks bind arguments to ``module.forward``, and
a ``select`` step ``0`` on an output object with a ``.sample`` attribute (like diffusers' model outputs) takes
``.sample``. Values are detached and copied to CPU numpy (bfloat16 as exact float32 with dtype name
``"bfloat16"``) before ``on_probe(name, array, dtype_name)`` sees them.

torch is imported here and only here: the rest of ``parity`` stays importable without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from parity.capture_common import MISSING, CaptureBase


def module_paths(model: torch.nn.Module) -> set[str]:
    """Dotted names of all submodules ("" = the root), as in ``named_modules()``."""
    return {name for name, _ in model.named_modules()}


def dtype_name(dtype: torch.dtype) -> str:
    """Project dtype name of a torch dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return str(dtype).replace("torch.", "")


def to_numpy(value: Any) -> tuple[np.ndarray, str]:
    """A detached CPU numpy copy of a tensor (or scalar) and its dtype name; bfloat16 becomes exact float32."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        name = dtype_name(t.dtype)
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        arr = t.to("cpu").numpy().copy()
        return arr, name
    arr = np.array(value)
    if arr.dtype == object:
        raise TypeError(f"cannot convert a {type(value).__name__} to an array")
    return arr, str(arr.dtype)


class TorchCapture(CaptureBase):
    """Context manager capturing ``specs`` (``parity.probemap.CaptureItem``s) from ``model`` into ``on_probe``."""

    framework = "torch"
    forward_name = "forward"
    module_word = "module"

    def _named_submodules(self) -> dict[str, torch.nn.Module]:
        return dict(self.model.named_modules())

    def _is_submodule(self, value: Any) -> bool:
        return isinstance(value, torch.nn.Module)

    def _to_numpy(self, value: Any) -> tuple[np.ndarray, str]:
        arr, name = to_numpy(value)
        return arr, (self.dtype_name(value) if self.dtype_name is not None else name)

    def _scalar_value(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.item() if value.numel() == 1 else MISSING
        return value

    def _select_step(self, value: Any, step: Any) -> Any:
        if hasattr(value, "sample") and not isinstance(value, (tuple, list, dict, torch.Tensor)) and step == 0:
            return value.sample
        return value[step]
