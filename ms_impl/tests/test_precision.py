"""Precision labels and the bf16 emulation: exact rounding, rounded at the boundaries, reported as emulated."""

from __future__ import annotations

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from ms_impl import harness
from ms_impl.precision import numerics_for, precision_label, round_to_bf16_cast, round_to_bf16_split
from ms_impl.tests.helpers import family_items, is_bf16_valued, make_inputs, numpy_weights, tiny_config
from parity.dtypes import round_to_bf16
from parity.errors import ParityError


def test_precision_labels():
    assert precision_label("bf16", "CPU") == "bf16-emulated"
    assert precision_label("bf16", "GPU") == "bf16-emulated"
    assert precision_label("bf16", "Ascend") == "bf16"
    assert precision_label("fp32", "CPU") == "fp32"
    assert precision_label("fp16", "cpu") == "fp16"
    assert harness.precision_label("bf16", "CPU") == "bf16-emulated"
    with pytest.raises(ValueError, match="unknown precision"):
        precision_label("int8", "CPU")
    with pytest.raises(ValueError, match="unknown device"):
        precision_label("fp32", "TPU")
    with pytest.raises(ParityError, match="unknown device"):
        harness.precision_label("fp32", "TPU")


def test_bf16_rounding_is_exact_round_to_nearest_even():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=1 << 18, dtype=np.uint64).astype(np.uint32)
    bits[:4096] = (bits[:4096] & 0xFFFF0000) | 0x8000            # exact ties
    bits[4096:8192] = (bits[4096:8192] & 0xFFFF0000) | 0x7FFF    # just below a tie
    x = bits.view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) > 1.2e-38) & (np.abs(x) < 2e33)]   # normal range of the activations
    x = np.concatenate([x, np.float32([0.0, -0.0, 1.0, -10000.0, -9980.0, 999.0, 1.00390625, 1.01171875])])
    t = Tensor(x)
    split = round_to_bf16_split(t).asnumpy()
    np.testing.assert_array_equal(split, round_to_bf16(x))
    np.testing.assert_array_equal(round_to_bf16_cast(t).asnumpy(), split)
    assert list(split[-5:]) == [-9984.0, -9984.0, 1000.0, 1.0, 1.015625]   # ties go to even


def test_numerics_scalars_and_tables():
    nx = numerics_for("bf16", "CPU")
    assert nx.label == "bf16-emulated" and nx.emulate_bf16 and nx.dtype == ms.float32 and nx.logical == "bfloat16"
    assert nx.scalar(-9980.0) == -9984.0 and nx.scalar(-10000.0) == -9984.0
    assert numerics_for("fp16").scalar(-9980.0) == -9984.0 and numerics_for("fp16").scalar(-10000.0) == -10000.0
    assert numerics_for("fp32").scalar(-9980.0) == -9980.0
    assert nx.kernel_dtype == ms.bfloat16 and numerics_for("fp16").kernel_dtype == ms.float16
    assert nx.activation_dtype == ms.bfloat16 and numerics_for("fp32").activation_dtype == ms.float32


def test_bf16_emulated_model_rounds_at_its_boundaries():
    cfg = tiny_config(num_layers=3)
    model = harness.build_model(cfg, numpy_weights(cfg, 1), "bf16")
    assert model.numerics.label == "bf16-emulated"
    for name, p in model.parameters_and_names():
        assert p.dtype == ms.bfloat16, name
    probes = {}
    specs = family_items(cfg["num_layers"])
    out = harness.capture(model, make_inputs(seed=2), specs, lambda n, a, d: probes.__setitem__(n, (a, d)))
    assert is_bf16_valued(out)
    for name, (arr, dtype) in probes.items():
        if name.endswith("_input"):
            continue  # inputs are as given (float32 latents/timestep/masks) except the cast text
        assert dtype == "bfloat16", name
        assert is_bf16_valued(arr), name
    assert probes["encoder_hidden_states_input"][1] == "bfloat16"
    assert probes["hidden_states_input"][1] == "float32" and probes["timestep_input"][1] == "float32"
    # -9980 Skiparse padding and -10000 masks as bf16 holds them
    assert set(np.unique(probes["attention_mask_sparse_4_False"][0])) <= {0.0, -9984.0}


def test_bf16_emulated_differs_from_fp32():
    cfg = tiny_config(num_layers=2)
    w = numpy_weights(cfg, 1)
    inputs = make_inputs(seed=3)
    a = harness.forward(harness.build_model(cfg, w, "fp32"), inputs)
    b = harness.forward(harness.build_model(cfg, w, "bf16"), inputs)
    assert 1e-4 < np.abs(a - b).max() < 0.1


def test_cpu_bf16_elementwise_ops_round_like_torch():
    """The emulation's premise: MindSpore's CPU bf16 add/sub/mul (and ``1 + x``, ``x / 1``) give the float32 result
    rounded to nearest even, which is what torch's bf16 ops give, over bf16 values of every magnitude (results in
    the normal range: once MindSpore has set the CPU's flush-to-zero modes, subnormals read and come out as 0)."""
    rng = np.random.default_rng(5)
    bits = (rng.integers(0, 1 << 16, size=(2, 1 << 16), dtype=np.uint32) << 16)
    a, b = bits.view(np.float32)
    tiny = np.finfo(np.float32).tiny
    keep = np.isfinite(a) & np.isfinite(b) & (np.abs(a) < 1e30) & (np.abs(b) < 1e30) & (np.abs(a) >= tiny) & (
        np.abs(b) >= tiny)
    a, b = a[keep], b[keep]
    ta, tb = Tensor(a).astype(ms.bfloat16), Tensor(b).astype(ms.bfloat16)
    with np.errstate(over="ignore"):
        cases = (((ta + tb), a + b), ((ta - tb), a - b), ((ta * tb), a * b), ((1 + tb), 1 + b), ((ta / 1.0), a))
    for got, want in cases:
        want = round_to_bf16(want.astype(np.float32))
        normal = (want == 0) | (np.abs(want) >= tiny)
        np.testing.assert_array_equal(got.astype(ms.float32).asnumpy()[normal], want[normal])
