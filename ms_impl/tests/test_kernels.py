"""The kernel seam: the CPU build installs ``CpuKernels`` process-wide; MindSpore's own kernels (``Kernels``, what
runs on Ascend) give the same model within a stated bound, so the code validated on CPU is the code that runs there
except behind ``self.kernels``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ms_impl import harness
from ms_impl.cpu_kernels import CpuKernels
from ms_impl.kernels import Kernels, default_kernels, use_kernels
from parity.store import open_dump

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "fixtures", "reference")


def test_the_cpu_build_installs_the_cpu_kernels_and_a_model_can_have_its_own():
    assert isinstance(default_kernels(), CpuKernels)
    d = open_dump(os.path.join(FIXTURES, "tiny-sparse-fp32"))
    model = harness.build_model(d.config, d.load_weights(), d.precision)
    block = model.transformer_blocks[0]
    assert block.kernels is default_kernels() and block.attn1.processor.rope.kernels is default_kernels()
    own = Kernels()
    use_kernels(model, own)
    assert block.ff.net[2].kernels is own and block.attn1.processor.rope.kernels is own
    use_kernels(model, None)
    assert block.kernels is default_kernels()


@pytest.mark.parametrize("case, atol", [("padded-batch-fp32", 2e-6), ("tiny-32-fp32", 2e-6),
                                        ("padded-batch-bf16", 2 ** -6)])
def test_mindspore_own_kernels_give_the_cpu_kernels_model(case, atol):
    """fp32: within 2e-6 at output scale ~2.5 (7e-7 measured: the tanh-GELU and the patch convolution round
    differently); bf16 (float32 kernels rounded to bf16, the path a device without bf16 kernels takes): within one
    bf16 ULP at that scale (identical on these fixtures)."""
    d = open_dump(os.path.join(FIXTURES, case))
    model = harness.build_model(d.config, d.load_weights(), d.precision)
    cpu = harness.forward(model, d.inputs())
    use_kernels(model, Kernels(bf16_in_float32=True))
    np.testing.assert_allclose(harness.forward(model, d.inputs()), cpu, rtol=0, atol=atol)


def test_the_model_and_its_machinery_import_no_harness():
    """Models must not know they are observed: the modeling file and everything it and the machinery import."""
    code = ("import sys; import ms_impl.modeling_opensora, ms_impl.streaming, ms_impl.cpu_kernels; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('parity', 'torch')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, GLOG_v="3"))


def test_training_mode_dropout_runs_in_bf16_through_the_kernel_policy():
    """The CPU backend has no bf16 Dropout kernel: the policy drops in float32 and rounds back (the values 0 and
    1/(1-p) are exact in bf16); in eval mode the cell is the identity."""
    import mindspore as ms
    from ms_impl.modeling_opensora import Dropout

    cell = Dropout(p=0.5)
    x = ms.Tensor(np.ones((64, 64), np.float32)).astype(ms.bfloat16)
    cell.set_train(False)
    assert cell(x) is x
    cell.set_train(True)
    y = cell(x)
    assert y.dtype == ms.bfloat16
    values = y.astype(ms.float32).asnumpy()
    assert set(np.unique(values)) == {0.0, 2.0} and 0.3 < (values == 0).mean() < 0.7
