"""pytest configuration of this repository: the torch-free mode of the MindSpore-side suite.

The parity suite's options (``--parity-reference``, ``--parity-subject``, ``--parity-precision``, ``--parity-mode``,
``--parity-report`` ...) come from the installed pytest plugin ``parity.pytest_plugin``; this repository's default
dumps are the committed fixtures (``parity_references`` in pyproject.toml).

With PARITY_BLOCK_TORCH=1 importing torch fails, which proves the MindSpore side needs no torch; tests
marked ``torch`` are then deselected.
"""

from __future__ import annotations

import importlib.abc
import os
import sys


class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("safetensors.torch"):
            raise ImportError(f"torch is blocked (PARITY_BLOCK_TORCH=1): {name}")
        return None


if os.environ.get("PARITY_BLOCK_TORCH") == "1":
    sys.meta_path.insert(0, _BlockTorch())


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PARITY_BLOCK_TORCH") == "1":
        kept = [it for it in items if it.get_closest_marker("torch") is None]
        deselected = [it for it in items if it.get_closest_marker("torch") is not None]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = kept
