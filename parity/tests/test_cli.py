"""The CLI's happy paths, end to end on the committed fixtures: cases, dump, ingest, convert, compare,
report, verify. (Bad input is covered by test_cli_errors.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from parity.cli import main
from parity.families.opensora_v13.cases import CASES
from parity.safetensors_io import load_safetensors, save_safetensors
from parity.store import DumpWriter, open_dump

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures", "reference")
SPARSE = os.path.join(FIXTURES, "tiny-sparse-fp32")


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cases_lists_every_builtin_case(capsys):
    code, out, err = _run(capsys, "cases")
    assert code == 0, err
    for name in CASES:
        assert name in out
    assert "(default)" in out


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "parity", "cases"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "tiny-sparse" in res.stdout


def test_verify_committed_fixture(capsys):
    code, out, _ = _run(capsys, "verify", SPARSE)
    assert code == 0 and out.strip().endswith("OK")


def test_compare_writes_report_and_passes(capsys, tmp_path):
    code, out, _ = _run(capsys, "compare", SPARSE, "--report", str(tmp_path), "--no-progress")
    assert code == 0, out
    assert out.startswith("PASS tiny-sparse fp32")
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and report["first_divergence"] is None and report["mode"] == "both"
    assert {p["mode"] for p in report["probes"]} == {"isolated", "accumulated"}
    assert (tmp_path / "parity.md").read_text().startswith("**PASS**")
    assert (tmp_path / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # re-render from parity.json
    (tmp_path / "parity.md").unlink()
    code, out, _ = _run(capsys, "report", str(tmp_path))
    assert code == 0 and (tmp_path / "parity.md").exists()


def test_compare_several_dumps_writes_subdirs_and_summary(capsys, tmp_path):
    dense = os.path.join(FIXTURES, "tiny-dense-fp32")
    code, _, _ = _run(capsys, "compare", SPARSE, dense, "--mode", "isolated", "--report", str(tmp_path),
                      "--no-progress")
    assert code == 0
    assert (tmp_path / "tiny-sparse-fp32" / "parity.json").exists()
    assert (tmp_path / "tiny-dense-fp32" / "parity.json").exists()
    summary = (tmp_path / "summary.md").read_text()
    assert "tiny-sparse" in summary and "tiny-dense" in summary


def _perturbed_copy(src: str, dst: str, probe: str, delta: float) -> None:
    """A valid dump identical to ``src`` except one reference state, nudged by ``delta``."""
    dump = open_dump(src)
    with DumpWriter(dst, family=dump.family, precision=dump.precision, config=dump.config,
                    seeds=dump.manifest["seeds"], versions=dump.manifest["versions"], case=dump.case) as w:
        for name in dump.input_names:
            w.add_input(name, dump.input(name))
        w.write_weights(dump.load_weights())
        for name in dump.probes:
            arr = np.array(dump.state(name))
            if name == probe:
                arr.flat[7] += delta
            w.add_state(name, arr)


def test_compare_exit_1_and_first_divergence_on_a_wrong_state(capsys, tmp_path):
    bad = str(tmp_path / "bad")
    _perturbed_copy(SPARSE, bad, "hidden_states_2_block", 1e-3)
    code, out, _ = _run(capsys, "compare", bad, "--no-progress", "--report", str(tmp_path / "rep"))
    assert code == 1
    assert "first divergence: hidden_states_2_block (isolated)" in out
    assert "Mismatched elements: 1 / " in out or "mismatched elements: 1 / " in out
    report = json.loads((tmp_path / "rep" / "parity.json").read_text())
    assert report["first_divergence"]["reference_path"] == "transformer_blocks.2"


def test_baseline_flags_error_growth_inside_tolerance(capsys, tmp_path):
    code, _, _ = _run(capsys, "compare", SPARSE, "--mode", "isolated", "--report", str(tmp_path / "base"),
                      "--no-progress")
    assert code == 0
    baseline = json.loads((tmp_path / "base" / "parity.json").read_text())
    for p in baseline["probes"]:
        if p["name"] == "hidden_states_1_block":
            p["max_abs"] = p["max_abs"] / 10  # pretend the port used to be 10x closer here
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    code, out, _ = _run(capsys, "compare", SPARSE, "--mode", "isolated", "--baseline",
                        str(tmp_path / "baseline.json"), "--no-progress")
    assert code == 1 and "hidden_states_1_block" in out


def test_probes_filter(capsys):
    code, out, _ = _run(capsys, "compare", SPARSE, "--probes", "hidden_states_*_block", "--no-progress")
    assert code == 0 and "10/10 probes" in out  # 4 blocks + before_block, both modes


@pytest.mark.torch
def test_dump_from_files_matches_the_case_dump(capsys, tmp_path):
    ref = open_dump(SPARSE)
    (tmp_path / "config.json").write_text(json.dumps(ref.config))
    shutil.copy(os.path.join(SPARSE, "weights.safetensors"), tmp_path / "w.safetensors")
    inputs = ref.inputs()
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, 0]   # (B, L, Dc) is accepted too
    inputs["encoder_attention_mask"] = inputs["encoder_attention_mask"][:, 0]
    np.savez(tmp_path / "in.npz", **inputs)
    out = tmp_path / "dump"
    code, stdout, _ = _run(capsys, "dump", "--config", str(tmp_path / "config.json"), "--weights",
                           str(tmp_path / "w.safetensors"), "--inputs", str(tmp_path / "in.npz"), "--out", str(out))
    assert code == 0, stdout
    new = open_dump(str(out))
    for probe in ref.probes:
        np.testing.assert_array_equal(new.state(probe), ref.state(probe), err_msg=probe)


@pytest.mark.torch
def test_ingest_hand_made_folder_then_compare(capsys, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in os.listdir(os.path.join(SPARSE, "states")):
        shutil.copy(os.path.join(SPARSE, "states", f), legacy / f)
    os.remove(legacy / "hidden_states_3_block.npy")
    np.save(legacy / "my_debug_tensor.npy", np.zeros(3))
    shutil.copy(os.path.join(SPARSE, "config.json"), tmp_path / "config.json")
    out = tmp_path / "ingested"
    code, stdout, _ = _run(capsys, "ingest", str(legacy), "--config", str(tmp_path / "config.json"), "--weights",
                           os.path.join(SPARSE, "weights.safetensors"), "--out", str(out))
    assert code == 0, stdout
    assert "missing 1 probes: hidden_states_3_block" in stdout
    assert "ignored 1 unknown files: my_debug_tensor" in stdout
    code, stdout, _ = _run(capsys, "compare", str(out), "--no-progress")
    assert code == 0, stdout
    assert "47/47 probes" in stdout  # the isolated output head needs the missing block 3 output
    assert any(line.split()[:3] == ["hidden_states_output", "isolated", "not"] for line in stdout.splitlines())


def test_convert_round_trip_is_exact(capsys, tmp_path):
    src = os.path.join(SPARSE, "weights.safetensors")
    ms_path, back = tmp_path / "ms.safetensors", tmp_path / "back.safetensors"
    code, _, _ = _run(capsys, "convert", "--src", src, "--dst", str(ms_path),
                      "--config", os.path.join(SPARSE, "config.json"))
    assert code == 0
    code, _, _ = _run(capsys, "convert", "--src", str(ms_path), "--dst", str(back), "--to", "torch")
    assert code == 0
    a, b = load_safetensors(src), load_safetensors(str(back))
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
