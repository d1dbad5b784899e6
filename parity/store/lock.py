"""The writer's lock: an exclusive ``.<dump name>.lock`` file beside the dump holding the writer's pid.

Created with ``O_EXCL | O_NOFOLLOW`` relative to the parent directory's descriptor; a lock whose pid is dead
is taken over (renamed aside first, so that only one process can take over a given stale file).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time

from parity.errors import ParityError
from parity.store import fsio


def pid_alive(pid: int) -> bool:
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


def read_pid(name: str, dir_fd: int | None = None) -> int | None:
    try:
        fd, st = fsio.open_regular(name, dir_fd=dir_fd, follow=False)
    except (OSError, ParityError):
        return None
    try:
        txt = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(txt) if txt.isdigit() and len(txt) < 20 else None
    except OSError:
        return None
    finally:
        os.close(fd)


class Lock:
    """Exclusive lock file ``name`` in the directory ``dir_fd`` (shown as ``where``) for the dump ``dump``."""

    def __init__(self, name: str, dir_fd: int, where: str, dump: str):
        self.name, self.dir_fd, self.where, self.dump = name, dir_fd, where, dump

    def _busy(self, pid) -> ParityError:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        return ParityError(f"{self.dump}: is being written by another process ({who}); wait or remove the "
                           f"stale lock {self.where}")

    def acquire(self) -> None:
        for _ in range(10):
            try:
                fd = fsio.create_new(self.name, dir_fd=self.dir_fd)
            except FileExistsError:
                pid = read_pid(self.name, self.dir_fd)
                if pid is None:
                    # empty/garbled: may be a lock that is being created right now
                    with contextlib.suppress(OSError):
                        if time.time() - os.lstat(self.name, dir_fd=self.dir_fd).st_mtime < 10:
                            raise self._busy(None)
                elif pid_alive(pid):
                    raise self._busy(pid)
                self._break_stale(pid)
                continue
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                fsio.unlink_quietly(self.name, self.dir_fd)
                raise
            os.close(fd)
            return
        raise self._busy(read_pid(self.name, self.dir_fd))

    def _break_stale(self, seen) -> None:
        aside = f"{self.name}.stale-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(self.name, aside, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except FileNotFoundError:
            return
        if read_pid(aside, self.dir_fd) != seen:  # someone re-locked in between: give their lock back
            fsio.link_noreplace(aside, self.name, self.dir_fd)
        fsio.unlink_quietly(aside, self.dir_fd)

    def release(self) -> None:
        if read_pid(self.name, self.dir_fd) == os.getpid():
            fsio.unlink_quietly(self.name, self.dir_fd)
