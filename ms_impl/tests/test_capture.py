"""Probe capture on the MindSpore model (generic ``MsCapture`` + the family probe map), teacher forcing and the
mutants — all without torch."""

from __future__ import annotations

import numpy as np
import pytest

from ms_impl import harness
from ms_impl.modeling_opensora import Attention, OpenSoraT2V_v1_3
from ms_impl.mutants import MUTANTS
from ms_impl.tests.helpers import family_items, make_inputs, numpy_weights, subject_run, tiny_config
from parity.capture_ms import MsCapture
from parity.errors import ParityError
from parity.families.opensora_v13.probes import probe_names
from parity.probemap import CaptureItem, CaptureSpec

CFG = tiny_config(num_layers=4)


@pytest.fixture(scope="module")
def model():
    return harness.build_model(CFG, numpy_weights(CFG, 0), "fp32")


@pytest.fixture(scope="module")
def specs():
    return family_items(CFG["num_layers"])


def _capture(model, inputs, specs):
    got = {}
    out = harness.capture(model, inputs, specs, lambda n, a, d: got.__setitem__(n, (a, d)))
    return out, got


def test_every_probe_with_documented_shapes(model, specs):
    inputs = make_inputs()
    out, got = _capture(model, inputs, specs)
    assert sorted(got) == sorted(probe_names(CFG["num_layers"]))          # every probe, once
    b, s, d, length = 2, 3 * 5 * 3, 48, 5
    shapes = {
        "attention_mask_converted": (b, 1, s), "encoder_attention_mask_converted": (b, 1, length),
        "hidden_states_operate_on_patched_inputs": (b, s, d), "encoder_hidden_states_operate_on_patched_inputs":
        (b, length, d), "timestep_operate_on_patched_inputs": (b, 6 * d), "embedded_timestep_operate_on_patched_inputs":
        (b, d), "attention_mask_sparse_1_False": (b, 1, 1, s), "attention_mask_sparse_4_True": (4 * b, 1, 1, 48 // 4),
        "encoder_attention_mask_sparse_4_False": (4 * b, 1, 1, length), "hidden_states_before_block": (b, s, d),
        "hidden_states_3_block": (b, s, d), "hidden_states_output": (b, 8, 3, 10, 6),
    }
    for name, shape in shapes.items():
        assert got[name][0].shape == shape, name
        assert got[name][0].dtype == np.float32 and got[name][1] == "float32"
    np.testing.assert_array_equal(got["hidden_states_output"][0], out)


def test_capture_on_equals_off_and_leaves_nothing_behind(model, specs):
    inputs = make_inputs(seed=4)
    plain = harness.forward(model, inputs)
    installed = model.__dict__.get("_operate_on_patched_inputs")  # the streaming machinery's, if switched on
    out, _ = _capture(model, inputs, specs)
    np.testing.assert_array_equal(out, plain)
    static = Attention.__dict__["prepare_sparse_mask"]
    assert model.__dict__.get("_operate_on_patched_inputs") is installed
    for _, cell in model.cells_and_names():
        assert not cell._forward_hook and not cell._forward_pre_hook
    assert Attention.__dict__["prepare_sparse_mask"] is static
    np.testing.assert_array_equal(harness.forward(model, inputs), plain)


def test_where_filter_and_select(model, specs):
    _, got = _capture(model, make_inputs(seed=5), specs)
    # the converted masks come from the sparse_n == 1 call; for n = 1 the sparse masks are the unsplit biases
    np.testing.assert_array_equal(got["attention_mask_sparse_1_False"][0][:, 0], got["attention_mask_converted"][0])
    np.testing.assert_array_equal(got["encoder_attention_mask_sparse_4_True"][0],
                                  np.tile(got["encoder_attention_mask_converted"][0][:, None], (4, 1, 1, 1)))


def test_bad_module_path_and_cleanup_on_error(model):
    bad = CaptureItem("x", CaptureSpec("transformer_blocks.9", "output"))
    with pytest.raises(ParityError, match="transformer_blocks.9"):
        with MsCapture(model, [bad], lambda *a: None):
            pass
    wrong_arg = CaptureItem("y", CaptureSpec("", "input", arg="nope"))
    with pytest.raises(ParityError, match="'nope'"):
        harness.capture(model, make_inputs(), [wrong_arg], lambda *a: None)
    for _, cell in model.cells_and_names():
        assert not cell._forward_hook and not cell._forward_pre_hook


def test_module_paths(model, specs):
    paths = harness.module_paths(model)
    assert {"", "transformer_blocks.0.attn1", "transformer_blocks.3", "pos_embed", "adaln_single.emb"} <= paths
    assert all(s.capture.module in paths for s in specs)


def test_teacher_forcing_on_its_own_reference_is_exact(model, specs):
    """Teacher forcing fed with the model's own probes (in the reference layout) reproduces them exactly."""
    inputs = make_inputs(seed=6)
    _, got = _capture(model, inputs, specs)
    run = subject_run(CFG, model)
    ctx = run.context(inputs)
    reference = {n: run.to_reference(n, a, ctx) for n, (a, _) in got.items()}
    iso = {}
    assert run.isolated(inputs, reference.__getitem__, iso.__setitem__) == []
    assert set(iso) == set(got)
    for name, (arr, _) in got.items():
        np.testing.assert_array_equal(iso[name], arr, err_msg=name)


def test_teacher_forcing_uses_the_reference_inputs(model, specs):
    """Perturbing the reference's input to block 2 changes block 2 (and only the blocks fed from it)."""
    inputs = make_inputs(seed=7)
    _, got = _capture(model, inputs, specs)
    run = subject_run(CFG, model)
    ctx = run.context(inputs)
    reference = {n: run.to_reference(n, a, ctx) for n, (a, _) in got.items()}
    reference["hidden_states_1_block"] = reference["hidden_states_1_block"] + 0.5
    blocks = {f"hidden_states_{i}_block" for i in range(4)}
    iso = {}
    assert run.isolated(inputs, reference.__getitem__, iso.__setitem__, names=blocks) == []
    assert set(iso) == blocks
    for i in range(4):
        same = np.array_equal(iso[f"hidden_states_{i}_block"], got[f"hidden_states_{i}_block"][0])
        assert same == (i != 2), i
    # a reference without the conditioning: every block is reported as not evaluated, with the reason
    present = set(reference) - {"encoder_hidden_states_operate_on_patched_inputs"}
    skipped = run.isolated(inputs, reference.__getitem__, lambda *a: pytest.fail("ran a block"), names=blocks,
                           present=present)
    assert [s["name"] for s in skipped] == sorted(blocks)
    assert all("encoder_hidden_states_operate_on_patched_inputs is not in the reference" in s["why"] for s in skipped)


@pytest.fixture(scope="module")
def model_with_dropout():
    cfg = dict(CFG, dropout=0.1)
    return harness.build_model(cfg, numpy_weights(cfg, 0), "fp32")


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_first_diverges_where_declared_and_is_undone(request, specs, name):
    mutant = MUTANTS[name]
    # a model left in training mode differs only where Dropout is active: the mutant needs a dropout > 0
    model = request.getfixturevalue("model_with_dropout" if name == "train_mode" else "model")
    inputs = make_inputs(seed=8)   # padded text (ragged masks), masked video, 45 tokens -> Skiparse padding
    _, clean = _capture(model, inputs, specs)
    with mutant.apply(model):
        _, bad = _capture(model, inputs, specs)
    order = probe_names(CFG["num_layers"])   # data-flow order
    first = next(n for n in order if not np.array_equal(bad[n][0], clean[n][0]))
    assert first == mutant.first_divergence
    assert np.abs(bad[first][0] - clean[first][0]).max() > 1e-6     # far above fp32 noise
    _, again = _capture(model, inputs, specs)
    for n in order:
        np.testing.assert_array_equal(again[n][0], clean[n][0])


def test_model_refuses_missing_or_2d_masks(model):
    import mindspore as ms
    inputs = make_inputs()
    tensors = {k: ms.Tensor(v) for k, v in inputs.items()}
    with pytest.raises(ValueError, match="attention_mask must be given"):
        model(**dict(tensors, attention_mask=None))
    with pytest.raises(ValueError, match="encoder_attention_mask must be"):
        model(**dict(tensors, encoder_attention_mask=tensors["encoder_attention_mask"][:, 0]))
    assert isinstance(model, OpenSoraT2V_v1_3)


def test_forward_accepts_text_without_the_singleton_dim(model):
    inputs = make_inputs(seed=10)
    squeezed = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, 0],
                    encoder_attention_mask=inputs["encoder_attention_mask"][:, 0])
    np.testing.assert_array_equal(harness.forward(model, squeezed), harness.forward(model, inputs))
    with pytest.raises(ParityError, match="missing timestep"):
        harness.forward(model, {k: v for k, v in inputs.items() if k != "timestep"})
