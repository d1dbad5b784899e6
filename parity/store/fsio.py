"""The file-system discipline of the harness (docs/filesystem.md), in one place.

Reading:
- files are opened once, with ``O_NOFOLLOW`` where the path comes from a dump or a report directory and
  ``O_NONBLOCK`` (a FIFO never blocks the open), then checked on the descriptor: regular files only
  (``fstat``, no TOCTOU between a check and the open);
- reads are bounded: the size comes from ``fstat``, is checked against a limit before anything is allocated
  or hashed, exactly that many bytes are read, and a file that grows or shrinks meanwhile is refused;
- a dump is read relative to one directory descriptor (``open_dir``), so a concurrent rename or replacement
  of the path cannot mix two dumps (see ``parity.store.reader``).

Writing:
- every output is created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) under a temporary name nobody can
  predict (``temp_name``: pid + 64 random bits), written, fsynced, and then *linked* to its final name, which
  fails if the name exists (``link_noreplace``): nothing is ever written through a symlink or over a file by
  accident;
- a file is replaced only after it was moved aside and recognised as the tool's own (``replace_owned``): a
  symlink, a file of the user's or a file edited since is moved back and refused;
- ``OwnedDir`` keeps, per output directory, a record (``.parity-files.json``) of the files the tool wrote and
  their sha256, so a re-run may replace its own report and refuses anything else, saying how to proceed.

POSIX only (``O_NOFOLLOW``, ``dir_fd``, hard links); errors are ``ParityError`` lines naming the path.

Size: one module because every rule here (exclusive create, no-follow, pinned descriptors, ownership records)
is applied together by each writer and reader; split, the rules would drift apart.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat

from parity.errors import ParityError

CHUNK = 8 * 1024 * 1024
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

RECORD = ".parity-files.json"
RECORD_SCHEMA = "opensora-parity/files@1"


# ------------------------------------------------------------------------------------------------- errors


def io_error(where: str, exc: OSError, doing: str = "write", fix: str | None = None) -> ParityError:
    """One line for an OSError while ``doing`` something to ``where``."""
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return ParityError(f"{where}: no space left on device while trying to {doing} it; free disk space and "
                           "re-run (nothing was published)")
    if code == errno.EFBIG:
        return ParityError(f"{where}: file too large for this process while trying to {doing} it (a file-size "
                           "limit, ulimit -f?); raise the limit or free space and re-run (nothing was published)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ParityError(f"{where}: permission denied or read-only file system while trying to {doing} it; "
                           f"{fix or 'choose a writable location'}")
    if code == errno.ELOOP:
        return ParityError(f"{where}: is a symbolic link, which this tool never follows there; "
                           f"{fix or 'replace it with a real file or directory'}")
    if code == errno.EMFILE or code == errno.ENFILE:
        return ParityError(f"{where}: too many open files; raise the limit (ulimit -n) and re-run")
    why = " ".join(str(exc.strerror or exc).split())
    return ParityError(f"{where}: cannot {doing} it ({why}); {fix or 'check the path and permissions'}")


# ---------------------------------------------------------------------------------------------- reading


def open_dir(path, *, dir_fd: int | None = None, follow: bool = True, where: str | None = None) -> int:
    """A descriptor of the directory ``path``; ``follow`` False refuses a symlink as the last component."""
    where = where or os.fspath(path)
    try:
        return os.open(path, _READ | _DIRECTORY | (0 if follow else _NOFOLLOW), dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENOTDIR or (e.errno == errno.ELOOP and not follow):
            raise ParityError(f"{where}: not a directory (or a symbolic link); pass a real directory") from None
        raise


def open_regular(path, *, dir_fd: int | None = None, follow: bool = False, where: str | None = None,
                 fix: str = "pass a regular file") -> tuple[int, os.stat_result]:
    """(descriptor, fstat) of the regular file ``path``, opened without blocking (FIFOs, devices) and, unless
    ``follow``, without following a symlink as its last component. ``FileNotFoundError`` propagates."""
    where = where or os.fspath(path)
    try:
        fd = os.open(path, _READ | (0 if follow else _NOFOLLOW), dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise ParityError(f"{where}: is a symbolic link, not a regular file; {fix}") from None
        if e.errno in (errno.ENXIO, errno.EISDIR):  # a socket, or a directory opened for reading
            raise ParityError(f"{where}: not a regular file; {fix}") from None
        raise io_error(where, e, "read", fix) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ParityError(f"{where}: not a regular file; {fix}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_exact(fd: int, size: int, where: str, offset: int = 0) -> bytes:
    """``size`` bytes at ``offset``; refuses a file that ends early."""
    parts, pos, end = [], offset, offset + size
    while pos < end:
        piece = os.pread(fd, min(CHUNK, end - pos), pos)
        if not piece:
            raise ParityError(f"{where}: shrank while being read (changed by another process?); re-run once "
                              "it is complete")
        parts.append(piece)
        pos += len(piece)
    return b"".join(parts)


def check_unchanged(fd: int, st: os.stat_result, where: str) -> None:
    """Refuse a file whose size or modification time changed since ``st`` was taken (it grew, shrank, or was
    rewritten in place while being read)."""
    now = os.fstat(fd)
    if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise ParityError(f"{where}: changed while being read ({st.st_size} -> {now.st_size} bytes); re-run once "
                          "nothing writes to it")


def read_file(path, *, what: str = "file", fix: str = "check the path", dir_fd: int | None = None,
              follow: bool = True, limit: int, where: str | None = None) -> bytes:
    """The whole regular file ``path``, at most ``limit`` bytes (checked before reading)."""
    where = where or os.fspath(path)
    try:
        fd, st = open_regular(path, dir_fd=dir_fd, follow=follow, where=where, fix=f"pass the {what} itself")
    except FileNotFoundError:
        raise ParityError(f"{where}: {what} not found (missing); {fix}") from None
    try:
        if st.st_size > limit:
            raise ParityError(f"{where}: {what} is {st.st_size} bytes, larger than the {limit >> 20} MiB this "
                              f"tool reads for it; {fix}")
        data = read_exact(fd, st.st_size, where)
        if os.pread(fd, 1, st.st_size):
            raise ParityError(f"{where}: grew while being read (changed by another process?); re-run once it is "
                              "complete")
        return data
    except OSError as e:
        raise io_error(where, e, "read", fix) from None
    finally:
        os.close(fd)


def sha256_fd(fd: int, size: int, where: str) -> str:
    """Hex sha256 of the first ``size`` bytes of ``fd`` (the size fstat gave), read in chunks."""
    h = hashlib.sha256()
    buf = bytearray(min(CHUNK, max(size, 1)))
    view = memoryview(buf)
    pos = 0
    try:
        while pos < size:
            n = os.preadv(fd, [view[: min(len(buf), size - pos)]], pos)
            if n == 0:
                raise ParityError(f"{where}: shrank while being read (changed by another process?); re-run")
            h.update(view[:n])
            pos += n
    except OSError as e:
        raise io_error(where, e, "read") from None
    return h.hexdigest()


def identity(st: os.stat_result) -> tuple:
    """What pins one generation of a file: same inode, size and modification time."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------- writing


def temp_name(final: str) -> str:
    """A hidden sibling name for ``final`` that another process cannot predict (pid + 64 random bits)."""
    return f".{final}.tmp-{os.getpid()}-{secrets.token_hex(8)}"


def create_new(name: str, *, dir_fd: int | None = None, mode: int = 0o644) -> int:
    """A write descriptor of a file created exclusively (never through a symlink, never an existing file)."""
    return os.open(name, _CREATE, mode, dir_fd=dir_fd)


def write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view[:CHUNK])
        view = view[n:]


class FdWriter:
    """A minimal binary file object over a descriptor (``write`` only, unbuffered), for writers that take one."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data) -> int:
        write_all(self.fd, data)
        return memoryview(data).nbytes


def fsync_dir(dir_fd_or_path) -> None:
    """fsync a directory (by descriptor or path) so a rename in it is durable; best effort."""
    own = not isinstance(dir_fd_or_path, int)
    try:
        fd = os.open(dir_fd_or_path, os.O_RDONLY | _DIRECTORY) if own else dir_fd_or_path
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        if own:
            os.close(fd)


def unlink_quietly(name: str, dir_fd: int | None) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def write_temp(dir_fd: int | None, final: str, write) -> str:
    """Create a temp file for ``final`` in ``dir_fd``, let ``write(fd)`` fill it, fsync; returns its name
    (removed again if anything fails)."""
    tmp = temp_name(final)
    fd = create_new(tmp, dir_fd=dir_fd)
    try:
        try:
            write(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(tmp, dir_fd)
        raise
    return tmp


def link_noreplace(tmp: str, final: str, dir_fd: int | None) -> bool:
    """Give ``tmp`` the additional name ``final``; False if ``final`` exists (in any form, symlinks included).
    Falls back to a checked rename where hard links are not supported."""
    try:
        os.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
    try:
        os.lstat(final, dir_fd=dir_fd)
        return False
    except FileNotFoundError:
        os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return True


def replace_owned(final: str, data, is_ours, *, dir_fd: int, where: str, fix: str) -> None:
    """Write ``data`` as ``final``, replacing an existing ``final`` only if ``is_ours(fd, stat)`` recognises
    it: the old file is first moved aside (an atomic rename within the directory), checked there through a
    descriptor, and moved back untouched when it is not the tool's own. New data never goes through a
    symlink, and nothing is lost if the process dies at any point (the old file keeps a hidden name).
    ``data`` is bytes or a callable ``write(fd)``."""
    writer = data if callable(data) else (lambda fd: write_all(fd, data))
    try:
        tmp = write_temp(dir_fd, final, writer)
    except OSError as e:
        raise io_error(where, e) from None
    try:
        if link_noreplace(tmp, final, dir_fd):
            return
        aside = temp_name(final).replace(".tmp-", ".old-", 1)
        os.rename(final, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if not _recognised(aside, dir_fd, is_ours):
            kept = link_noreplace(aside, final, dir_fd)  # back under its own name, untouched
            if kept:
                unlink_quietly(aside, dir_fd)
            raise ParityError(f"{where}: exists but was not written by this tool (or was edited since, or is a "
                              f"symbolic link or special file), so it is left alone"
                              f"{'' if kept else f' (kept as {aside})'}; {fix}")
        if not link_noreplace(tmp, final, dir_fd):
            raise ParityError(f"{where}: appeared while it was being written (another process?); re-run")
        unlink_quietly(aside, dir_fd)
    except OSError as e:
        raise io_error(where, e) from None
    finally:
        unlink_quietly(tmp, dir_fd)
        fsync_dir(dir_fd)


def _recognised(name: str, dir_fd: int, is_ours) -> bool:
    try:
        fd, st = open_regular(name, dir_fd=dir_fd, follow=False)
    except (ParityError, OSError):
        return False
    try:
        return bool(is_ours(fd, st))
    except (ParityError, OSError):
        return False
    finally:
        os.close(fd)


def make_dirs(path, where: str | None = None) -> list[str]:
    """Create ``path`` and missing parents (existing parents may be symlinks: they are the user's choice);
    returns the directories created. The last component must not be a symlink."""
    where = where or os.fspath(path)
    full = os.path.abspath(os.fspath(path))
    missing = []
    cur = full
    while not os.path.lexists(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass
        except OSError as e:
            raise io_error(where, e, "create", "choose a writable location") from None
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ParityError(f"{where}: exists and is not a directory (a file or a symbolic link); pass a new or "
                          "existing real directory")
    return created


class OwnedDir:
    """An output directory whose files the tool may replace only if it wrote them (the ``RECORD`` file).

    ``legacy(name, fd, st)`` may recognise files of a directory written before records existed.
    """

    def __init__(self, path, *, where: str | None = None, legacy=None, fix: str = ""):
        self.path = os.fspath(path)
        self.where = where or self.path
        self.fix = fix or f"move it away or choose another directory than {self.where}"
        self.legacy = legacy
        make_dirs(self.path, self.where)
        self.fd = open_dir(self.path, follow=False, where=self.where)
        self._record = self._read_record()
        self._committed = set(self._record)  # names the record knew before this run: no legacy guess for them

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _show(self, name: str) -> str:
        return os.path.join(self.where, name)

    def _read_record(self) -> dict:
        from parity.jsonparse import parse_json

        where = self._show(RECORD)
        try:
            fd, st = open_regular(RECORD, dir_fd=self.fd, follow=False, where=where,
                                  fix=f"delete it, or {self.fix}")
        except FileNotFoundError:
            return {}
        try:
            if st.st_size > 1 << 20:
                raise ParityError(f"{where}: larger than 1 MiB, not a record of this tool; delete it, or {self.fix}")
            data = parse_json(read_exact(fd, st.st_size, where), where, f"delete it, or {self.fix}")
        finally:
            os.close(fd)
        files = data.get("files") if isinstance(data, dict) and data.get("schema") == RECORD_SCHEMA else None
        if not (isinstance(files, dict) and all(isinstance(v, list) and all(isinstance(h, str) for h in v)
                                                for v in files.values())):
            raise ParityError(f"{where}: not a record of this tool (schema {RECORD_SCHEMA!r}); delete it, or "
                              f"{self.fix}")
        return {k: list(v) for k, v in files.items()}

    def _write_record(self) -> None:
        body = json.dumps({"schema": RECORD_SCHEMA, "files": self._record}, indent=1, sort_keys=True).encode()
        replace_owned(RECORD, body, self._is_record, dir_fd=self.fd,
                      where=self._show(RECORD), fix=f"delete it, or {self.fix}")

    def _is_record(self, fd, st) -> bool:
        try:
            data = json.loads(read_exact(fd, min(st.st_size, 1 << 20), RECORD))
        except (ValueError, ParityError):
            return False
        return isinstance(data, dict) and data.get("schema") == RECORD_SCHEMA

    def owns(self, name: str, fd: int, st) -> bool:
        if sha256_fd(fd, st.st_size, self._show(name)) in self._record.get(name, ()):
            return True
        return bool(self.legacy and name not in self._committed and self.legacy(name, fd, st))

    def check_writable(self, names) -> None:
        """Refuse up front (before any work) when one of ``names`` exists and is not the tool's own."""
        for name in names:
            try:
                st = os.lstat(name, dir_fd=self.fd)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and _recognised(name, self.fd, lambda fd, s: self.owns(name, fd, s)):
                continue
            raise ParityError(f"{self._show(name)}: exists but was not written by this tool (or was edited since, "
                              f"or is a symbolic link or special file), so it is left alone; {self.fix}")

    def write(self, name: str, data: bytes) -> None:
        """Write ``name`` (a plain file name) in this directory under the ownership rule."""
        digest = hashlib.sha256(data).hexdigest()
        # the record learns the new content first: a crash between the two writes leaves every file recognised
        self._record[name] = [h for h in self._record.get(name, []) if h != digest][-1:] + [digest]
        self._write_record()
        replace_owned(name, data, lambda fd, st: self.owns(name, fd, st), dir_fd=self.fd, where=self._show(name),
                      fix=self.fix)
        self._record[name] = [digest]
        self._write_record()
