"""Writing a dump atomically: ``DumpWriter``.

The dump is built in a hidden sibling directory the writer creates itself (``.<name>.tmp-<pid>-<random>``,
marked with ``layout.WRITER_MARKER`` first), every file in it created with ``O_EXCL | O_NOFOLLOW`` relative to
that directory's descriptor, fsynced, re-read and verified, and only then renamed into place — under a lock
beside it. ``--force`` replaces an existing directory only if ``layout.replace_problem`` recognises it as a
dump (or it is empty); the old dump is renamed aside first and then only its own files are deleted. Leftovers
of killed writers are cleaned (temporary directories with the marker) or restored (a dump renamed aside whose
replacement never arrived) by the next writer, under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import time

import numpy as np

from parity import dtypes as _dt
from parity import safetensors_io as _st
from parity.errors import ParityError
from parity.jsonio import dumps_bytes
from parity.store import fsio, layout, npy
from parity.store.lock import Lock, pid_alive
from parity.store.manifest import (CONFIG, MANIFEST, ROLE_DIRS, SCHEMA, SCHEMA_VERSION, WEIGHTS,
                                   validate_name)
from parity.store.reader import OLD_RE, TMP_RE, _inspect


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
        self._tmp = None          # name of the temporary directory in the parent
        self._tmp_fd = None
        self._sub_fds: dict = {}
        self._parent_fd = None
        self._lock = None

    # -- plumbing

    def _jsonable(self, label: str, obj):
        try:  # snapshot as JSON sees it (tuples -> lists), so config.json == manifest["config"] on reload
            return json.loads(dumps_bytes(obj))
        except (TypeError, ValueError, RecursionError) as e:
            raise ParityError(f"{self._shown}: {label} is not JSON-serializable ({str(e)[:100]}); "
                              "use plain str/int/float/bool/list/dict values without NaN") from None

    @contextlib.contextmanager
    def _io(self, what: str):
        try:
            yield
        except OSError as e:
            if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise ParityError(f"{self._shown}: no space left on device while writing {what}; free disk space "
                                  "and re-run 'parity dump' (nothing was published)") from None
            if e.errno == errno.EFBIG:
                raise ParityError(f"{self._shown}: file too large for this process while writing {what} (a "
                                  "file-size limit, ulimit -f?); raise the limit or free space and re-run 'parity "
                                  "dump' (nothing was published)") from None
            raise ParityError(f"{self._shown}: cannot write {what} ({e.strerror or e}); check that "
                              f"{self.parent} is writable and re-run") from None

    def _require_active(self):
        if self._tmp is None:
            raise ParityError(f"{self._shown}: DumpWriter used outside its 'with' block; add data inside it")

    def _check_target(self):
        st = None
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.name, dir_fd=self._parent_fd)
        if st is None:
            return
        if not self.force:
            raise ParityError(f"{self._shown}: exists; pass --force to overwrite")
        problem = layout.replace_problem(self._parent_fd, self.name, self._shown)
        if problem:
            raise ParityError(problem)

    def _sibling(self, kind: str) -> str:
        return fsio.temp_name(self.name).replace(".tmp-", f".{kind}-", 1)

    def _recover(self):
        """Under the lock: drop leftovers of dead writers; restore a dump lost in an interrupted swap."""
        try:
            names = os.listdir(self._parent_fd)
        except OSError:
            return
        olds = []
        for n in names:
            m = TMP_RE.fullmatch(n) or OLD_RE.fullmatch(n)
            if not m or m.group(1) != self.name:
                continue
            pid = int(m.group(2))
            if pid != os.getpid() and pid_alive(pid):
                continue
            if OLD_RE.fullmatch(n):
                if layout.replace_problem(self._parent_fd, n, n) is None:  # a recognised dump, moved aside
                    olds.append(n)
            elif layout.is_writer_temp(self._parent_fd, n) or layout.replace_problem(self._parent_fd, n, n) is None:
                layout.remove(self._parent_fd, n)  # a temp dir with the marker, or a complete dump never published
        olds.sort(key=lambda n: os.lstat(n, dir_fd=self._parent_fd).st_mtime)
        if olds:
            try:
                os.lstat(self.name, dir_fd=self._parent_fd)
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    os.rename(olds.pop(), self.name, src_dir_fd=self._parent_fd, dst_dir_fd=self._parent_fd)
        for n in olds:
            layout.remove(self._parent_fd, n)

    def __enter__(self):
        if self._lock is not None:
            raise ParityError(f"{self._shown}: a DumpWriter can only be used once; create a new one")
        try:
            fsio.make_dirs(self.parent, self.parent)
        except ParityError:
            raise ParityError(f"{self._shown}: cannot be created because {self.parent} is not a directory; choose "
                              "another output directory") from None
        with self._io("the dump's parent directory"):
            self._parent_fd = fsio.open_dir(self.parent, follow=True, where=self.parent)
        lock = Lock(f".{self.name}.lock", self._parent_fd, os.path.join(self.parent, f".{self.name}.lock"),
                    self._shown)
        try:
            with self._io("the lock file"):
                lock.acquire()
        except BaseException:
            os.close(self._parent_fd)
            raise
        try:
            self._recover()
            self._check_target()
            tmp = self._sibling("tmp")
            with self._io("the temporary directory"):
                os.mkdir(tmp, 0o755, dir_fd=self._parent_fd)
                self._tmp_fd = fsio.open_dir(tmp, dir_fd=self._parent_fd, follow=False)
                os.close(fsio.create_new(layout.WRITER_MARKER, dir_fd=self._tmp_fd))
        except BaseException:
            lock.release()
            os.close(self._parent_fd)
            raise
        self._lock, self._tmp = lock, tmp
        return self

    def _close_fds(self):
        for fd in list(self._sub_fds.values()) + ([self._tmp_fd] if self._tmp_fd is not None else []):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._sub_fds, self._tmp_fd = {}, None

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._close_fds()
            if self._tmp is not None:
                layout.remove(self._parent_fd, self._tmp)
                self._tmp = None
            self._lock.release()
            os.close(self._parent_fd)
        return False

    def _subdir(self, sub: str) -> int:
        if sub not in self._sub_fds:
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, 0o755, dir_fd=self._tmp_fd)
            self._sub_fds[sub] = fsio.open_dir(sub, dir_fd=self._tmp_fd, follow=False)
        return self._sub_fds[sub]

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
        head = npy.header_bytes(data)
        h = hashlib.sha256(head)
        with self._io(rel):
            fd = fsio.create_new(f"{name}.npy", dir_fd=self._subdir(ROLE_DIRS[role]))
            try:
                fsio.write_all(fd, head)
                flat = data.reshape(-1).view(np.uint8)
                for i in range(0, flat.size, fsio.CHUNK):
                    piece = flat[i : i + fsio.CHUNK]
                    fsio.write_all(fd, piece)
                    h.update(piece)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._files[rel] = {"role": role, "name": name, "shape": list(data.shape), "dtype": dname,
                            "sha256": h.hexdigest(), "bytes": len(head) + data.nbytes}
        if role in ("state", "state_isolated") and name not in self._probes:
            self._probes.append(name)

    def set_weights_file(self, src_path, copy: bool = True) -> None:
        """Use an existing safetensors file: copied into the dump, or referenced externally (copy=False).
        The file is opened once; its header check, hash and copy all read that one open file."""
        self._require_active()
        src = os.fspath(src_path)
        try:
            sfd, st = fsio.open_regular(src, follow=True, where=src, fix="pass a .safetensors file")
        except FileNotFoundError:
            raise ParityError(f"{src}: weights file not found; check the path") from None
        try:
            _st.read_header_fd(sfd, st.st_size, src)  # validates; ParityError names the file
            if not copy:
                self._weights = {"path": os.path.abspath(src), "sha256": fsio.sha256_fd(sfd, st.st_size, src),
                                 "external": True, "bytes": st.st_size}
                fsio.check_unchanged(sfd, st, src)
                return
            h, pos = hashlib.sha256(), 0
            with self._io(WEIGHTS):
                fd = fsio.create_new(WEIGHTS, dir_fd=self._tmp_fd)
                try:
                    while pos < st.st_size:
                        piece = fsio.read_exact(sfd, min(fsio.CHUNK, st.st_size - pos), src, pos)
                        fsio.write_all(fd, piece)
                        h.update(piece)
                        pos += len(piece)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsio.check_unchanged(sfd, st, src)
        finally:
            os.close(sfd)
        self._weights = {"path": WEIGHTS, "sha256": h.hexdigest(), "external": False, "bytes": pos}

    def write_weights(self, tensors: dict, dtypes: dict | None = None, metadata: dict | None = None) -> None:
        """Write ``tensors`` as the dump's weights.safetensors (dtypes as in save_safetensors)."""
        self._require_active()
        with self._io(WEIGHTS):
            fd = fsio.create_new(WEIGHTS, dir_fd=self._tmp_fd)
            try:
                _st.write_safetensors_to(fsio.FdWriter(fd), tensors, dtypes, metadata, where=f"{self._shown}/{WEIGHTS}")
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            rfd, st = fsio.open_regular(WEIGHTS, dir_fd=self._tmp_fd)
            try:
                digest = fsio.sha256_fd(rfd, st.st_size, f"{self._shown}/{WEIGHTS}")
            finally:
                os.close(rfd)
        self._weights = {"path": WEIGHTS, "sha256": digest, "external": False, "bytes": size}

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
                fd = fsio.create_new(fname, dir_fd=self._tmp_fd)
                try:
                    fsio.write_all(fd, dumps_bytes(obj))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for sfd in self._sub_fds.values():
                fsio.fsync_dir(sfd)
            fsio.fsync_dir(self._tmp_fd)
        # re-read everything we wrote (external weights were hashed from their file already)
        external = bool(self._weights and self._weights["external"])
        *_, problems, snap = _inspect(os.path.join(self.parent, self._tmp), hashes=True, finite=False,
                                      weights_hash=not external, allow_tmp=True, dir_fd=self._tmp_fd)
        snap.close()
        if problems:
            raise ParityError(f"{self._shown}: verification after writing failed ({problems[0]}); nothing was "
                              "published; check the disk and re-run 'parity dump'")
        with self._io("the dump"):
            os.unlink(layout.WRITER_MARKER, dir_fd=self._tmp_fd)
            fsio.fsync_dir(self._tmp_fd)
        self._publish()

    def _publish(self):
        pfd = self._parent_fd
        with self._io("the final directory"):
            try:
                os.lstat(self.name, dir_fd=pfd)
                exists = True
            except FileNotFoundError:
                exists = False
            if exists:
                self._check_target()
                old = self._sibling("old")
                os.rename(self.name, old, src_dir_fd=pfd, dst_dir_fd=pfd)
                try:
                    os.rename(self._tmp, self.name, src_dir_fd=pfd, dst_dir_fd=pfd)
                except BaseException:
                    os.rename(old, self.name, src_dir_fd=pfd, dst_dir_fd=pfd)
                    raise
                self._tmp = None
                fsio.fsync_dir(pfd)
                layout.remove(pfd, old)
            else:
                os.rename(self._tmp, self.name, src_dir_fd=pfd, dst_dir_fd=pfd)
                self._tmp = None
                fsio.fsync_dir(pfd)
