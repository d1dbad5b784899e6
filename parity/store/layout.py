"""Recognising a dump (or a writer's temporary directory) before anything in it is deleted, and deleting only
what the tool wrote.

A directory may be replaced by ``--force`` only if it is empty, or if it is a real directory (not a symlink)
whose ``manifest.json`` is a dump manifest of a supported schema (``manifest.check_identity``) *and* which
holds nothing but that dump's own files: ``manifest.json``, ``config.json``, ``weights.safetensors`` (unless
the weights are external) and the ``.npy`` files its manifest lists in ``inputs/``, ``states/`` and
``states_fp32/``. A file name alone never makes a dump. A writer's temporary directory is recognised by the
marker file the writer creates in it first (``WRITER_MARKER``). Removal unlinks only those files and then
removes the (then empty) directories, so anything that appeared meanwhile stays, with its directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat

from parity.errors import ParityError, shown
from parity.jsonio import parse_json
from parity.store import fsio
from parity.store.manifest import CONFIG, MANIFEST, ROLE_DIRS, WEIGHTS, check_identity

WRITER_MARKER = ".parity-writer"
_NPY_RE = re.compile(r"[A-Za-z0-9_.-]+\.npy")
_MAX_MANIFEST = 64 * 2**20


def _lstat(name: str, dir_fd: int):
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def replace_problem(parent_fd: int, name: str, where: str) -> str | None:
    """Why the existing ``name`` in ``parent_fd`` must not be replaced by a new dump (None: it may be)."""
    st = _lstat(name, parent_fd)
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{where}: is a symbolic link; refusing to replace it even with --force; choose another output directory"
    if not stat.S_ISDIR(st.st_mode):
        return f"{where}: exists and is not a directory; choose another output directory"
    try:
        dfd = fsio.open_dir(name, dir_fd=parent_fd, follow=False, where=where)
    except (OSError, ParityError) as e:
        return f"{where}: cannot be inspected ({e}); choose another output directory"
    try:
        entries = os.listdir(dfd)
        if not entries:
            return None
        foreign = _foreign(dfd, entries, where)
    finally:
        os.close(dfd)
    if foreign:
        return (f"{where}: exists and is not a parity dump ({foreign}); refusing to overwrite it even with --force; "
                "move its contents away or choose another output directory")
    return None


def _foreign(dfd: int, entries: list, where: str) -> str | None:
    """What in the directory ``dfd`` is not part of the dump its manifest describes (None: nothing)."""
    st = _lstat(MANIFEST, dfd)
    if st is None or not stat.S_ISREG(st.st_mode):
        return "no manifest.json" if st is None else "manifest.json is not a regular file"
    try:
        fd, st = fsio.open_regular(MANIFEST, dir_fd=dfd, follow=False)
        try:
            if st.st_size > _MAX_MANIFEST:
                return "manifest.json is too large to be a dump manifest"
            man = check_identity(parse_json(fsio.read_exact(fd, st.st_size, MANIFEST), MANIFEST, ""), MANIFEST)
        finally:
            os.close(fd)
    except (ParityError, OSError):
        return "manifest.json is not a parity dump manifest"
    files = man.get("files") if isinstance(man.get("files"), dict) else {}
    weights = man.get("weights")
    allowed_top = {MANIFEST, CONFIG}
    if not (isinstance(weights, dict) and weights.get("external") is True):
        allowed_top.add(WEIGHTS)
    for entry in entries:
        st = _lstat(entry, dfd)
        if st is None:
            continue
        if entry in allowed_top and stat.S_ISREG(st.st_mode):
            continue
        if entry in ROLE_DIRS.values() and stat.S_ISDIR(st.st_mode):
            problem = _foreign_in(dfd, entry, files)
            if problem:
                return problem
            continue
        return f"it holds {shown(entry, 60)}, which is not part of the dump its manifest describes"
    return None


def _foreign_in(dfd: int, sub: str, files: dict) -> str | None:
    try:
        sfd = fsio.open_dir(sub, dir_fd=dfd, follow=False)
    except (OSError, ParityError):
        return f"{sub}/ cannot be inspected"
    try:
        for entry in os.listdir(sfd):
            st = _lstat(entry, sfd)
            if st is not None and not (stat.S_ISREG(st.st_mode) and f"{sub}/{entry}" in files):
                return f"it holds {sub}/{shown(entry, 60)}, which is not part of the dump its manifest describes"
    finally:
        os.close(sfd)
    return None


def is_writer_temp(parent_fd: int, name: str) -> bool:
    """A writer's temporary directory: a real directory holding the writer's marker file."""
    try:
        dfd = fsio.open_dir(name, dir_fd=parent_fd, follow=False)
    except (OSError, ParityError):
        return False
    try:
        st = _lstat(WRITER_MARKER, dfd)
        return st is not None and stat.S_ISREG(st.st_mode)
    finally:
        os.close(dfd)


def remove(parent_fd: int, name: str) -> bool:
    """Delete the dump (or writer temp directory) ``name``: only the files a dump consists of and the marker,
    then the directories if they are empty. True if the directory is gone."""
    try:
        dfd = fsio.open_dir(name, dir_fd=parent_fd, follow=False)
    except (OSError, ParityError):
        return False
    try:
        for sub in ROLE_DIRS.values():
            st = _lstat(sub, dfd)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            try:
                sfd = fsio.open_dir(sub, dir_fd=dfd, follow=False)
            except (OSError, ParityError):
                continue
            try:
                for entry in os.listdir(sfd):
                    est = _lstat(entry, sfd)
                    if est is not None and _NPY_RE.fullmatch(entry) and stat.S_ISREG(est.st_mode):
                        fsio.unlink_quietly(entry, sfd)
            finally:
                os.close(sfd)
            with contextlib.suppress(OSError):
                os.rmdir(sub, dir_fd=dfd)
        for entry in (MANIFEST, CONFIG, WEIGHTS, WRITER_MARKER):
            est = _lstat(entry, dfd)
            if est is not None and stat.S_ISREG(est.st_mode):
                fsio.unlink_quietly(entry, dfd)
    finally:
        os.close(dfd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
        return True
    except OSError:
        return False
