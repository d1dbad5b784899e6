"""The parity suite: one test per (case, precision, mode, probe) of every reference dump.

Each dump is compared once per session (the subject model runs once per mode) and every probe becomes a
test id such as ``test_probe[tiny-sparse-fp32-isolated-hidden_states_2_block]``. Needs MindSpore, not torch.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import parity_reference_dirs
from parity.compare import CompareOptions, compare_dump
from parity.errors import ParityError

_RESULTS: dict[str, dict | ParityError] = {}


def _modes(config) -> tuple:
    mode = config.getoption("--parity-mode")
    return ("isolated", "accumulated") if mode == "both" else (mode,)


def _label(dump_dir: str, manifest: dict) -> str:
    return f"{manifest.get('case') or os.path.basename(dump_dir)}-{manifest.get('precision')}"


def pytest_generate_tests(metafunc):
    if "parity_probe" not in metafunc.fixturenames:
        return
    config = metafunc.config
    precision = config.getoption("--parity-precision")
    params = []
    for d in parity_reference_dirs(config):
        try:
            with open(os.path.join(d, "manifest.json"), "r", encoding="utf-8") as fh:
                manifest = json.load(fh)
            probes, prec = list(manifest["probes"]), manifest["precision"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            params.append(pytest.param(d, None, None, id=f"{os.path.basename(d)}-unreadable",
                                       marks=pytest.mark.xdist_group(d)))
            continue
        if precision and prec != precision:
            continue
        for mode in _modes(config):
            for probe in probes:
                params.append(pytest.param(d, mode, probe, id=f"{_label(d, manifest)}-{mode}-{probe}",
                                           marks=pytest.mark.xdist_group(d)))
    metafunc.parametrize(("parity_dump", "parity_mode", "parity_probe"), params)


@pytest.fixture(scope="session")
def parity_results(request):
    yield _RESULTS
    report_dir = request.config.getoption("--parity-report")
    if report_dir:
        from parity.report import write_report

        for dump_dir, result in _RESULTS.items():
            if isinstance(result, dict):
                write_report(result, os.path.join(report_dir, os.path.basename(dump_dir)))


def _result_for(dump_dir: str, config, results: dict) -> dict:
    if dump_dir not in results:
        try:
            results[dump_dir] = compare_dump(dump_dir, CompareOptions(modes=_modes(config), progress=False))
        except ParityError as exc:
            results[dump_dir] = exc
    result = results[dump_dir]
    if isinstance(result, ParityError):
        pytest.fail(f"{dump_dir}: {result}", pytrace=False)
    return result


def test_probe(parity_dump, parity_mode, parity_probe, parity_results, request):
    if parity_mode is None:
        pytest.fail(f"{parity_dump}: manifest.json unreadable; run 'parity verify {parity_dump}'", pytrace=False)
    result = _result_for(parity_dump, request.config, parity_results)
    entry = next((p for p in result["probes"] if p["name"] == parity_probe and p["mode"] == parity_mode), None)
    assert entry is not None, f"probe {parity_probe} ({parity_mode}) missing from the comparison of {parity_dump}"
    if not entry["passed"]:
        pytest.fail(entry["message"], pytrace=False)
