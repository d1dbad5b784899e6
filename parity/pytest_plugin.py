"""pytest plugin (entry point ``pytest11``): the parity suite as ordinary test ids, in any repository.

Installed with this package, it adds the ``--parity-*`` options and parametrizes every test that takes the
``parity_probe`` fixture over (reference dump, mode, probe). A repository runs the suite on its model with a
one-line test module::

    from parity.pytest_plugin import test_probe  # noqa: F401

and ``pytest --parity-reference dumps/* --parity-subject my-port`` (or ``parity_references`` /
``parity_subject`` in its pytest ini options). Each dump is compared once per session (the subject runs once per
mode); a test id reads ``test_probe[tiny-sparse-fp32-isolated-hidden_states_2_block]``. A selection that checks
nothing — no dump matched, or a dump without probes — fails and says why, never passes green.
"""

from __future__ import annotations

import glob
import json
import os

import pytest

_RESULTS_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("parity", "parity suite (reference dumps against a subject plug-in)")
    group.addoption("--parity-reference", nargs="+", metavar="DIR", default=None,
                    help="reference dump directories (default: the parity_references ini globs)")
    group.addoption("--parity-precision", choices=("fp32", "bf16", "fp16"), default=None,
                    help="only dumps of this precision")
    group.addoption("--parity-mode", choices=("isolated", "accumulated", "both"), default="both")
    group.addoption("--parity-report", metavar="DIR", default=None,
                    help="write parity.json/md/png per dump (and summary.md) here")
    group.addoption("--parity-subject", metavar="NAME|module:attr", default=None,
                    help="the subject plug-in (default: the parity_subject ini value, else ms_impl)")
    group.addoption("--parity-subject-path", metavar="DIR", default=None,
                    help="a checkout holding the subject's code")
    group.addoption("--parity-subject-option", metavar="KEY=VALUE", action="append", default=None,
                    help="an option of the subject plug-in (repeatable)")
    parser.addini("parity_references", type="linelist", default=[],
                  help="globs (relative to the rootdir) of the reference dumps the parity suite runs by default")
    parser.addini("parity_subject", default="", help="the subject plug-in the parity suite checks by default")


def parity_reference_dirs(config) -> list[str]:
    """The dumps the suite runs: ``--parity-reference`` or the ``parity_references`` ini globs."""
    given = config.getoption("--parity-reference")
    if given:
        return [os.path.abspath(d) for d in given]
    found = []
    for pattern in config.getini("parity_references"):
        full = pattern if os.path.isabs(pattern) else os.path.join(str(config.rootpath), pattern)
        found += [d for d in sorted(glob.glob(full)) if os.path.isfile(os.path.join(d, "manifest.json"))]
    return [os.path.abspath(d) for d in found]


def _modes(config) -> tuple:
    mode = config.getoption("--parity-mode")
    return ("isolated", "accumulated") if mode == "both" else (mode,)


def _label(dump_dir: str, manifest: dict) -> str:
    return f"{manifest.get('case') or os.path.basename(dump_dir)}-{manifest.get('precision')}"


def _fail_param(dump, why: str, test_id: str):
    return pytest.param(dump, None, why, id=test_id)


def pytest_generate_tests(metafunc):
    if "parity_probe" not in metafunc.fixturenames:
        return
    config = metafunc.config
    precision = config.getoption("--parity-precision")
    dirs = parity_reference_dirs(config)
    params = []
    for d in dirs:
        try:
            with open(os.path.join(d, "manifest.json"), "r", encoding="utf-8") as fh:
                manifest = json.load(fh)
            probes, prec = list(manifest["probes"]), manifest["precision"]
        except (OSError, ValueError, KeyError, TypeError):
            params.append(_fail_param(d, f"{d}: manifest.json unreadable; run 'parity verify {d}'",
                                      f"{os.path.basename(d)}-unreadable"))
            continue
        if precision and prec != precision:
            continue
        if not probes:
            params.append(_fail_param(d, f"{d}: the dump lists no probes, so the parity suite would check nothing; "
                                         f"re-create it with 'parity dump'", f"{_label(d, manifest)}-no-probes"))
            continue
        for mode in _modes(config):
            for probe in probes:
                params.append(pytest.param(d, mode, probe, id=f"{_label(d, manifest)}-{mode}-{probe}",
                                           marks=pytest.mark.xdist_group(d)))
    if not params:
        asked = " ".join(config.getoption("--parity-reference") or config.getini("parity_references")) or "(none)"
        why = (f"no reference dump matched (references: {asked}"
               f"{', precision ' + precision if precision else ''}), so the parity suite would check nothing; pass "
               f"--parity-reference DIR... of existing dumps or another --parity-precision")
        params.append(_fail_param(None, why, "no-dump-selected"))
    metafunc.parametrize(("parity_dump", "parity_mode", "parity_probe"), params)


def _subject_options(config):
    return {"subject": config.getoption("--parity-subject") or config.getini("parity_subject") or None,
            "subject_path": config.getoption("--parity-subject-path"),
            "subject_options": config.getoption("--parity-subject-option")}


@pytest.fixture(scope="session")
def parity_results(request):
    """Comparison results by dump directory (computed once per session); reports written at the end."""
    results = request.config.stash.setdefault(_RESULTS_KEY, {})
    yield results
    report_dir = request.config.getoption("--parity-report")
    if report_dir:
        from parity.report import write_report

        for dump_dir, result in results.items():
            if isinstance(result, dict):
                write_report(result, os.path.join(report_dir, os.path.basename(dump_dir)))


def session_result(dump_dir: str, config, results: dict):
    """The in-process comparison of ``dump_dir`` with the session's subject and modes, or the ``ParityError`` it
    raised: computed once per session and shared by every test that asks (under xdist, by the tests of one
    ``xdist_group(dump_dir)``, which is how the suite groups a dump's probes)."""
    from parity.compare import CompareOptions, compare_dump
    from parity.errors import ParityError

    if dump_dir not in results:
        try:
            results[dump_dir] = compare_dump(dump_dir, CompareOptions(modes=_modes(config), progress=False,
                                                                      **_subject_options(config)))
        except ParityError as exc:
            results[dump_dir] = exc
    return results[dump_dir]


def _result_for(dump_dir: str, config, results: dict) -> dict:
    from parity.errors import ReferenceProblem

    result = session_result(dump_dir, config, results)
    if isinstance(result, ReferenceProblem):
        # NaN/Inf in the reference itself (STDiT in fp16 overflows, as upstream's README warns): shown, never passed
        pytest.xfail(f"{dump_dir}: {result}")
    if isinstance(result, Exception):
        pytest.fail(f"{dump_dir}: {result}", pytrace=False)
    return result


def test_probe(parity_dump, parity_mode, parity_probe, parity_results, request):
    """One probe of one dump in one mode: passes when the subject is within the profile's tolerance."""
    if parity_mode is None:
        pytest.fail(parity_probe, pytrace=False)
    result = _result_for(parity_dump, request.config, parity_results)
    entry = next((p for p in result["probes"] if p["name"] == parity_probe and p["mode"] == parity_mode), None)
    if entry is None:
        skipped = [p for p in result.get("not_applicable", []) + result.get("not_evaluated", [])
                   if p["name"] == parity_probe and p.get("mode", parity_mode) == parity_mode]
        if skipped:
            pytest.skip(f"{parity_probe} ({parity_mode}) not compared: {skipped[0]['why']}")
        pytest.fail(f"probe {parity_probe} ({parity_mode}) missing from the comparison of {parity_dump}", pytrace=False)
    if not entry["passed"]:
        pytest.fail(entry["message"], pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """On the controller, write REPORT_DIR/summary.md over the per-dump reports the workers wrote."""
    report_dir = session.config.getoption("--parity-report", default=None)
    if not report_dir or hasattr(session.config, "workerinput") or not os.path.isdir(report_dir):
        return
    from parity.report import load_result, write_summary

    results = [load_result(path) for path in sorted(glob.glob(os.path.join(report_dir, "*", "parity.json")))]
    if results:
        write_summary(results, report_dir)
