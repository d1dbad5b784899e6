"""The STDiT torch reference: building blocks against hand-checked values, the packed text attention against the
padded-mask form, the state dict on the meta device (incl. the released size), capture and the teacher plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import parity.families.stdit as family
import parity.tests.hypothesis_profiles  # noqa: F401  (the derandomized "ci" profile)
import reference_torch.modeling_stdit as R
from parity.families.stdit.config import STDiTConfig, released_xl2_config
from parity.families.stdit.shapes import pack_text
from parity.families.stdit.statedict import BUFFERS, expected_shapes
from parity.families.stdit.testing import make_inputs, probe_specs, tiny_config
from reference_torch.tests.stdit_helpers import build_model, capture, forward, full_state, run_step

pytestmark = pytest.mark.torch
FAST = settings(max_examples=15, deadline=None)


# ---- positional tables and the timestep sinusoid: hand-checked values --------------------------------------------
def test_1d_sincos_is_sin_first():
    """embed_dim 4: ω = (1, 1/100); row p = [sin p, sin p/100, cos p, cos p/100]."""
    table = R.get_1d_sincos_pos_embed(4, 3)
    assert table.dtype == np.float64 and table.shape == (3, 4)
    np.testing.assert_allclose(table[0], [0.0, 0.0, 1.0, 1.0], atol=0, rtol=0)
    np.testing.assert_allclose(table[1], [0.8414709848078965, 0.009999833334166664, 0.5403023058681398,
                                          0.9999500004166653], rtol=1e-15)
    np.testing.assert_allclose(R.get_1d_sincos_pos_embed(4, 3, scale=2 / 3)[2], [math.sin(3.0), math.sin(0.03),
                                                                               math.cos(3.0), math.cos(0.03)],
                               rtol=1e-15)


def test_2d_sincos_halves_are_w_then_h():
    """grid (H, W) = (2, 3), embed_dim 8: token (h, w) = row 3h + w; channels 0..3 encode w, 4..7 encode h, each
    [sin, sin, cos, cos] with ω = (1, 1/100). space_scale 0.5 doubles the coordinates."""
    def enc(p):
        return [math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)]

    table = R.get_2d_sincos_pos_embed(8, (2, 3))
    assert table.shape == (6, 8)
    np.testing.assert_allclose(table[3 * 1 + 2], enc(2) + enc(1), rtol=1e-15, atol=1e-16)   # h = 1, w = 2
    np.testing.assert_allclose(table[3 * 0 + 1], enc(1) + enc(0), rtol=1e-15, atol=1e-16)   # h = 0, w = 1
    np.testing.assert_allclose(R.get_2d_sincos_pos_embed(8, (2, 3), scale=0.5)[5], enc(4) + enc(2), rtol=1e-15)


def test_model_buffers_are_the_tables():
    cfg = STDiTConfig.from_dict(tiny_config(input_size=(4, 6, 10), time_scale=2 / 3, space_scale=0.5))
    model = R.STDiT(**cfg.model_kwargs())
    np.testing.assert_array_equal(model.pos_embed.numpy()[0],
                                  R.get_2d_sincos_pos_embed(64, (3, 5), scale=0.5).astype(np.float32))
    np.testing.assert_array_equal(model.pos_embed_temporal.numpy()[0],
                                  R.get_1d_sincos_pos_embed(64, 4, scale=2 / 3).astype(np.float32))


def test_timestep_embedding_is_cos_first():
    emb = R.TimestepEmbedder.timestep_embedding(torch.tensor([0.0, 1.0, 500.0]), 256).numpy()
    np.testing.assert_array_equal(emb[0], [1.0] * 128 + [0.0] * 128)
    assert abs(emb[1, 0] - math.cos(1.0)) < 1.2e-7 and abs(emb[1, 128] - math.sin(1.0)) < 1.2e-7  # torch: <= 1 ULP
    freqs = np.exp(-math.log(10000) * np.arange(128) / 128)
    np.testing.assert_allclose(emb[2], np.concatenate([np.cos(500 * freqs), np.sin(500 * freqs)]), atol=5e-5)


# ---- packed text cross-attention ---------------------------------------------------------------------------------
def padded_mask_cross_attention(module, x, packed, y_lens):
    """Per sample: keys/values zero-padded to the longest text, padded logits at -inf, softmax in float32."""
    b, n, c = x.shape
    h, d = module.num_heads, module.head_dim
    kv = module.kv_linear(packed)[0]
    longest = max(y_lens)
    k = torch.zeros(b, longest, c)
    v = torch.zeros(b, longest, c)
    keep = torch.zeros(b, longest, dtype=torch.bool)
    start = 0
    for i, m in enumerate(y_lens):
        k[i, :m], v[i, :m], keep[i, :m] = kv[start:start + m, :c], kv[start:start + m, c:], True
        start += m
    q = module.q_linear(x).view(b, n, h, d).transpose(1, 2)
    k, v = (t.view(b, longest, h, d).transpose(1, 2) for t in (k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    return module.proj(out.transpose(1, 2).reshape(b, n, c))


@FAST
@given(st.integers(1, 4), st.integers(1, 12), st.sampled_from([(16, 1), (32, 4), (48, 3)]), st.data())
def test_packed_cross_attention_equals_padded_mask_attention(b, n, width_heads, data):
    c, heads = width_heads
    y_lens = [data.draw(st.integers(1, 7)) for _ in range(b)]
    torch.manual_seed(b * 100 + n)
    module = R.MultiHeadCrossAttention(c, heads).eval()
    x = torch.randn(b, n, c)
    packed = torch.randn(1, sum(y_lens), c)
    with torch.no_grad():
        got = module(x, packed, y_lens)
        want = padded_mask_cross_attention(module, x, packed, y_lens)
    assert got.shape == (b, n, c)
    assert float((got - want).abs().max()) <= 1e-6 * max(1.0, float(want.abs().max()))


def test_cross_attention_without_lengths_mixes_samples():
    torch.manual_seed(0)
    module = R.MultiHeadCrossAttention(16, 2).eval()
    x, packed = torch.randn(2, 5, 16), torch.randn(1, 7, 16)
    with torch.no_grad():
        mixed, per_sample = module(x, packed, None), module(x, packed, [3, 4])
        one = R.MultiHeadCrossAttention.forward(module, x[:1], packed, None)
    assert float((mixed - per_sample).abs().max()) > 1e-3
    assert torch.equal(one, module(x[:1], packed, [7]))   # B = 1: the same thing


def test_empty_text_sample_is_refused():
    module = R.MultiHeadCrossAttention(16, 2).eval()
    with pytest.raises(ValueError, match="no valid text token"):
        module(torch.randn(2, 3, 16), torch.randn(1, 4, 16), [4, 0])


# ---- the whole model: text handling ------------------------------------------------------------------------------
CFG = STDiTConfig.from_dict(tiny_config())


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(CFG, seed=1)


def test_text_mask_pattern_only_selects_tokens(tiny_model):
    """Packing keeps the valid tokens in order: a scattered mask equals the same tokens as a prefix, bit for bit."""
    inputs = make_inputs(tiny_config(), seed=2, batch=2, text_len=6)
    scattered = dict(inputs, mask=np.array([[1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]]))
    prefix = dict(inputs, mask=np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]), y=inputs["y"].copy())
    prefix["y"][0, 0, :3] = inputs["y"][0, 0, [0, 2, 3]]
    prefix["y"][1, 0, :5] = inputs["y"][1, 0, 1:]
    np.testing.assert_array_equal(forward(tiny_model, scattered), forward(tiny_model, prefix))


def test_no_mask_equals_all_ones_and_mask_is_tiled(tiny_model):
    inputs = make_inputs(tiny_config(), seed=3, batch=2, text_len=6)
    ones = dict(inputs, mask=np.ones((2, 6), np.int64))
    with torch.no_grad():
        unmasked = tiny_model(*[torch.from_numpy(inputs[k]) for k in ("x", "timestep", "y")]).numpy()
    np.testing.assert_array_equal(unmasked, forward(tiny_model, ones))
    guidance = dict(inputs, mask=inputs["mask"][:1])
    np.testing.assert_array_equal(forward(tiny_model, guidance),
                                  forward(tiny_model, dict(inputs, mask=np.repeat(inputs["mask"][:1], 2, axis=0))))


def test_padded_text_does_not_leak_between_samples(tiny_model):
    """Changing sample 0's padding tokens, or anything of sample 1's text, leaves sample 0's output unchanged."""
    inputs = make_inputs(tiny_config(), seed=4, batch=2, text_len=6, text_lens=[3, 6])
    base = forward(tiny_model, inputs)
    changed = dict(inputs, y=inputs["y"].copy())
    changed["y"][0, 0, 3:] += 5.0
    changed["y"][1] += 1.0
    out = forward(tiny_model, changed)
    np.testing.assert_array_equal(out[0], base[0])
    assert np.abs(out[1] - base[1]).max() > 1e-3


# ---- state dict ----------------------------------------------------------------------------------------------------
def test_released_state_dict_on_meta_device():
    cfg = released_xl2_config()
    with torch.device("meta"):
        model = R.STDiT.from_config(dict(type="STDiT-XL/2", input_size=(16, 32, 32), space_scale=0.5))
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(cfg)
    assert list(state) == list(expected_shapes(cfg))
    assert sum(p.numel() for p in model.parameters()) == 759_620_768
    assert sorted(n for n, _ in model.named_buffers()) == sorted(BUFFERS)
    assert not model._non_persistent_buffers_set and not model.y_embedder._non_persistent_buffers_set


def test_tiny_state_dict_and_strict_load(tiny_model):
    assert {k: tuple(v.shape) for k, v in tiny_model.state_dict().items()} == family.expected_state_dict_shapes(CFG)
    again = R.STDiT(**CFG.model_kwargs())
    again.load_state_dict(tiny_model.state_dict(), strict=True)
    inputs = make_inputs(tiny_config(), seed=5)
    np.testing.assert_array_equal(forward(again.eval(), inputs), forward(tiny_model, inputs))


# ---- probes and the teacher plan -------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_capture_every_probe_and_replay_the_teacher_plan(precision):
    cfg = STDiTConfig.from_dict(tiny_config(depth=3))
    model = build_model(cfg, seed=6, precision=precision)
    inputs = make_inputs(cfg.to_dict(), seed=7, batch=2, text_len=6, text_lens=[4, 6])
    specs = probe_specs(cfg.depth)
    out, probes = capture(model, inputs, specs)
    assert list(probes) == family.probe_names(cfg) or set(probes) == set(family.probe_names(cfg))
    np.testing.assert_array_equal(forward(model, inputs), out)          # capture changes nothing
    np.testing.assert_array_equal(probes["hidden_states_output"][0], out)
    b, (t, s) = 2, (cfg.num_temporal, cfg.num_spatial)
    shapes = {"hidden_states_patch_embed": (b, t * s, 64), "hidden_states_pos_embed": (b, t * s, 64),
              "pos_embed_temporal": (1, t, 64), "timestep_embed": (b, 64), "timestep_modulation": (b, 384),
              "y_embed": (b, 1, 6, 64), "y_packed": (1, 10, 64), "y_lens": (2,),
              "hidden_states_2_block": (b, t * s, 64), "hidden_states_final_layer": (b, t * s, 32),
              "hidden_states_output": (b, 8, 3, 8, 12)}
    assert {k: probes[k][0].shape for k in shapes} == shapes
    assert probes["y_lens"][0].tolist() == [4, 6] and probes["y_lens"][1] == "int64"
    expected_dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    assert probes["hidden_states_1_block"][1] == expected_dtype and probes["hidden_states_output"][1] == "float32"
    np.testing.assert_array_equal(probes["y_packed"][0], pack_text(probes["y_embed"][0], inputs["mask"]))
    # every teacher step, fed the reference's own probes, reproduces the reference's probe bit for bit
    for step in family.teacher_plan(cfg, inputs):
        teacher = {role: probes[name][0] for role, name in step.inputs.items()}
        np.testing.assert_array_equal(run_step(model, step, teacher), probes[step.probe][0], err_msg=step.probe)


def test_temporal_table_goes_to_block_0_only(tiny_model):
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, a: seen.append(a[4] is not None)) for blk in tiny_model.blocks]
    forward(tiny_model, make_inputs(tiny_config(), seed=8))
    for h in hooks:
        h.remove()
    assert seen == [True, False]


def test_no_temporal_pos_emb_is_ignored_as_upstream():
    weights = full_state(build_model(CFG, seed=9))
    inputs = make_inputs(tiny_config(), seed=9)
    flagged = R.STDiT(**dict(CFG.model_kwargs(), no_temporal_pos_emb=True))
    flagged.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    np.testing.assert_array_equal(forward(flagged.eval(), inputs), forward(build_model(CFG, seed=9), inputs))


def test_flash_path_is_the_same_math_in_fp32_but_rounds_once_in_bf16():
    inputs = make_inputs(tiny_config(), seed=10)
    outs = {}
    for flash in (False, True):
        cfg = STDiTConfig.from_dict(tiny_config(enable_flashattn=flash))
        outs[flash, "fp32"] = forward(build_model(cfg, seed=11), inputs)
        outs[flash, "bf16"] = forward(build_model(cfg, seed=11, precision="bf16"), inputs)
    scale = np.abs(outs[False, "fp32"]).max()
    assert np.abs(outs[True, "fp32"] - outs[False, "fp32"]).max() <= 1e-6 * scale
    assert not np.array_equal(outs[True, "bf16"], outs[False, "bf16"])


def test_working_dtype_rounds_the_timestep_like_upstream():
    """bf16 holds 999 as 1000: the bf16 model's timestep embedding at 999 is its embedding at 1000."""
    model = build_model(CFG, seed=12, precision="bf16")
    got = {}
    model.t_embedder.register_forward_hook(lambda m, a, o: got.__setitem__(len(got), o.float().numpy()))
    inputs = make_inputs(tiny_config(), seed=12, timesteps=[999.0, 1000.0])
    forward(model, inputs)
    np.testing.assert_array_equal(got[0][0], got[0][1])
