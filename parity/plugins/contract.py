"""The plug-in contract: what a reference or a subject supplies so the harness can check it.

A plug-in is any object with the attributes below (``typing.Protocol``: no base class needed, though
``parity.plugins.base`` has convenient ones for PyTorch and MindSpore models). The harness never imports a
model: it asks a plug-in to build one, runs its forward with capture hooks installed on the module tree the
plug-in names, and — for isolated mode — asks it to run one step (block ``i``, the output head, ...) on the
reference's own tensors. Which reference probes feed which step is the family's data
(``families/<family>.teacher_plan``), not the plug-in's.

Where each probe lives in the plug-in's model, how to capture it there, how its layout maps to the reference's
and which probes it does not produce is the plug-in's *overlay* (``parity.probemap.Overlay``; see
docs/plugins.md for every field).

Arrays crossing the contract are numpy. Weights always arrive under the *reference's* parameter names (the
family's ``expected_state_dict_shapes``); a plug-in whose model names them differently maps them itself,
strictly (every key accounted for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping, Protocol, runtime_checkable

import numpy as np

from parity.teacher import TeacherStep

SIDES = ("reference", "subject")


class StepNotRun(Exception):
    """Raised by a plug-in's ``run_step`` when it cannot run a step (the message says why): the step's probe is
    reported as not evaluated in isolated mode, with that reason, instead of failing the run."""
FRAMEWORKS = ("torch", "mindspore")


@dataclass(frozen=True)
class OptionSpec:
    """A plug-in option, set with ``--subject-option KEY=VALUE`` (``--reference-option`` on dump)."""

    help: str
    choices: tuple | None = None
    default: str | None = None


@dataclass(frozen=True)
class BuildRequest:
    """Everything a plug-in needs to build its model."""

    family: str
    config: dict                           # the family's config, upstream config.json keys
    weights: Mapping[str, np.ndarray]      # reference parameter names -> arrays (values at ``precision``)
    precision: str                         # "fp32" | "bf16" | "fp16"
    device: str = "CPU"                    # "CPU" | "GPU" | "Ascend"
    options: dict = field(default_factory=dict)


@runtime_checkable
class ModelPlugin(Protocol):
    """What both sides supply."""

    name: str                              # registry name, e.g. "ms_impl"
    framework: str                         # "torch" | "mindspore": which capture hooks the harness installs
    families: tuple                        # model families it implements, e.g. ("opensora_v13",)
    options: Mapping[str, OptionSpec]      # may be empty

    def describe(self) -> dict:
        """Provenance for manifests and reports: ``{"plugin", "framework", "versions": {...}, "source",
        "git_commit"}`` (``source``/``git_commit`` when the model comes from a checkout), and optionally ``"notes"``:
        one-line strings on what the plug-in switched on or patched in the model it built (memory machinery,
        kernel substitutes, runtime patches), which the report shows as its notes."""

    def overlay(self, family: str, config: dict):
        """The plug-in's overlay for ``family`` on this ``config`` (a dict, a JSON path or an ``Overlay``; None: it
        holds every probe as the family map says). ``config`` lets a port say that it does not build a probe for
        some configs (e.g. no Skiparse masks when Skiparse is off)."""

    def build(self, request: BuildRequest) -> Any:
        """The model, weights loaded strictly, in eval mode, at ``request.precision`` on ``request.device``."""

    def capture_root(self, model: Any) -> Any:
        """The module/cell tree the overlay's paths are relative to (usually ``model`` itself)."""

    def forward(self, model: Any, family: str, inputs: dict[str, np.ndarray]) -> Any:
        """One forward pass on the family's inputs (``normalize_inputs`` form); capture hooks are installed
        around this call."""

    def precision_label(self, precision: str, device: str) -> str:
        """What ``precision`` runs as on ``device`` (e.g. "bf16-emulated")."""


@runtime_checkable
class ReferencePlugin(ModelPlugin, Protocol):
    def random_weights(self, family: str, config: dict, seed: int) -> dict[str, np.ndarray]:
        """Weights of a freshly initialised model under ``seed`` (the framework's default init)."""

    def session(self, threads: int) -> ContextManager:
        """A context in which runs are bit-reproducible (e.g. a fixed intra-op thread count)."""


@runtime_checkable
class SubjectPlugin(ModelPlugin, Protocol):
    def run_step(self, model: Any, step: TeacherStep, teacher: dict[str, np.ndarray]) -> np.ndarray:
        """Isolated mode: run ``step`` (block ``step.index``, the output head, ...) on ``teacher`` — the
        reference's tensors for each role of ``step.inputs``, already converted to this plug-in's layout by its
        overlay's adapters — plus ``step.params``; return the result in this plug-in's layout (the engine applies
        the overlay's adapter before comparing). Optional: without it, isolated mode reports its probes as not
        evaluated."""


# Optional hooks a plug-in may define (looked up with getattr; the harness has defaults):
#   adapters: Mapping[str, parity.adapters.Adapter]     extra adapters its overlay names
#   dtype_namer(model) -> Callable[[tensor], str]        dtype names for captured values (e.g. emulated bf16)
#   check_device(device) -> None                         refuse a device that is not there, one ParityError line
#   convert_weights(tensors, family, config, to) -> dict  `parity convert` (to: "subject" | "reference")
#   capture(model, family, inputs, items, on_probe, mode)  capture by other means than the framework's module hooks
#                                                        (e.g. replaying recorded probes); items: CaptureItems;
#                                                        mode: "accumulated", or "isolated" for isolated mode's
#                                                        plain probes (inputs, masks, embeddings)
OPTIONAL_HOOKS = ("adapters", "dtype_namer", "check_device", "convert_weights", "capture", "run_step",
                  "random_weights", "session")

OnProbe = Callable[[str, np.ndarray, str], None]
