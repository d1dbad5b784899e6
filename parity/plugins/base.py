"""Convenience bases for plug-ins (see ``parity.plugins.contract``): defaults for everything but the model.

A plug-in for a PyTorch model subclasses ``TorchPlugin`` and writes ``build`` and ``forward`` (and, as a
reference, ``random_weights``; as a subject, ``run_step``); one for a MindSpore model subclasses
``MindSporePlugin``. Neither base imports its framework until a method needs it.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import platform

from parity.errors import ParityError
from parity.plugins.provenance import checkout_commit


class PluginBase:
    name = "unnamed"
    framework = ""
    families: tuple = ()
    options: dict = {}

    def __init__(self, source: str | None = None):
        self.source = source
        self.notes: list[str] = []  # what the last build switched on (e.g. memory machinery), for reports

    def versions(self) -> dict:
        return {}

    def describe(self) -> dict:
        described = {"plugin": self.name, "framework": self.framework,
                     "versions": {"python": platform.python_version(), **self.versions()},
                     "source": self.source, "git_commit": checkout_commit(self.source)}
        if self.notes:
            described["notes"] = list(self.notes)
        return described

    def overlay(self, family: str, config: dict):
        return None

    def capture_root(self, model):
        return model

    def precision_label(self, precision: str, device: str) -> str:
        return precision

    def check_family(self, family: str) -> None:
        if family not in self.families:
            raise ParityError(f"plug-in {self.name} implements {', '.join(self.families) or 'no family'}, not "
                              f"{family!r}; pick a plug-in for {family}")


class TorchPlugin(PluginBase):
    framework = "torch"

    def versions(self) -> dict:
        """torch's version and the CPU kernel set it dispatched to (AVX2 and AVX512 kernels round differently:
        fp32 states agree to ~1e-7 across them, not bit for bit)."""
        import torch
        return {"torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}

    @contextlib.contextmanager
    def session(self, threads: int = 1):
        """Some CPU matmuls split their reductions by thread count: runs are bit-reproducible only at a fixed
        count (recorded in the dump's manifest)."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(max(1, int(threads)))
        try:
            yield
        finally:
            torch.set_num_threads(before)


class MindSporePlugin(PluginBase):
    framework = "mindspore"

    def versions(self) -> dict:
        import mindspore
        return {"mindspore": mindspore.__version__}

    def check_device(self, device: str) -> None:
        """Refuse an accelerator that is not there before MindSpore's own checks print their multi-line
        diagnostics."""
        if device == "GPU" and ctypes.util.find_library("cuda") is None:
            raise ParityError("--device GPU: no CUDA driver (libcuda) on this machine; run on a machine with an NVIDIA "
                              "GPU and MindSpore's GPU setup, or use --device CPU")
        if device == "Ascend" and not (ctypes.util.find_library("ascendcl") or os.environ.get("ASCEND_HOME_PATH")
                                       or os.path.isdir("/usr/local/Ascend")):
            raise ParityError("--device Ascend: no Ascend CANN toolkit here (no libascendcl, ASCEND_HOME_PATH unset); "
                              "run on an Ascend machine with CANN set up, or use --device CPU")
