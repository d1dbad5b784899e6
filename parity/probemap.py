"""Probe maps: where each probe of a model family lives, how it is captured, and how a side's layout maps to the
reference's.

Two layers of data:

* the **family map** (``families/<family>/probe_map.json``, version 2) is side-neutral: it describes every probe
  on the *reference* — name, class, module path, capture rule — in data-flow order (the first divergence follows
  this order, not the order in which hooks happen to fire);
* an **overlay** comes with a plug-in and says how *its* model holds each probe: its module path and capture rule
  where they differ, the adapter that turns its layout into the reference's, whether a mask is compared by value
  or by meaning, and which probes it does not produce (with the reason; reported as *not applicable*).

Both are checked when loaded (unknown keys, classes, adapters or capture kinds fail loudly) and again against a
live model (``check_module_paths``), so a probe whose module path does not exist is an error, not a silently
missing probe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from parity.adapters import MASK_CONVENTIONS, check_adapter
from parity.errors import ParityError

FAMILIES_DIR = os.path.join(os.path.dirname(__file__), "families")
PROBE_CLASSES = ("input", "mask", "embedding", "block", "output")   # a family may declare its own PROBE_CLASSES
MODES = ("isolated", "accumulated")   # comparison modes (see parity.compare)
MAP_VERSION = 2
OVERLAY_VERSION = 1
COMPARISONS = ("values", "meaning")
_CAPTURE_KEYS = {"module", "method", "static", "take", "arg", "where", "select"}
_PROBE_KEYS = {"name", "class", "path", "capture"}
_MAP_KEYS = {"family", "version", "description", "probes"}
_OVERLAY_KEYS = {"family", "version", "description", "probes"}
_OVERLAY_PROBE_KEYS = {"path", "capture", "adapter", "compare", "convention", "not_applicable"}


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
        if not isinstance(data.get("where", {}), dict) or not isinstance(data.get("select", []), list):
            raise ParityError(f"{where_txt}: capture 'where' must be an object and 'select' a list")
        if data.get("method") is not None and not isinstance(data["method"], str):
            raise ParityError(f"{where_txt}: capture 'method' must be a method name")
        return cls(module=data["module"], take=data["take"], method=data.get("method"),
                   static=bool(data.get("static", False)), arg=data.get("arg"),
                   where=dict(data.get("where", {})), select=tuple(data.get("select", ())))

    def formatted(self, **fmt: Any) -> "CaptureSpec":
        return replace(self, module=self.module.format(**fmt))


@dataclass(frozen=True)
class SideView:
    """How one side's model holds a probe.

    path            module/cell path shown in reports
    capture         capture rule in that side's model; None = the side does not produce the probe
    adapter         name of the adapter turning this side's layout into the reference's (``identity``)
    compare         ``values`` (elementwise against tolerances) or ``meaning`` (masks: which keys each query may
                    attend and which are padding, whatever the encoding)
    convention      for ``meaning``: this side's mask convention (``parity.adapters.MASK_CONVENTIONS``)
    not_applicable  why the side does not produce the probe (reported, never counted as pass or fail)
    """

    path: str
    capture: CaptureSpec | None
    adapter: str = "identity"
    compare: str = "values"
    convention: str | None = None
    not_applicable: str | None = None


@dataclass(frozen=True)
class Probe:
    """A concrete probe: family facts plus how the reference and the subject hold it."""

    name: str
    probe_class: str
    block: int | None
    reference: SideView
    subject: SideView
    template: str = ""          # the family map entry it comes from (e.g. "hidden_states_{i}_block")

    @property
    def reference_path(self) -> str:
        return self.reference.path

    @property
    def subject_path(self) -> str:
        return self.subject.path


@dataclass(frozen=True)
class CaptureItem:
    """What the capture classes need: a probe name and the capture rule on the side being run."""

    name: str
    capture: CaptureSpec


@dataclass(frozen=True)
class _Template:
    name: str
    probe_class: str
    path: str
    capture: CaptureSpec


@dataclass(frozen=True)
class Overlay:
    """A plug-in's view of a family's probes (see the module docstring); ``entries`` keyed by probe name or
    template (``hidden_states_{i}_block``)."""

    family: str
    source: str
    entries: dict
    description: str = ""

    @classmethod
    def empty(cls, family: str, source: str = "(no overlay)") -> "Overlay":
        return cls(family, source, {})


@dataclass(frozen=True)
class ProbeMap:
    family: str
    path: str
    templates: tuple

    def names(self, num_layers: int) -> list[str]:
        return [name for name, _ in self._expanded(num_layers)]

    def _expanded(self, num_layers: int):
        """Concrete names in data-flow order. Adjacent ``{i}`` templates expand together, block by block
        (``spatial_0, temporal_0, spatial_1, ...``): block i's probes all come before block i+1's."""
        k, ts = 0, self.templates
        while k < len(ts):
            if "{i}" not in ts[k].name:
                yield ts[k].name, (ts[k], None)
                k += 1
                continue
            run = [ts[k]]
            while k + len(run) < len(ts) and "{i}" in ts[k + len(run)].name:
                run.append(ts[k + len(run)])
            for i in range(num_layers):
                for t in run:
                    yield t.name.format(i=i), (t, i)
            k += len(run)

    def resolve(self, num_layers: int, subject: Overlay | None = None, reference: Overlay | None = None,
                adapters: Mapping | None = None) -> list[Probe]:
        """The family's probes for a model with ``num_layers`` blocks, in data-flow order, each with the
        reference's and the subject's view (overlays applied; adapters checked against ``adapters`` and the
        registry)."""
        for overlay in (subject, reference):
            if overlay is not None:
                self._check_overlay(overlay, num_layers)
        out = []
        for name, (t, i) in self._expanded(num_layers):
            fmt = {} if i is None else {"i": i}
            base = SideView(t.path.format(**fmt), t.capture.formatted(**fmt))
            ref_view = _apply(base, reference, t.name, name, fmt, adapters)
            sub_view = _apply(base, subject, t.name, name, fmt, adapters)
            out.append(Probe(name, t.probe_class, i, ref_view, sub_view, t.name))
        return out

    def _check_overlay(self, overlay: Overlay, num_layers: int) -> None:
        if overlay.family != self.family:
            raise ParityError(f"{overlay.source}: an overlay for family {overlay.family!r}, but the dump is of family "
                              f"{self.family!r}; use a plug-in for {self.family}")
        known = {t.name for t in self.templates} | set(self.names(max(num_layers, 1)))
        unknown = sorted(set(overlay.entries) - known)
        if unknown:
            raise ParityError(f"{overlay.source}: overlay names probes the family {self.family} does not have: "
                              f"{', '.join(unknown[:5])}; use names or templates from {self.path}")


def _apply(base: SideView, overlay: Overlay | None, template: str, name: str, fmt: dict,
           adapters: Mapping | None) -> SideView:
    if overlay is None:
        return base
    entry = {**overlay.entries.get(template, {}), **overlay.entries.get(name, {})}
    if not entry:
        return base
    adapter = entry.get("adapter", "identity")
    check_adapter(adapter, adapters, where=f"{overlay.source} ({name})")
    if entry.get("not_applicable"):
        # not captured; its adapter (if any) still converts the reference's tensor when it feeds a teacher step
        return SideView(entry.get("path", "(not produced)").format(**fmt), None, adapter,
                        not_applicable=str(entry["not_applicable"]))
    capture = entry["capture"].formatted(**fmt) if "capture" in entry else base.capture
    return SideView(entry.get("path", base.path).format(**fmt), capture, adapter,
                    entry.get("compare", "values"), entry.get("convention"))


# ---- loading --------------------------------------------------------------------------------------------------
def _read_json(path: str, what: str) -> Any:
    from parity.jsonio import load_json

    return load_json(path, what, f"fix the {what} file")


def load_probe_map(family: str, path: str | None = None) -> ProbeMap:
    path = path or os.path.join(FAMILIES_DIR, family, "probe_map.json")
    if not os.path.isfile(path):
        raise ParityError(f"{path}: probe map not found; unknown model family {family!r}")
    data = _read_json(path, "probe map")
    if (not isinstance(data, dict) or data.get("version") != MAP_VERSION or not isinstance(data.get("probes"), list)
            or set(data) - _MAP_KEYS):
        raise ParityError(f"{path}: not a version-{MAP_VERSION} probe map (keys {sorted(_MAP_KEYS)}, 'version': "
                          f"{MAP_VERSION} and a 'probes' list)")
    from parity.families import get_family

    classes = getattr(get_family(family, source=path), "PROBE_CLASSES", PROBE_CLASSES)
    templates, seen = [], set()
    for k, entry in enumerate(data["probes"]):
        where_txt = f"{path}: probes[{k}]"
        if not isinstance(entry, dict) or set(entry) - _PROBE_KEYS:
            raise ParityError(f"{where_txt}: unknown keys; allowed {sorted(_PROBE_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or name in seen:
            raise ParityError(f"{where_txt}: missing or duplicate probe name {name!r}")
        seen.add(name)
        if entry.get("class") not in classes:
            raise ParityError(f"{where_txt} ({name}): class must be one of {classes}")
        capture = CaptureSpec.parse(entry.get("capture"), f"{where_txt} ({name})")
        templates.append(_Template(name, entry["class"], str(entry.get("path", capture.module or "(root)")), capture))
    return ProbeMap(str(data.get("family", family)), path, tuple(templates))


def parse_overlay(data: Any, source: str, family: str | None = None) -> Overlay:
    """An overlay from a dict (or the path of a JSON file): ``{"family": ..., "version": 1, "probes": {name or
    template: {path, capture, adapter, compare, convention, not_applicable}}}``."""
    if isinstance(data, (str, os.PathLike)):
        source = str(data)
        data = _read_json(source, "overlay")
    if not isinstance(data, dict) or set(data) - _OVERLAY_KEYS or data.get("version") != OVERLAY_VERSION:
        raise ParityError(f"{source}: not a version-{OVERLAY_VERSION} overlay (keys {sorted(_OVERLAY_KEYS)}, "
                          f"'version': {OVERLAY_VERSION})")
    fam = data.get("family", family)
    if not isinstance(fam, str):
        raise ParityError(f"{source}: overlay needs 'family' (the model family it describes)")
    probes = data.get("probes", {})
    if not isinstance(probes, dict):
        raise ParityError(f"{source}: overlay 'probes' must be an object keyed by probe name or template")
    entries = {}
    for name, entry in probes.items():
        where_txt = f"{source}: probes[{name!r}]"
        if not isinstance(entry, dict) or set(entry) - _OVERLAY_PROBE_KEYS:
            raise ParityError(f"{where_txt}: unknown keys; allowed {sorted(_OVERLAY_PROBE_KEYS)}")
        parsed = dict(entry)
        if "capture" in entry:
            parsed["capture"] = CaptureSpec.parse(entry["capture"], where_txt)
        if entry.get("compare", "values") not in COMPARISONS:
            raise ParityError(f"{where_txt}: 'compare' must be one of {COMPARISONS}")
        if entry.get("compare") == "meaning" and entry.get("convention") not in MASK_CONVENTIONS:
            raise ParityError(f"{where_txt}: a 'meaning' comparison needs 'convention', one of "
                              f"{', '.join(MASK_CONVENTIONS)}")
        if "not_applicable" in entry and (not isinstance(entry["not_applicable"], str) or not entry["not_applicable"]):
            raise ParityError(f"{where_txt}: 'not_applicable' must be the reason, a non-empty string")
        for key in ("path", "adapter", "convention"):
            if key in entry and not isinstance(entry[key], str):
                raise ParityError(f"{where_txt}: {key!r} must be a string")
        entries[name] = parsed
    return Overlay(fam, source, entries, str(data.get("description", "")))


def check_module_paths(items, existing: set[str], framework: str) -> None:
    """Fail loudly if a probe's capture module is not in the live model (``existing`` = its module paths)."""
    missing = sorted({(it.capture.module, it.name) for it in items if it.capture.module not in existing})
    if missing:
        listed = ", ".join(f"{m!r} (probe {n})" for m, n in missing[:5])
        raise ParityError(f"probe map: module path(s) not found in the {framework} model: {listed}"
                          f"{' …' if len(missing) > 5 else ''}; fix the overlay's paths or the model's attribute names")


def family_capture_items(family: str, num_layers: int, names=None) -> list[CaptureItem]:
    """The family map's capture rules (the reference's), optionally only for ``names``."""
    probes = load_probe_map(family).resolve(num_layers)
    return [it for it in capture_items(probes, "reference") if names is None or it.name in names]


def capture_items(probes: list[Probe], side: str) -> list[CaptureItem]:
    """The capture rules of ``side`` ("reference" or "subject") for the probes it produces."""
    out = []
    for p in probes:
        view = getattr(p, side)
        if view.capture is not None:
            out.append(CaptureItem(p.name, view.capture))
    return out
