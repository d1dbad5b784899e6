"""The MindSpore STDiT3 port on its own (no torch): upstream's parameter names and shapes (the released size
included), hand-checked building blocks, packed text against per-sample attention in float64, precision casting,
the input defaults, and the Ascend flash-attention branch (emulated on CPU) against the portable path."""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor
from mindspore.nn.utils import no_init_parameters

import ms_impl.modeling_stdit3 as M
from ms_impl.convert import load_into
from parity.dtypes import round_to_bf16
from parity.families import stdit3 as fam
from parity.families.stdit3.cases import CASES, TINY
from parity.families.stdit3.config import released_config
from parity.families.stdit3.statedict import expected_shapes
from parity.families.stdit3.testing import random_weights, rope_freqs


def build(config=TINY, precision="fp32", seed=0):
    cfg = fam.parse_config(config)
    model = M.STDiT3(cfg.to_dict())
    load_into(model, random_weights(cfg, seed))
    M.set_precision(model, precision)
    return model


def inputs_of(name):
    case = CASES[name]
    return fam.normalize_inputs(case.make_inputs(), fam.parse_config(case.config))


@pytest.mark.parametrize("config", [TINY, dict(TINY, qk_norm=False, pred_sigma=False, patch_size=[2, 1, 3])],
                         ids=["tiny", "no-qk-norm"])
def test_parameter_names_and_shapes_are_upstreams(config):
    cfg = fam.parse_config(config)
    with no_init_parameters():
        model = M.STDiT3(cfg.to_dict())
    assert {n: tuple(p.shape) for n, p in model.parameters_and_names()} == expected_shapes(cfg)


def test_released_size():
    with no_init_parameters():
        model = M.STDiT3(released_config().to_dict())
    shapes = {n: tuple(p.shape) for n, p in model.parameters_and_names()}
    assert shapes == expected_shapes(released_config())
    assert sum(math.prod(s) for s in shapes.values()) == 1_207_643_972 + 300 * 4096   # y_embedding: a Parameter


def test_building_blocks_hand_values():
    np.testing.assert_array_equal(M.rotate_half(Tensor(np.array([1.0, 2.0, 3.0, 4.0], np.float32))).asnumpy(),
                                  [-2, 1, -4, 3])
    norm = M.LlamaRMSNorm(4)
    norm.weight.set_data(Tensor(np.array([1.0, 2.0, 0.5, 1.0], np.float32)))
    rms = math.sqrt(25 / 4 + 1e-6)
    np.testing.assert_allclose(norm(Tensor(np.array([[3.0, 4.0, 0.0, 0.0]], np.float32))).asnumpy()[0],
                               [3 / rms, 8 / rms, 0, 0], rtol=1e-6)
    emb = M.PositionEmbedding2D(8)(None, 2, 3).asnumpy()[0].astype(np.float64)
    np.testing.assert_allclose(emb[5], [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02),
                                        math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)], atol=2e-7)
    t = M.TimestepEmbedder.timestep_embedding(np.array([0.0], np.float32), 256)
    np.testing.assert_array_equal(t[0], [1.0] * 128 + [0.0] * 128)
    rope = M.RotaryEmbedding(8)
    np.testing.assert_array_equal(rope.freqs.asnumpy(), rope_freqs(8))
    x = np.zeros((1, 1, 5, 8), np.float32)
    x[..., 0] = 1.0
    out = rope.rotate_queries_or_keys(Tensor(x)).asnumpy()[0, 0]
    np.testing.assert_allclose(out[:, :2], np.stack([np.cos(np.arange(5.0)), np.sin(np.arange(5.0))], 1), atol=1e-6)


@pytest.mark.parametrize("lens", [(3, 7, 1), (4, 4, 4)])
def test_padded_cross_attention_is_per_sample_attention(lens):
    """The port lays packed text out padded per sample with a -inf bias: the same as attending each sample's own
    tokens (float64 numpy below)."""
    attn = M.MultiHeadCrossAttention(32, 4)
    rng = np.random.default_rng(0)
    for _, p in attn.parameters_and_names():
        p.set_data(Tensor(rng.uniform(-0.3, 0.3, p.shape).astype(np.float32)))
    B, N = len(lens), 5
    x = rng.standard_normal((B, N, 32)).astype(np.float32)
    y = rng.standard_normal((1, sum(lens), 32)).astype(np.float32)
    got = attn(Tensor(x), Tensor(y), list(lens)).asnumpy()
    w = {n: p.asnumpy().astype(np.float64) for n, p in attn.parameters_and_names()}
    q = (x @ w["q_linear.weight"].T + w["q_linear.bias"]).reshape(B, N, 4, 8)
    kv = (y[0] @ w["kv_linear.weight"].T + w["kv_linear.bias"]).reshape(-1, 2, 4, 8)
    out, k0 = np.zeros((B, N, 4, 8)), 0
    for b, n in enumerate(lens):
        s = np.einsum("nhd,lhd->hnl", q[b], kv[k0:k0 + n, 0]) / math.sqrt(8)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[b] = np.einsum("hnl,lhd->nhd", p / p.sum(-1, keepdims=True), kv[k0:k0 + n, 1])
        k0 += n
    ref = out.reshape(B, N, 32) @ w["proj.weight"].T + w["proj.bias"]
    np.testing.assert_allclose(got, ref, atol=2e-6)
    with pytest.raises(ValueError, match="do not split"):
        attn(Tensor(x), Tensor(y), [1] * B)


def test_precision_casts_every_parameter_like_torchs_model_to():
    model = build(precision="bf16-emulated")
    for name, p in model.parameters_and_names():
        v = p.asnumpy()
        assert p.dtype == ms.float32 and np.array_equal(round_to_bf16(v), v), name
    assert not np.array_equal(model.rope.freqs.asnumpy(), rope_freqs(16))   # freqs are rounded too (as upstream)
    half = build(precision="fp16")
    assert {p.dtype for _, p in half.parameters_and_names()} == {ms.float16}


def test_absent_optional_inputs_are_their_neutral_values():
    model = build()
    inputs = inputs_of("stdit3-tiny-padded")
    base = model(**inputs).asnumpy()
    assert base.shape == (2, 8, 3, 6, 10) and base.dtype == np.float32
    no_xmask = {k: v for k, v in inputs.items() if k != "x_mask"}
    np.testing.assert_array_equal(model(**no_xmask).asnumpy(), base)
    ones = dict(inputs, mask=np.ones((2, 8), np.int64))
    np.testing.assert_array_equal(model(**{k: v for k, v in ones.items() if k != "mask"}).asnumpy(),
                                  model(**ones).asnumpy())
    tensors = {k: Tensor(v) for k, v in inputs.items()}
    np.testing.assert_array_equal(model(**tensors).asnumpy(), base)
    cond = dict(inputs, x_mask=np.array([[False, True, True], [True, True, True]]))
    changed = model(**cond).asnumpy()
    assert not np.allclose(changed[0], base[0]) and np.array_equal(changed[1], base[1])


def test_ascend_flash_branch_emulated_on_cpu_matches_the_portable_path():
    """bf16 with enable_flash_attn: spatial self-attention and the cross-attention through the seam's Ascend branch
    (flash_attention_score's contract emulated on CPU: boolean discard mask from the -inf text bias, head_dim padded
    to 16) against the portable branch."""
    config = dict(TINY, enable_flash_attn=True)
    inputs = inputs_of("stdit3-tiny-padded")
    portable = build(config, "bf16-emulated")
    M.set_attention_backend(portable, "portable")
    emulated = build(config, "bf16-emulated")
    M.set_attention_backend(emulated, "ascend-emulated")
    a, b = portable(**inputs).asnumpy(), emulated(**inputs).asnumpy()
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() <= 0.03 * max(1.0, np.abs(a).max())
    with pytest.raises(ValueError, match="unknown attention backend"):
        M.set_attention_backend(emulated, "cuda")
