"""The dump store: a directory holding a reference run (inputs, probe states, weights) and its manifest.

Layout::

    DIR/manifest.json          written last; a directory without it is never loadable
    DIR/config.json            the model config (same dict as manifest["config"])
    DIR/weights.safetensors    unless manifest["weights"]["external"]
    DIR/inputs/<name>.npy      role "input"
    DIR/states/<probe>.npy     role "state" (reference at the dump's precision)
    DIR/states_fp32/<probe>.npy role "state_fp32" (bf16/fp16 dumps only: same model run in fp32)
    DIR/states_isolated/<probe>.npy role "state_isolated" (subject dumps only: the subject's isolated-mode probes;
                               its accumulated-mode probes are the "state" role)

A *subject dump* (``parity run-subject``, ``extra.side == "subject"``) holds a subject's probes in the reference
layout, made on the reference dump's inputs; ``parity compare REF --against SUBJECT_DUMP`` judges it offline.

bf16 arrays are stored as uint16 bit patterns with manifest dtype "bfloat16"; loaders upcast exactly to
float32. Writers build the dump in a hidden sibling temp directory and rename it into place.

Stats-only dumps (``DumpWriter(..., stats_only=True)``, ``parity dump --stats-only``) have no states/ or
states_fp32/: the manifest carries ``"stats_only": true`` and ``"stats": {probe: entry}`` (shape, dtype, sha256
of the tensor bytes, NaN/Inf counts, min/max/mean/std/absmax/rms/mean_abs and a fixed sample of values; see
``parity.stats``). Inputs and weights are stored as usual.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import time

import numpy as np

from parity import dtypes as _dt
from parity import safetensors_io as _st
from parity.errors import ParityError

SCHEMA = "opensora-parity/dump"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
ROLE_DIRS = {"input": "inputs", "state": "states", "state_fp32": "states_fp32", "state_isolated": "states_isolated"}
MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"

_CHUNK = 8 * 1024 * 1024
_MAX_JSON_BYTES = 64 * 1024 * 1024
_MAX_NPY_HEADER = 1 << 20
_MAX_NAME = 200
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIX = "re-create the dump with 'parity dump'"
_REQUIRED = ("schema", "schema_version", "family", "case", "precision", "config", "seeds", "versions",
             "created", "producer", "extra", "weights", "probes", "files")


def validate_name(name, what: str = "probe") -> str:
    """Return ``name`` if it is a safe probe/input name, else raise ParityError."""
    if not (isinstance(name, str) and 0 < len(name) <= _MAX_NAME and _NAME_RE.fullmatch(name)
            and not name.startswith(".")):
        shown = _short(name, 80)
        raise ParityError(f"invalid {what} name {shown}: use 1-{_MAX_NAME} characters from "
                          "A-Z a-z 0-9 _ . - without a leading dot")
    return name


def _short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def sha256_file(path, chunk: int = _CHUNK) -> str:
    """Hex sha256 of a file, streamed in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(view)
                if not n:
                    break
                h.update(view[:n])
    except OSError as e:
        raise ParityError(f"{os.fspath(path)}: cannot read ({e.strerror or e}); "
                          "check the path and permissions") from None
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- npy


def _npy_header_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(data.dtype), "fortran_order": False, "shape": data.shape})
    return buf.getvalue()


class _BadNpy(Exception):
    """Internal: a .npy file problem (message without the file name)."""


_PICKLED = "contains Python objects (pickled); refusing to load untrusted pickles"


def _read_npy_header(f) -> tuple[str, bool, tuple, int]:
    """(descr, fortran_order, shape, data offset) of an open .npy file; raises _BadNpy."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise _BadNpy("is not a .npy file (bad magic bytes; truncated or corrupt)")
    major = magic[6]
    if major == 1:
        size_fmt, encoding = "<H", "latin1"
    elif major in (2, 3):
        size_fmt, encoding = "<I", "latin1" if major == 2 else "utf8"
    else:
        raise _BadNpy(f"has unsupported .npy format version {major}")
    raw_len = f.read(struct.calcsize(size_fmt))
    if len(raw_len) != struct.calcsize(size_fmt):
        raise _BadNpy("is truncated inside the .npy header")
    (hlen,) = struct.unpack(size_fmt, raw_len)
    if hlen > _MAX_NPY_HEADER:
        raise _BadNpy(f"has an absurd .npy header length ({hlen} bytes; corrupt)")
    raw = f.read(hlen)
    if len(raw) != hlen:
        raise _BadNpy("is truncated inside the .npy header")
    try:
        d = ast.literal_eval(raw.decode(encoding))
    except Exception:  # literal_eval of hostile text: SyntaxError, ValueError, MemoryError, RecursionError...
        raise _BadNpy("has an unreadable .npy header (corrupt)") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise _BadNpy("has a malformed .npy header (corrupt)")
    descr, fortran, shape = d["descr"], d["fortran_order"], d["shape"]
    if not isinstance(descr, str):
        if "O" in repr(descr):
            raise _BadNpy(_PICKLED)
        raise _BadNpy(f"has an unsupported structured dtype {repr(descr)[:60]}")
    if descr.lstrip("<>=|").startswith("O"):
        raise _BadNpy(_PICKLED)
    if not isinstance(fortran, bool):
        raise _BadNpy("has a corrupt .npy header (fortran_order is not a bool)")
    if not (isinstance(shape, tuple) and len(shape) <= 64 and all(_is_int(s) and s >= 0 for s in shape)):
        raise _BadNpy(f"has an invalid shape {shape!r} in its .npy header (corrupt)")
    return descr, fortran, shape, len(magic) + len(raw_len) + hlen


def _descr_matches(descr: str, dtype: str) -> bool:
    exp = _dt.storage_dtype(dtype)
    if descr == exp.str:
        return True
    return exp.itemsize == 1 and len(descr) == 3 and descr[0] in "<>=|" and descr[1:] == exp.str[1:]


def _check_npy_geometry(full: str, entry: dict) -> str | None:
    """Problem text (without the file name) if the .npy header/size disagrees with the manifest entry."""
    try:
        with open(full, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            descr, fortran, shape, offset = _read_npy_header(f)
    except _BadNpy as e:
        return str(e)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if fortran:
        return "is stored in Fortran order; dumps hold C-order arrays only"
    if not _descr_matches(descr, entry["dtype"]) or list(shape) != entry["shape"]:
        return (f"is stored as {descr} {list(shape)} but the manifest says {entry['dtype']} {entry['shape']} "
                "(shape/dtype mismatch)")
    expected = offset + math.prod(shape) * _dt.itemsize(entry["dtype"])
    if size != expected:
        kind = "truncated" if size < expected else "has trailing bytes"
        return f"is {kind} ({size} bytes, its header implies {expected})"
    return None


# ----------------------------------------------------------------------------------------- manifest


def _read_json(full: str, shown: str):
    try:
        if not stat.S_ISREG(os.stat(full).st_mode):  # a FIFO or device would block or never end
            raise ParityError(f"{shown}: not a regular file; {_FIX}")
        with open(full, "rb") as f:
            # read(n) allocates n bytes up front: ask for the file's size (+1 to notice growth), not the cap
            size = os.fstat(f.fileno()).st_size
            raw = f.read(min(size, _MAX_JSON_BYTES) + 1)
    except FileNotFoundError:
        raise ParityError(f"{shown}: missing; {_FIX}") from None
    except OSError as e:
        raise ParityError(f"{shown}: cannot read ({e.strerror or e}); check permissions or {_FIX}") from None
    if len(raw) > _MAX_JSON_BYTES:
        raise ParityError(f"{shown}: larger than {_MAX_JSON_BYTES >> 20} MiB (corrupt); {_FIX}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ParityError(f"{shown}: not valid JSON ({str(e)[:120]}); {_FIX}") from None


_TMP_RE = re.compile(r"\.(.+)\.tmp-(\d+)-[0-9a-f]+")
_OLD_RE = re.compile(r"\.(.+)\.old-(\d+)-[0-9a-f]+")


def _load_manifest(path: str, allow_tmp: bool = False) -> dict:
    """Read and check the manifest's identity fields; raise ParityError when it cannot be used at all."""
    base = os.path.basename(os.path.normpath(path))
    if not allow_tmp and _TMP_RE.fullmatch(base):
        raise ParityError(f"{path}: is an incomplete temporary dump left by an interrupted 'parity dump'; "
                          f"delete it and use (or re-create) the dump it was meant to become")
    if not os.path.isdir(path):
        hint = ""
        parent = os.path.dirname(os.path.abspath(path))
        with contextlib.suppress(OSError):
            olds = [n for n in os.listdir(parent) if (m := _OLD_RE.fullmatch(n)) and m.group(1) == base]
            if olds:
                hint = (f" (an interrupted overwrite left the previous dump in {os.path.join(parent, olds[0])}; "
                        "re-running 'parity dump' restores it first)")
        if os.path.exists(path):
            raise ParityError(f"{path}: not a directory; point to a dump directory created by 'parity dump'")
        raise ParityError(f"{path}: dump directory does not exist{hint}; check the path or {_FIX}")
    mpath = os.path.join(path, MANIFEST)
    if not os.path.exists(mpath):
        raise ParityError(f"{mpath}: missing, so {path} is not a complete dump (interrupted write?); {_FIX}")
    man = _read_json(mpath, mpath)
    if not isinstance(man, dict):
        raise ParityError(f"{mpath}: not a JSON object; {_FIX}")
    if man.get("schema") != SCHEMA:
        raise ParityError(f"{mpath}: schema is {_short(man.get('schema'))}, expected {SCHEMA!r}; "
                          "this is not a parity dump manifest; point to a dump created by 'parity dump'")
    ver = man.get("schema_version")
    if not _is_int(ver) or ver not in SUPPORTED_SCHEMA_VERSIONS:
        raise ParityError(f"{mpath}: unsupported schema_version {_short(ver)}; this version of parity reads "
                          f"version(s) {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}; upgrade parity or {_FIX}")
    return man


def _check_fields(man: dict, mpath: str, problems: list) -> tuple[dict, dict | None]:
    """Validate manifest fields (appending problems); return (usable file entries {relpath: entry},
    usable weights entry or None)."""

    def bad(msg):
        problems.append(f"{mpath}: {msg}; {_FIX}")

    for key in _REQUIRED:
        if key not in man:
            bad(f"missing key {key!r}")
    for key, types, label in (("family", (str,), "a string"), ("case", (str, type(None)), "a string or null"),
                              ("config", (dict,), "an object"), ("seeds", (dict,), "an object"),
                              ("versions", (dict,), "an object"), ("created", (str,), "a string"),
                              ("producer", (str,), "a string"), ("extra", (dict,), "an object")):
        if key in man and not isinstance(man[key], types):
            bad(f"{key!r} must be {label}, got {type(man[key]).__name__}")
    if "precision" in man and man["precision"] not in _dt.PRECISIONS:
        bad(f"unknown precision {_short(man['precision'])} (expected one of {', '.join(_dt.PRECISIONS)})")
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
            if not (_is_int(w.get("bytes")) and w["bytes"] >= 0):
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
        shown = _short(rel, 100)
        if not isinstance(e, dict):
            bad(f"files[{shown}] must be an object")
            continue
        role, name = e.get("role"), e.get("name")
        if not isinstance(role, str) or role not in ROLE_DIRS:
            bad(f"files[{shown}].role must be one of {', '.join(ROLE_DIRS)}")
            continue
        try:
            validate_name(name, "input" if role == "input" else "probe")
        except ParityError as err:
            bad(f"files[{shown}]: {err}")
            continue
        if rel != f"{ROLE_DIRS[role]}/{name}.npy":
            bad(f"files[{shown}] does not match its role/name (expected {ROLE_DIRS[role]}/{name}.npy)")
            continue
        ok = True
        shape = e.get("shape")
        if not (isinstance(shape, list) and len(shape) <= 64 and all(_is_int(s) and s >= 0 for s in shape)):
            bad(f"files[{shown}].shape must be a list of non-negative integers")
            ok = False
        if not _dt.is_dtype_name(e.get("dtype")):
            bad(f"files[{shown}].dtype {_short(e.get('dtype'))} is not a known dtype")
            ok = False
        if not (isinstance(e.get("sha256"), str) and _HEX64.fullmatch(e["sha256"])):
            bad(f"files[{shown}].sha256 must be a 64-digit lowercase hex string")
            ok = False
        if not (_is_int(e.get("bytes")) and e["bytes"] >= 0):
            bad(f"files[{shown}].bytes must be a non-negative integer")
            ok = False
        if role == "state_fp32" and man.get("precision") == "fp32":
            bad(f"files[{shown}]: an fp32 dump cannot have state_fp32 files")
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
            bad(f"files[{_short(rel, 100)}]: a stats-only dump holds no state files")
            del good[rel]
    for p in probe_list:
        if p not in stats:
            bad(f"probe {p!r} is listed in 'probes' but has no entry in 'stats'")
    for name, e in stats.items():
        if name not in probe_list:
            bad(f"stats[{_short(name, 100)}] has no matching probe in 'probes'")
            continue
        for problem in entry_problems(e)[:3]:
            bad(f"stats[{name!r}]: {problem}")


def _weights_location(path: str, w: dict) -> str:
    return w["path"] if os.path.isabs(w["path"]) else os.path.join(path, w["path"])


def _inspect(path, *, hashes: bool, finite: bool, weights_hash: bool, allow_tmp: bool = False):
    """(manifest, config, file entries, problems). Fatal problems raise ParityError."""
    path = os.fspath(path)
    man = _load_manifest(path, allow_tmp)
    mpath = os.path.join(path, MANIFEST)
    problems: list[str] = []
    files, w = _check_fields(man, mpath, problems)

    config = man.get("config") if isinstance(man.get("config"), dict) else None
    cpath = os.path.join(path, CONFIG)
    try:
        cfg = _read_json(cpath, cpath)
        if not isinstance(cfg, dict):
            problems.append(f"{cpath}: not a JSON object; {_FIX}")
        elif config is not None and cfg != config:
            problems.append(f"{cpath}: differs from the config in manifest.json (edited by hand?); {_FIX}")
    except ParityError as e:
        problems.append(str(e))

    for rel, e in files.items():
        try:
            problem = _file_problem(os.path.join(path, rel), e, hashes, finite)
        except ParityError as err:
            problem = str(err)
        if problem:
            problems.append(problem)

    if finite and man.get("stats_only") is True and isinstance(man.get("stats"), dict):
        for name, e in man["stats"].items():
            if isinstance(e, dict) and _is_int(e.get("nan")) and _is_int(e.get("inf")) and (e["nan"] or e["inf"]):
                problems.append(f"reference problem: {mpath}: stats of probe {_short(name, 100)} count {e['nan']} NaN "
                                f"and {e['inf']} Inf values; the reference run itself is broken (overflow/precision?); "
                                "fix the reference model or inputs and re-create the dump")

    if w is not None:
        try:
            problem = _weights_problem(_weights_location(path, w), w, weights_hash)
        except ParityError as err:
            problem = str(err)
        if problem:
            problems.append(problem)
    return man, config, files, problems


def _weights_problem(wpath: str, w: dict, hashes: bool) -> str | None:
    try:
        st = os.stat(wpath)
    except (OSError, ValueError):
        return f"{wpath}: weights file missing; restore it or {_FIX}"
    if not stat.S_ISREG(st.st_mode):
        return f"{wpath}: weights path is not a regular file; restore the weights file or {_FIX}"
    size = st.st_size
    if size != w["bytes"]:
        return f"{wpath}: {size} bytes but the manifest says {w['bytes']} (weights changed or truncated); {_FIX}"
    if hashes and sha256_file(wpath) != w["sha256"]:
        return f"{wpath}: sha256 mismatch with manifest (weights changed or corrupt); {_FIX}"
    return None


def _file_problem(full: str, e: dict, hashes: bool, finite: bool) -> str | None:
    """One-line problem with a listed .npy file, or None."""
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return f"{full}: missing ({e['role']} {e['name']!r} is listed in the manifest); {_FIX}"
    except OSError as err:
        return f"{full}: cannot stat ({err.strerror or err}); check permissions or {_FIX}"
    if not stat.S_ISREG(st.st_mode):
        return f"{full}: not a regular file (symlink or directory); {_FIX}"
    if st.st_size != e["bytes"]:
        return f"{full}: {st.st_size} bytes but the manifest says {e['bytes']} (file changed or truncated); {_FIX}"
    geo = _check_npy_geometry(full, e)
    if geo:
        return f"{full}: {geo}; {_FIX}"
    if hashes and sha256_file(full) != e["sha256"]:
        return f"{full}: sha256 mismatch with manifest (file changed or corrupt); {_FIX}"
    if finite and e["role"] != "input":
        n_nan, n_inf = _dt.nonfinite_counts(_open_npy(full, e), e["dtype"])
        if n_nan or n_inf:
            return (f"reference problem: {full} contains {n_nan} NaN and {n_inf} Inf values; the reference run "
                    "itself is broken (overflow/precision?); fix the reference model or inputs and re-create the dump")
    return None


def _open_npy(full: str, entry: dict) -> np.ndarray:
    """Memory-map a .npy file after checking it against its manifest entry (raw storage dtype)."""
    geo = _check_npy_geometry(full, entry)
    if geo:
        raise ParityError(f"{full}: {geo}; {_FIX}")
    try:
        arr = np.load(full, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy/mmap on a file that changed under us: report, never crash
        raise ParityError(f"{full}: cannot be loaded ({type(e).__name__}: {str(e)[:100]}); {_FIX}") from None
    if list(arr.shape) != entry["shape"] or arr.dtype != _dt.storage_dtype(entry["dtype"]):
        raise ParityError(f"{full}: shape/dtype changed while loading; {_FIX}")
    return arr


def load_npy_checked(path, mmap: bool = True) -> np.ndarray:
    """Load a standalone .npy file safely (no pickles, header/size checked first); ParityError on bad data.
    Returns a read-only memmap (``mmap=True``) or an in-memory array."""
    full = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(full).st_mode):
            raise ParityError(f"{full}: not a regular file; pass a .npy file written by numpy.save")
        with open(full, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            descr, _, shape, offset = _read_npy_header(f)
    except _BadNpy as e:
        raise ParityError(f"{full}: {e}; re-save it with numpy.save") from None
    except OSError as e:
        raise ParityError(f"{full}: cannot be read ({e.strerror or e}); check the path and permissions") from None
    try:
        dt = np.dtype(descr)
    except Exception:
        dt = None
    if dt is None or _dt.dtype_name(dt) is None:
        raise ParityError(f"{full}: unsupported dtype {descr!r}; save it as a numeric array "
                          f"({', '.join(n for n in _dt.DTYPE_NAMES if n != 'bfloat16')})")
    expected = offset + math.prod(shape) * dt.itemsize
    if size != expected:
        kind = "truncated" if size < expected else "has trailing bytes"
        raise ParityError(f"{full}: is {kind} ({size} bytes, its header implies {expected}); re-save it")
    try:
        return np.load(full, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # changed under us: report, never crash
        raise ParityError(f"{full}: cannot be loaded ({type(e).__name__}: {str(e)[:100]}); re-save it") from None


# --------------------------------------------------------------------------------------------- Dump


class Dump:
    """A verified, read-only dump. Arrays are memory-mapped; bf16 is returned as exact float32."""

    def __init__(self, path: str, manifest: dict, files: dict):
        self.path = path
        self.manifest = manifest
        self.config: dict = manifest["config"]
        self.precision: str = manifest["precision"]
        self.family: str = manifest["family"]
        self.case: str | None = manifest["case"]
        self.probes: list[str] = list(manifest["probes"])
        self._files = files
        self.input_names: list[str] = [e["name"] for e in files.values() if e["role"] == "input"]
        self.has_fp32_states: bool = any(e["role"] == "state_fp32" for e in files.values())
        self.stats_only: bool = manifest.get("stats_only") is True
        self._weights_verified = False

    def __repr__(self):
        return f"Dump({self.path!r}, family={self.family!r}, precision={self.precision!r}, probes={len(self.probes)})"

    def stats(self, probe: str) -> dict:
        """The statistics entry of ``probe`` in a stats-only dump (see ``parity.stats``)."""
        validate_name(probe, "probe")
        if not self.stats_only:
            raise ParityError(f"{self.path}: not a stats-only dump; read the probe's tensor with state()")
        entry = self.manifest["stats"].get(probe)
        if entry is None:
            raise ParityError(f"{os.path.join(self.path, MANIFEST)}: probe {probe!r} is not in this dump; check the name")
        return entry

    def _entry(self, role: str, name) -> tuple[str, dict]:
        if not isinstance(role, str) or role not in ROLE_DIRS:
            raise ParityError(f"unknown role {role!r}; use one of {', '.join(ROLE_DIRS)}")
        validate_name(name, "input" if role == "input" else "probe")
        rel = f"{ROLE_DIRS[role]}/{name}.npy"
        if self.stats_only and role != "input":
            raise ParityError(f"{self.path}: is a stats-only dump (parity dump --stats-only): it holds statistics of "
                              f"probe {name!r}, not its tensor; use Dump.stats(), or re-dump without --stats-only")
        if rel not in self._files:
            if role == "state_fp32" and not self.has_fp32_states:
                raise ParityError(f"{self.path}: this {self.precision} dump has no fp32 shadow states "
                                  f"(states_fp32/); compare against role 'state' or re-dump at bf16/fp16")
            have = [e["name"] for e in self._files.values() if e["role"] == role]
            shown = ", ".join(have[:10]) + (", ..." if len(have) > 10 else "")
            raise ParityError(f"{os.path.join(self.path, rel)}: {role} {name!r} is not in this dump "
                              f"(available: {shown or 'none'}); check the name")
        return rel, self._files[rel]

    def _load(self, rel: str, entry: dict) -> np.ndarray:
        arr = _open_npy(os.path.join(self.path, rel), entry)
        if entry["dtype"] == "bfloat16":
            return _dt.bf16_bits_to_float32(arr)
        return arr

    def state(self, probe: str, role: str = "state") -> np.ndarray:
        """Probe state as a read-only memmap (bf16: float32 copy, exact)."""
        return self._load(*self._entry(role, probe))

    def state_dtype(self, probe: str, role: str = "state") -> str:
        if self.stats_only and role == "state":
            return self.stats(probe)["dtype"]
        return self._entry(role, probe)[1]["dtype"]

    def state_shape(self, probe: str, role: str = "state") -> tuple:
        if self.stats_only and role == "state":
            return tuple(self.stats(probe)["shape"])
        return tuple(self._entry(role, probe)[1]["shape"])

    def nonfinite_counts(self, probe: str, role: str = "state") -> tuple[int, int]:
        """(NaN count, Inf count) of a stored array; non-zero means a reference problem."""
        if self.stats_only and role == "state":
            e = self.stats(probe)
            return e["nan"], e["inf"]
        rel, e = self._entry(role, probe)
        return _dt.nonfinite_counts(_open_npy(os.path.join(self.path, rel), e), e["dtype"])

    def raw(self, relpath: str) -> np.ndarray:
        """The file ``relpath`` (e.g. "states/x.npy") memory-mapped as stored (bf16 as uint16 bits)."""
        if not isinstance(relpath, str) or relpath not in self._files:
            raise ParityError(f"{self.path}: {str(relpath)[:100]!r} is not a file of this dump; "
                              "use a key of manifest['files']")
        return _open_npy(os.path.join(self.path, relpath), self._files[relpath])

    def input(self, name: str) -> np.ndarray:
        return self._load(*self._entry("input", name))

    def inputs(self) -> dict:
        return {n: self.input(n) for n in self.input_names}

    def weights_path(self) -> str:
        w = self.manifest.get("weights")
        if not w:
            raise ParityError(f"{self.path}: this dump has no weights; {_FIX} with weights")
        wpath = _weights_location(self.path, w)
        if not os.path.isfile(wpath):
            raise ParityError(f"{wpath}: weights file missing; restore it or {_FIX}")
        return wpath

    def load_weights(self, names=None, mmap: bool = False) -> dict:
        """All (or ``names``) weight tensors after verifying the weights sha256 (bf16 -> float32); ``mmap``:
        non-bf16 tensors as read-only memory maps (see ``safetensors_io.release_pages``)."""
        wpath = self.weights_path()
        if not self._weights_verified:
            if sha256_file(wpath) != self.manifest["weights"]["sha256"]:
                raise ParityError(f"{wpath}: sha256 mismatch with manifest (weights changed or corrupt); {_FIX}")
            self._weights_verified = True
        return _st.load_safetensors(wpath, names, mmap=mmap)


def open_dump(path, verify: bool = True) -> Dump:
    """Open and validate a dump. ``verify`` also checks the sha256 of every .npy file
    (the weights file is hashed by ``load_weights``). Raises ParityError on the first problem."""
    path = os.fspath(path)
    man, _, files, problems = _inspect(path, hashes=verify, finite=False, weights_hash=False)
    if problems:
        more = f" [{len(problems) - 1} more problem(s): run 'parity verify {path}']" if len(problems) > 1 else ""
        raise ParityError(problems[0] + more)
    return Dump(path, man, files)


def verify_dump(path) -> list[str]:
    """Every problem of a dump, one line each ([] = OK). NaN/Inf in reference states are reported as
    lines starting with "reference problem:"."""
    try:
        return _inspect(os.fspath(path), hashes=True, finite=True, weights_hash=True)[3]
    except ParityError as e:
        return [str(e)]


# ---------------------------------------------------------------------------------------- DumpWriter


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def _read_pid(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            txt = f.read(64).decode("ascii", "replace").strip()
        return int(txt) if txt.isdigit() else None
    except (OSError, ValueError):
        return None


class _Lock:
    """Exclusive lock file holding the writer's pid; locks of dead processes are taken over."""

    def __init__(self, path: str, dump: str):
        self.path, self.dump = path, dump

    def _busy(self, pid) -> ParityError:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        return ParityError(f"{self.dump}: is being written by another process ({who}); wait or remove the "
                           f"stale lock {self.path}")

    def acquire(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is None:
                    # empty/garbled: may be a lock that is being created right now
                    with contextlib.suppress(OSError):
                        if time.time() - os.stat(self.path).st_mtime < 10:
                            raise self._busy(None)
                elif _pid_alive(pid):
                    raise self._busy(pid)
                self._break_stale(pid)
                continue
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise
            os.close(fd)
            return
        raise self._busy(_read_pid(self.path))

    def _break_stale(self, seen) -> None:
        # Rename first so that only one process can take over this particular stale file.
        aside = f"{self.path}.stale-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_pid(aside) != seen:  # someone re-locked in between: give their lock back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        with contextlib.suppress(OSError):
            os.unlink(aside)

    def release(self) -> None:
        if _read_pid(self.path) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8")


class DumpWriter:
    """Write a dump atomically. Use as a context manager; the dump is published on successful exit."""

    def __init__(self, out_dir, *, family: str, precision: str, config: dict, seeds: dict | None = None,
                 versions: dict | None = None, case: str | None = None, producer: str = "parity dump",
                 force: bool = False, extra: dict | None = None, stats_only: bool = False):
        self._shown = os.fspath(out_dir)
        self.out_dir = os.path.abspath(self._shown)
        self.name = os.path.basename(self.out_dir)
        self.parent = os.path.dirname(self.out_dir)
        if not self.name or self.name in (".", ".."):
            raise ParityError(f"{self._shown}: not a usable dump directory name; pass e.g. --out dumps/my_case")
        if not isinstance(family, str) or not family:
            raise ParityError(f"{self._shown}: family must be a non-empty string")
        _dt.precision_dtype(precision)
        if case is not None and not isinstance(case, str):
            raise ParityError(f"{self._shown}: case must be a string or None")
        vers = {"python": sys.version.split()[0], "numpy": np.__version__}
        for label, d in (("config", config), ("seeds", seeds), ("versions", versions), ("extra", extra)):
            if (d is not None or label == "config") and not isinstance(d, dict):
                raise ParityError(f"{self._shown}: {label} must be a dict, got {type(d).__name__}")
        vers.update(versions or {})
        self._meta = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "family": family, "case": case,
            "precision": precision, "config": config, "seeds": dict(seeds or {}), "versions": vers,
            "created": None, "producer": str(producer), "extra": dict(extra or {}),
        }
        for label in ("config", "seeds", "versions", "extra"):
            self._meta[label] = self._jsonable(label, self._meta[label])
        self.extra: dict = self._meta.pop("extra")  # callers may add entries until the with-block ends
        self.precision, self.force = precision, force
        self.stats_only = bool(stats_only)  # states become statistics (parity.stats), no states/*.npy
        self._stats: dict = {}
        self._files: dict = {}
        self._probes: list = []
        self._weights = None
        self._tmp = None
        self._lock = None

    # -- plumbing

    def _jsonable(self, label: str, obj):
        try:  # snapshot as JSON sees it (tuples -> lists), so config.json == manifest["config"] on reload
            return json.loads(_json_bytes(obj))
        except (TypeError, ValueError, RecursionError) as e:
            raise ParityError(f"{self._shown}: {label} is not JSON-serializable ({str(e)[:100]}); "
                              "use plain str/int/float/bool/list/dict values without NaN") from None

    @contextlib.contextmanager
    def _io(self, what: str):
        try:
            yield
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ParityError(f"{self._shown}: no space left on device while writing {what}; free disk space "
                                  "and re-run 'parity dump' (nothing was published)") from None
            raise ParityError(f"{self._shown}: cannot write {what} ({e.strerror or e}); check that "
                              f"{self.parent} is writable and re-run") from None

    def _require_active(self):
        if self._tmp is None:
            raise ParityError(f"{self._shown}: DumpWriter used outside its 'with' block; add data inside it")

    def _check_target(self):
        if not os.path.lexists(self.out_dir):
            return
        if not self.force:
            raise ParityError(f"{self._shown}: exists; pass --force to overwrite")
        if os.path.isdir(self.out_dir) and not os.path.islink(self.out_dir):
            if os.path.exists(os.path.join(self.out_dir, MANIFEST)) or not os.listdir(self.out_dir):
                return
        raise ParityError(f"{self._shown}: exists and is not a parity dump (no manifest.json); refusing to "
                          "overwrite it even with --force; choose another output directory")

    def _sibling(self, kind: str) -> str:
        return os.path.join(self.parent, f".{self.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")

    def _recover(self):
        """Under the lock: drop leftovers of dead writers; restore a dump lost in an interrupted swap."""
        try:
            names = os.listdir(self.parent)
        except OSError:
            return
        olds = []
        for n in names:
            m = _TMP_RE.fullmatch(n) or _OLD_RE.fullmatch(n)
            if not m or m.group(1) != self.name:
                continue
            pid = int(m.group(2))
            if pid != os.getpid() and _pid_alive(pid):
                continue
            full = os.path.join(self.parent, n)
            if _OLD_RE.fullmatch(n):
                olds.append(full)
            else:
                shutil.rmtree(full, ignore_errors=True)
        olds.sort(key=lambda p: os.stat(p).st_mtime if os.path.exists(p) else 0)
        if olds and not os.path.lexists(self.out_dir):
            with contextlib.suppress(OSError):
                os.rename(olds.pop(), self.out_dir)
        for p in olds:
            shutil.rmtree(p, ignore_errors=True)

    def __enter__(self):
        if self._lock is not None:
            raise ParityError(f"{self._shown}: a DumpWriter can only be used once; create a new one")
        with self._io("the dump's parent directory"):
            os.makedirs(self.parent, exist_ok=True)
        lock = _Lock(os.path.join(self.parent, f".{self.name}.lock"), self._shown)
        with self._io("the lock file"):
            lock.acquire()
        try:
            self._recover()
            self._check_target()
            tmp = self._sibling("tmp")
            with self._io("the temporary directory"):
                os.mkdir(tmp)
        except BaseException:
            lock.release()
            raise
        self._lock, self._tmp = lock, tmp
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            self._lock.release()
        return False

    # -- adding data

    def add_input(self, name: str, array, dtype: str | None = None) -> None:
        """Add a model input (role "input")."""
        self._add("input", name, array, dtype)

    def add_state(self, probe: str, array, dtype: str | None = None, role: str = "state") -> None:
        """Add a probe state; role "state", "state_fp32" (fp32 shadow, bf16/fp16 dumps only) or "state_isolated"
        (subject dumps: isolated-mode probes). dtype "bfloat16" rounds a float array to bf16 (RNE) for storage."""
        if role not in ("state", "state_fp32", "state_isolated"):
            raise ParityError(f"{self._shown}: unknown state role {role!r}; use 'state', 'state_fp32' or "
                              f"'state_isolated'")
        if role == "state_fp32" and self.precision == "fp32":
            raise ParityError(f"{self._shown}: state_fp32 {probe!r} given for an fp32 dump; fp32 shadow states "
                              "are only for bf16/fp16 dumps")
        if self.stats_only:
            self._add_stats(role, probe, array, dtype)
            return
        self._add(role, probe, array, dtype)

    def _add_stats(self, role, name, array, dtype):
        from parity.stats import tensor_stats

        self._require_active()
        validate_name(name, "probe")
        if role != "state":
            raise ParityError(f"{self._shown}: a stats-only dump holds no fp32 shadow states ({role} {name!r})")
        if name in self._stats:
            raise ParityError(f"{self._shown}: {role} {name!r} added twice; give each a unique name")
        self._stats[name] = tensor_stats(array, dtype, where=f"{self._shown}: {role} {name!r}")
        self._probes.append(name)

    def _add(self, role, name, array, dtype):
        self._require_active()
        validate_name(name, "input" if role == "input" else "probe")
        rel = f"{ROLE_DIRS[role]}/{name}.npy"
        if rel in self._files:
            raise ParityError(f"{self._shown}: {role} {name!r} added twice; give each a unique name")
        dname, data = _dt.to_storage(array, dtype, f"{self._shown}: {role} {name!r}")
        full = os.path.join(self._tmp, rel)
        head = _npy_header_bytes(data)
        h = hashlib.sha256(head)
        with self._io(rel):
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "xb") as f:
                f.write(head)
                flat = data.reshape(-1).view(np.uint8)
                for i in range(0, flat.size, _CHUNK):
                    piece = memoryview(flat[i : i + _CHUNK])
                    f.write(piece)
                    h.update(piece)
                f.flush()
                os.fsync(f.fileno())
        self._files[rel] = {"role": role, "name": name, "shape": list(data.shape), "dtype": dname,
                            "sha256": h.hexdigest(), "bytes": len(head) + data.nbytes}
        if role in ("state", "state_isolated") and name not in self._probes:
            self._probes.append(name)

    def set_weights_file(self, src_path, copy: bool = True) -> None:
        """Use an existing safetensors file: copied into the dump, or referenced externally (copy=False)."""
        self._require_active()
        src = os.fspath(src_path)
        _st.read_safetensors_header(src)  # validates; ParityError names the file
        if not copy:
            self._weights = {"path": os.path.abspath(src), "sha256": sha256_file(src), "external": True,
                             "bytes": os.path.getsize(src)}
            return
        dst = os.path.join(self._tmp, WEIGHTS)
        h, n = hashlib.sha256(), 0
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        with self._io(WEIGHTS):
            with open(src, "rb", buffering=0) as fi, open(dst, "wb") as fo:
                while k := fi.readinto(view):
                    fo.write(view[:k])
                    h.update(view[:k])
                    n += k
                fo.flush()
                os.fsync(fo.fileno())
        self._weights = {"path": WEIGHTS, "sha256": h.hexdigest(), "external": False, "bytes": n}

    def write_weights(self, tensors: dict, dtypes: dict | None = None, metadata: dict | None = None) -> None:
        """Write ``tensors`` as the dump's weights.safetensors (dtypes as in save_safetensors)."""
        self._require_active()
        dst = os.path.join(self._tmp, WEIGHTS)
        with self._io(WEIGHTS):
            with open(dst, "wb") as f:
                _st.write_safetensors_to(f, tensors, dtypes, metadata, where=f"{self._shown}/{WEIGHTS}")
                f.flush()
                os.fsync(f.fileno())
        self._weights = {"path": WEIGHTS, "sha256": sha256_file(dst), "external": False,
                         "bytes": os.path.getsize(dst)}

    # -- publishing

    def _finish(self):
        self._check_target()
        manifest = dict(self._meta)
        if not isinstance(self.extra, dict):
            raise ParityError(f"{self._shown}: DumpWriter.extra must stay a dict")
        manifest["extra"] = self._jsonable("extra", self.extra)
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest.update(weights=self._weights, probes=list(self._probes), files=self._files)
        if self.stats_only:
            manifest.update(stats_only=True, stats=self._stats)
        with self._io("config.json and manifest.json"):
            for fname, obj in ((CONFIG, self._meta["config"]), (MANIFEST, manifest)):  # manifest last
                with open(os.path.join(self._tmp, fname), "xb") as f:
                    f.write(_json_bytes(obj))
                    f.flush()
                    os.fsync(f.fileno())
            for sub in set(ROLE_DIRS.values()):
                if os.path.isdir(os.path.join(self._tmp, sub)):
                    _st.fsync_dir(os.path.join(self._tmp, sub))
            _st.fsync_dir(self._tmp)
        # re-read everything we wrote (external weights were hashed from their file already)
        external = bool(self._weights and self._weights["external"])
        _, _, _, problems = _inspect(self._tmp, hashes=True, finite=False, weights_hash=not external,
                                     allow_tmp=True)
        if problems:
            raise ParityError(f"{self._shown}: verification after writing failed ({problems[0]}); nothing was "
                              "published; check the disk and re-run 'parity dump'")
        self._publish()

    def _publish(self):
        with self._io("the final directory"):
            if os.path.lexists(self.out_dir):
                self._check_target()
                old = self._sibling("old")
                os.rename(self.out_dir, old)
                try:
                    os.rename(self._tmp, self.out_dir)
                except BaseException:
                    os.rename(old, self.out_dir)
                    raise
                self._tmp = None
                _st.fsync_dir(self.parent)
                if os.path.isdir(old) and not os.path.islink(old):
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.unlink(old)
            else:
                os.rename(self._tmp, self.out_dir)
                self._tmp = None
                _st.fsync_dir(self.parent)

