"""Weight conversion: names/shapes from the MindSpore model itself, strict checks in one line, exact round trip."""

from __future__ import annotations

import numpy as np
import pytest

from ms_impl import harness
from ms_impl.convert import convert_ms_to_torch, convert_torch_to_ms, expected_parameter_shapes
from ms_impl.tests.helpers import make_inputs, numpy_weights, tiny_config
from parity.errors import ParityError
from parity.families.opensora_v13.config import released_2b_config
from parity.families.opensora_v13.statedict import expected_shapes


def test_names_and_shapes_equal_the_torch_state_dict():
    cfg = tiny_config()
    ms_shapes = expected_parameter_shapes(cfg)
    assert list(ms_shapes.items()) == list(expected_shapes(harness._config(cfg)).items())   # same order too
    assert len(ms_shapes) == 99 and sum(int(np.prod(s)) for s in ms_shapes.values()) == 187_088
    for key in ("transformer_blocks.0.attn1.to_out.0.weight", "transformer_blocks.3.ff.net.0.proj.weight",
                "pos_embed.proj.weight", "adaln_single.emb.timestep_embedder.linear_1.weight",
                "caption_projection.linear_1.weight", "scale_shift_table"):
        assert key in ms_shapes


def test_released_model_skeleton_without_allocating():
    shapes = expected_parameter_shapes(released_2b_config())
    assert len(shapes) == 687
    assert sum(int(np.prod(s)) for s in shapes.values()) == 2_771_981_600
    assert shapes["pos_embed.proj.weight"] == (2304, 8, 2, 2)
    assert shapes["adaln_single.linear.weight"] == (13824, 2304)


def test_round_trip_is_exact():
    cfg = tiny_config(num_layers=2)
    w = numpy_weights(cfg, 0)
    ms_w = convert_torch_to_ms(w, cfg)
    back = convert_ms_to_torch(ms_w, cfg)
    assert list(back) == list(expected_parameter_shapes(cfg))
    for k in w:
        assert back[k] is w[k] or np.array_equal(back[k], w[k])
        assert back[k].dtype == w[k].dtype


def test_strict_conversion_lists_every_problem_in_one_line():
    cfg = tiny_config(num_layers=2)
    w = numpy_weights(cfg, 0)
    del w["proj_out.bias"], w["transformer_blocks.1.attn2.to_k.weight"]
    w["transformer_blocks.0.norm1.weight"] = np.ones(48, np.float32)
    w["pos_embed.proj.weight"] = np.zeros((48, 8, 1, 1), np.float32)
    w["scale_shift_table"] = np.zeros((2, 48), np.int32)
    with pytest.raises(ParityError) as exc:
        convert_torch_to_ms(w, cfg)
    msg = str(exc.value)
    assert "\n" not in msg and "refusing" in msg
    for name in ("proj_out.bias", "transformer_blocks.1.attn2.to_k.weight", "transformer_blocks.0.norm1.weight",
                 "pos_embed.proj.weight (weights (48, 8, 1, 1), config (48, 8, 2, 2))", "scale_shift_table (int32)"):
        assert name in msg
    with pytest.raises(ParityError, match="mindspore -> torch"):
        convert_ms_to_torch({}, cfg)


def test_build_model_loads_exactly_and_refuses_bad_weights():
    cfg = tiny_config(num_layers=2)
    w = numpy_weights(cfg, 5)
    model = harness.build_model(cfg, w, "fp32")
    for name, p in model.parameters_and_names():
        np.testing.assert_array_equal(p.asnumpy(), w[name])
    assert harness.forward(model, make_inputs()).shape == (2, 8, 3, 10, 6)
    bad = dict(w)
    bad["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ParityError, match="unexpected 1 key"):
        harness.build_model(cfg, bad, "fp32")
    with pytest.raises(ParityError, match="missing"):
        harness.build_model(tiny_config(num_layers=3), w, "fp32")
