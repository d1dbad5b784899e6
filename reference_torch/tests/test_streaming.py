"""The reference's memory machinery (``reference_torch.streaming``) against the plain model: off until switched
on, and bit-identical when forced onto every call of the committed fixtures."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from parity.store import open_dump
from reference_torch import harness as H, streaming
from reference_torch.modeling_opensora import OpenSoraAttnProcessor2_0, OpenSoraT2V_v1_3
from reference_torch.tests.helpers import make_inputs, tiny_config

pytestmark = pytest.mark.torch
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "reference")


def _plain_and_harness_models(cfg, seed=0):
    weights = H.random_weights(cfg, seed)
    plain = OpenSoraT2V_v1_3.from_config(cfg).eval()
    plain.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return plain, H.build_model(cfg, weights, "fp32")


def test_nothing_is_switched_on_by_default_and_the_harness_says_what_it_switched_on():
    plain, built = _plain_and_harness_models(tiny_config())
    assert streaming.describe(plain) == []
    assert type(plain.transformer_blocks[0].attn1.processor) is not streaming.SlicedOpenSoraAttnProcessor
    lines = streaming.describe(built)
    assert len(lines) == 3 and "16,777,216 scores" in lines[0] and "33,554,432 elements" in lines[2]


@pytest.mark.parametrize("shape", [(2, 2, 300, 300, 24), (8, 3, 77, 80, 24), (1, 4, 513, 7, 32),
                                   (2, 2, 513, 513, 96), (4, 2, 45, 45, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_in_query_slices_is_bit_identical(shape, dtype):
    b, h, sq, sk, d = shape
    gen = torch.Generator().manual_seed(sq)
    q = torch.randn(b, sq, h, d, generator=gen).to(dtype).permute(0, 2, 1, 3)  # strided like the processor's
    k = torch.randn(b, h, sk, d, generator=gen).to(dtype)
    v = torch.randn(b, h, sk, d, generator=gen).to(dtype)
    bias = torch.zeros(b, h, 1, sk, dtype=dtype)
    bias[..., : max(1, sk // 4)] = -10000.0
    plain = OpenSoraAttnProcessor2_0()
    full = plain.scaled_dot_product_attention(q, k, v, bias)
    for budget in (1, 1000, b * h * sk * 33, b * h * sk * 100):
        sliced = streaming.SlicedOpenSoraAttnProcessor.replacing(plain, budget)
        assert torch.equal(sliced.scaled_dot_product_attention(q, k, v, bias), full), budget


def test_query_slices_bound_the_score_budget(monkeypatch):
    calls = []
    real = streaming._attention_rows

    def spy(q, k_t, v, mask, root_scale, scores, probs):
        calls.append(q.shape[0] * q.shape[1] * q.shape[2] * k_t.shape[-1])
        assert scores.numel() == probs.numel() == calls[-1]
        return real(q, k_t, v, mask, root_scale, scores, probs)

    monkeypatch.setattr(streaming, "_attention_rows", spy)
    q = torch.randn(1, 2, 4000, 24)
    sliced = streaming.SlicedOpenSoraAttnProcessor.replacing(OpenSoraAttnProcessor2_0(), 2 * 4000 * 500)
    sliced.scaled_dot_product_attention(q, q, q, None)
    assert len(calls) == 8 and max(calls) <= 2 * 4000 * 500


def test_full_model_with_forced_slicing_is_bit_identical():
    cfg = tiny_config()
    plain, model = _plain_and_harness_models(cfg)
    inputs = make_inputs(3, frames=4, height=12, width=10)  # S = 120 -> 30 per Skiparse sub-sequence
    full = H.forward(plain, inputs)
    streaming.enable_attention_slicing(model, 3000)
    np.testing.assert_array_equal(H.forward(model, inputs), full)


def test_ffn_token_chunking_is_bit_identical():
    plain, model = _plain_and_harness_models(tiny_config())
    x = torch.randn(300, 2, 48, generator=torch.Generator().manual_seed(0))
    calls = []
    with torch.no_grad():
        whole = plain.transformer_blocks[0].ff(x)
        streaming.enable_feed_forward_chunking(model, 64 * 192)  # 64 tokens x 192 inner per chunk
        ff = model.transformer_blocks[0].ff
        ff.net[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
        chunked = ff(x)
    assert torch.equal(chunked, whole) and chunked.shape == whole.shape
    assert calls == [64] * 9 + [600 - 9 * 64]


@pytest.mark.parametrize("case", ["padded-batch-fp32", "tiny-sparse-bf16"])
def test_token_streamed_blocks_are_bit_identical(case):
    """The real-size block path (head-group queries/keys/values of all tokens, then token chunks updated in place),
    forced on the fixtures: B=2, masked video, ragged text, Skiparse single and group skip with padding, bf16."""
    d = open_dump(os.path.join(FIXTURES, case))
    model = H.build_model(d.config, d.load_weights(), d.precision)
    whole = H.forward(model, d.inputs())
    streaming.enable_token_streaming(model, min_elements=0, chunk_tokens=16, group_heads=1)
    np.testing.assert_array_equal(H.forward(model, d.inputs()), whole)


def test_token_streamed_blocks_with_an_uneven_last_head_group():
    """3 heads in groups of 2 with Skiparse padding (45 tokens) and ragged text; bit-identical."""
    plain, model = _plain_and_harness_models(tiny_config(num_layers=4, heads=3, head_dim=24), seed=3)
    inputs = make_inputs(seed=3, frames=3, height=10, width=6)
    whole = H.forward(plain, inputs)
    assert np.abs(whole).max() > 0
    streaming.enable_token_streaming(model, min_elements=0, chunk_tokens=16, group_heads=2)
    np.testing.assert_array_equal(H.forward(model, inputs), whole)


def test_the_plugin_announces_what_its_build_switched_on():
    """``describe()["notes"]`` (the dump's and report's notes): one line per piece of machinery, after a build."""
    from parity.runner import ModelRun
    from reference_torch.plugin import make_plugin

    cfg = tiny_config()
    plugin = make_plugin()
    assert "notes" not in plugin.describe()
    model = ModelRun(plugin, "opensora_v13", cfg, side="reference").build(H.random_weights(cfg, 0), "fp32")
    assert plugin.describe()["notes"] == [f"reference_torch.streaming: {line} (bit-identical to the plain model)"
                                          for line in streaming.describe(model)]
    assert len(plugin.describe()["notes"]) == 3


def test_token_streaming_is_inference_only():
    _, model = _plain_and_harness_models(tiny_config(num_layers=1))
    streaming.enable_token_streaming(model, min_elements=0)
    tensors = H.to_torch_inputs(make_inputs(), tiny_config(num_layers=1))
    with pytest.raises(RuntimeError, match="inference-only"):
        model(**tensors)
    streaming.disable_token_streaming(model)
    assert not any("token-streamed" in line for line in streaming.describe(model))
    model(**tensors)


def test_the_model_and_its_machinery_import_no_harness():
    """Models must not know they are observed: the modeling file and the machinery import torch and numpy only."""
    code = ("import sys; import reference_torch.modeling_opensora, reference_torch.streaming; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('parity', 'mindspore', 'ms_impl')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.join(os.path.dirname(__file__), "..", ".."))
