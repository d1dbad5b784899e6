"""The MindSpore memory machinery (``ms_impl.streaming``) against the plain model: off until switched on, and the
same values when forced onto every block of the committed fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mindspore as ms

from ms_impl import harness, streaming
from ms_impl.cpu_kernels import CpuKernels
from ms_impl.kernels import use_kernels
from ms_impl.modeling_opensora import Linear, OpenSoraT2V_v1_3
from ms_impl.tests.helpers import make_inputs, tiny_config
from parity.store import open_dump

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "reference")
FORCED = dict(min_elements=0, chunk_tokens=16, group_heads=1, host_buffers=True)


def _fixture_model(case: str):
    d = open_dump(os.path.join(FIXTURES, case))
    return d, harness.build_model(d.config, d.load_weights(), d.precision)


def test_nothing_is_switched_on_by_default_and_the_harness_says_what_it_switched_on():
    model = OpenSoraT2V_v1_3.from_config(tiny_config())
    assert streaming.describe(model) == []
    assert all("construct" not in b.__dict__ for b in model.transformer_blocks)
    _, built = _fixture_model("tiny-sparse-fp32")
    lines = streaming.describe(built)
    assert len(lines) == 2 and "feed-forward" in lines[0] and "4,194,304" in lines[1]


def test_the_plugin_announces_what_its_build_switched_on():
    """``describe()["notes"]`` (the report's notes): the streaming lines and the kernel policy, after a build."""
    from ms_impl.plugin import make_plugin
    from parity.runner import ModelRun

    d = open_dump(os.path.join(FIXTURES, "tiny-sparse-fp32"))
    plugin = make_plugin()
    assert "notes" not in plugin.describe()
    model = ModelRun(plugin, d.family, d.config).build(d.load_weights(), d.precision)
    notes = plugin.describe()["notes"]
    assert notes[:2] == [f"ms_impl.streaming: {line}" for line in streaming.describe(model)]
    assert "CpuKernels(explicit_broadcast=True)" in notes[2] and len(notes) == 3


@pytest.mark.parametrize("case", ["padded-batch-fp32", "tiny-sparse-bf16"])
def test_token_streamed_blocks_are_bit_identical(case):
    """The real-size block path (head-group keys/values of all tokens, then token chunks updated in place), forced
    on the fixtures: B=2, masked video, ragged text, Skiparse single and group skip with padding, bf16."""
    d, model = _fixture_model(case)
    streaming.disable_token_streaming(model)
    whole = harness.forward(model, d.inputs())
    streaming.enable_token_streaming(model, **FORCED)
    np.testing.assert_array_equal(harness.forward(model, d.inputs()), whole)


def test_streamed_blocks_drop_all_zero_biases_bit_identically(monkeypatch):
    """Nothing masked or padded: the streamed path attends without the (all-zero) biases, and gives the unstreamed
    values exactly."""
    d, model = _fixture_model("tiny-sparse-fp32")
    inputs = dict(d.inputs())
    inputs["attention_mask"] = np.ones_like(inputs["attention_mask"])
    inputs["encoder_attention_mask"] = np.ones_like(inputs["encoder_attention_mask"])
    whole = harness.forward(model, inputs)
    dropped = []
    real = streaming.zeros_to_none
    monkeypatch.setattr(streaming, "zeros_to_none", lambda bias: (dropped.append(real(bias) is None), real(bias))[1])
    streaming.enable_token_streaming(model, min_elements=0, chunk_tokens=16, host_buffers=True)
    np.testing.assert_array_equal(harness.forward(model, inputs), whole)
    assert dropped and all(dropped)


def test_token_streamed_blocks_with_an_uneven_last_head_group():
    """3 heads in groups of 2: the last head group is smaller (its group buffers are re-allocated), with Skiparse
    padding (45 tokens) and ragged text; bit-identical to the unstreamed blocks."""
    inputs = make_inputs(seed=3, frames=3, height=10, width=6)
    model = OpenSoraT2V_v1_3.from_config(tiny_config(num_layers=4, heads=3, head_dim=24))
    whole = harness.forward(model, inputs)
    assert np.abs(whole).max() > 0
    streaming.enable_token_streaming(model, min_elements=0, chunk_tokens=16, group_heads=2, host_buffers=True)
    np.testing.assert_array_equal(harness.forward(model, inputs), whole)


def test_streaming_refuses_another_attention_backend():
    d = open_dump(os.path.join(FIXTURES, "tiny-sparse-bf16"))
    model = harness.build_model(d.config, d.load_weights(), d.precision, attention_backend="ascend-emulated")
    assert not any("token-streamed" in line for line in streaming.describe(model))  # the harness: portable only
    streaming.enable_token_streaming(model, **FORCED)
    with pytest.raises(ValueError, match="portable attention"):
        harness.forward(model, d.inputs())


def test_explicit_broadcast_and_ffn_chunking_keep_the_values():
    d, model = _fixture_model("padded-batch-bf16")
    explicit = harness.forward(model, d.inputs())
    use_kernels(model, CpuKernels(explicit_broadcast=False))
    np.testing.assert_array_equal(harness.forward(model, d.inputs()), explicit)
    use_kernels(model, None)
    streaming.enable_feed_forward_chunking(model, 32 * 192)   # forces token chunks of 32
    chunked = harness.forward(model, d.inputs())
    np.testing.assert_allclose(chunked, explicit, rtol=0, atol=2 ** -6)  # bf16: at most an ULP flip here and there


@pytest.mark.parametrize("rows, d_in, heads", [(256, 2304, 24), (256, 576, 6), (7, 96, 3), (1, 48, 2)])
def test_linear_rows_are_bit_identical_to_a_slice(rows, d_in, heads):
    """Streamed self-attention projects one head group at a time (``linear_rows``); every group's output features
    must be exactly those of the whole projection, or streaming would change the model."""
    rng = np.random.default_rng(0)
    linear = Linear(d_in, d_in)
    linear.weight.set_data(ms.Tensor(rng.standard_normal((d_in, d_in), dtype=np.float32)))
    linear.bias.set_data(ms.Tensor(rng.standard_normal(d_in, dtype=np.float32)))
    x = ms.Tensor(rng.standard_normal((1, rows, d_in), dtype=np.float32))
    whole = linear(x).asnumpy()
    step = d_in // heads
    for c0 in range(0, d_in, step):
        np.testing.assert_array_equal(streaming.linear_rows(linear, x, c0, c0 + step).asnumpy(),
                                      whole[..., c0:c0 + step],
                                      err_msg=f"output features {c0}:{c0 + step} of a ({rows}, {d_in}) input")
