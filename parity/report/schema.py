"""The report's schema: the dataclasses of its entries (``ProbeResult``, ``BlockRow``, ``FirstDivergence``) are
the form the comparison engine builds them in; this docstring is the whole file format.

parity.json schema (``"schema": "opensora-parity/report@2"``; ``@1`` files are read and upgraded)
-------------------------------------------------------------------------------------------------
Top level::

    schema             "opensora-parity/report@2"
    case               str     name of the dumped case (e.g. "tiny-sparse")
    dump               str     path of the reference dump directory
    family             str     model family of the dump (e.g. "opensora_v13")
    subject            object  the subject plug-in: plugin, framework, versions, source, git_commit, options
    reference          object  who made the dump (from its manifest): plugin, framework, versions, source, git_commit
    precision          str     reference / tolerance-profile precision, e.g. "fp32"
    subject_precision  str     what the subject ran in: "fp32", "bf16-emulated", ...
    device             str     e.g. "CPU"
    mode               str     "isolated" | "accumulated" | "both"
    passed             bool    every probe passed (and nothing else failed)
    first_divergence   null | {"probe": str, "mode": str, "reference_path": str, "subject_path": str}
    created            str     ISO-8601 time
    versions           object  tool/library versions (free-form)
    duration_s         number
    tolerance_file     str     the tolerance profile file used
    tolerance_version  int
    baseline_factor    number  (optional) set by apply_baseline
    probes             list    in engine order (preserved), one entry per (probe, mode):
        name, mode, probe_class ("input"|"mask"|"embedding"|"block"|"output"), block (int|null),
        shape [int], max_abs, mean_abs, max_rel, cosine, rel_fro, p99_abs, frac_outside,
        min_passing_atol, nan_ref, nan_sub, inf_ref, inf_sub (ints), atol, rtol,
        criterion ("absolute"|"relative"|"meaning"|"stats"), lowp_ref_max_abs (number|null),
        baseline_max_abs (number|null), passed (bool), message (str; first line self-contained),
        reference_path, subject_path (str); optional compared_by (str, masks compared by meaning),
        baseline_regressed (bool) set by apply_baseline
    not_evaluated      list    {"name", "mode", "why"}: isolated-mode probes that could not be fed
    not_applicable     list    {"name", "why"}: probes the subject does not produce (its overlay says why)
    notes              list    (optional) one-line strings: stats-only caveats, and the subject plug-in's own
                               notes (its describe()["notes"], e.g. runtime patches), prefixed "subject: "
    blocks             list    {"block": int, "probe": str, "isolated_max_abs": number|null,
                                "accumulated_max_abs": number|null, "growth": number|null}
                               (growth = accumulated / isolated)
    steps              object  (pipeline dumps) the per-step table and the first step out of tolerance, from the
                               family's ``summarize`` (see parity.report.steps)

Encoding: the file is strict JSON (``allow_nan=False``), pretty-printed, probe order preserved. Floats
are JSON numbers; the non-finite floats NaN, +Inf and -Inf are written as the STRINGS ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (so nothing is lost, unlike null); ``load_result`` turns them back into
floats for the numeric fields above. null means "not applicable / not measured".

Files: ``write_report(result, dir)`` -> parity.json, parity.md (first line: one-line verdict; probe table;
per-block table; failure messages), parity.png (per-block max |Δ|, isolated vs accumulated, log scale,
tolerance lines). ``write_summary(results, dir)`` -> summary.md (one line per dump, linking to
``<dir>/<basename of the dump dir>/parity.md``, where ``write_report`` put each dump's report).
``rerender(dir)`` rebuilds md/png (and summary.md) from the JSON. ``load_baseline`` / ``apply_baseline``
flag probes whose max_abs grew more than ``factor``× over a previous run, even inside tolerance.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from parity.dtypes import is_int, is_number
from parity.errors import ParityError, shown

Num = Optional[float]   # a number; null = not measured. NaN and +-Inf are written as strings (see above)

SCHEMA = "opensora-parity/report@2"
_UPGRADABLE = {"opensora-parity/report@1": {"torch_path": "reference_path", "ms_path": "subject_path"}}
JSON_NAME = "parity.json"
MD_NAME = "parity.md"
PNG_NAME = "parity.png"
SUMMARY_NAME = "summary.md"

TOP_NUM_KEYS = ("duration_s", "baseline_factor")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass
class ProbeResult:
    """One probe in one mode: an entry of ``probes``. Field order is the file's key order."""
    name: str
    mode: str
    probe_class: str
    block: Optional[int]
    shape: list
    max_abs: Num
    mean_abs: Num
    max_rel: Num
    cosine: Num
    rel_fro: Num
    p99_abs: Num
    frac_outside: Num
    min_passing_atol: Num
    nan_ref: int
    nan_sub: int
    inf_ref: int
    inf_sub: int
    atol: Num
    rtol: Num
    criterion: str
    lowp_ref_max_abs: Num
    baseline_max_abs: Num
    passed: bool
    message: str
    reference_path: str
    subject_path: str
    extra: dict = field(default_factory=dict)   # compared_by, stats, ...: written after the fields above

    @classmethod
    def make(cls, values: dict) -> "ProbeResult":
        """From a dict of fields and extras (an extra key that names a field sets that field)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in values.items() if k in names},
                   extra={k: v for k, v in values.items() if k not in names})

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out


@dataclass
class BlockRow:
    """One block probe: an entry of ``blocks`` (growth = accumulated / isolated)."""
    block: int
    probe: str
    isolated_max_abs: Num = None
    accumulated_max_abs: Num = None
    growth: Num = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FirstDivergence:
    """``first_divergence``: the earliest failing probe (isolated mode first) and where it lives on each side."""
    probe: str
    mode: str
    reference_path: str = ""
    subject_path: str = ""

    @classmethod
    def of(cls, probe: dict) -> dict:
        return dataclasses.asdict(cls(probe.get("name"), probe.get("mode"), probe.get("reference_path", ""),
                                      probe.get("subject_path", "")))


def _number_fields(cls) -> tuple:
    return tuple(f.name for f in dataclasses.fields(cls) if f.type == "Num")


PROBE_NUM_KEYS = _number_fields(ProbeResult)
BLOCK_NUM_KEYS = _number_fields(BlockRow)


def encode(obj: Any) -> Any:
    """JSON-ready copy: non-finite floats -> strings, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if isinstance(obj, Path):
        return str(obj)
    try:  # numpy scalars and arrays, without importing numpy here
        import numpy as np
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return encode(float(obj))
        if isinstance(obj, np.ndarray):
            return encode(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    raise ParityError(f"report: value of type {type(obj).__name__} cannot be written to {JSON_NAME}")


def dumps_result(result: dict) -> str:
    """The parity.json text of a result (strict JSON, NaN/Inf as strings)."""
    return json.dumps(encode(result), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def as_number(v: Any) -> Any:
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    return v


def decode(result: dict) -> dict:
    for k in TOP_NUM_KEYS:
        if k in result:
            result[k] = as_number(result[k])
    for p in result.get("probes", []):
        for k in PROBE_NUM_KEYS:
            if k in p:
                p[k] = as_number(p[k])
    for b in result.get("blocks", []):
        for k in BLOCK_NUM_KEYS:
            if k in b:
                b[k] = as_number(b[k])
    return result


def upgrade(result: Any) -> Any:
    """A report of an earlier schema in today's form (renamed keys), as read from disk."""
    renames = _UPGRADABLE.get(result.get("schema")) if isinstance(result, dict) else None
    if renames is None:
        return result
    for holder in [result.get("first_divergence")] + list(result.get("probes") or []):
        if isinstance(holder, dict):
            for old, new in renames.items():
                if old in holder:
                    holder[new] = holder.pop(old)
    result["schema"] = SCHEMA
    return result


def validate(result: Any, label: str) -> dict:
    if not isinstance(result, dict):
        raise ParityError(f"{label}: a report must be a JSON object, got {type(result).__name__}")
    if result.get("schema") != SCHEMA:
        raise ParityError(f"{label}: schema is {shown(result.get('schema'), 60)}, expected {SCHEMA!r}; pass a parity.json "
                          "written by 'parity compare --report'")
    for key, typ in (("case", str), ("passed", bool), ("probes", list), ("blocks", list)):
        if key not in result:
            raise ParityError(f"{label}: missing key {key!r}")
        if not isinstance(result[key], typ):
            raise ParityError(f"{label}: {key!r} must be {typ.__name__}, got {type(result[key]).__name__}")
    for i, p in enumerate(result["probes"]):
        if not isinstance(p, dict):
            raise ParityError(f"{label}: probes[{i}] must be an object")
        for key, typ in (("name", str), ("mode", str), ("passed", bool)):
            if not isinstance(p.get(key), typ):
                raise ParityError(f"{label}: probes[{i}] needs {key!r} ({typ.__name__})")
        for key in PROBE_NUM_KEYS:
            v = p.get(key)
            if v is not None and not is_number(as_number(v)):
                raise ParityError(f"{label}: probes[{i}] ({p['name']}) {key!r} must be a number or null, "
                                  f"got {v!r}")
    for i, b in enumerate(result["blocks"]):
        if not isinstance(b, dict) or not is_int(b.get("block")):
            raise ParityError(f"{label}: blocks[{i}] must be an object with an integer 'block'")
        for key in BLOCK_NUM_KEYS:
            v = b.get(key)
            if v is not None and not is_number(as_number(v)):
                raise ParityError(f"{label}: blocks[{i}] {key!r} must be a number or null, got {v!r}")
    fd = result.get("first_divergence")
    if fd is not None and not (isinstance(fd, dict) and isinstance(fd.get("probe"), str)):
        raise ParityError(f"{label}: first_divergence must be null or an object with a 'probe'")
    return result


def load_result(path: str | Path) -> dict:
    """Read and validate a parity.json (file, or a directory holding one); NaN/Inf strings -> floats."""
    from parity.jsonio import load_json

    p = Path(path)
    if p.is_dir():
        p = p / JSON_NAME
    data = load_json(p, "report", "pass a parity.json written by 'parity compare --report'")
    return decode(validate(upgrade(data), str(p)))


def copy_result(result: dict) -> dict:
    """A deep copy (handy before apply_baseline when the original must stay untouched)."""
    return copy.deepcopy(result)
