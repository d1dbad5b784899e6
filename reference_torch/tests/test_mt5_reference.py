"""The mT5 reference glue on transformers' ``MT5EncoderModel``: the family's shapes on the meta device, the fp16
loading path (``wo`` kept in fp32), capture on/off bit-identity, and teacher steps reproducing the capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.families import mt5_encoder as fam
from parity.families.mt5_encoder.capture import capture_specs

pytestmark = [pytest.mark.torch, pytest.mark.xdist_group("mindone")]


@pytest.fixture(scope="module")
def R():
    """transformers takes ~10 s to import: only the worker running this group pays it, not every collector."""
    from reference_torch import mt5
    return mt5


def test_family_shapes_equal_transformers_on_meta_device(R):
    for cfg in [fam.released_xxl_config()] + [fam.parse_config(c.config) for c in fam.builtin_cases().values()]:
        assert R.meta_state_dict_shapes(cfg) == fam.expected_state_dict_shapes(cfg)


@pytest.fixture(scope="module")
def tiny(R):
    case = fam.builtin_cases()["tiny-mt5"]
    cfg = fam.parse_config(case.config)
    return cfg, R.random_weights(cfg, case.weights_seed), fam.normalize_inputs(case.make_inputs(), cfg)


def test_fp16_keeps_wo_in_fp32_and_promotes_the_residual(R, tiny):
    cfg, weights, inputs = tiny
    model = R.build_model(cfg, weights, "fp16")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {n for n, d in dtypes.items() if d == torch.float32} == {
        f"encoder.block.{i}.layer.1.DenseReluDense.wo.weight" for i in range(cfg.num_layers)}
    got = {}
    R.forward(model, inputs, capture_specs(cfg.num_layers), lambda n, a, d: got.__setitem__(n, d))
    # fp16 + fp32 wo output -> the residual stream is fp32 after the first feed-forward; the final norm casts back
    assert got["hidden_states_0_block"] == "float32" and got["inputs_embeds"] == "float16"
    assert got["prompt_embeds"] == "float16"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_capture_is_bit_identical_and_steps_reproduce_it(R, tiny, precision):
    cfg, weights, inputs = tiny
    model = R.build_model(cfg, weights, precision)
    plain = R.forward(model, inputs)
    got = {}
    captured = R.forward(model, inputs, capture_specs(cfg.num_layers), lambda n, a, d: got.__setitem__(n, a))
    np.testing.assert_array_equal(captured, plain)
    assert list(got) == fam.probe_names(cfg)
    np.testing.assert_array_equal(got["prompt_embeds"], plain)
    mask = got["extended_attention_mask"]
    assert mask.shape == (2, 1, 1, 24) and np.all((mask == 0) == (inputs["attention_mask"][:, None, None, :] == 1))
    for step in fam.teacher_plan(cfg, inputs):
        out = R.run_step(model, step, {role: got[src] for role, src in step.inputs.items()})
        np.testing.assert_array_equal(out, got[step.probe], err_msg=step.probe)
