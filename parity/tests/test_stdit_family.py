"""The ``stdit`` family's framework-free data: config, inputs, probes, probe map, teacher plan, state dict, cases."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import parity.families.stdit as family
from parity.errors import ParityError
from parity.families.stdit.cases import CASES
from parity.families.stdit.config import XL_2_SIZES, STDiTConfig, released_xl2_config
from parity.families.stdit.probes import probe_class, probe_names
from parity.families.stdit.shapes import pack_text, text_lengths, tiled_mask, unpack_text
from parity.families.stdit.statedict import (BUFFERS, DERIVED_BUFFERS, expected_shapes, parameter_count,
                                             random_weights, state_dict_numel)
from parity.families.stdit.testing import make_inputs, probe_specs, tiny_config
from parity.teacher import TeacherStep

TINY = STDiTConfig.from_dict(tiny_config())


# ---- config ------------------------------------------------------------------------------------------------------
def test_released_config_as_upstream_builds_it():
    cfg = released_xl2_config()
    assert (cfg.depth, cfg.hidden_size, cfg.patch_size, cfg.num_heads) == (28, 1152, (1, 2, 2), 16)
    assert cfg.grid == (16, 16, 16) and cfg.num_spatial == 256 and cfg.out_channels == 8 and cfg.head_dim == 72
    assert cfg.extra == {"dtype": "fp16"} and cfg.enable_flashattn and cfg.enable_layernorm_kernel


def test_released_state_dict_size():
    """STDiT-XL/2 16x256x256 as computed from the unmodified upstream model on the meta device: 550 entries,
    759,620,768 parameters; the three buffers add 804,864 numbers."""
    cfg = released_xl2_config()
    shapes = expected_shapes(cfg)
    assert len(shapes) == 550
    assert parameter_count(cfg) == 759_620_768
    assert state_dict_numel(cfg) == 760_425_632
    assert shapes["pos_embed"] == (1, 256, 1152) and shapes["pos_embed_temporal"] == (1, 16, 1152)
    assert shapes["y_embedder.y_embedding"] == (120, 4096)
    assert shapes["x_embedder.proj.weight"] == (1152, 4, 1, 2, 2) and shapes["final_layer.linear.weight"] == (32, 1152)
    assert list(shapes)[:4] == ["pos_embed", "pos_embed_temporal", "x_embedder.proj.weight", "x_embedder.proj.bias"]
    assert sum(1 for k in shapes if k.startswith("blocks.0.")) == 19


def test_upstream_keys_accepted_as_is_and_round_trip():
    data = {"type": "STDiT-XL/2", "space_scale": 0.5, "time_scale": 1.0, "enable_flashattn": True,
            "from_pretrained": "PRETRAINED_MODEL", "input_size": [16, 32, 32], "in_channels": 4,
            "caption_channels": 4096, "model_max_length": 120, "some_unknown_note": 3}
    cfg = family.parse_config(data, "config.json")
    assert cfg.extra == {"from_pretrained": "PRETRAINED_MODEL"} and cfg.input_size == (16, 32, 32)
    again = family.parse_config(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    # sizes equal to what STDiT-XL/2 fixes are accepted (to_dict writes them)
    assert family.parse_config(dict(data, **{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in XL_2_SIZES.items()})) == cfg
    assert cfg.model_kwargs()["depth"] == 28 and "type" not in cfg.model_kwargs()


@pytest.mark.parametrize("change, match", [
    (dict(type="STDiT-XL/2", depth=4), r"fixes depth=28"),
    (dict(type="STDiT3-XL/2"), "not an Open-Sora 1.0 STDiT"),
    (dict(depth=True), "'depth' must be an integer"),
    (dict(hidden_size="64"), "'hidden_size' must be an integer"),
    (dict(hidden_size=66, num_heads=3), "multiple of 4"),
    (dict(num_heads=5), "not divisible by num_heads"),
    (dict(input_size=[3, 9, 12]), "not divisible by patch_size"),
    (dict(input_size=[3, 8]), "three positive integers"),
    (dict(pred_sigma=1), "'pred_sigma' must be true or false"),
    (dict(enable_sequence_parallelism=True), "process group"),
    (dict(space_scale=0), "'space_scale' must be a positive number"),
    (dict(time_scale=float("nan")), "'time_scale' must be a positive number"),
    (dict(freeze="all"), "'freeze' must be null"),
    (dict(depth=10**6), r"'depth' must be an integer in 1\.\.1024"),
    (dict(class_dropout_prob=2), r"'class_dropout_prob' must be a number in \[0.0, 1.0\]"),
])
def test_bad_configs_are_one_line_errors(change, match):
    with pytest.raises(ParityError, match=match) as exc:
        family.parse_config(dict(tiny_config(), **change), "cfg.json")
    assert str(exc.value).startswith("cfg.json: ") and "\n" not in str(exc.value)


def test_config_must_be_an_object():
    with pytest.raises(ParityError, match="expected a JSON object"):
        family.parse_config([1, 2], "cfg.json")


# ---- inputs ------------------------------------------------------------------------------------------------------
def test_inputs_normalised():
    inputs = make_inputs(tiny_config(), batch=2, text_len=6)
    flat = dict(inputs, y=inputs["y"][:, 0], mask=inputs["mask"][:, None].astype(np.float32))
    out = family.normalize_inputs(flat, TINY)
    assert out["y"].shape == (2, 1, 6, 32) and out["mask"].shape == (2, 6) and out["mask"].dtype == np.int64
    np.testing.assert_array_equal(out["mask"], inputs["mask"])
    one_mask = dict(inputs, mask=inputs["mask"][:1])            # classifier-free guidance: one mask, tiled
    assert family.normalize_inputs(one_mask, TINY)["mask"].shape == (1, 6)


@pytest.mark.parametrize("change, match", [
    (lambda x: x.update(x=x["x"][..., :10]), r"latent size \(3, 8, 10\) but the model is built for input_size"),
    (lambda x: x.update(x=x["x"][:, :3]), "3 channels but the config says in_channels=4"),
    (lambda x: x.update(timestep=np.ones(3, np.float32)), "inconsistent batch sizes"),
    (lambda x: x.update(mask=np.ones((3, 6), np.int64)), "does not divide B = 2"),
    (lambda x: x.update(mask=x["mask"][:, :4]), "mask has 4 tokens but y has 6"),
    (lambda x: x.update(mask=x["mask"] * 2), "mask must hold 0/1"),
    (lambda x: x["mask"].__setitem__(1, 0), r"sample\(s\) \[1\] have no real text token"),
    (lambda x: x.update(y=x["y"][:, :, :1], mask=x["mask"][:, :1]), "breaks a single-token text"),
    (lambda x: x.update(y=x["y"][..., :7]), "caption_channels=32"),
    (lambda x: x["x"].__setitem__((0, 0, 0, 0, 0), np.inf), "NaN or Inf"),
    (lambda x: x.update(timestep=np.array([1e9, 1.0], np.float32)), "timestep values beyond"),
    (lambda x: x.update(x=x["x"][:0], timestep=x["timestep"][:0], y=x["y"][:0]), "is empty"),
    (lambda x: x.pop("mask"), "missing mask"),
    (lambda x: x.update(encoder_hidden_states=x["y"]), "unknown encoder_hidden_states"),
])
def test_bad_inputs_are_one_line_errors(change, match):
    inputs = make_inputs(tiny_config(), batch=2, text_len=6)
    change(inputs)
    with pytest.raises(ParityError, match=match) as exc:
        family.normalize_inputs(inputs, TINY, source="in.npz")
    assert str(exc.value).startswith("in.npz: ") and "\n" not in str(exc.value)


# ---- text packing ------------------------------------------------------------------------------------------------
def test_pack_and_unpack_text():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((3, 1, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 1, 1], [1, 0, 1, 0, 1]])
    packed = pack_text(y, mask)
    assert packed.shape == (1, 9, 4) and text_lengths(mask, 3) == (2, 4, 3)
    np.testing.assert_array_equal(packed[0, 2:6], y[1, 0, 1:5])      # sample 1's valid tokens, in token order
    np.testing.assert_array_equal(packed[0, 6:], y[2, 0, [0, 2, 4]])
    padded, valid = unpack_text(packed, (2, 4, 3), 5)
    np.testing.assert_array_equal(padded[2, :3], y[2, 0, [0, 2, 4]])
    assert valid.sum(axis=1).tolist() == [2, 4, 3] and not padded[0, 2:].any()
    np.testing.assert_array_equal(tiled_mask(mask[:1], 3), np.repeat(mask[:1], 3, axis=0))


# ---- probes, probe map, teacher plan -----------------------------------------------------------------------------
def test_probe_names_in_data_flow_order():
    names = family.probe_names(TINY)
    assert names[:4] == ["x_input", "timestep_input", "y_input", "mask_input"]
    assert names.index("hidden_states_patch_embed") < names.index("hidden_states_pos_embed") \
        < names.index("hidden_states_0_block") < names.index("hidden_states_1_block") \
        < names.index("hidden_states_final_layer") < names.index("hidden_states_output") == len(names) - 1
    assert [probe_class(n) for n in names].count("block") == TINY.depth
    assert probe_class("y_lens") == "mask" and probe_class("timestep_modulation") == "embedding"
    assert probe_class("hidden_states_final_layer") == "output"


def test_probe_map_is_version_2_and_matches_the_probe_names():
    path = os.path.join(os.path.dirname(family.__file__), "probe_map.json")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    assert data["family"] == "stdit" and data["version"] == 2 and isinstance(data["description"], str)
    assert all(set(p) == {"name", "class", "path", "capture"} for p in data["probes"])
    specs = probe_specs(TINY.depth)
    assert [s.name for s in specs] == family.probe_names(TINY)
    assert all(s.probe_class == probe_class(s.name) for s in specs)
    by_name = {s.name: s.capture for s in specs}
    assert by_name["hidden_states_1_block"].module == "blocks.1" and by_name["y_lens"].arg == "mask"
    assert by_name["pos_embed_temporal"].module == "blocks.0" and by_name["pos_embed_temporal"].arg == "tpe"


def test_teacher_plan_feeds_each_step_from_earlier_reference_probes():
    cfg = STDiTConfig.from_dict(tiny_config(depth=3))
    plan = family.teacher_plan(cfg, None)
    assert all(isinstance(s, TeacherStep) for s in plan)
    names = family.probe_names(cfg)
    assert [s.probe for s in plan] == [n for n in names if probe_class(n) in ("block", "output")]
    for step in plan:
        assert all(names.index(src) < names.index(step.probe) for src in step.inputs.values()), step
    assert plan[0].inputs == {"x": "hidden_states_pos_embed", "y": "y_packed", "t": "timestep_modulation",
                              "mask": "y_lens", "tpe": "pos_embed_temporal"}
    assert plan[1].inputs["x"] == "hidden_states_0_block" and "tpe" not in plan[1].inputs
    assert plan[1].params == {"d_t": 3, "d_s": 24}
    final, output = plan[-2], plan[-1]
    assert (final.kind, final.index, final.inputs) == ("final_layer", None, {"x": "hidden_states_2_block",
                                                                             "t": "timestep_embed"})
    assert output.kind == "output" and output.params["grid"] == (3, 4, 6)


def test_adapter_context():
    inputs = make_inputs(tiny_config(), batch=2, text_len=6, text_lens=[6, 3])
    ctx = family.adapter_context(TINY, inputs)
    assert ctx["y_lens"] == (6, 3) and ctx["batch"] == 2 and ctx["num_heads"] == 4 and ctx["grid"] == (3, 4, 6)


# ---- state dict and cases ----------------------------------------------------------------------------------------
def test_tiny_state_dict_and_random_weights():
    shapes = family.expected_state_dict_shapes(TINY)
    assert len(shapes) == 15 + 19 * TINY.depth + 3
    assert set(BUFFERS) <= set(shapes) and set(DERIVED_BUFFERS) < set(BUFFERS)
    w = random_weights(TINY, 3)
    assert list(w) == [k for k in shapes if k not in DERIVED_BUFFERS]
    assert all(w[k].shape == shapes[k] and w[k].dtype == np.float32 for k in w)
    np.testing.assert_array_equal(random_weights(TINY, 3)["blocks.1.mlp.fc2.weight"], w["blocks.1.mlp.fc2.weight"])
    assert abs(float(w["blocks.0.mlp.fc1.weight"].std()) - 1 / math.sqrt(64)) < 0.01


def test_builtin_cases():
    assert family.default_case_name() in CASES
    padded_batch = non_square = tiled = False
    for case in family.builtin_cases().values():
        cfg = family.parse_config(case.config, case.name)
        inputs = family.normalize_inputs(case.make_inputs(), cfg, case.name)
        again = case.make_inputs()
        assert all(np.array_equal(inputs[k], again[k]) for k in inputs)
        lens = text_lengths(inputs["mask"], case.batch)
        padded_batch |= case.batch > 1 and min(lens) < case.text_len
        non_square |= cfg.grid[1] != cfg.grid[2]
        tiled |= inputs["mask"].shape[0] < case.batch
    assert padded_batch and non_square and tiled
