"""The ``stdit3`` family as framework-free data: config parsing of upstream's config.json, state-dict shapes and the
released size, probe names and classes, the probe map, input normalisation, built-in cases and the teacher plan."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from parity.errors import ParityError
from parity.families import stdit3 as fam
from parity.families.stdit3 import cases as cases_mod
from parity.families.stdit3.config import RELEASED, STDiT3Config, is_stdit3_config, load_config, released_config
from parity.families.stdit3.probes import block_of, probe_class, probe_names
from parity.families.stdit3.shapes import base_size, dynamic_size, grid_of, pos_embed_scale
from parity.families.stdit3.statedict import expected_shapes, parameter_count
from parity.families.stdit3.testing import capture_specs, random_weights, rope_freqs
from parity.teacher import TeacherStep

TINY = cases_mod.TINY


# ---- config ------------------------------------------------------------------------------------------------------
def test_released_config_json_is_accepted_as_is_and_round_trips(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RELEASED))
    cfg = load_config(path)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (28, 1152, 16, (1, 2, 2))
    assert cfg.head_dim == 72 and cfg.out_channels == 8 and cfg.mlp_hidden == 4608 and cfg.input_size == (None,) * 3
    assert cfg.extra == {"architectures": ["STDiT3"], "model_type": "STDiT3", "torch_dtype": "float32",
                         "transformers_version": "4.36.2"}
    assert cfg.to_dict() == RELEASED and is_stdit3_config(RELEASED) and not is_stdit3_config({"num_layers": 32})
    assert fam.parse_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize("change, message", [
    (dict(depth=True), "'depth' must be an integer"),
    (dict(hidden_size=64.0), "'hidden_size' must be an integer"),
    (dict(depth=0), "'depth' must be an integer in 1..512"),
    (dict(num_heads=100000), "'num_heads' must be an integer"),
    (dict(patch_size=[1, 2]), "'patch_size' must be three integers"),
    (dict(patch_size=[1, 0, 2]), "'patch_size' must be three integers"),
    (dict(hidden_size=60, num_heads=8), "not divisible by num_heads"),
    (dict(hidden_size=36, num_heads=4), "head_dim = hidden_size / num_heads = 9 must be even"),
    (dict(hidden_size=8, num_heads=4), "must be even and >= 4"),
    (dict(mlp_ratio="4"), "'mlp_ratio' must be a number"),
    (dict(mlp_ratio=0.001), "'mlp_ratio' must be a number"),
    (dict(qk_norm=1), "'qk_norm' must be true or false"),
    (dict(input_sq_size=0), "'input_sq_size' must be a positive number"),
    (dict(input_size=[None, 0, None]), "'input_size' must be three positive integers or nulls"),
    (dict(drop_path=1.0), "'drop_path' must be in [0, 1)"),
    (dict(class_dropout_prob=-0.1), "'class_dropout_prob' must be in [0, 1]"),
    (dict(enable_sequence_parallelism=True), "enable_sequence_parallelism=true is not supported"),
    (dict(skip_y_embedder=True), "skip_y_embedder=true"),
    (dict(model_type="OpenSoraT2V_v1_3"), "this is not an STDiT3 config"),
])
def test_bad_configs_are_refused_naming_the_source(change, message):
    with pytest.raises(ParityError, match="c.json") as exc:
        fam.parse_config(dict(TINY, **change), "c.json")
    assert message in str(exc.value)


def test_hidden_size_must_be_a_multiple_of_four():
    assert fam.parse_config(dict(TINY, hidden_size=36, num_heads=3)).head_dim == 12
    with pytest.raises(ParityError, match="divisible by 4"):
        fam.parse_config(dict(TINY, hidden_size=42, num_heads=3))      # head_dim 14, 42 % 4 != 0


def test_missing_shape_keys_and_non_objects_are_refused(tmp_path):
    with pytest.raises(ParityError, match="missing required config key.*depth"):
        fam.parse_config({k: v for k, v in TINY.items() if k != "depth"}, "c.json")
    with pytest.raises(ParityError, match="expected a JSON object"):
        fam.parse_config([1, 2], "c.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ParityError, match="not valid JSON"):
        load_config(bad)


# ---- state dict -----------------------------------------------------------------------------------------------
def test_released_state_dict_size():
    """1,207,643,972 parameters (the issue's figure, counted on upstream's model on the meta device) plus the
    300 x 4096 null-caption buffer: 973 entries, 4,835,491,088 bytes in fp32 (the 4.84 GB model.safetensors)."""
    cfg = released_config()
    shapes = expected_shapes(cfg)
    assert len(shapes) == 973
    assert parameter_count(cfg) == 1_207_643_972
    total = sum(math.prod(s) for s in shapes.values())
    assert total - parameter_count(cfg) == 300 * 4096 and total * 4 == 4_835_491_088
    assert shapes["rope.freqs"] == (36,) and shapes["x_embedder.proj.weight"] == (1152, 4, 1, 2, 2)
    assert shapes["spatial_blocks.27.attn.q_norm.weight"] == (72,)
    assert shapes["final_layer.linear.weight"] == (32, 1152)
    assert list(shapes)[:3] == ["rope.freqs", "x_embedder.proj.weight", "x_embedder.proj.bias"]


def test_tiny_state_dict_matches_the_fact_sheet():
    cfg = fam.parse_config(dict(TINY, depth=2, hidden_size=64, num_heads=4, caption_channels=32, model_max_length=8))
    assert parameter_count(cfg) == 342_888
    shapes = expected_shapes(cfg)
    assert [k for k in shapes if k.startswith("spatial_blocks.0.")][:5] == [
        "spatial_blocks.0.scale_shift_table", "spatial_blocks.0.attn.qkv.weight", "spatial_blocks.0.attn.qkv.bias",
        "spatial_blocks.0.attn.q_norm.weight", "spatial_blocks.0.attn.k_norm.weight"]
    no_norm = expected_shapes(cfg.replace(qk_norm=False))
    assert len(shapes) - len(no_norm) == 4 * 2 and not any("q_norm" in k for k in no_norm)


def test_random_weights_cover_every_entry_deterministically():
    cfg = fam.parse_config(TINY)
    a, b = random_weights(cfg, 3), random_weights(cfg, 3)
    assert list(a) == list(expected_shapes(cfg))
    assert all(a[k].shape == s and a[k].dtype == np.float32 for k, s in expected_shapes(cfg).items())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["t_block.1.weight"], random_weights(cfg, 4)["t_block.1.weight"])
    np.testing.assert_array_equal(a["rope.freqs"], rope_freqs(16))
    np.testing.assert_allclose(rope_freqs(16), 1 / 10000 ** (np.arange(0, 16, 2) / 16), rtol=2e-7)


# ---- probes and the probe map -------------------------------------------------------------------------------
def test_probe_names_follow_the_data_flow():
    names = probe_names(2)
    assert names[:8] == ["x_input", "timestep_input", "y_input", "mask_input", "x_mask_input", "fps_input",
                         "height_input", "width_input"]
    assert names[-6:] == ["hidden_states_0_spatial_block", "hidden_states_0_temporal_block",
                          "hidden_states_1_spatial_block", "hidden_states_1_temporal_block",
                          "hidden_states_final_layer", "hidden_states_output"]
    assert names.index("t") < names.index("t_mlp") < names.index("t0") < names.index("t0_mlp")
    assert names.index("y_projected") < names.index("y") < names.index("y_lens") < names.index(
        "hidden_states_patch_embedding") < names.index("hidden_states_before_blocks")
    assert len(names) == len(set(names)) == 8 + 10 + 2 + 2 * 2 + 2
    assert [probe_class(n) for n in ("x_mask_input", "y_lens", "pos_emb", "t0_mlp", "hidden_states_1_temporal_block",
                                     "hidden_states_output")] == ["input", "mask", "embedding", "embedding",
                                                                  "block", "output"]
    assert block_of("hidden_states_12_spatial_block") == (12, "spatial") and block_of("hidden_states_x_block") is None
    with pytest.raises(KeyError):
        probe_class("hidden_states_0_block")
    assert fam.probe_names(fam.parse_config(TINY)) == names


def test_probe_map_is_version_2_and_names_every_probe():
    path = os.path.join(os.path.dirname(fam.__file__), "probe_map.json")
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    assert doc["family"] == "stdit3" and doc["version"] == 2
    allowed = {"name", "class", "path", "capture"}
    assert all(set(e) <= allowed for e in doc["probes"])
    specs = capture_specs(3)
    assert [s.name for s in specs] == probe_names(3)
    for spec in specs:
        assert spec.probe_class == probe_class(spec.name), spec.name
    by_name = {s.name: s for s in specs}
    assert by_name["hidden_states_2_temporal_block"].capture.module == "temporal_blocks.2"
    assert (by_name["y_lens"].capture.method, by_name["y_lens"].capture.select) == ("encode_text", (1,))
    assert (by_name["t0"].capture.module, by_name["t0"].capture.arg) == ("final_layer", "t0")


# ---- shapes ---------------------------------------------------------------------------------------------------
def test_sizes_as_upstream_forward_computes_them():
    assert dynamic_size(5, 7, 9, (1, 2, 2)) == (5, 4, 5) and dynamic_size(5, 6, 10, (2, 2, 2)) == (3, 3, 5)
    assert base_size(15 * 27) == 20 and base_size(6) == 2
    assert pos_embed_scale(240, 426, 512) == pytest.approx(math.sqrt(240 * 426) / 512) == pytest.approx(0.62451, 1e-4)
    assert grid_of((2, 4, 5, 7, 9), (1, 2, 2)) == dict(B=2, T=5, H=4, W=5, S=20, N=100, Tx=5, Hx=7, Wx=9)


# ---- inputs ---------------------------------------------------------------------------------------------------
def _inputs(**over):
    inputs = cases_mod.CASES["stdit3-tiny-padded"].make_inputs()
    inputs.update(over)
    return {k: v for k, v in inputs.items() if v is not None}


def test_inputs_are_normalised():
    cfg = fam.parse_config(TINY)
    out = fam.normalize_inputs(_inputs(mask=None, x_mask=None, y=_inputs()["y"][:, 0]), cfg)
    assert out["y"].shape == (2, 1, 8, 32)
    assert out["mask"].dtype == np.int64 and out["mask"].shape == (2, 8) and out["mask"].all()
    assert out["x_mask"].dtype == bool and out["x_mask"].shape == (2, 3) and out["x_mask"].all()
    tiled = fam.normalize_inputs(_inputs(mask=np.array([[1, 1, 0, 0, 0, 0, 0, 0]]), fps=np.array([24.0])), cfg)
    assert tiled["mask"].shape == (1, 8)                    # tiled by the model, as upstream's sampler relies on
    assert fam.normalize_inputs(_inputs(x_mask=np.array([[0, 1, 1], [1, 1, 1]])), cfg)["x_mask"].dtype == bool


@pytest.mark.parametrize("change, message", [
    (dict(x=np.zeros((2, 3, 3, 8, 12), np.float32)), "x has 3 channels"),
    (dict(x=np.zeros((2, 4, 3, 8), np.float32)), "expected (B, C, T, H, W)"),
    (dict(x=np.zeros((2, 4, 3, 8, 12), np.int64)), "expected float latents"),
    (dict(x=np.full((2, 4, 3, 8, 12), np.nan, np.float32)), "NaN or Inf"),
    (dict(x=np.zeros((2, 4, 0, 8, 12), np.float32)), "no elements"),
    (dict(timestep=np.zeros((1,), np.float32)), "timestep has shape (1,), expected (2,)"),
    (dict(timestep=np.array([1e9, 1.0])), "timestep values"),
    (dict(y=np.zeros((2, 1, 8, 16), np.float32)), "caption_channels=32"),
    (dict(y=np.zeros((2, 1, 1, 32), np.float32), mask=None), "use L >= 2"),
    (dict(mask=np.ones((3, 8))), "does not divide the batch 2"),
    (dict(mask=np.ones((2, 7))), "mask has shape (2, 7)"),
    (dict(mask=np.full((2, 8), 2)), "only 0/1"),
    (dict(mask=np.array([[1] * 8, [0] * 8])), "without any valid text token (rows [1])"),
    (dict(x_mask=np.ones((2, 4), bool)), "x_mask has shape (2, 4), expected (2, 3)"),
    (dict(fps=np.ones((2, 1))), "fps has shape (2, 1)"),
    (dict(fps=np.ones((3,))), "fps has 3 rows"),
    (dict(height=np.array([0.0])), "height[0] = 0 is not a pixel size"),
    (dict(width=np.array([[64.0]])), "width has shape (1, 1)"),
    (dict(fps=None), "missing fps"),
    (dict(hidden_states=np.zeros(2)), "unknown hidden_states"),
    (dict(y=np.array(["a", "b"])), "expected a numeric array"),
])
def test_bad_inputs_are_refused(change, message):
    with pytest.raises(ParityError, match="in.npz") as exc:
        fam.normalize_inputs(_inputs(**change), fam.parse_config(TINY), "in.npz")
    assert message in str(exc.value)


# ---- cases, teacher plan --------------------------------------------------------------------------------------
def test_builtin_cases_cover_padding_batch_non_square_and_x_mask():
    cases = fam.builtin_cases()
    assert fam.default_case_name() in cases
    for case in cases.values():
        cfg = fam.parse_config(case.config, case.name)
        a, b = case.make_inputs(), case.make_inputs()
        assert all(np.array_equal(a[k], b[k]) for k in a)
        fam.normalize_inputs(a, cfg, case.name)
    padded = cases["stdit3-tiny-padded"].make_inputs()
    assert padded["x"].shape[0] == 2 and padded["mask"].sum(1).tolist() == [5, 8]
    assert padded["x"].shape[3] != padded["x"].shape[4]
    xm = cases["stdit3-tiny-xmask"].make_inputs()["x_mask"]
    assert not xm[:, 0].any() and xm[:, 1:].all()
    assert cases["stdit3-tiny-cfg"].make_inputs()["mask"].shape[0] == 1


def test_teacher_plan_feeds_every_block_from_earlier_reference_probes():
    case = cases_mod.CASES["stdit3-tiny-xmask"]
    cfg = fam.parse_config(case.config)
    inputs = fam.normalize_inputs(case.make_inputs(), cfg)
    plan = fam.teacher_plan(cfg, inputs)
    assert all(isinstance(s, TeacherStep) for s in plan)
    order = {n: k for k, n in enumerate(probe_names(cfg.depth))}
    assert sorted(s.probe for s in plan) == sorted(["t_mlp", "t0_mlp", "hidden_states_final_layer", "hidden_states_output"]
                                                   + [n for n in order if block_of(n)])
    for step in plan:
        assert all(order[src] < order[step.probe] for src in step.inputs.values()), step
    by = {s.probe: s for s in plan}
    assert by["hidden_states_0_spatial_block"].inputs["x"] == "hidden_states_before_blocks"
    assert by["hidden_states_1_spatial_block"].inputs["x"] == "hidden_states_0_temporal_block"
    assert by["hidden_states_1_temporal_block"].inputs == dict(
        x="hidden_states_1_spatial_block", y="y", t="t_mlp", mask="y_lens", x_mask="x_mask_input", t0="t0_mlp")
    assert by["hidden_states_0_temporal_block"].params == {"T": 4, "S": 12}
    assert by["hidden_states_final_layer"].inputs == dict(x="hidden_states_1_temporal_block", t="t",
                                                          x_mask="x_mask_input", t0="t0")
    assert by["hidden_states_output"].params == dict(N_t=4, N_h=3, N_w=4, R_t=4, R_h=5, R_w=7)
    ctx = fam.adapter_context(cfg, inputs)
    assert ctx["text_lens"] == (5, 3) and (ctx["T"], ctx["S"], ctx["num_heads"], ctx["batch"]) == (4, 12, 2, 2)
