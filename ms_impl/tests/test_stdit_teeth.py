"""Teeth of the stdit family: the issue's wrong STDiT variants fail parity in fp32, first diverging (isolated mode)
where the bug lives; the correct port passes every committed stdit fixture; fp16 NaN is never a pass.
Needs MindSpore and the committed fixtures only (no torch)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ms_impl.mutants_stdit import MUTANTS
from parity.compare import CompareOptions, compare_dump
from parity.errors import ReferenceProblem

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "reference")


def _compare(name: str, mutant: str | None = None) -> dict:
    patch = MUTANTS[mutant].apply if mutant else None
    return compare_dump(os.path.join(FIXTURES, name), CompareOptions(subject_patch=patch, progress=False))


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_fp32_catches_and_localises(name):
    mutant = MUTANTS[name]
    result = _compare("stdit-small-fp32", name)
    assert not result["passed"], f"{name}: the fp32 profile did not catch '{mutant.description}'"
    fd = result["first_divergence"]
    assert (fd["probe"], fd["mode"]) == (mutant.first_divergence, "isolated"), fd
    isolated = [p for p in result["probes"] if p["mode"] == "isolated"]
    order = [p["name"] for p in isolated]
    assert all(p["passed"] for p in isolated[: order.index(mutant.first_divergence)])
    worst = next(p for p in isolated if p["name"] == mutant.first_divergence)
    assert worst["max_abs"] > 0.1, worst["max_abs"]   # a loud bug, far beyond any tolerance


@pytest.mark.parametrize("name", ["stdit-small-fp32", "stdit-small-bf16", "stdit-small-fp16"])
def test_correct_port_passes_and_is_restored_after_a_mutant(name):
    _compare(name, "temporal_own_norm_modulation")
    result = _compare(name)
    assert result["passed"], [f"{p['name']} ({p['mode']})" for p in result["probes"] if not p["passed"]]


def test_fp16_overflow_is_reported_as_nan_never_passed():
    with pytest.raises(ReferenceProblem, match="NaN"):
        _compare("stdit-fp16-nan-fp16")


def test_the_port_overflows_in_fp16_where_the_reference_does():
    from ms_impl.tests import stdit_helpers as H
    from parity.families.stdit.testing import probe_specs
    from parity.store import open_dump

    dump = open_dump(os.path.join(FIXTURES, "stdit-fp16-nan-fp16"))
    specs = probe_specs(dump.config["depth"])
    model = H.build_model(dump.config, dump.load_weights(), "fp16")
    _, got = H.capture(model, dump.inputs(), specs)

    def first_non_finite(state):
        return next(s.name for s in specs if s.probe_class != "input" and not np.isfinite(state(s.name)).all())
    assert first_non_finite(lambda n: got[n][0]) == first_non_finite(lambda n: dump.state(n, "state")) \
        == "hidden_states_0_block"
