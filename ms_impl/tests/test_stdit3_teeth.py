"""Teeth of the stdit3 family: wrong variants of the MindSpore STDiT3 (``ms_impl/mutants_stdit3.py``) fail parity on
the committed fixtures, first diverging (isolated mode) where the bug lives, in fp32 and in bf16. Needs MindSpore
and the fixtures only (no torch)."""

from __future__ import annotations

import os

import pytest

from ms_impl.mutants_stdit3 import MUTANTS
from parity.compare import CompareOptions, compare_dump

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "reference")


def _compare(case: str, precision: str, mutant: str) -> dict:
    return compare_dump(os.path.join(FIXTURES, f"{case}-{precision}"),
                        CompareOptions(subject_patch=MUTANTS[mutant].apply, modes=("isolated",), progress=False))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_caught_and_localised(name, precision):
    mutant = MUTANTS[name]
    result = _compare(mutant.case, precision, name)
    assert not result["passed"], f"{name}: the {precision} profile did not catch '{mutant.description}'"
    fd = result["first_divergence"]
    assert fd["probe"] == mutant.first_divergence, f"{name}: first divergence {fd['probe']}"
    order = [p["name"] for p in result["probes"]]
    assert all(p["passed"] for p in result["probes"] if p["name"] in order[: order.index(fd["probe"])])


def test_mutants_restore_the_model():
    """After a mutant's ``with`` block the port passes again (patches are undone)."""
    name = "rope_rotate_half"
    patched = []

    def twice(model):
        import contextlib

        @contextlib.contextmanager
        def run():
            with MUTANTS[name].apply(model):
                pass
            patched.append(model)
            yield
        return run()

    result = compare_dump(os.path.join(FIXTURES, "stdit3-tiny-padded-fp32"),
                          CompareOptions(subject_patch=twice, modes=("isolated",), progress=False))
    assert patched and result["passed"]
