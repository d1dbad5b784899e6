"""pytest configuration: the parity suite's options and the torch-free mode of the MindSpore-side suite.

Options (see README):
  --parity-reference DIR [DIR ...]  reference dumps to compare (default: every dump under fixtures/reference)
  --parity-precision P              only dumps of this precision (fp32, bf16, fp16)
  --parity-mode M                   isolated, accumulated or both (default both)
  --parity-report DIR               write parity.json/md/png per dump (and summary.md) here

With PARITY_BLOCK_TORCH=1 importing torch fails, which proves the MindSpore side needs no torch; tests
marked ``torch`` are then deselected.
"""

from __future__ import annotations

import glob
import importlib.abc
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(ROOT, "fixtures", "reference")


class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("safetensors.torch"):
            raise ImportError(f"torch is blocked (PARITY_BLOCK_TORCH=1): {name}")
        return None


if os.environ.get("PARITY_BLOCK_TORCH") == "1":
    sys.meta_path.insert(0, _BlockTorch())


def pytest_addoption(parser):
    group = parser.getgroup("parity", "PyTorch -> MindSpore parity suite")
    group.addoption("--parity-reference", nargs="+", metavar="DIR", default=None,
                    help="reference dump directories (default: all committed fixtures)")
    group.addoption("--parity-precision", choices=("fp32", "bf16", "fp16"), default=None)
    group.addoption("--parity-mode", choices=("isolated", "accumulated", "both"), default="both")
    group.addoption("--parity-report", metavar="DIR", default=None)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PARITY_BLOCK_TORCH") == "1":
        kept = [it for it in items if it.get_closest_marker("torch") is None]
        deselected = [it for it in items if it.get_closest_marker("torch") is not None]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = kept


def parity_reference_dirs(config) -> list[str]:
    dirs = config.getoption("--parity-reference") or sorted(
        d for d in glob.glob(os.path.join(FIXTURES, "*")) if os.path.isfile(os.path.join(d, "manifest.json")))
    return [os.path.abspath(d) for d in dirs]


def pytest_sessionfinish(session, exitstatus):
    """On the controller, write REPORT_DIR/summary.md over the per-dump reports the workers wrote."""
    report_dir = session.config.getoption("--parity-report")
    if not report_dir or hasattr(session.config, "workerinput") or not os.path.isdir(report_dir):
        return
    import json

    results = []
    for path in sorted(glob.glob(os.path.join(report_dir, "*", "parity.json"))):
        with open(path, "r", encoding="utf-8") as fh:
            results.append(json.load(fh))
    if results:
        from parity.report import write_summary

        write_summary(results, report_dir)
