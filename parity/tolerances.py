"""Tolerance profiles: one versioned data file per model family, validated on load.

The numbers live ONLY in ``parity/families/<family>/tolerances.json`` (or a user-supplied file of the same schema,
``--tolerances``): each family calibrates its own, since what a correct port's error is depends on the model::

    {"version": 1,
     "description": "optional free text",
     "profiles": {
        "<precision>": {                      # e.g. fp32, fp16, bf16
            "<probe class>": {                # input, mask, embedding, block, output (all five required)
                "<mode>": {                   # isolated, accumulated (both required)
                    "atol": 2e-5, "rtol": 1e-5, "reason": "one line why",
                    "relative": {"k": 2, "floor": 1e-3, "reason": "one line why"}   # optional
                }}}}}

A family whose probes include another family's (the pipeline family records the text encoder's) takes that
family's profiles under a class prefix instead of copying them: ``"include": [{"family": "mt5_encoder", "prefix":
"text_encoder."}]`` adds ``text_encoder.block`` etc. from ``parity/families/mt5_encoder/tolerances.json`` (which may
not include others itself), for every precision of the including file.

Absolute criterion (allclose-style): every element has |sub − ref| <= atol + rtol·|ref|.
Relative criterion (low-precision subjects): the subject's max_abs error against the torch fp32 reference
may be at most ``k`` × the torch low-precision model's own max_abs error against that reference, plus
``floor`` — see ``relative_passed``.

Unknown keys, missing keys/reasons, negative or non-finite numbers, multi-line reasons and unsupported
versions raise ``ParityError`` naming the file and the offending key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from parity.errors import ParityError
from parity.probemap import MODES, PROBE_CLASSES

FAMILIES_DIR = Path(__file__).with_name("families")


def family_path(family: str) -> Path:
    """The family's own tolerance file."""
    return FAMILIES_DIR / family / "tolerances.json"


DEFAULT_PATH = family_path("opensora_v13")
SUPPORTED_VERSIONS = (1,)
_PRECISION_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")

__all__ = ["DEFAULT_PATH", "family_path", "PROBE_CLASSES", "MODES", "RelativeCriterion", "Tolerance", "Profiles",
           "load_profiles", "relative_passed"]


@dataclass(frozen=True)
class RelativeCriterion:
    k: float
    floor: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "floor": self.floor, "reason": self.reason}


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    reason: str
    relative: RelativeCriterion | None = None
    precision: str = ""
    probe_class: str = ""
    mode: str = ""

    @property
    def key(self) -> str:
        """``fp32/block/accumulated``."""
        return f"{self.precision}/{self.probe_class}/{self.mode}"

    @property
    def context(self) -> str:
        """Label for messages: ``profile fp32/block/accumulated``."""
        return f"profile {self.key}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"atol": self.atol, "rtol": self.rtol, "reason": self.reason}
        if self.relative is not None:
            d["relative"] = self.relative.to_dict()
        return d


@dataclass(frozen=True)
class Profiles:
    path: str
    version: int
    description: str
    table: dict[str, dict[str, dict[str, Tolerance]]] = field(repr=False)

    @property
    def precisions(self) -> list[str]:
        return sorted(self.table)

    def lookup(self, precision: str, probe_class: str, mode: str) -> Tolerance:
        """The tolerance for one (precision, probe class, mode); ParityError naming the file if absent."""
        if precision not in self.table:
            raise ParityError(f"{self.path}: no tolerance profile for precision {precision!r} "
                              f"(have: {', '.join(self.precisions)})")
        classes = self.table[precision]
        if probe_class not in classes:
            raise ParityError(f"{self.path}: profile {precision!r} has no probe class {probe_class!r} "
                              f"(have: {', '.join(sorted(classes))})")
        modes = classes[probe_class]
        if mode not in modes:
            raise ParityError(f"{self.path}: profile {precision}/{probe_class} has no mode {mode!r} "
                              f"(have: {', '.join(sorted(modes))})")
        return modes[mode]

    def to_dict(self) -> dict[str, Any]:
        """The file's content (re-loadable)."""
        return {"version": self.version, "description": self.description,
                "profiles": {p: {c: {m: t.to_dict() for m, t in ms.items()} for c, ms in cs.items()}
                             for p, cs in self.table.items()}}


def relative_passed(sub_err: float, lowp_err: float, crit: RelativeCriterion) -> bool:
    """``sub_err <= crit.k * lowp_err + crit.floor``; False when any error is NaN (never passes silently)."""
    try:
        sub_err, lowp_err = float(sub_err), float(lowp_err)
    except (TypeError, ValueError):
        return False
    if math.isnan(sub_err) or math.isnan(lowp_err):
        return False
    return sub_err <= crit.k * lowp_err + crit.floor


# ----------------------------------------------------------------------------------------------------------

def load_profiles(path: str | Path | None = None, classes: tuple = PROBE_CLASSES) -> Profiles:
    """Load and validate a tolerance file (default: the opensora_v13 family's); ``classes``: the probe classes it
    must have (a family's own, e.g. the pipeline family's step records)."""
    from parity.jsonio import load_json

    p = Path(path) if path is not None else DEFAULT_PATH
    label = str(p)
    data = load_json(p, "tolerance file", "fix the tolerance file or omit --tolerances")
    return _parse(data, label, tuple(classes))


def _err(label: str, where: str, what: str) -> ParityError:
    return ParityError(f"{label}: {where}: {what}")


def _keys(label: str, where: str, obj: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    if not isinstance(obj, dict):
        raise _err(label, where, f"must be an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise _err(label, where, f"unknown key(s) {', '.join(map(repr, unknown))} "
                                 f"(allowed: {', '.join(required + optional)})")
    missing = [k for k in required if k not in obj]
    if missing:
        raise _err(label, where, f"missing key(s) {', '.join(map(repr, missing))}")


def _number(label: str, where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _err(label, where, f"must be a finite number, got {v!r}")
    if v < 0:
        raise _err(label, where, f"must be >= 0, got {v!r}")
    return float(v)


def _reason(label: str, where: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _err(label, where, "must be a non-empty one-line string saying why")
    if "\n" in v or "\r" in v:
        raise _err(label, where, "must be one line")
    return v.strip()


def _includes(data: dict, label: str, nested: bool) -> list[tuple[str, str]]:
    """The ``include`` entries of a tolerance file: (family, class prefix)."""
    given = data.get("include", [])
    if given and nested:
        raise _err(label, "include", "an included tolerance file may not include others")
    if not isinstance(given, list):
        raise _err(label, "include", "must be a list of {\"family\": ..., \"prefix\": ...}")
    out = []
    for k, inc in enumerate(given):
        _keys(label, f"include[{k}]", inc, ("family", "prefix"))
        if not isinstance(inc["family"], str) or not _PRECISION_RE.match(inc["family"]) or \
                not family_path(inc["family"]).is_file():
            raise _err(label, f"include[{k}].family", f"no tolerance file for family {inc['family']!r}")
        if not isinstance(inc["prefix"], str) or not inc["prefix"].endswith("."):
            raise _err(label, f"include[{k}].prefix", "must be a string ending in '.' (e.g. \"text_encoder.\")")
        out.append((inc["family"], inc["prefix"]))
    return out


def _parse(data: Any, label: str, classes: tuple = PROBE_CLASSES, nested: bool = False) -> Profiles:
    _keys(label, "top level", data, ("version", "profiles"), ("description", "include"))
    includes = _includes(data, label, nested)
    included = tuple(c for c in classes if any(c.startswith(prefix) for _, prefix in includes))
    own_classes = tuple(c for c in classes if c not in included)
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
        raise _err(label, "version", f"unsupported version {version!r} (supported: "
                                     f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _err(label, "description", "must be a string")
    profiles = data["profiles"]
    if not isinstance(profiles, dict) or not profiles:
        raise _err(label, "profiles", "must be a non-empty object keyed by precision")
    table: dict[str, dict[str, dict[str, Tolerance]]] = {}
    for prec, by_class in profiles.items():
        if not _PRECISION_RE.match(prec):
            raise _err(label, f"profiles.{prec}", "precision names use letters, digits and _.+- only")
        _keys(label, f"profiles.{prec}", by_class, own_classes)
        table[prec] = {}
        for cls in own_classes:
            _keys(label, f"profiles.{prec}.{cls}", by_class[cls], MODES)
            table[prec][cls] = {}
            for mode in MODES:
                where = f"profiles.{prec}.{cls}.{mode}"
                entry = by_class[cls][mode]
                _keys(label, where, entry, ("atol", "rtol", "reason"), ("relative",))
                rel = None
                if "relative" in entry:
                    r = entry["relative"]
                    _keys(label, f"{where}.relative", r, ("k", "floor", "reason"))
                    rel = RelativeCriterion(k=_number(label, f"{where}.relative.k", r["k"]),
                                            floor=_number(label, f"{where}.relative.floor", r["floor"]),
                                            reason=_reason(label, f"{where}.relative.reason", r["reason"]))
                table[prec][cls][mode] = Tolerance(
                    atol=_number(label, f"{where}.atol", entry["atol"]),
                    rtol=_number(label, f"{where}.rtol", entry["rtol"]),
                    reason=_reason(label, f"{where}.reason", entry["reason"]),
                    relative=rel, precision=prec, probe_class=cls, mode=mode)
    for family, prefix in includes:
        from parity.jsonio import load_json

        other_path = family_path(family)
        other = _parse(load_json(other_path, "tolerance file", "fix that family's tolerance file"), str(other_path),
                       nested=True)
        for prec, by_class in table.items():
            if prec not in other.table:
                raise _err(label, f"include {family}", f"{other_path} has no {prec!r} profile")
            for cls, modes in other.table[prec].items():
                if prefix + cls in included or not included:
                    by_class[prefix + cls] = {m: replace(t, probe_class=prefix + cls) for m, t in modes.items()}
    return Profiles(path=label, version=version, description=description, table=table)
