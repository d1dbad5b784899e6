"""A model family's probe map: data saying where each probe lives and how to capture and adapt it.

The map (``families/<family>/probe_map.json``) is checked when loaded — unknown keys, classes, adapters or
capture kinds fail loudly — and again against a live model (``check_module_paths``), so a probe whose module
path does not exist in the model is an error, not a silently missing probe.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from parity.adapters import get_adapter
from parity.errors import ParityError

FAMILIES_DIR = os.path.join(os.path.dirname(__file__), "families")
PROBE_CLASSES = ("input", "mask", "embedding", "block", "output")
_CAPTURE_KEYS = {"module", "method", "static", "take", "arg", "where", "select"}
_PROBE_KEYS = {"name", "class", "torch_path", "ms_path", "capture", "ms_capture", "ms_adapter"}


@dataclass(frozen=True)
class CaptureSpec:
    """Capture at a call: ``module`` (dotted path, "" = root), optional ``method`` (default: the module's
    forward/construct; ``static`` = a staticmethod looked up on the module's class), ``take`` the call's
    ``input`` argument ``arg`` or its ``output``, narrowed by ``select`` (indices/keys) and only for calls
    whose arguments match ``where``."""

    module: str
    take: str
    method: str | None = None
    static: bool = False
    arg: str | None = None
    where: dict = field(default_factory=dict)
    select: tuple = ()

    @classmethod
    def parse(cls, data: Any, where_txt: str) -> "CaptureSpec":
        if not isinstance(data, dict) or set(data) - _CAPTURE_KEYS:
            raise ParityError(f"{where_txt}: capture must be an object with keys from {sorted(_CAPTURE_KEYS)}")
        if data.get("take") not in ("input", "output") or not isinstance(data.get("module"), str):
            raise ParityError(f"{where_txt}: capture needs 'module' (string) and 'take' ('input' or 'output')")
        if data["take"] == "input" and not isinstance(data.get("arg"), str):
            raise ParityError(f"{where_txt}: capture with take 'input' needs 'arg' (the argument name)")
        return cls(module=data["module"], take=data["take"], method=data.get("method"),
                   static=bool(data.get("static", False)), arg=data.get("arg"),
                   where=dict(data.get("where", {})), select=tuple(data.get("select", ())))

    def formatted(self, **fmt: Any) -> "CaptureSpec":
        return CaptureSpec(self.module.format(**fmt), self.take, self.method, self.static, self.arg,
                           self.where, self.select)


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    probe_class: str
    torch_path: str
    ms_path: str
    capture: CaptureSpec
    ms_capture: CaptureSpec
    ms_adapter: str
    block: int | None = None


@dataclass(frozen=True)
class ProbeMap:
    family: str
    version: int
    path: str
    reference_harness: str
    subject_harness: str
    params: dict
    templates: tuple

    def probes(self, num_layers: int) -> list[ProbeSpec]:
        """The family's probes for a model with ``num_layers`` blocks, in capture order."""
        out: list[ProbeSpec] = []
        for t in self.templates:
            if "{i}" in t.name:
                for i in range(num_layers):
                    out.append(ProbeSpec(t.name.format(i=i), t.probe_class, t.torch_path.format(i=i),
                                         t.ms_path.format(i=i), t.capture.formatted(i=i),
                                         t.ms_capture.formatted(i=i), t.ms_adapter, i))
            else:
                out.append(t)
        return out

    def adapter_params(self, config: dict) -> dict:
        """Keyword arguments for adapters, resolved from the model config (e.g. num_heads)."""
        params = {}
        for key, cfg_key in self.params.items():
            if cfg_key not in config:
                raise ParityError(f"{self.path}: adapter parameter {key!r} needs config key {cfg_key!r}, "
                                  f"which the config does not have")
            params[key] = config[cfg_key]
        return params

    def harness(self, side: str):
        """Import the framework-side harness module named in the map (``reference`` or ``subject``)."""
        name = self.reference_harness if side == "reference" else self.subject_harness
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise ParityError(f"{self.path}: cannot import the {side} harness {name!r} ({exc}); "
                              f"install the {'torch' if side == 'reference' else 'mindspore'} extra "
                              f"(make setup)") from None


def load_probe_map(family: str = "opensora_v13", path: str | None = None) -> ProbeMap:
    path = path or os.path.join(FAMILIES_DIR, family, "probe_map.json")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ParityError(f"{path}: probe map not found; unknown model family {family!r}") from None
    except (OSError, ValueError) as exc:
        raise ParityError(f"{path}: cannot read probe map ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("probes"), list):
        raise ParityError(f"{path}: not a version-1 probe map (needs 'version': 1 and a 'probes' list)")
    templates = []
    seen = set()
    for k, entry in enumerate(data["probes"]):
        where_txt = f"{path}: probes[{k}]"
        if not isinstance(entry, dict) or set(entry) - _PROBE_KEYS:
            raise ParityError(f"{where_txt}: unknown keys; allowed {sorted(_PROBE_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or name in seen:
            raise ParityError(f"{where_txt}: missing or duplicate probe name {name!r}")
        seen.add(name)
        if entry.get("class") not in PROBE_CLASSES:
            raise ParityError(f"{where_txt} ({name}): class must be one of {PROBE_CLASSES}")
        adapter = entry.get("ms_adapter", "identity")
        get_adapter(adapter)  # unknown adapter -> ParityError
        capture = CaptureSpec.parse(entry.get("capture"), f"{where_txt} ({name})")
        ms_capture = CaptureSpec.parse(entry["ms_capture"], f"{where_txt} ({name})") if "ms_capture" in entry else capture
        templates.append(ProbeSpec(name, entry["class"], str(entry.get("torch_path", "")),
                                   str(entry.get("ms_path", entry.get("torch_path", ""))), capture, ms_capture,
                                   adapter))
    try:
        ref_h, sub_h = data["reference"]["harness"], data["subject"]["harness"]
    except (KeyError, TypeError):
        raise ParityError(f"{path}: needs 'reference': {{'harness': ...}} and 'subject': {{'harness': ...}}") from None
    return ProbeMap(data.get("family", family), 1, path, ref_h, sub_h, dict(data.get("params", {})),
                    tuple(templates))


def check_module_paths(specs: list[ProbeSpec], existing: set[str], framework: str) -> None:
    """Fail loudly if a probe's capture module is not in the live model (``existing`` = its module paths)."""
    attr = "capture" if framework == "torch" else "ms_capture"
    missing = sorted({(getattr(s, attr).module, s.name) for s in specs if getattr(s, attr).module not in existing})
    if missing:
        listed = ", ".join(f"{m!r} (probe {n})" for m, n in missing[:5])
        raise ParityError(f"probe map: module path(s) not found in the {framework} model: {listed}"
                          f"{' …' if len(missing) > 5 else ''}; fix the probe map or the model's attribute names")
