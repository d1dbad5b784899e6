"""The plug-in contract end to end on a port written from scratch: ``third_party_port`` (a compact MindSpore
Open-Sora-Plan v1.3 with its own names, frame-major states, keep masks, a tensor output and no teacher-forcing API)
is checked through its plug-in module and overlay alone — against every committed fp32 fixture, and with
deliberately wrong variants caught where they live. MindSpore only (no torch)."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest

from parity.cli import main as parity_main
from parity.compare import CompareOptions, compare_dump
from parity.errors import ParityError
from parity.families import family_of_case, fixture_dumps
from parity.plugins import load_plugin
from parity.plugins.contract import BuildRequest
from parity.store import open_dump

HERE = os.path.dirname(os.path.abspath(__file__))           # --subject-path: the folder holding the package
FIXTURES = os.path.join(HERE, "..", "..", "fixtures", "reference")
SUBJECT = "third_party_port.plugin:make_plugin"
# the port is an OpenSoraT2V v1.3 port: every fp32 fixture of that family
FP32_CASES = sorted(c for c, p in fixture_dumps() if p == "fp32" and family_of_case(c) == "opensora_v13")


def _compare(case: str, patch=None) -> dict:
    return compare_dump(os.path.join(FIXTURES, f"{case}-fp32"),
                        CompareOptions(subject=SUBJECT, subject_path=HERE, subject_patch=patch, progress=False))


def _failing(report: dict) -> list[str]:
    return [f"{p['name']} ({p['mode']}): {p['message'].splitlines()[0] if p['message'] else ''}"
            for p in report["probes"] if not p["passed"]]


def test_every_committed_fp32_fixture_is_found():
    assert {"tiny-sparse", "tiny-dense", "tiny-32", "padded-batch"} <= set(FP32_CASES)


@pytest.mark.parametrize("case", FP32_CASES)
def test_port_passes_every_probe_with_the_shipped_tolerances(case):
    report = _compare(case)
    assert report["passed"] and not _failing(report), f"{case}: {_failing(report)}"
    assert report["subject"]["plugin"] == "third-party-port"
    assert report["not_evaluated"] == []
    # every probe of the dump is judged in both modes, or listed as not applicable with its reason
    judged = {(p["name"], p["mode"]) for p in report["probes"]}
    not_applicable = {e["name"] for e in report["not_applicable"]}
    for name in set(open_dump(os.path.join(FIXTURES, f"{case}-fp32")).probes) - not_applicable:
        assert {(name, "isolated"), (name, "accumulated")} <= judged, f"{case}: {name} was not judged in both modes"
    # the port's masks (0/1 keep, repeated per query) can only match the reference's biases by meaning
    masks = [p for p in report["probes"] if p["probe_class"] == "mask"]
    assert masks and all(p["criterion"] == "meaning" and p["compared_by"].startswith("meaning: which keys each "
                                                                                      "query may attend")
                         and "'keep'" in p["compared_by"] for p in masks)
    # the port's own names appear in the report, e.g. its block cells
    paths = {p["name"]: p["subject_path"] for p in report["probes"]}
    assert paths["hidden_states_0_block"] == "layers.0"


def test_probes_a_dense_port_does_not_build_are_not_applicable_with_the_reason():
    report = _compare("tiny-dense")   # sparse1d off: the port builds no ratio-4 Skiparse masks
    listed = {e["name"]: e["why"] for e in report["not_applicable"]}
    assert set(listed) == {f"{stem}_sparse_4_{g}" for stem in ("attention_mask", "encoder_attention_mask")
                           for g in (False, True)}
    assert all("only when sparse1d is on" in why for why in listed.values())
    assert not any(p["name"] in listed for p in report["probes"])   # neither passed nor failed


def test_cli_compare_with_the_port_as_subject(tmp_path, capsys):
    out = tmp_path / "report"
    code = parity_main(["compare", os.path.join(FIXTURES, "padded-batch-fp32"), "--subject", SUBJECT,
                        "--subject-path", HERE, "--report", str(out)])
    assert code == 0, capsys.readouterr()
    with open(out / "parity.json", encoding="utf-8") as fh:
        report = json.load(fh)
    assert report["passed"] and report["subject"]["plugin"] == "third-party-port"
    assert report["subject"]["source"] == os.path.realpath(HERE)
    assert "PASS" in (out / "parity.md").read_text(encoding="utf-8")


# ---- wrong variants: caught, and first diverging where the bug is ---------------------------------------------
@contextlib.contextmanager
def _inverted_group_keep_mask(model):
    """The group-skip keep mask built inverted (a port mixing up keep and discard in one place)."""
    original = model.skiparse_keep_masks

    def wrong(video_keep, text_keep, ratio):
        single, group, text = original(video_keep, text_keep, ratio)
        return (single, ~group, text) if ratio > 1 else (single, group, text)
    object.__setattr__(model, "skiparse_keep_masks", wrong)
    try:
        yield
    finally:
        del model.__dict__["skiparse_keep_masks"]


@contextlib.contextmanager
def _rope_axes_swapped(model):
    """RoPE's first two thirds rotated by the h and t coordinates instead of t and h."""
    rope = model.layers[0].self_attn.rope
    original = rope.axis_positions
    rope.axis_positions = lambda grid: (lambda t, h, w: (h, t, w))(*original(grid))
    rope._tables.clear()
    try:
        yield
    finally:
        del rope.axis_positions
        rope._tables.clear()


@contextlib.contextmanager
def _group_layers_discard_kept_keys(model):
    """Group-skip layers read the keep mask as a discard mask in self-attention (one block type wrong)."""
    patched = []
    for i, layer in enumerate(model.layers):
        if model.cfg.layer_kind(i) == (model.cfg.ratio, True):
            attn = layer.self_attn
            original = attn.construct
            object.__setattr__(attn, "construct", lambda x, keep, grid, _f=original: _f(x, ~keep, grid))
            patched.append(attn)
    try:
        yield
    finally:
        for attn in patched:
            del attn.__dict__["construct"]


VARIANTS = {   # name -> (patch, case, first divergence (isolated))
    "inverted_group_keep_mask": (_inverted_group_keep_mask, "tiny-sparse", "attention_mask_sparse_4_True"),
    "rope_axes_swapped": (_rope_axes_swapped, "tiny-sparse", "hidden_states_0_block"),
    "group_layers_discard_kept_keys": (_group_layers_discard_kept_keys, "padded-batch", "hidden_states_3_block"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_wrong_variant_is_caught_at_its_probe(name):
    patch, case, expected = VARIANTS[name]
    report = _compare(case, patch)
    assert not report["passed"], f"{name} was not caught"
    fd = report["first_divergence"]
    assert (fd["probe"], fd["mode"]) == (expected, "isolated"), f"{name}: first divergence {fd}, expected {expected}"
    isolated = [p for p in report["probes"] if p["mode"] == "isolated"]
    order = [p["name"] for p in isolated]
    assert all(p["passed"] for p in isolated[:order.index(expected)]), f"{name}: a probe before {expected} failed"
    caught = isolated[order.index(expected)]
    if caught["probe_class"] == "mask":   # told by meaning, naming the first permission that differs
        assert caught["criterion"] == "meaning" and "compared by meaning" in caught["message"]
        assert "reference allows True, subject allows False" in caught["message"]




# ---- the plug-in's own pieces ----------------------------------------------------------------------------------
def _plugin():
    return load_plugin(SUBJECT, "subject", HERE)


def test_weights_are_mapped_strictly_onto_the_ports_names():
    dump = open_dump(os.path.join(FIXTURES, "tiny-sparse-fp32"))
    weights = dict(dump.load_weights())
    plugin = _plugin()
    model = plugin.build(BuildRequest("opensora_v13", dump.config, weights, "fp32"))
    np.testing.assert_array_equal(model.layers[2].self_attn.wq.weight.asnumpy(),
                                  weights["transformer_blocks.2.attn1.to_q.weight"])
    broken = dict(weights)
    broken.pop("proj_out.bias")
    broken["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ParityError, match=r"unexpected extra\.weight.*missing \(port head\.linear\.bias\)"):
        plugin.build(BuildRequest("opensora_v13", dump.config, broken, "fp32"))
    with pytest.raises(ParityError, match="fp32 only"):
        plugin.build(BuildRequest("opensora_v13", dump.config, weights, "bf16"))


@pytest.mark.parametrize("adapter, shape", [("frame_major", (2, 3, 20, 8)), ("frame_major_seq_first", (2, 3, 20, 8)),
                                            ("modulation_rows", (2, 6, 8))])
def test_the_ports_adapters_round_trip(adapter, shape):
    a = _plugin().adapters[adapter]
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    ctx = {"frame": 3, "height": 4, "width": 5, "batch": 2}
    np.testing.assert_array_equal(a.from_reference(a.to_reference(x, **ctx), **ctx), x)
    if adapter == "frame_major_seq_first":   # token (t=1, hw=2) of batch 1 is row 1·20 + 2 of the sequence
        np.testing.assert_array_equal(a.to_reference(x, **ctx)[22, 1], x[1, 1, 2])
