"""The kernel seam of the MindSpore port: the few operations whose best implementation depends on the device.

The modeling code calls ``self.kernels.<op>`` for exactly these: a Linear's matmul and bias, the tanh/erf GELU,
SiLU, the patch-embedding convolution, training-mode dropout, and ``expand_as`` (a small operand broadcast against
an activation, e.g. the adaLN modulation or a RoPE table). Everything else is plain MindSpore in the model file, the same on every device.

``Kernels`` (this module) is MindSpore's own ops: what runs on Ascend, where every kernel exists in every dtype.
``ms_impl.cpu_kernels.CpuKernels`` is what the CPU build installs (``ms_impl.harness.setup_context``): substitutes
that are faster on MindSpore's CPU backend or that it lacks (see there). Install a policy for the whole process with
``set_default_kernels`` (every cell of the port that has no policy of its own) or for one model with
``use_kernels(model, kernels)``.

Precision: with ``bf16_in_float32`` a kernel given bfloat16 tensors computes in float32 and rounds its output to
bfloat16 once, as PyTorch's CPU kernels do; devices without bf16 kernels need it (the CPU kernels always do it).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import ops


class Kernels:
    """MindSpore's own kernels (Ascend; any device with every kernel in every dtype)."""

    bf16_in_float32 = False

    def __init__(self, bf16_in_float32: bool | None = None):
        if bf16_in_float32 is not None:
            self.bf16_in_float32 = bf16_in_float32

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bf16_in_float32={self.bf16_in_float32})"

    # ---- precision: float32 compute for bf16 tensors where the device has no bf16 kernel -------------------------
    def upcasts(self, x) -> bool:
        return self.bf16_in_float32 and x.dtype == ms.bfloat16

    @staticmethod
    def float32(x):
        return None if x is None else x.astype(ms.float32)

    # ---- the seam ------------------------------------------------------------------------------------------------
    def linear(self, x, weight, bias):
        """torch ``F.linear``: ``x · weightᵀ + bias`` (weight (out, in) as stored)."""
        if self.upcasts(x):
            return ops.dense(x.astype(ms.float32), self.float32(weight), self.float32(bias)).astype(x.dtype)
        return ops.dense(x, weight, bias)

    def gelu(self, x, approximate: str = "none"):
        if self.upcasts(x):
            return ops.gelu(x.astype(ms.float32), approximate=approximate).astype(x.dtype)
        return ops.gelu(x, approximate=approximate)

    def silu(self, x):
        if self.upcasts(x):
            return ops.silu(x.astype(ms.float32)).astype(x.dtype)
        return ops.silu(x)

    def conv2d(self, proj, x):
        """``proj(x)`` for an ``nn.Conv2d`` cell ``proj`` (NCHW)."""
        if self.upcasts(x):
            y = ops.conv2d(x.astype(ms.float32), proj.weight.astype(ms.float32), stride=proj.stride[-2:],
                           pad_mode=proj.pad_mode)
            if proj.bias is not None:
                y = y + proj.bias.astype(ms.float32).reshape(1, -1, 1, 1)
            return y.astype(x.dtype)
        return proj(x)

    def dropout(self, dropout, x):
        """``dropout(x)`` for a training-mode MindSpore dropout ``dropout`` (a cell's construct)."""
        if self.upcasts(x):
            return dropout(x.astype(ms.float32)).astype(x.dtype)
        return dropout(x)

    def expand_as(self, small, like):
        """``small`` ready to broadcast against ``like`` in an elementwise op: as it is (the op broadcasts)."""
        return small


_default = Kernels()


def default_kernels() -> Kernels:
    return _default


def set_default_kernels(kernels: Kernels) -> None:
    """The policy of every cell of the port without one of its own (``use_kernels``), process-wide."""
    global _default
    _default = kernels


def use_kernels(model, kernels: Kernels | None) -> None:
    """Give every cell of ``model`` (and its attention processors' RoPE) ``kernels``; None: the process default."""
    for _, cell in model.cells_and_names():
        targets = [cell]
        rope = getattr(getattr(cell, "processor", None), "rope", None)
        if rope is not None:
            targets.append(rope)
        for target in targets:
            if kernels is None:
                target.__dict__.pop("_kernels", None)
            elif hasattr(type(target), "kernels"):
                object.__setattr__(target, "_kernels", kernels)


class UsesKernels:
    """Mixin: ``self.kernels`` is the object's own policy (``use_kernels``) or the process default."""

    @property
    def kernels(self) -> Kernels:
        return self.__dict__.get("_kernels") or _default
