"""Reading a dump: ``open_dump`` (a verified, read-only ``Dump``), ``verify_dump`` (every problem, one line
each) and ``inspect_dump`` (both: the problems and a lenient ``Dump`` of the entries that passed).

A dump is read as one generation: the directory is opened once and every file is opened relative to that
descriptor, without following symlinks, while it is checked (size, header, sha256). The descriptors stay
open for the ``Dump``'s lifetime and every later read goes through them, so a concurrent ``parity dump
--force`` that renames the old dump aside and deletes it cannot mix two dumps: the reader keeps seeing the
generation it verified (deleted files live on while open). A file rewritten *in place* (which this tool never
does) is refused when its size or modification time no longer match what was verified.

Size: opening, verifying and reading one pinned generation of a dump are one job with shared state (the
snapshot of descriptors); ``inspect_dump``/``verify_dump`` reuse it so verify and compare never disagree.
"""

from __future__ import annotations

import contextlib
import os
import re

import numpy as np

from parity import dtypes as _dt
from parity import safetensors_io as _st
from parity.errors import ParityError, shown
from parity.jsonio import load_json
from parity.store import fsio, npy
from parity.store.manifest import (CONFIG, FIX, MANIFEST, ROLE_DIRS, WEIGHTS, check_fields, check_identity,
                                   is_int, validate_name)

TMP_RE = re.compile(r"\.(.+)\.tmp-(\d+)-[0-9a-f]+")
OLD_RE = re.compile(r"\.(.+)\.old-(\d+)-[0-9a-f]+")
MAX_MANIFEST_BYTES = 64 * 2**20


class _Snapshot:
    """One generation of a dump: its directory descriptor and the descriptors of the files checked in it."""

    def __init__(self, path: str, dfd: int):
        self.path, self.dfd = path, dfd
        self.subdirs: dict[str, int] = {}
        self.files: dict[str, tuple[int, os.stat_result]] = {}

    def close(self) -> None:
        for fd, _ in self.files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        for fd in self.subdirs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.dfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.dfd)
        self.files, self.subdirs, self.dfd = {}, {}, None

    def open(self, rel: str) -> tuple[int, os.stat_result]:
        """(fd, stat) of the regular file ``rel`` ("states/x.npy", "weights.safetensors") in this generation."""
        if rel in self.files:
            return self.files[rel]
        full = os.path.join(self.path, rel)
        sub, _, name = rel.rpartition("/")
        dfd = self.dfd
        if sub:
            if sub not in self.subdirs:
                self.subdirs[sub] = fsio.open_dir(sub, dir_fd=self.dfd, follow=False,
                                                  where=os.path.join(self.path, sub))
            dfd = self.subdirs[sub]
        got = fsio.open_regular(name, dir_fd=dfd, follow=False, where=full,
                                fix=f"a dump holds regular files only; {FIX}")
        self.files[rel] = got
        return got

    def open_external(self, path: str) -> tuple[int, os.stat_result]:
        key = "\0external"
        if key not in self.files:
            self.files[key] = fsio.open_regular(path, follow=True, where=path,
                                                fix=f"restore the weights file or {FIX}")
        return self.files[key]

    def fresh(self, rel: str) -> tuple[int, os.stat_result]:
        """The pinned file, refused if it was rewritten in place since it was checked."""
        fd, st = self.open(rel) if rel != "\0external" else self.files[rel]
        now = os.fstat(fd)
        if fsio.identity(now) != fsio.identity(st):
            where = os.path.join(self.path, rel) if rel != "\0external" else "the external weights file"
            raise ParityError(f"{where}: changed in place since the dump was verified (another program writes "
                              f"to it); re-run once nothing modifies the dump, or {FIX}")
        return fd, st


def _open_root(path: str, allow_tmp: bool) -> int:
    base = os.path.basename(os.path.normpath(path))
    if not allow_tmp and TMP_RE.fullmatch(base):
        raise ParityError(f"{path}: is an incomplete temporary dump left by an interrupted 'parity dump'; "
                          f"delete it and use (or re-create) the dump it was meant to become")
    try:
        return fsio.open_dir(path, follow=True, where=path)
    except FileNotFoundError:
        hint = ""
        parent = os.path.dirname(os.path.abspath(path))
        with contextlib.suppress(OSError):
            olds = [n for n in os.listdir(parent) if (m := OLD_RE.fullmatch(n)) and m.group(1) == base]
            if olds:
                hint = (f" (an interrupted overwrite left the previous dump in {os.path.join(parent, olds[0])}; "
                        "re-running 'parity dump' restores it first)")
        raise ParityError(f"{path}: dump directory does not exist{hint}; check the path or {FIX}") from None
    except ParityError:
        raise ParityError(f"{path}: not a directory; point to a dump directory created by 'parity dump'") from None
    except OSError as e:
        raise fsio.io_error(path, e, "read", "check the path and permissions") from None


def _read_manifest(snap: _Snapshot) -> dict:
    mpath = os.path.join(snap.path, MANIFEST)
    try:
        os.lstat(MANIFEST, dir_fd=snap.dfd)
    except FileNotFoundError:
        raise ParityError(f"{mpath}: missing, so {snap.path} is not a complete dump (interrupted write?); "
                          f"{FIX}") from None
    man = load_json(MANIFEST, "manifest", FIX, dir_fd=snap.dfd, follow=False, where=mpath,
                    limit=MAX_MANIFEST_BYTES)
    return check_identity(man, mpath)


def _read_config(snap: _Snapshot, config, problems: list) -> None:
    cpath = os.path.join(snap.path, CONFIG)
    try:
        os.lstat(CONFIG, dir_fd=snap.dfd)
    except FileNotFoundError:
        problems.append(f"{cpath}: missing; {FIX}")
        return
    try:
        cfg = load_json(CONFIG, "config", FIX, dir_fd=snap.dfd, follow=False, where=cpath)
    except ParityError as e:
        problems.append(str(e))
        return
    if not isinstance(cfg, dict):
        problems.append(f"{cpath}: not a JSON object; {FIX}")
    elif config is not None and cfg != config:
        problems.append(f"{cpath}: differs from the config in manifest.json (edited by hand?); {FIX}")


def _pin(open_, where: str, missing: str, size: int, what: str):
    """((fd, stat), None) of a file of the snapshot whose size is the manifest's ``size``, else (None, problem)."""
    try:
        fd, st = open_()
    except (FileNotFoundError, NotADirectoryError):
        return None, missing
    except ParityError as err:
        return None, str(err)
    except OSError as err:
        return None, str(fsio.io_error(where, err, "read", f"check permissions or {FIX}"))
    if st.st_size != size:
        return None, f"{where}: {st.st_size} bytes but the manifest says {size} ({what} changed or truncated); {FIX}"
    return (fd, st), None


def _file_problem(snap: _Snapshot, rel: str, e: dict, hashes: bool, finite: bool) -> str | None:
    """One-line problem with a listed .npy file, or None."""
    full = os.path.join(snap.path, rel)
    pinned, problem = _pin(lambda: snap.open(rel), full, f"{full}: missing ({e['role']} {e['name']!r} is listed in "
                           f"the manifest); {FIX}", e["bytes"], "file")
    if problem:
        return problem
    fd, st = pinned
    geo = _geometry_problem(fd, st, e)
    if geo:
        return f"{full}: {geo}; {FIX}"
    if hashes and fsio.sha256_fd(fd, st.st_size, full) != e["sha256"]:
        return f"{full}: sha256 mismatch with manifest (file changed or corrupt); {FIX}"
    if finite and e["role"] != "input":
        n_nan, n_inf = _dt.nonfinite_counts(_map(snap, rel, e), e["dtype"])
        if n_nan or n_inf:
            return (f"reference problem: {full} contains {n_nan} NaN and {n_inf} Inf values; the reference run "
                    "itself is broken (overflow/precision?); fix the reference model or inputs and re-create the dump")
    return None


def _descr_matches(dtype: np.dtype, name: str) -> bool:
    exp = _dt.storage_dtype(name)
    return dtype == exp and (dtype.byteorder in "<|=" if dtype.itemsize > 1 else True)


def _geometry_problem(fd: int, st, entry: dict) -> str | None:
    """Problem text (without the file name) if the .npy header/size disagrees with the manifest entry."""
    try:
        h = npy.read_header_fd(fd, st.st_size)
    except npy.BadNpy as e:
        return str(e)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if h.fortran:
        return "is stored in Fortran order; dumps hold C-order arrays only"
    if not _descr_matches(h.dtype, entry["dtype"]) or list(h.shape) != entry["shape"]:
        return (f"is stored as {h.dtype.str} {list(h.shape)} but the manifest says {entry['dtype']} {entry['shape']} "
                "(shape/dtype mismatch)")
    return npy.size_problem(h, st.st_size)


def _map(snap: _Snapshot, rel: str, entry: dict) -> np.ndarray:
    """Memory-map a pinned .npy file after checking it again against its manifest entry (raw storage dtype)."""
    full = os.path.join(snap.path, rel)
    try:
        fd, st = snap.fresh(rel)
        geo = _geometry_problem(fd, st, entry)
        if geo:
            raise ParityError(f"{full}: {geo}; {FIX}")
        return npy.memmap(fd, npy.read_header_fd(fd, st.st_size), full)
    except FileNotFoundError:
        raise ParityError(f"{full}: missing; {FIX}") from None
    except OSError as e:
        raise fsio.io_error(full, e, "read", FIX) from None
    except (ValueError, npy.BadNpy) as e:  # mmap on a file that changed under us: report, never crash
        raise ParityError(f"{full}: cannot be loaded ({type(e).__name__}: {str(e)[:100]}); {FIX}") from None


def weights_location(path: str, w: dict) -> str:
    return w["path"] if w["external"] else os.path.join(path, w["path"])


def _weights_problem(snap: _Snapshot, w: dict, hashes: bool) -> str | None:
    wpath = weights_location(snap.path, w)
    pinned, problem = _pin(lambda: snap.open_external(wpath) if w["external"] else snap.open(WEIGHTS), wpath,
                           f"{wpath}: weights file missing; restore it or {FIX}", w["bytes"], "weights")
    if problem:
        return problem
    fd, st = pinned
    if hashes and fsio.sha256_fd(fd, st.st_size, wpath) != w["sha256"]:
        return f"{wpath}: sha256 mismatch with manifest (weights changed or corrupt); {FIX}"
    return None


def _nonfinite_stats(man: dict, mpath: str, problems: list) -> None:
    for name, e in man["stats"].items():
        if isinstance(e, dict) and is_int(e.get("nan")) and is_int(e.get("inf")) and (e["nan"] or e["inf"]):
            problems.append(f"reference problem: {mpath}: stats of probe {shown(name, 100)} count {e['nan']} NaN "
                            f"and {e['inf']} Inf values; the reference run itself is broken (overflow/precision?); "
                            "fix the reference model or inputs and re-create the dump")


def _inspect(path, *, hashes: bool, finite: bool, weights_hash: bool, allow_tmp: bool = False,
             dir_fd: int | None = None):
    """(manifest, config, usable file entries, usable weights entry, problems, snapshot). Fatal problems raise
    ParityError (the snapshot is closed then); otherwise the caller owns the snapshot."""
    path = os.fspath(path)
    dfd = os.dup(dir_fd) if dir_fd is not None else _open_root(path, allow_tmp)
    snap = _Snapshot(path, dfd)
    try:
        man = _read_manifest(snap)
        mpath = os.path.join(path, MANIFEST)
        problems: list[str] = []
        files, w = check_fields(man, mpath, problems)
        config = man.get("config") if isinstance(man.get("config"), dict) else None
        _read_config(snap, config, problems)
        for rel, e in files.items():
            problem = _file_problem(snap, rel, e, hashes, finite)
            if problem:
                problems.append(problem)
        if finite and man.get("stats_only") is True and isinstance(man.get("stats"), dict):
            _nonfinite_stats(man, mpath, problems)
        if w is not None:
            problem = _weights_problem(snap, w, weights_hash)
            if problem:
                problems.append(problem)
                w = None
    except BaseException:
        snap.close()
        raise
    return man, config, files, w, problems, snap


# --------------------------------------------------------------------------------------------- Dump


class Dump:
    """A verified, read-only dump generation. Arrays are memory-mapped from the files that were verified;
    bf16 is returned as exact float32. ``close()`` (or garbage collection) releases the descriptors."""

    def __init__(self, path: str, manifest: dict, files: dict, snapshot: _Snapshot | None = None,
                 weights: dict | None = None):  # weights: the manifest's entry once checked (None: unusable)
        self.path = path
        self.manifest = manifest
        self.config: dict = manifest["config"]
        self.precision: str = manifest["precision"]
        self.family: str = manifest["family"]
        self.case: str | None = manifest["case"]
        self.probes: list[str] = list(manifest["probes"])
        self._files = files
        self._snap = snapshot
        self._weights = weights
        self.input_names: list[str] = [e["name"] for e in files.values() if e["role"] == "input"]
        self.has_fp32_states: bool = any(e["role"] == "state_fp32" for e in files.values())
        self.stats_only: bool = manifest.get("stats_only") is True
        self._weights_verified = False

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, MANIFEST)

    def close(self) -> None:
        if self._snap is not None:
            self._snap.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self):
        return f"Dump({self.path!r}, family={self.family!r}, precision={self.precision!r}, probes={len(self.probes)})"

    def _snapshot(self) -> _Snapshot:
        if self._snap is None or self._snap.dfd is None:
            raise ParityError(f"{self.path}: this Dump was closed; open it again with open_dump")
        return self._snap

    def stats(self, probe: str) -> dict:
        """The statistics entry of ``probe`` in a stats-only dump (see ``parity.stats``)."""
        validate_name(probe, "probe")
        if not self.stats_only:
            raise ParityError(f"{self.path}: not a stats-only dump; read the probe's tensor with state()")
        entry = self.manifest["stats"].get(probe)
        if entry is None:
            raise ParityError(f"{self.manifest_path}: probe {probe!r} is not in this dump; check the name")
        return entry

    def _entry(self, role: str, name) -> tuple[str, dict]:
        if not isinstance(role, str) or role not in ROLE_DIRS:
            raise ParityError(f"unknown role {shown(role, 40)}; use one of {', '.join(ROLE_DIRS)}")
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
            listed = ", ".join(have[:10]) + (", ..." if len(have) > 10 else "")
            raise ParityError(f"{os.path.join(self.path, rel)}: {role} {name!r} is not in this dump "
                              f"(available: {listed or 'none'}); check the name")
        return rel, self._files[rel]

    def _load(self, rel: str, entry: dict) -> np.ndarray:
        arr = _map(self._snapshot(), rel, entry)
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
        return _dt.nonfinite_counts(_map(self._snapshot(), rel, e), e["dtype"])

    def raw(self, relpath: str) -> np.ndarray:
        """The file ``relpath`` (e.g. "states/x.npy") memory-mapped as stored (bf16 as uint16 bits)."""
        if not isinstance(relpath, str) or relpath not in self._files:
            raise ParityError(f"{self.path}: {shown(relpath, 100)} is not a file of this dump; "
                              "use a key of manifest['files']")
        return _map(self._snapshot(), relpath, self._files[relpath])

    def input(self, name: str) -> np.ndarray:
        return self._load(*self._entry("input", name))

    def inputs(self) -> dict:
        return {n: self.input(n) for n in self.input_names}

    def _weights_fd(self) -> tuple[int, os.stat_result, str]:
        w = self._weights
        if not w:
            raise ParityError(f"{self.path}: this dump has no weights (or they are unusable); {FIX} with weights")
        wpath = weights_location(self.path, w)
        snap = self._snapshot()
        try:
            fd, st = snap.fresh("\0external" if w["external"] else WEIGHTS)
        except (KeyError, FileNotFoundError):
            raise ParityError(f"{wpath}: weights file missing; restore it or {FIX}") from None
        return fd, st, wpath

    def weights_path(self) -> str:
        """Where the weights are (for messages); read them with ``weights_header``/``load_weights``."""
        return self._weights_fd()[2]

    def weights_header(self) -> dict:
        """{name: (dtype name, shape)} of the weights, read from the verified file."""
        fd, st, wpath = self._weights_fd()
        return _st.read_header_fd(fd, st.st_size, wpath)

    def load_weights(self, names=None, mmap: bool = False) -> dict:
        """All (or ``names``) weight tensors after verifying the weights sha256 (bf16 -> float32); ``mmap``:
        non-bf16 tensors as read-only memory maps (see ``safetensors_io.release_pages``)."""
        fd, st, wpath = self._weights_fd()
        if not self._weights_verified:
            if fsio.sha256_fd(fd, st.st_size, wpath) != self._weights["sha256"]:
                raise ParityError(f"{wpath}: sha256 mismatch with manifest (weights changed or corrupt); {FIX}")
            self._weights_verified = True
        return _st.load_fd(fd, st.st_size, wpath, names, mmap=mmap)


def _first(problems: list, path: str) -> ParityError:
    more = f" [{len(problems) - 1} more problem(s): run 'parity verify {path}']" if len(problems) > 1 else ""
    return ParityError(problems[0] + more)


def open_dump(path, verify: bool = True) -> Dump:
    """Open and validate a dump. ``verify`` also checks the sha256 of every .npy file
    (the weights file is hashed by ``load_weights``). Raises ParityError on the first problem."""
    path = os.fspath(path)
    man, _, files, w, problems, snap = _inspect(path, hashes=verify, finite=False, weights_hash=False)
    if problems:
        snap.close()
        raise _first(problems, path)
    return Dump(path, man, files, snap, w)


def inspect_dump(path) -> tuple[Dump | None, list[str]]:
    """Every problem of a dump, one line each ([] = OK), and a lenient ``Dump`` of the entries that passed the
    field checks (None when the manifest itself is unusable). The caller closes the Dump."""
    path = os.fspath(path)
    try:
        man, _, files, w, problems, snap = _inspect(path, hashes=True, finite=True, weights_hash=True)
    except ParityError as e:
        return None, [str(e)]
    try:
        dump = Dump(path, man, files, snap, w)
    except (KeyError, TypeError):
        snap.close()
        return None, problems
    return dump, problems


def verify_dump(path) -> list[str]:
    """Every problem of a dump, one line each ([] = OK). NaN/Inf in reference states are reported as
    lines starting with "reference problem:"."""
    dump, problems = inspect_dump(path)
    if dump is not None:
        dump.close()
    return problems
