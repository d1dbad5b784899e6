"""Reading user-supplied tensor files (inputs, weights): safetensors or npz, never pickle.

Pickle-based checkpoints (``.bin``/``.pt``/``.pth``/``.ckpt``/...) are refused with a one-line recipe that
converts them through ``torch.load(..., weights_only=True)`` (or MindSpore's own converter for a MindSpore
``.ckpt``). ``.npz`` members are checked (no object dtype, header shape agrees with the member's size) before
anything is allocated, because numpy's own npz reader allocates whatever a member's header claims.

Both readers take a ``check(header)`` callback, ``{name: (dtype name, shape)}`` → None or ParityError, called
once every header is known and before any tensor is read: the caller checks the declared shapes against the
config and the machine's memory there (``parity.dumping``), so a decompression bomb (a small ``.npz`` whose
member declares hundreds of MiB) is refused without being inflated. Members are also checked by name and by
declared size (``MAX_MEMBER_BYTES``, and the total against ``MAX_TOTAL_BYTES``) before their header is read.
"""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from parity import dtypes as _dt
from parity import safetensors_io as _st
from parity.errors import ParityError, shown
from parity.store import fsio, npy

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar", ".pth.tar", ".joblib")
_MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 64 * 2**30   # one array; the config-based check bounds it far tighter
MAX_TOTAL_BYTES = 256 * 2**30
# a compressed member that would inflate past BOMB_MIN_BYTES at more than BOMB_RATIO x is refused unread: noise
# (activations) does not compress, and a trivial array of that size can be saved uncompressed (numpy.savez)
BOMB_MIN_BYTES = 64 * 2**20
BOMB_RATIO = 100
_MEMBER_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}\.npy")


def conversion_hint(path: str) -> str:
    """How to turn a pickle/zip torch checkpoint (or a MindSpore .ckpt) into safetensors without running code."""
    stem = os.path.splitext(path)[0]
    if path.lower().endswith(".tar"):
        stem = os.path.splitext(stem)[0] if stem.lower().endswith(".pth") else stem
    dst = stem + ".safetensors"
    try:
        fd, _ = fsio.open_regular(path, follow=True)
        try:
            magic = os.pread(fd, 4, 0)
        finally:
            os.close(fd)
    except (OSError, ParityError):
        magic = b""
    if path.lower().endswith(".ckpt") and magic[:2] != b"PK" and magic[:1] != b"\x80":
        # MindSpore checkpoints are protobuf, not pickle
        return (f"convert it once with: python -c \"import mindspore as ms; ms.ckpt_to_safetensors({path!r}, "
                f"{os.path.dirname(path) or '.'!r})\"")
    return (f"convert it once with: python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load({path!r}, map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
            f"save_file({{k: v.contiguous() for k, v in sd.items()}}, {dst!r})\"")


def _is_pickle_checkpoint(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def load_tensor_file(path: str, what: str, check=None) -> dict[str, np.ndarray]:
    """Load a ``.safetensors`` or ``.npz`` file of named arrays (``what`` names it in messages). ``check``: see
    the module docstring."""
    path = os.fspath(path)
    if _is_pickle_checkpoint(path):
        if not os.path.exists(path):
            raise ParityError(f"{path}: {what} file not found; check the path")
        raise ParityError(f"{path}: {os.path.splitext(path)[1]} {what} checkpoints are refused because loading a "
                          f"pickle can run code; {conversion_hint(path)} and pass the .safetensors file")
    lower = path.lower()
    if not lower.endswith((".safetensors", ".npz")):
        if not os.path.lexists(path):
            raise ParityError(f"{path}: {what} file not found; check the path")
        raise ParityError(f"{path}: unsupported {what} format {os.path.splitext(path)[1] or '(no suffix)'!r}; "
                          f"save it as .safetensors (or .npz of plain numeric arrays)")
    try:
        fd, st = fsio.open_regular(path, follow=True, where=path, fix=f"pass a .safetensors or .npz {what} file")
    except FileNotFoundError:
        raise ParityError(f"{path}: {what} file not found; check the path") from None
    try:
        if lower.endswith(".safetensors"):
            out = _st.load_fd(fd, st.st_size, path, check=check)
        else:
            out = load_npz_fd(fd, st, path, what, check)
        fsio.check_unchanged(fd, st, path)
        return out
    finally:
        os.close(fd)


def _npz_member_error(path: str, member: str, what: str, problem: str) -> ParityError:
    return ParityError(f"{path}: member {shown(member, 80)} of the {what} npz {problem}; re-save it with "
                       "numpy.savez from plain numeric arrays")


def load_npz(path: str, what: str = "inputs", check=None) -> dict[str, np.ndarray]:
    """Named arrays of an ``.npz``, checked member by member before allocation; never unpickles."""
    try:
        fd, st = fsio.open_regular(path, follow=True, where=path, fix=f"pass an .npz {what} file")
    except FileNotFoundError:
        raise ParityError(f"{path}: {what} file not found; check the path") from None
    try:
        return load_npz_fd(fd, st, path, what, check)
    finally:
        os.close(fd)


def load_npz_fd(fd: int, st, path: str, what: str = "inputs", check=None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    try:
        with open(fd, "rb", closefd=False) as raw, zipfile.ZipFile(raw) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise ParityError(f"{path}: {len(infos)} members in the {what} npz (corrupt); re-save it with numpy.savez")
            total = 0
            for info in infos:  # names and declared sizes first: nothing is decompressed yet
                name = info.filename
                if name.endswith("/") or name.endswith(".pkl") or not name.endswith(".npy"):
                    hint = " (a torch checkpoint renamed .npz?)" if name.endswith(".pkl") or "/" in name else ""
                    raise ParityError(f"{path}: member {shown(name, 80)} is not a .npy array{hint}; an {what} npz "
                                      f"must hold only numpy arrays — re-save it with numpy.savez"
                                      + (f", or {conversion_hint(path)}" if hint else ""))
                if not _MEMBER_RE.fullmatch(name):
                    raise _npz_member_error(path, name, what, "has a name that is not a plain array name")
                if info.file_size > MAX_MEMBER_BYTES:
                    raise _npz_member_error(path, name, what, f"declares {info.file_size} bytes, more than "
                                            f"{MAX_MEMBER_BYTES >> 30} GiB")
                if (info.compress_type != zipfile.ZIP_STORED and info.file_size > BOMB_MIN_BYTES
                        and info.file_size > BOMB_RATIO * max(info.compress_size, 1)):
                    raise ParityError(f"{path}: member {shown(name, 80)} of the {what} npz would inflate "
                                      f"{info.compress_size} compressed bytes to {info.file_size} "
                                      f"({info.file_size // max(info.compress_size, 1)}x: a decompression bomb?) "
                                      "and was not decompressed; if the array is real, save it uncompressed "
                                      "(numpy.savez) or as .safetensors")
                total += info.file_size
            if total > MAX_TOTAL_BYTES:
                raise ParityError(f"{path}: the {what} npz declares {total} bytes in all, more than "
                                  f"{MAX_TOTAL_BYTES >> 30} GiB; re-save it with numpy.savez")
            headers = {}
            for info in infos:
                name, key = info.filename, info.filename[: -len(".npy")]
                if key in headers:
                    raise _npz_member_error(path, name, what, "appears twice")
                with zf.open(info) as f:
                    prefix = f.read(npy.MAX_HEADER + 16)  # a bounded prefix: nothing past the header is inflated
                try:
                    h = npy.parse_header(prefix)
                except npy.BadNpy as e:
                    raise _npz_member_error(path, name, what, str(e)) from None
                if _dt.dtype_name(h.dtype) is None:
                    raise _npz_member_error(path, name, what, f"has unsupported dtype {shown(h.dtype.str, 40)}")
                problem = npy.size_problem(h, info.file_size)
                if problem:
                    raise _npz_member_error(path, name, what, problem)
                headers[key] = (info, h)
            if check is not None:
                check({k: (_dt.dtype_name(h.dtype), h.shape) for k, (_, h) in headers.items()})
            for key, (info, h) in headers.items():
                arr = np.empty(h.shape, dtype=h.dtype, order="F" if h.fortran else "C")
                with zf.open(info) as f:
                    f.read(h.offset)
                    n = f.readinto(memoryview(arr.reshape(-1, order="A").view(np.uint8))) if arr.size else 0
                if n != arr.nbytes:
                    raise _npz_member_error(path, info.filename, what, "ended early (truncated or corrupt)")
                if not arr.dtype.isnative:  # frameworks take native byte order only
                    arr = arr.astype(arr.dtype.newbyteorder("="))
                out[key] = arr if arr.flags.c_contiguous else arr.copy(order="C")
    except ParityError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError,
            RuntimeError, OSError) as exc:
        raise ParityError(f"{path}: cannot read {what} npz ({exc.__class__.__name__}: "
                          f"{' '.join(str(exc).split())[:120]}); re-save it with numpy.savez") from None
    if not out:
        raise ParityError(f"{path}: the {what} npz holds no arrays; re-save it with numpy.savez(name=array, ...)")
    return out
