"""The STDiT MindSpore port on its own (no torch): state dict, host tables, text packing, precision, the patch
embedding's two summation orders, attention backends, capture, and NaN honesty in fp16."""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor
from mindspore.nn.utils import no_init_parameters

import ms_impl.modeling_stdit as M
import parity.families.stdit as family
from ms_impl.tests.stdit_helpers import build_model, capture, forward, run_step
from parity.dtypes import round_to_bf16
from parity.families.stdit.config import STDiTConfig, released_xl2_config
from parity.families.stdit.shapes import pack_text, unpack_text
from parity.families.stdit.statedict import BUFFERS, expected_shapes
from parity.families.stdit.testing import make_inputs, probe_specs, tiny_config

CFG = STDiTConfig.from_dict(tiny_config())


def test_state_dict_names_shapes_and_order_are_torch_s():
    model = M.STDiT(**CFG.model_kwargs())
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(CFG)
    assert list(state) == list(expected_shapes(CFG))
    assert sorted(n for n, _ in model.named_buffers()) == sorted(BUFFERS)      # buffers, as upstream's
    assert "y_embedder.y_embedding" not in dict(model.parameters_and_names())


def test_released_size_without_allocating_parameters():
    cfg = released_xl2_config()
    with no_init_parameters():
        model = M.STDiT_XL_2(**{k: v for k, v in cfg.model_kwargs().items() if k not in
                                ("depth", "hidden_size", "patch_size", "num_heads")})
    params = dict(model.parameters_and_names())
    assert sum(math.prod(p.shape) for p in params.values()) == 759_620_768
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(cfg)


def test_positional_tables_hand_values_and_buffers():
    def enc(p):
        return [math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)]

    np.testing.assert_allclose(M.get_2d_sincos_pos_embed(8, (2, 3))[5], enc(2) + enc(1), rtol=1e-15, atol=1e-16)
    np.testing.assert_allclose(M.get_2d_sincos_pos_embed(8, (2, 3), scale=0.5)[1], enc(2) + enc(0), rtol=1e-15,
                               atol=1e-16)
    np.testing.assert_allclose(M.get_1d_sincos_pos_embed(4, 3, scale=2 / 3)[2], enc(3), rtol=1e-15)
    cfg = STDiTConfig.from_dict(tiny_config(input_size=(4, 6, 10), time_scale=2 / 3))
    model = M.STDiT(**cfg.model_kwargs())
    np.testing.assert_array_equal(model.pos_embed.asnumpy()[0],
                                  M.get_2d_sincos_pos_embed(64, (3, 5), scale=0.5).astype(np.float32))
    np.testing.assert_array_equal(model.pos_embed_temporal.asnumpy()[0],
                                  M.get_1d_sincos_pos_embed(64, 4, scale=2 / 3).astype(np.float32))


def test_timestep_table_and_cos_first_sinusoid():
    freqs = M.timestep_frequencies(128)
    exact = np.exp(-math.log(10000) * np.arange(128) / 128)
    # upstream's float32 chain (the exponent rounded to fp32 before exp): within 1e-6 relative of the exact value
    assert freqs.dtype == np.float32 and freqs[0] == 1.0 and np.abs(freqs / exact - 1).max() < 1e-6
    emb = M.TimestepEmbedder.timestep_embedding(Tensor(np.array([0.0, 1.0], np.float32)), 256).asnumpy()
    np.testing.assert_array_equal(emb[0], [1.0] * 128 + [0.0] * 128)
    assert emb[1, 0] == np.float32(math.cos(1.0)) and emb[1, 128] == np.float32(math.sin(1.0))


def test_text_packing_and_padded_keys():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((3, 1, 5, 4)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    packed, y_lens = M.STDiT.pack_text(Tensor(y), Tensor(mask))
    np.testing.assert_array_equal(packed.asnumpy(), pack_text(y, mask))
    assert y_lens == [2, 5, 2]
    kv = rng.standard_normal((1, 9, 8)).astype(np.float32)
    k, v, bias = M.MultiHeadCrossAttention.padded_text(Tensor(kv), y_lens, 3)
    padded, valid = unpack_text(kv, y_lens, 5)
    np.testing.assert_array_equal(k.asnumpy(), padded[..., :4])
    np.testing.assert_array_equal(v.asnumpy(), padded[..., 4:])
    np.testing.assert_array_equal(bias.asnumpy()[:, 0, 0], np.where(valid, 0.0, -np.inf))
    assert M.text_lengths(Tensor(np.array([2, 5]))) == M.text_lengths(np.array([2, 5])) == [2, 5]
    with pytest.raises(ValueError, match="no valid text token"):
        M.MultiHeadCrossAttention.padded_text(Tensor(kv[:, :7]), [7, 0], 2)
    with pytest.raises(ValueError, match="do not split"):
        M.MultiHeadCrossAttention.padded_text(Tensor(kv), [2, 2], 2)


def test_set_precision_casts_parameters_and_buffers():
    model = M.STDiT(**CFG.model_kwargs())
    before = {k: v.asnumpy().copy() for k, v in model.state_dict().items()}
    M.set_precision(model, "bf16-emulated")
    for k, v in model.state_dict().items():
        assert v.dtype == ms.float32
        np.testing.assert_array_equal(v.asnumpy(), round_to_bf16(before[k]), err_msg=k)
    M.set_precision(model, "fp16")
    assert all(v.dtype == ms.float16 for v in model.state_dict().values())
    assert model.blocks[1].attn.numerics.label == "fp16"


@pytest.mark.parametrize("shape", [(2, 4, 3, 8, 12), (1, 4, 3, 8, 12), (1, 4, 2, 2, 400)])
def test_patch_embedding_both_summation_orders_are_the_convolution(shape):
    """Channels-last (batch > 1 or large) and channel-first patches: both the stride-2 convolution in float64."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    embed = M.PatchEmbed3D((1, 2, 2), shape[1], 16)
    w = embed.proj.weight.asnumpy().astype(np.float64)
    b = embed.proj.bias.asnumpy().astype(np.float64)
    n, c, t, h, wd = shape
    patches = x.reshape(n, c, t, h // 2, 2, wd // 2, 2).astype(np.float64)
    want = np.einsum("bcthpwq,dcpq->bthwd", patches[:, :, :, :, :, :, :], w[:, :, 0]).reshape(n, -1, 16) + b
    got = embed(Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-6)


def test_attention_backends_agree():
    """Cross-attention and flash self-attention through the seam: the Ascend branch (kernel emulated on CPU) agrees
    with the portable path in bf16."""
    cfg = STDiTConfig.from_dict(tiny_config(enable_flashattn=True))
    inputs = make_inputs(cfg.to_dict(), seed=3)
    portable = forward(build_model(cfg, seed=3, precision="bf16", backend="portable"), inputs)
    emulated = forward(build_model(cfg, seed=3, precision="bf16", backend="ascend-emulated"), inputs)
    assert np.abs(portable - emulated).max() <= 0.05 * np.abs(portable).max()


def test_capture_every_probe_and_the_teacher_steps_reproduce_the_forward():
    """In fp32 the port's own teacher steps, fed its own probes, reproduce its forward bit for bit."""
    cfg = STDiTConfig.from_dict(tiny_config(depth=2))
    model = build_model(cfg, seed=4)
    inputs = make_inputs(cfg.to_dict(), seed=4, batch=2, text_len=6, text_lens=[3, 6])
    out, probes = capture(model, inputs, probe_specs(cfg.depth))
    assert set(probes) == set(family.probe_names(cfg))
    np.testing.assert_array_equal(out, forward(model, inputs))
    assert probes["y_lens"][0].tolist() == [3, 6] and probes["mask_input"][1] == "int64"
    for step in family.teacher_plan(cfg, inputs):
        teacher = {role: probes[name][0] for role, name in step.inputs.items()}
        np.testing.assert_array_equal(run_step(model, step, teacher), probes[step.probe][0], err_msg=step.probe)


def test_fp16_overflow_stays_non_finite():
    """Upstream's README warns that fp16 can produce NaN in the forward; the port must show it, never hide it: with
    attention scores beyond fp16's range the fp16 output is non-finite where the fp32 one is finite."""
    cfg = STDiTConfig.from_dict(tiny_config())
    weights = family.statedict.random_weights(cfg, 5)
    weights["blocks.0.attn.qkv.weight"] = weights["blocks.0.attn.qkv.weight"] * 300.0
    inputs = make_inputs(cfg.to_dict(), seed=5)
    assert np.isfinite(forward(build_model(cfg, weights), inputs)).all()
    _, probes = capture(build_model(cfg, weights, precision="fp16"), inputs, probe_specs(cfg.depth))
    assert np.isfinite(probes["hidden_states_pos_embed"][0]).all()
    assert not np.isfinite(probes["hidden_states_0_block"][0]).all()
    assert not np.isfinite(probes["hidden_states_output"][0]).all()
