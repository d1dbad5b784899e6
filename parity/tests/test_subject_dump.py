"""Subject dumps: ``parity run-subject`` then ``parity compare --against`` gives the in-process compare's report,
on every committed fixture and on deliberately wrong variants, and the offline side needs neither framework."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from parity.compare import CompareOptions, compare_dump
from parity.errors import ParityError, ReferenceProblem
from parity.pytest_plugin import session_result
from parity.subject_dump import record_subject

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "fixtures", "reference", "*")))
# what may differ between two runs of the same comparison: when and how long, and where the subject was replayed from
_VOLATILE = ("created", "duration_s")


def _same_report(in_process: dict, offline: dict) -> None:
    for key in set(in_process) | set(offline):
        if key in _VOLATILE:
            continue
        if key == "subject":
            assert {k: v for k, v in offline[key].items() if k != "recorded_in"} == in_process[key]
            continue
        assert offline.get(key) == in_process.get(key), key


def _offline(ref: str, subject_dump: str, **kw) -> dict:
    return compare_dump(ref, CompareOptions(progress=False, against=subject_dump, **kw))


@pytest.mark.parametrize("fixture", [pytest.param(f, id=os.path.basename(f), marks=pytest.mark.xdist_group(f))
                                     for f in FIXTURES])
def test_offline_compare_gives_the_in_process_report(tmp_path, fixture, parity_results, request):
    """The in-process report is the parity suite's own comparison of the fixture (same group, computed once)."""
    pytest.importorskip("mindspore", reason="recording a subject dump runs the MindSpore subject")
    in_process = session_result(fixture, request.config, parity_results)
    out = str(tmp_path / "subject")
    record_subject(fixture, out, CompareOptions(progress=False))
    if isinstance(in_process, ReferenceProblem):  # NaN in the reference (STDiT fp16): refused alike, offline too
        with pytest.raises(ReferenceProblem):
            _offline(fixture, out)
        return
    assert not isinstance(in_process, Exception), in_process
    _same_report(in_process, _offline(fixture, out))


# the teeth suite's variants (ms_impl.mutants.MUTANTS), named here so collection needs no MindSpore
TEETH = ("gelu_exact", "layernorm_eps_1e-5", "rope_interleaved", "skiparse_swapped", "sinusoid_sin_cos",
         "text_mask_ignored", "norm_before_cross_attn")


@pytest.mark.parametrize("mutant", TEETH)
def test_offline_compare_localises_a_wrong_variant_like_in_process(tmp_path, mutant):
    pytest.importorskip("mindspore", reason="recording a subject dump runs the MindSpore subject")
    from ms_impl.mutants import MUTANTS

    fixture = os.path.join(ROOT, "fixtures", "reference", "padded-batch-fp32")
    patch = MUTANTS[mutant].apply
    out = str(tmp_path / "subject")
    record_subject(fixture, out, CompareOptions(progress=False, subject_patch=patch))
    in_process = compare_dump(fixture, CompareOptions(progress=False, subject_patch=patch))
    offline = _offline(fixture, out)
    assert not offline["passed"] and offline["first_divergence"]["probe"] == MUTANTS[mutant].first_divergence
    _same_report(in_process, offline)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    pytest.importorskip("mindspore", reason="recording a subject dump runs the MindSpore subject")
    fixture = os.path.join(ROOT, "fixtures", "reference", "tiny-sparse-fp32")
    out = str(tmp_path_factory.mktemp("sd") / "subject")
    record_subject(fixture, out, CompareOptions(progress=False, modes=("accumulated",)))
    return fixture, out


_NO_FRAMEWORKS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "mindspore"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from parity.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "mindspore")]
sys.exit(code)
"""


def test_offline_compare_runs_without_torch_or_mindspore(recorded, tmp_path):
    fixture, out = recorded
    proc = subprocess.run([sys.executable, "-c", _NO_FRAMEWORKS, "compare", fixture, "--against", out, "--mode",
                           "accumulated", "--report", str(tmp_path / "rep")], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PASS tiny-sparse fp32 (ms_impl, fp32, CPU, accumulated): 25/25")
    report = json.loads((tmp_path / "rep" / "parity.json").read_text())
    assert report["subject"]["plugin"] == "ms_impl" and report["subject"]["recorded_in"] == os.path.abspath(out)


def test_offline_compare_refuses_what_does_not_belong_together(recorded, tmp_path):
    fixture, out = recorded
    with pytest.raises(ParityError, match="made with --mode accumulated, not isolated"):
        _offline(fixture, out)
    with pytest.raises(ParityError, match="made from other inputs than the reference dump"):
        _offline(os.path.join(ROOT, "fixtures", "reference", "tiny-dense-fp32"), out, modes=("accumulated",))
    with pytest.raises(ParityError, match="is a subject dump .*--against"):
        compare_dump(out, CompareOptions(progress=False))
    with pytest.raises(ParityError, match="not a subject dump"):
        _offline(fixture, fixture, modes=("accumulated",))
    with pytest.raises(ParityError, match="drop --subject"):
        _offline(fixture, out, modes=("accumulated",), subject="ms_impl")
