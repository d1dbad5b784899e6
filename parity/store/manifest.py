"""The dump manifest: its schema, identity fields and the checks of every field (file entries, weights, stats).

``manifest.json`` is written last by ``parity.store.writer``; a directory is a dump only if its manifest has
``SCHEMA`` and a supported ``schema_version`` (``check_identity``) — never because of a file name.
"""

from __future__ import annotations

import re

from parity import dtypes as _dt
from parity.errors import ParityError, shown

SCHEMA = "opensora-parity/dump"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
ROLE_DIRS = {"input": "inputs", "state": "states", "state_fp32": "states_fp32", "state_isolated": "states_isolated"}
MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
FIX = "re-create the dump with 'parity dump'"
MAX_NAME = 200
MAX_TEXT = 200  # case, producer, created: short printable strings
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REQUIRED = ("schema", "schema_version", "family", "case", "precision", "config", "seeds", "versions",
             "created", "producer", "extra", "weights", "probes", "files")


def validate_name(name, what: str = "probe") -> str:
    """Return ``name`` if it is a safe probe/input name, else raise ParityError."""
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME and _NAME_RE.fullmatch(name)
            and not name.startswith(".")):
        raise ParityError(f"invalid {what} name {shown(name, 80)}: use 1-{MAX_NAME} characters from "
                          "A-Z a-z 0-9 _ . - without a leading dot")
    return name


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_text(v) -> bool:
    """A short printable string (what a manifest may echo into a terminal or a report)."""
    return isinstance(v, str) and len(v) <= MAX_TEXT and v.isprintable()


def check_identity(man, mpath: str) -> dict:
    """The manifest's schema and version; ParityError when this is not a dump manifest this version reads."""
    if not isinstance(man, dict):
        raise ParityError(f"{mpath}: not a JSON object; {FIX}")
    if man.get("schema") != SCHEMA:
        raise ParityError(f"{mpath}: schema is {shown(man.get('schema'), 60)}, expected {SCHEMA!r}; "
                          "this is not a parity dump manifest; point to a dump created by 'parity dump'")
    ver = man.get("schema_version")
    if not is_int(ver) or ver not in SUPPORTED_SCHEMA_VERSIONS:
        raise ParityError(f"{mpath}: unsupported schema_version {shown(ver, 60)}; this version of parity reads "
                          f"version(s) {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}; upgrade parity or {FIX}")
    return man


def check_fields(man: dict, mpath: str, problems: list) -> tuple[dict, dict | None]:
    """Validate manifest fields (appending problems); return (usable file entries {relpath: entry},
    usable weights entry or None)."""

    def bad(msg):
        problems.append(f"{mpath}: {msg}; {FIX}")

    for key in _REQUIRED:
        if key not in man:
            bad(f"missing key {key!r}")
    for key in ("case", "producer", "created"):
        v = man.get(key)
        if isinstance(v, str) and not is_text(v):
            bad(f"{key!r} must be a printable string of at most {MAX_TEXT} characters")
    if isinstance(man.get("family"), str):
        try:
            validate_name(man["family"], "family")
        except ParityError as e:
            bad(f"family: {e}")
    for key, types, label in (("family", (str,), "a string"), ("case", (str, type(None)), "a string or null"),
                              ("config", (dict,), "an object"), ("seeds", (dict,), "an object"),
                              ("versions", (dict,), "an object"), ("created", (str,), "a string"),
                              ("producer", (str,), "a string"), ("extra", (dict,), "an object")):
        if key in man and not isinstance(man[key], types):
            bad(f"{key!r} must be {label}, got {type(man[key]).__name__}")
    if "precision" in man and man["precision"] not in _dt.PRECISIONS:
        bad(f"unknown precision {shown(man['precision'], 60)} (expected one of {', '.join(_dt.PRECISIONS)})")
    w = man.get("weights")
    weights = None
    if "weights" in man and w is not None:
        if not isinstance(w, dict):
            bad("'weights' must be an object or null")
        else:
            before = len(problems)
            if not isinstance(w.get("path"), str) or not w.get("path") or "\0" in w["path"]:
                bad("weights.path must be a non-empty string")
            if not isinstance(w.get("external"), bool):
                bad("weights.external must be true or false")
            elif not w["external"] and w.get("path") != WEIGHTS:
                bad(f"weights.path of a non-external weights file must be {WEIGHTS!r}")
            if not (isinstance(w.get("sha256"), str) and _HEX64.fullmatch(w["sha256"])):
                bad("weights.sha256 must be a 64-digit lowercase hex string")
            if not (is_int(w.get("bytes")) and w["bytes"] >= 0):
                bad("weights.bytes must be a non-negative integer")
            if len(problems) == before:
                weights = w

    probes = man.get("probes")
    probe_list: list = []
    if "probes" in man:
        if not isinstance(probes, list):
            bad("'probes' must be a list of probe names")
        else:
            for p in probes:
                try:
                    validate_name(p, "probe")
                except ParityError as e:
                    bad(f"probes: {e}")
                    continue
                if p in probe_list:
                    bad(f"probe {p!r} listed twice")
                else:
                    probe_list.append(p)

    files = man.get("files")
    good: dict = {}
    if "files" in man and not isinstance(files, dict):
        bad("'files' must be an object mapping relative paths to entries")
        files = {}
    for rel, e in (files or {}).items():
        rel_s = shown(rel, 100)
        if not isinstance(e, dict):
            bad(f"files[{rel_s}] must be an object")
            continue
        role, name = e.get("role"), e.get("name")
        if not isinstance(role, str) or role not in ROLE_DIRS:
            bad(f"files[{rel_s}].role must be one of {', '.join(ROLE_DIRS)}")
            continue
        try:
            validate_name(name, "input" if role == "input" else "probe")
        except ParityError as err:
            bad(f"files[{rel_s}]: {err}")
            continue
        if rel != f"{ROLE_DIRS[role]}/{name}.npy":
            bad(f"files[{rel_s}] does not match its role/name (expected {ROLE_DIRS[role]}/{name}.npy)")
            continue
        ok = True
        shape = e.get("shape")
        if not (isinstance(shape, list) and len(shape) <= 64 and all(is_int(s) and s >= 0 for s in shape)):
            bad(f"files[{rel_s}].shape must be a list of non-negative integers")
            ok = False
        if not _dt.is_dtype_name(e.get("dtype")):
            bad(f"files[{rel_s}].dtype {shown(e.get('dtype'), 60)} is not a known dtype")
            ok = False
        if not (isinstance(e.get("sha256"), str) and _HEX64.fullmatch(e["sha256"])):
            bad(f"files[{rel_s}].sha256 must be a 64-digit lowercase hex string")
            ok = False
        if not (is_int(e.get("bytes")) and e["bytes"] >= 0):
            bad(f"files[{rel_s}].bytes must be a non-negative integer")
            ok = False
        if role == "state_fp32" and man.get("precision") == "fp32":
            bad(f"files[{rel_s}]: an fp32 dump cannot have state_fp32 files")
            ok = False
        if ok:
            good[rel] = e

    stats_only = man.get("stats_only", False)
    if not isinstance(stats_only, bool):
        bad("'stats_only' must be true or false")
        stats_only = False
    if stats_only or "stats" in man:
        if not stats_only:
            bad("'stats' is only allowed in a stats-only dump (stats_only: true)")
        else:
            _check_stats(man, probe_list if isinstance(probes, list) else [], good, bad)
        return good, weights

    if isinstance(probes, list) and isinstance(files, dict):
        for p in probe_list:
            if f"states/{p}.npy" in files or f"states_isolated/{p}.npy" in files:
                continue
            bad(f"probe {p!r} is listed in 'probes' but has no states/{p}.npy entry in 'files'")
        for e in sorted(good.values(), key=lambda e: e["name"]):
            if e["role"] in ("state", "state_isolated") and e["name"] not in probe_list:
                bad(f"{ROLE_DIRS[e['role']]}/{e['name']}.npy is in 'files' but probe {e['name']!r} is missing from "
                    f"'probes'")
        for e in good.values():
            if e["role"] == "state_fp32" and e["name"] not in probe_list:
                bad(f"states_fp32/{e['name']}.npy has no matching probe in 'probes'")
    return good, weights


def _check_stats(man: dict, probe_list: list, good: dict, bad) -> None:
    """A stats-only dump: per-probe stats entries instead of state files (see parity.stats)."""
    from parity.stats import entry_problems

    stats = man.get("stats")
    if not isinstance(stats, dict):
        bad("'stats' must be an object mapping probe names to statistics (stats-only dump)")
        return
    for rel, e in list(good.items()):
        if e["role"] != "input":
            bad(f"files[{shown(rel, 100)}]: a stats-only dump holds no state files")
            del good[rel]
    for p in probe_list:
        if p not in stats:
            bad(f"probe {p!r} is listed in 'probes' but has no entry in 'stats'")
    for name, e in stats.items():
        if name not in probe_list:
            bad(f"stats[{shown(name, 100)}] has no matching probe in 'probes'")
            continue
        for problem in entry_problems(e)[:3]:
            bad(f"stats[{name!r}]: {problem}")
