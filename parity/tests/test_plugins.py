"""The plug-in contract without any framework: registry, options, overlays, masks by meaning, teacher plans, and
the pytest plugin's refusal to pass an empty selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from parity.adapters import Adapter, compare_mask_meaning, get_adapter, mask_meaning, register_adapter
from parity.errors import ParityError
from parity.families import get_family
from parity.plugins import load_plugin, parse_options, registered
from parity.plugins.contract import OptionSpec
from parity.probemap import load_probe_map, parse_overlay
from parity.teacher import feeding_probes, plan_by_probe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures", "reference")


# ---- registry ---------------------------------------------------------------------------------------------------
def test_builtin_plugins_are_registered_by_entry_point():
    assert "torch-reference" in registered("reference")
    assert "ms_impl" in registered("subject")


def _write_plugin_module(tmp_path, body: str, name: str = "my_port_plugin") -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return str(tmp_path)


_MINIMAL = """
    class P:
        name, framework, families, options = "mine", "mindspore", ("opensora_v13",), {}
        def __init__(self, source=None):
            self.source = source
        def describe(self): return {"plugin": self.name}
        def overlay(self, family, config): return None
        def build(self, request): return None
        def capture_root(self, model): return model
        def forward(self, model, family, inputs): return None
        def precision_label(self, precision, device): return precision
    def make(source=None):
        return P(source)
    instance = P()
    not_a_plugin = 3
    class Lacking:
        name, framework, families = "x", "mindspore", ()
        def build(self, request): pass
        def forward(self, model, family, inputs): pass
    lacking = Lacking()
    class WrongFramework(P):
        framework = "jax"
    wrong = WrongFramework()
"""


def test_module_attr_factory_gets_the_source_path(tmp_path):
    src = _write_plugin_module(tmp_path, _MINIMAL, "plug_factory")
    plugin = load_plugin("plug_factory:make", "subject", src)
    assert plugin.name == "mine" and plugin.source == os.path.realpath(src)
    assert load_plugin("plug_factory:instance", "subject", src).source is None


@pytest.mark.parametrize("attr, match", [
    ("nope", "has no attribute 'nope'"),
    ("not_a_plugin", "neither a plug-in object nor a factory"),
    ("lacking", "not a subject plug-in — it lacks describe, overlay, capture_root, precision_label"),
    ("wrong", "framework 'jax' is not one of torch, mindspore"),
])
def test_module_attr_problems_are_one_line(tmp_path, attr, match):
    src = _write_plugin_module(tmp_path, _MINIMAL, f"plug_bad_{attr}")
    with pytest.raises(ParityError, match=match):
        load_plugin(f"plug_bad_{attr}:{attr}", "subject", src)


def test_unknown_names_and_paths_are_refused(tmp_path):
    with pytest.raises(ParityError, match=r"--subject nope: no such subject plug-in \(registered: .*ms_impl"):
        load_plugin("nope", "subject")
    with pytest.raises(ParityError, match="cannot import 'no_such_module_xyz'"):
        load_plugin("no_such_module_xyz:make", "subject")
    with pytest.raises(ParityError, match="--reference-path is not a directory"):
        load_plugin("torch-reference", "reference", str(tmp_path / "missing"))
    src = _write_plugin_module(tmp_path, _MINIMAL, "plug_as_reference")
    with pytest.raises(ParityError, match="not a reference plug-in — it lacks random_weights, session"):
        load_plugin("plug_as_reference:instance", "reference", src)


def test_options_are_checked_against_the_declared_ones():
    class P:
        name = "p"
        options = {"attention": OptionSpec("backend", choices=("a", "b"), default="a"), "free": OptionSpec("x")}
    assert parse_options(None, P(), "--subject-option") == {"attention": "a"}
    assert parse_options(["attention=b", "free=anything=else"], P(), "-o") == {"attention": "b",
                                                                               "free": "anything=else"}
    for bad, match in (("attention", "expected KEY=VALUE"), ("attention=c", "attention must be one of a, b"),
                       ("other=1", r"has no option 'other' \(its options: attention, free\)")):
        with pytest.raises(ParityError, match=match):
            parse_options([bad], P(), "--subject-option")


# ---- overlays -----------------------------------------------------------------------------------------------------
def _overlay(probes: dict, **extra):
    return {"family": "opensora_v13", "version": 1, "probes": probes, **extra}


def test_overlay_applies_paths_captures_adapters_and_not_applicable():
    pmap = load_probe_map("opensora_v13")
    overlay = parse_overlay(_overlay({
        "hidden_states_{i}_block": {"path": "blocks.{i}", "capture": {"module": "blocks.{i}", "take": "output"},
                                    "adapter": "seq_first"},
        "hidden_states_2_block": {"path": "blocks.2 (third)"},
        "attention_mask_converted": {"not_applicable": "the port builds 0/1 keep masks, never a bias"},
        "attention_mask_sparse_4_True": {"compare": "meaning", "convention": "keep"},
    }), "test overlay")
    probes = {p.name: p for p in pmap.resolve(4, subject=overlay)}
    assert probes["hidden_states_1_block"].subject.capture.module == "blocks.1"
    assert probes["hidden_states_1_block"].subject.adapter == "seq_first"
    assert probes["hidden_states_1_block"].reference.capture.module == "transformer_blocks.1"
    assert probes["hidden_states_2_block"].subject_path == "blocks.2 (third)"   # a concrete name overrides the template
    assert probes["attention_mask_converted"].subject.capture is None
    assert "0/1 keep" in probes["attention_mask_converted"].subject.not_applicable
    assert probes["attention_mask_sparse_4_True"].subject.compare == "meaning"
    assert probes["hidden_states_input"].subject == probes["hidden_states_input"].reference   # untouched


@pytest.mark.parametrize("probes, match", [
    ({"no_such_probe": {"path": "x"}}, "names probes the family opensora_v13 does not have: no_such_probe"),
    ({"hidden_states_input": {"colour": "red"}}, "unknown keys"),
    ({"hidden_states_input": {"adapter": "sideways"}}, "unknown adapter 'sideways'"),
    ({"hidden_states_input": {"compare": "vibes"}}, "'compare' must be one of"),
    ({"attention_mask_sparse_1_True": {"compare": "meaning"}}, "needs 'convention'"),
    ({"hidden_states_input": {"not_applicable": ""}}, "must be the reason"),
    ({"hidden_states_input": {"capture": {"module": "", "take": "sideways"}}}, "capture needs 'module'"),
])
def test_bad_overlays_are_refused_with_the_source(probes, match):
    pmap = load_probe_map("opensora_v13")
    with pytest.raises(ParityError, match=match):
        pmap.resolve(4, subject=parse_overlay(_overlay(probes), "my overlay"))


def test_overlay_for_another_family_and_bad_versions_are_refused(tmp_path):
    pmap = load_probe_map("opensora_v13")
    with pytest.raises(ParityError, match="an overlay for family 'stdit3'"):
        pmap.resolve(2, subject=parse_overlay({"family": "stdit3", "version": 1, "probes": {}}, "o"))
    path = tmp_path / "overlay.json"
    path.write_text(json.dumps({"family": "opensora_v13", "version": 7, "probes": {}}))
    with pytest.raises(ParityError, match=f"{path}: not a version-1 overlay"):
        parse_overlay(str(path), "unused")
    path.write_text('{"family": "opensora_v13", "version": 1, "version": 1, "probes": {}}')
    with pytest.raises(ParityError, match="duplicate key 'version'"):
        parse_overlay(str(path), "unused")


def test_registered_adapters_are_found_and_clashes_refused():
    double = Adapter("test_double", "x2", lambda x, **_: 2 * x, lambda x, **_: x / 2)
    register_adapter(double)
    register_adapter(double)   # the same one again: fine
    assert get_adapter("test_double").to_reference(np.ones(2))[0] == 2
    with pytest.raises(ParityError, match="already registered"):
        register_adapter(Adapter("test_double", "other", lambda x, **_: x, lambda x, **_: x))
    extra = {"mine": Adapter("mine", "", lambda x, **_: x + 1, lambda x, **_: x - 1)}
    assert get_adapter("mine", extra).to_reference(np.zeros(1))[0] == 1


# ---- masks by meaning -------------------------------------------------------------------------------------------
def _reference_masks(seed: int = 0, n: int = 4, batch: int = 2, heads: int = 3, length: int = 12):
    """A reference Skiparse bias (n*B, heads, 1, len) with masked keys and -9980 padding at the end."""
    rng = np.random.default_rng(seed)
    bias = np.where(rng.random((n * batch, 1, 1, length)) < 0.3, -10000.0, 0.0).astype(np.float32)
    bias[..., -2:] = -9980.0
    return np.repeat(bias, heads, axis=1)


def test_keep_mask_per_query_means_the_same_as_the_bias_per_head():
    ref = _reference_masks()
    keep = (ref[:, :1] == 0).astype(np.float32)                    # (n*B, 1, 1, len), 1 = attend
    per_query = np.repeat(keep, 5, axis=2)                         # repeated for 5 queries: (n*B, 1, 5, len)
    v = compare_mask_meaning(ref, per_query, "bias", "keep")
    assert v.passed and v.n_mismatch == 0 and "padding not told apart" in v.checked
    assert compare_mask_meaning(ref, ref[:, :1] != 0, "bias", "discard").passed
    # the same masks with padding as 0 instead of -9980: equal in meaning when the side does not mark padding
    assert compare_mask_meaning(ref, np.where(ref == -9980.0, -10000.0, ref), "bias", "bias_no_padding").passed


def test_a_mask_that_lets_one_query_see_a_masked_key_is_caught_and_located():
    ref = _reference_masks(seed=1)
    keep = np.repeat((ref[:, :1] == 0).astype(np.float32), 5, axis=2)
    j = int(np.argwhere(ref[1, 0, 0] == -10000.0)[0, 0])
    keep[1, 0, 3, j] = 1.0                                         # query 3 of sub-batch 1 may now see key j
    v = compare_mask_meaning(ref, keep, "bias", "keep")
    assert not v.passed and v.n_mismatch == 1
    assert v.first_index == (1, 0, 3, j) and "reference allows False, subject allows True" in v.message


def test_padding_is_compared_when_both_conventions_mark_it():
    ref = _reference_masks(seed=2)
    wrong_pad = np.where(ref == -9980.0, -10000.0, ref)            # padding encoded as an ordinary masked key
    v = compare_mask_meaning(ref, wrong_pad, "bias", "bias")
    assert not v.passed and "which keys are padding" in v.checked
    assert mask_meaning(ref, "bias").padding.sum() == ref.shape[0] * ref.shape[1] * 2


def test_masks_of_irreconcilable_shapes_fail_with_both_shapes():
    ref = _reference_masks()
    v = compare_mask_meaning(ref, np.ones((8, 1, 1, 11)), "bias", "keep")
    assert not v.passed and "(8, 3, 1, 12) vs subject (8, 1, 1, 11)" in v.message


# ---- the family's teacher plan --------------------------------------------------------------------------------
def test_teacher_plan_feeds_blocks_from_the_reference_in_data_flow_order():
    fam = get_family("opensora_v13")
    case = fam.builtin_cases()["tiny-sparse"]
    cfg = fam.parse_config(case.config)
    plan = fam.teacher_plan(cfg, case.make_inputs())
    by = plan_by_probe(plan)
    assert [s.probe for s in plan] == [f"hidden_states_{i}_block" for i in range(4)] + ["hidden_states_output"]
    assert by["hidden_states_0_block"].inputs["hidden_states"] == "hidden_states_before_block"
    assert by["hidden_states_3_block"].inputs["hidden_states"] == "hidden_states_2_block"
    # blocks 0, 1 dense (n = 1), 2 single skip, 3 group skip; group = odd block
    assert [by[f"hidden_states_{i}_block"].inputs["attention_mask"] for i in range(4)] == [
        "attention_mask_sparse_1_False", "attention_mask_sparse_1_True", "attention_mask_sparse_4_False",
        "attention_mask_sparse_4_True"]
    assert by["hidden_states_output"].inputs == {"hidden_states": "hidden_states_3_block",
                                                 "embedded_timestep": "embedded_timestep_operate_on_patched_inputs"}
    assert by["hidden_states_1_block"].params == {"frame": 3, "height": 4, "width": 4}
    names = load_probe_map("opensora_v13").names(4)
    assert feeding_probes(plan) <= set(names)
    order = {n: k for k, n in enumerate(names)}
    assert all(order[src] < order[s.probe] for s in plan for src in s.inputs.values()), "a step fed from downstream"


# ---- pytest plugin -----------------------------------------------------------------------------------------------
def _pytest(tmp_path, *args):
    (tmp_path / "test_suite.py").write_text("from parity.pytest_plugin import test_probe  # noqa: F401\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_suite.py", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_a_parity_selection_that_checks_nothing_fails(tmp_path):
    code, out = _pytest(tmp_path)   # no --parity-reference, no parity_references ini: nothing selected
    assert code == 1 and "no reference dump matched" in out and "would check nothing" in out
    code, out = _pytest(tmp_path, "--parity-reference", os.path.join(FIXTURES, "tiny-sparse-fp32"),
                        "--parity-precision", "fp16")
    assert code == 1 and "precision fp16" in out
    empty = tmp_path / "empty-dump"
    empty.mkdir()
    manifest = json.load(open(os.path.join(FIXTURES, "tiny-sparse-fp32", "manifest.json")))
    manifest["probes"] = []
    (empty / "manifest.json").write_text(json.dumps(manifest))
    code, out = _pytest(tmp_path, "--parity-reference", str(empty))
    assert code == 1 and "lists no probes" in out
