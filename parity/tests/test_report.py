"""parity.report: files written, JSON round trip, markdown, PNG, summary, rerender, baseline."""

from __future__ import annotations

import copy
import json
import math

import pytest

from parity.errors import ParityError
from parity.report import (
    SCHEMA,
    apply_baseline,
    dumps_result,
    load_baseline,
    load_result,
    render_markdown,
    rerender,
    summary_line,
    write_report,
    write_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _probe(name, mode, cls, block=None, max_abs=1e-6, passed=True, atol=1e-5, rtol=1e-5, **kw):
    p = {"name": name, "mode": mode, "probe_class": cls, "block": block, "shape": [2, 16, 64],
         "max_abs": max_abs, "mean_abs": max_abs / 4, "max_rel": 1e-4, "cosine": 1 - 1e-12,
         "rel_fro": 1e-6, "p99_abs": max_abs / 2, "frac_outside": 0.0, "min_passing_atol": max_abs,
         "nan_ref": 0, "nan_sub": 0, "inf_ref": 0, "inf_sub": 0, "atol": atol, "rtol": rtol,
         "criterion": "absolute", "lowp_ref_max_abs": None, "baseline_max_abs": None, "passed": passed,
         "message": f"probe {name}: within tolerance", "reference_path": f"torch.{name}", "subject_path": f"ms.{name}"}
    p.update(kw)
    return p


def make_result(case="tiny-sparse", n_blocks=3, fail_block=None, mode="both"):
    probes = [_probe("hidden_states_input", "isolated", "input", atol=0, rtol=0, max_abs=0.0),
              _probe("attention_mask_converted", "isolated", "mask", atol=0, rtol=0, max_abs=0.0,
                     shape=[2, 1, 16])]
    blocks = []
    for i in range(n_blocks):
        iso = 1e-6 * (i + 1)
        acc = 3e-6 * (i + 1)
        for m, v in (("isolated", iso), ("accumulated", acc)):
            ok = not (fail_block == i and m == "isolated")
            probes.append(_probe(f"hidden_states_{i}_block", m, "block", block=i, max_abs=v if ok else 3.1e-4,
                                 passed=ok, atol=1e-5 if m == "isolated" else 5e-5,
                                 message=("probe x: Not equal to tolerance rtol=1e-05, atol=1e-05\nMax absolute "
                                          "difference: 3.1e-04") if not ok else "ok"))
        blocks.append({"block": i, "isolated_max_abs": iso, "accumulated_max_abs": acc, "growth": acc / iso})
    probes.append(_probe("hidden_states_output", "accumulated", "output", max_abs=2e-5, atol=5e-5, rtol=1e-4,
                         shape=[2, 4, 3, 8, 8]))
    passed = fail_block is None
    return {
        "schema": SCHEMA, "case": case, "dump": f"/dumps/{case}", "precision": "fp32",
        "subject_precision": "fp32", "device": "CPU", "mode": mode, "passed": passed,
        "first_divergence": None if passed else {
            "probe": f"hidden_states_{fail_block}_block", "mode": "isolated",
            "reference_path": f"transformer_blocks.{fail_block}", "subject_path": f"transformer_blocks.{fail_block}"},
        "created": "2026-11-22T00:00:00Z", "versions": {"numpy": "1.26.4", "parity": "0.1.0"},
        "duration_s": 1.25, "tolerance_file": "parity/tolerances.json", "tolerance_version": 1,
        "probes": probes, "blocks": blocks,
    }


def test_write_report_files_and_round_trip(tmp_path):
    res = make_result()
    paths = write_report(res, tmp_path / "r")
    assert [p.name for p in paths] == ["parity.json", "parity.md", "parity.png"]
    assert all(p.is_file() for p in paths)
    text = paths[0].read_text()
    data = json.loads(text)  # strict, valid JSON
    assert data["schema"] == SCHEMA and [p["name"] for p in data["probes"]] == [p["name"] for p in res["probes"]]
    back = load_result(tmp_path / "r")
    assert back == res
    assert paths[2].read_bytes()[:8] == PNG_MAGIC
    md = paths[1].read_text().splitlines()
    assert md[0] == "**PASS** tiny-sparse fp32 (CPU, both): 9/9 probes within tolerance"
    assert "| probe | mode | shape | max abs | mean abs | max rel | cosine | atol | rtol | pass |" in md
    assert any(line.startswith("| `hidden_states_1_block` | isolated | 2×16×64 | 2.0e-06 |") for line in md)
    assert any(line.startswith("| 2 | 3.0e-06 | 9.0e-06 | 3×") for line in md)


def test_nonfinite_values_are_strings_and_come_back(tmp_path):
    res = make_result()
    res["probes"][2].update(max_abs=math.nan, max_rel=math.inf, cosine=math.nan, rel_fro=-math.inf,
                            passed=False, nan_sub=3)
    res["passed"] = False
    res["blocks"][0]["growth"] = math.inf
    text = dumps_result(res)
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text.replace('"Infinity"', "") \
        .replace('"-Infinity"', "")
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # no bare NaN tokens
    write_report(res, tmp_path)
    back = load_result(tmp_path / "parity.json")
    p = back["probes"][2]
    assert math.isnan(p["max_abs"]) and p["max_rel"] == math.inf and p["rel_fro"] == -math.inf
    assert back["blocks"][0]["growth"] == math.inf
    md = (tmp_path / "parity.md").read_text()
    assert "| NaN |" in md and "| inf |" in md


def test_numpy_values_are_encoded(tmp_path):
    np = pytest.importorskip("numpy")
    res = make_result()
    res["probes"][0].update(max_abs=np.float32(0.5), nan_ref=np.int64(2), passed=np.bool_(True),
                            shape=(np.int64(3), 4))
    res["probes"][0]["passed"] = True
    write_report(res, tmp_path)
    back = load_result(tmp_path)
    assert back["probes"][0]["max_abs"] == 0.5 and back["probes"][0]["nan_ref"] == 2
    assert back["probes"][0]["shape"] == [3, 4]


def test_fail_summary_line_and_failures_section(tmp_path):
    res = make_result(fail_block=2)
    line = summary_line(res)
    assert line == ("**FAIL** tiny-sparse fp32 (CPU, both): 8/9 probes within tolerance; first divergence: "
                    "hidden_states_2_block (isolated) — reference transformer_blocks.2 / subject transformer_blocks.2")
    write_report(res, tmp_path)
    md = (tmp_path / "parity.md").read_text()
    assert md.splitlines()[0] == line and "## Failures" in md and "Max absolute difference: 3.1e-04" in md
    assert "❌" in md and "✅" in md
    res2 = make_result()
    res2["subject_precision"] = "bf16-emulated"
    assert summary_line(res2).startswith("**PASS** tiny-sparse bf16-emulated vs fp32 reference (CPU, both)")


def test_png_handles_zeros_missing_modes_and_no_blocks(tmp_path):
    res = make_result(mode="isolated")
    for b in res["blocks"]:
        b["accumulated_max_abs"] = None
        b["growth"] = None
    res["blocks"][1]["isolated_max_abs"] = 0.0
    paths = write_report(res, tmp_path / "a")
    assert paths[2].read_bytes()[:8] == PNG_MAGIC
    res = make_result(n_blocks=0)
    paths = write_report(res, tmp_path / "b")
    assert paths[2].read_bytes()[:8] == PNG_MAGIC
    assert "Per-block" not in paths[1].read_text()


def test_summary_for_several_dumps_and_rerender(tmp_path):
    results = [make_result("tiny-sparse"), make_result("tiny dense", fail_block=0), make_result("tiny-sparse")]
    results[1]["dump"] = "/dumps/tiny dense/"
    summary = write_summary(results, tmp_path, write_reports=True)
    lines = summary.read_text().splitlines()
    assert lines[0] == "**FAIL** 2/3 dumps passed"
    assert lines[2].endswith("[report](tiny-sparse/parity.md)") and lines[2].startswith("- **PASS** tiny-sparse")
    assert lines[3].endswith("[report](tiny-dense/parity.md)") and lines[3].startswith("- **FAIL** tiny dense")
    assert lines[4].endswith("[report](tiny-sparse-2/parity.md)")
    for sub in ("tiny-sparse", "tiny-dense", "tiny-sparse-2"):
        assert (tmp_path / sub / "parity.json").is_file() and (tmp_path / sub / "parity.png").is_file()
    # rerender rebuilds md/png and the summary (same order) from the JSON files
    for sub in ("tiny-sparse", "tiny-dense", "tiny-sparse-2"):
        (tmp_path / sub / "parity.md").unlink()
        (tmp_path / sub / "parity.png").unlink()
    before = summary.read_text()
    summary.write_text(before)  # same links
    written = rerender(tmp_path)
    assert (tmp_path / "tiny-dense" / "parity.md").read_text().startswith("**FAIL** tiny dense")
    assert summary.read_text() == before and summary in written
    # the CLI layout: reports already written per dump directory, summary only links them
    other = tmp_path / "cli"
    write_report(results[0], other / "tiny-sparse")
    s2 = write_summary(results[:1], other)
    assert s2.read_text().splitlines()[2].endswith("[report](tiny-sparse/parity.md)")
    assert sorted(p.name for p in other.iterdir() if not p.name.startswith(".")) == ["summary.md", "tiny-sparse"]
    # single report dir; a parity.md edited by hand (notes) is never overwritten, a deleted one is re-rendered
    (tmp_path / "tiny-dense" / "parity.md").write_text("my notes")
    with pytest.raises(ParityError, match=r"tiny-dense/parity.md: exists but was not written by this tool.*move it"):
        rerender(tmp_path / "tiny-dense")
    assert (tmp_path / "tiny-dense" / "parity.md").read_text() == "my notes"
    (tmp_path / "tiny-dense" / "parity.md").unlink()
    rerender(tmp_path / "tiny-dense")
    assert (tmp_path / "tiny-dense" / "parity.md").read_text().startswith("**FAIL**")


def test_rerender_errors(tmp_path):
    with pytest.raises(ParityError, match="no parity.json"):
        rerender(tmp_path)
    (tmp_path / "parity.json").write_text("{broken")
    with pytest.raises(ParityError, match="not valid JSON"):
        rerender(tmp_path)
    (tmp_path / "parity.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ParityError, match="schema is 'other'"):
        rerender(tmp_path)
    bad = make_result()
    del bad["probes"][0]["mode"]
    (tmp_path / "parity.json").write_text(json.dumps(bad))
    with pytest.raises(ParityError, match=r"probes\[0\] needs 'mode'"):
        rerender(tmp_path)
    bad = make_result()
    bad["probes"][1]["max_abs"] = "big"
    (tmp_path / "parity.json").write_text(json.dumps(bad))
    with pytest.raises(ParityError, match="'max_abs' must be a number or null"):
        load_result(tmp_path)


def test_write_report_rejects_bad_results(tmp_path):
    bad = make_result()
    del bad["passed"]
    with pytest.raises(ParityError, match="missing key 'passed'"):
        write_report(bad, tmp_path)
    bad = make_result()
    bad["probes"][0]["weird"] = object()
    with pytest.raises(ParityError, match="cannot be written"):
        write_report(bad, tmp_path)


def test_baseline(tmp_path):
    base = make_result()
    write_report(base, tmp_path / "base")
    bl = load_baseline(tmp_path / "base" / "parity.json")
    assert bl[("hidden_states_1_block", "isolated")] == 2e-6 and len(bl) == 9
    assert bl[("hidden_states_input", "isolated")] == 0.0

    cur = make_result()
    cur["probes"][4]["max_abs"] = 2e-6 * 2.5   # hidden_states_1_block isolated grew 2.5x, still < atol
    cur["probes"][6]["max_abs"] = 3e-6 * 1.9   # hidden_states_2_block isolated: 1.9x, fine
    cur["probes"][0]["max_abs"] = 1e-40        # baseline 0, current below the zero tolerance: fine
    out = apply_baseline(cur, bl, factor=2.0)
    assert out is cur and not cur["passed"]
    p = cur["probes"][4]
    assert not p["passed"] and p["baseline_regressed"] and p["baseline_max_abs"] == 2e-6
    assert p["message"].splitlines()[0] == ("probe hidden_states_1_block (isolated): max abs 5.0e-06 is 2.5× the "
                                            "baseline 2.0e-06 (limit 2×)")
    assert cur["probes"][6]["passed"] and cur["probes"][0]["passed"]
    assert cur["first_divergence"]["probe"] == "hidden_states_1_block"
    assert cur["baseline_factor"] == 2.0
    md = render_markdown(cur)
    assert "↑base" in md and md.startswith("**FAIL**")

    # a baseline of exactly zero: any real growth regresses
    cur = make_result()
    cur["probes"][1]["max_abs"] = 1e-7
    apply_baseline(cur, bl)
    assert not cur["probes"][1]["passed"] and "above the baseline 0" in cur["probes"][1]["message"]

    # within factor everywhere: passed stays True; an already failing result never becomes True
    cur = make_result()
    assert apply_baseline(cur, bl)["passed"]
    cur = make_result(fail_block=1)
    fd = copy.deepcopy(cur["first_divergence"])
    assert not apply_baseline(cur, bl)["passed"] and cur["first_divergence"] == fd

    # round trip of a result with baseline fields
    write_report(cur, tmp_path / "cur")
    assert load_result(tmp_path / "cur")["baseline_factor"] == 2.0


def test_baseline_errors(tmp_path):
    with pytest.raises(ParityError, match="report not found"):
        load_baseline(tmp_path / "missing.json")
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(ParityError, match="must be a JSON object"):
        load_baseline(tmp_path / "b.json")
    with pytest.raises(ParityError, match="factor"):
        apply_baseline(make_result(), {}, factor=0)
