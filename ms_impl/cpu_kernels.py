"""The CPU kernel policy of the MindSpore port (``CpuKernels``), installed by the CPU build.

MindSpore 2.10's CPU backend computes the model's values correctly with its own ops, but some of them are slow,
hold large temporaries in its never-shrinking memory pool, or do not exist in bfloat16. Each substitute below
gives the same values as the op it replaces (tested bit-identical, or within the stated bound):

* **Linear** as a 2-D ``MatMul(transpose_b=True)`` against the weight as stored, plus the bias explicitly
  broadcast. ``ops.dense`` copies Wᵀ into the pool on every call (85 MB for a released FFN weight); the 2-D matmul
  is 2-4x faster at the released FFN shapes and gives the same values from 16 rows on (closer to float64 below).
* **Explicit broadcast** (``expand_as``): the small operand tiled to the activation's shape before an elementwise
  op. The CPU kernels broadcast through per-element int64 offset tables: (B, S, D) * (B, 1, D) is ~10-25x slower
  than ``ops.tile`` + a same-shape op and holds ~4 extra (B, S, D) buffers (+0.8 GB per op at 21,120 tokens).
* **Patch embedding** (stride = kernel convolution) as one matmul over channels-last patches ``(p, q, c)``, which
  rounds exactly like torch's CPU convolution in fp32 (MindSpore's Conv2D matches 40% of its outputs and takes
  ~100-180 ms for the bench's latent; the matmul ~5 ms).
* **tanh-GELU** as ``x·sigmoid(2u)`` (the same function), ``u = β(x + κx³)`` formed in float32 as torch forms it,
  on MindSpore's fp32 sigmoid: within 6e-7 of torch's kernel (torch's own distance from float64: 4e-7).
  ``ops.gelu`` is 5-6x slower and its fp32 ``tanh`` up to 1e-4 off. ``PRECISE_GELU = True`` takes the sigmoid in
  float64 (within one fp32 ULP of torch, ~3x slower: a single-threaded fp64 kernel).
* **bfloat16**: the CPU backend has no bf16 matmul, convolution, GELU, SiLU or dropout, so these compute in float32 and round
  their output to bf16 once, as torch's CPU kernels do (``bf16_in_float32``). bf16 elementwise ops (add, mul, sub)
  exist and round exactly like torch's; tiling does not, so bf16 operands broadcast implicitly.
"""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import ops

from ms_impl.attention import tile_to
from ms_impl.kernels import Kernels

GELU_BETA, GELU_KAPPA = math.sqrt(2.0 / math.pi), 0.044715
# True: the tanh-GELU's sigmoid in float64 (within 1 fp32 ULP of torch's kernel, ~3x slower)
PRECISE_GELU = False
GELU_CHUNK_ELEMENTS = 8 * 1024 * 1024  # elements per call (PRECISE_GELU's float64 temporaries: 2 x 64 MiB)
_TILED_DTYPES = (ms.float16, ms.float32, ms.float64)  # dtypes with a CPU Tile kernel


class CpuKernels(Kernels):
    """MindSpore's CPU backend: see the module docstring. ``explicit_broadcast=False`` keeps the implicit
    broadcasting ops (the same values, for tests)."""

    bf16_in_float32 = True

    def __init__(self, explicit_broadcast: bool = True):
        super().__init__()
        self.explicit_broadcast = explicit_broadcast
        self._matmul_nt = ops.MatMul(transpose_b=True)  # x (N, in) · weight (out, in)ᵀ

    def __repr__(self) -> str:
        return f"CpuKernels(explicit_broadcast={self.explicit_broadcast})"

    def expand_as(self, small, like):
        if not self.explicit_broadcast or small.dtype not in _TILED_DTYPES or tuple(small.shape) == tuple(like.shape):
            return small
        return tile_to(small, like.shape)

    def linear(self, x, weight, bias):
        if self.upcasts(x):
            return self.linear(x.astype(ms.float32), self.float32(weight), self.float32(bias)).astype(x.dtype)
        if self.explicit_broadcast and x.dtype == ms.float32:
            y = self._matmul_nt(x.reshape(-1, x.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[0])
            return y if bias is None else y + self.expand_as(bias, y)
        if bias is not None and self.explicit_broadcast and x.dtype == ms.float16:
            y = ops.dense(x, weight, None)  # + bias, explicitly broadcast: bit-identical to the fused call
            return y + self.expand_as(bias, y)
        return ops.dense(x, weight, bias)

    def gelu(self, x, approximate: str = "none"):
        if self.upcasts(x):
            return self.gelu(x.astype(ms.float32), approximate).astype(x.dtype)
        if approximate == "tanh" and x.dtype == ms.float32:
            return gelu_tanh_sigmoid(x)
        return ops.gelu(x, approximate=approximate)

    def conv2d(self, proj, x):
        """The stride = kernel convolution as a matmul over non-overlapping patches, flattened channels-last."""
        if self.upcasts(x):
            return self.conv2d(proj, x.astype(ms.float32)).astype(x.dtype)
        n, c, h, w = x.shape
        p = proj.kernel_size[0]
        hp, wp = h // p, w // p
        x = x[..., :hp * p, :wp * p]                                       # "valid": drop a partial patch
        patches = x.reshape(n, c, hp, p, wp, p).transpose(0, 2, 4, 3, 5, 1).reshape(-1, p * p * c)
        y = self.patch_rows(patches, self.patch_weight(proj, x.dtype), proj.bias)   # (n hp wp) D
        return y.reshape(n, hp, wp, -1).transpose(0, 3, 1, 2)             # n D hp wp

    @staticmethod
    def patch_weight(proj, dtype):
        """``proj``'s (D, C, p, q) weight as (D, p·q·C), the channels-last order of the patches."""
        weight = proj.weight if proj.weight.dtype == dtype else proj.weight.astype(dtype)
        return weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)

    def patch_rows(self, patches, weight, bias):
        """Rows of channels-last ``(p, q, c)`` patches times the patch weight, plus the bias."""
        y = ops.dense(patches, weight, None)
        if bias is None:
            return y
        return y + self.expand_as(bias if bias.dtype == y.dtype else bias.astype(y.dtype), y)


def gelu_tanh_sigmoid(x):
    """tanh-GELU ``½x(1 + tanh u)`` as ``x·sigmoid(2u)`` on float32 ``x``, in row chunks of at most
    ``GELU_CHUNK_ELEMENTS`` elements (bounded temporaries, the same values)."""
    rows = x.reshape(-1, x.shape[-1])
    step = max(1, GELU_CHUNK_ELEMENTS // max(1, x.shape[-1]))
    if rows.shape[0] <= step:
        return _gelu_tanh_sigmoid_rows(x)
    out = ops.zeros(rows.shape, x.dtype)
    for r0 in range(0, rows.shape[0], step):
        out[r0:r0 + step] = _gelu_tanh_sigmoid_rows(rows[r0:r0 + step])
    return out.reshape(x.shape)


def _gelu_tanh_sigmoid_rows(x):
    two_u = (2 * GELU_BETA) * (x + GELU_KAPPA * (x * x * x))   # 2u as torch forms u, scaled by 2 (exact)
    if not PRECISE_GELU:
        return x * ops.sigmoid(two_u)
    return x * ops.sigmoid(two_u.astype(ms.float64)).astype(ms.float32)
