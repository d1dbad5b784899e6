"""Reading user-supplied tensor files (inputs, weights): safetensors or npz, never pickle.

Pickle-based checkpoints (``.bin``/``.pt``/``.pth``/``.ckpt``/...) are refused with a one-line recipe that
converts them through ``torch.load(..., weights_only=True)`` (or MindSpore's own converter for a MindSpore
``.ckpt``). ``.npz`` members are checked (no object dtype, header shape agrees with the member's size) before
anything is allocated, because numpy's own npz reader allocates whatever a member's header claims.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile

import numpy as np

from parity import dtypes as _dt
from parity.errors import ParityError
from parity.safetensors_io import load_safetensors

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar", ".pth.tar", ".joblib")
_MAX_MEMBERS = 100_000


def conversion_hint(path: str) -> str:
    """How to turn a pickle/zip torch checkpoint (or a MindSpore .ckpt) into safetensors without running code."""
    stem = os.path.splitext(path)[0]
    if path.lower().endswith(".tar"):
        stem = os.path.splitext(stem)[0] if stem.lower().endswith(".pth") else stem
    dst = stem + ".safetensors"
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
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


def load_tensor_file(path: str, what: str) -> dict[str, np.ndarray]:
    """Load a ``.safetensors`` or ``.npz`` file of named arrays (``what`` names it in messages)."""
    path = os.fspath(path)
    if _is_pickle_checkpoint(path):
        if not os.path.exists(path):
            raise ParityError(f"{path}: {what} file not found; check the path")
        raise ParityError(f"{path}: {os.path.splitext(path)[1]} {what} checkpoints are refused because loading a "
                          f"pickle can run code; {conversion_hint(path)} and pass the .safetensors file")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ParityError(f"{path}: {what} file not found; check the path") from None
    except OSError as e:
        raise ParityError(f"{path}: cannot read {what} ({e.strerror or e}); check the path and permissions") from None
    lower = path.lower()
    if not stat.S_ISREG(st.st_mode):
        raise ParityError(f"{path}: not a regular file; pass a .safetensors or .npz {what} file")
    if lower.endswith(".safetensors"):
        return load_safetensors(path)
    if lower.endswith(".npz"):
        return load_npz(path, what)
    raise ParityError(f"{path}: unsupported {what} format {os.path.splitext(path)[1] or '(no suffix)'!r}; "
                      f"save it as .safetensors (or .npz of plain numeric arrays)")


def _npz_member_error(path: str, member: str, what: str, problem: str) -> ParityError:
    return ParityError(f"{path}: member {member!r} of the {what} npz {problem}; re-save it with numpy.savez "
                       "from plain numeric arrays")


def load_npz(path: str, what: str = "inputs") -> dict[str, np.ndarray]:
    """Named arrays of an ``.npz``, checked member by member before allocation; never unpickles."""
    from parity.store import _BadNpy, _read_npy_header  # the store's strict .npy header reader

    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise ParityError(f"{path}: {len(infos)} members in the {what} npz (corrupt); re-save it with numpy.savez")
            for info in infos:
                name = info.filename
                if name.endswith("/") or name.endswith(".pkl") or not name.endswith(".npy"):
                    hint = " (a torch checkpoint renamed .npz?)" if name.endswith(".pkl") or "/" in name else ""
                    raise ParityError(f"{path}: member {name!r} is not a .npy array{hint}; an {what} npz must hold "
                                      f"only numpy arrays — re-save it with numpy.savez"
                                      + (f", or {conversion_hint(path)}" if hint else ""))
                key = name[: -len(".npy")]
                if key in out:
                    raise _npz_member_error(path, name, what, "appears twice")
                with zf.open(info) as f:
                    try:
                        descr, fortran, shape, offset = _read_npy_header(f)
                    except _BadNpy as e:
                        raise _npz_member_error(path, name, what, str(e)) from None
                    try:
                        dt = np.dtype(descr)
                    except Exception:
                        dt = None
                    if dt is None or _dt.dtype_name(dt) is None:
                        raise _npz_member_error(path, name, what, f"has unsupported dtype {descr!r}")
                    expected = offset + math.prod(shape) * dt.itemsize
                    if info.file_size != expected:
                        kind = "is truncated" if info.file_size < expected else "has trailing bytes"
                        raise _npz_member_error(path, name, what, f"{kind} ({info.file_size} bytes, its header "
                                                f"implies {expected})")
                    arr = np.empty(shape, dtype=dt, order="F" if fortran else "C")
                    buf = memoryview(arr.reshape(-1, order="A").view(np.uint8)) if arr.size else memoryview(b"")
                    n = f.readinto(buf) if arr.size else 0
                    if n != arr.nbytes:
                        raise _npz_member_error(path, name, what, "ended early (truncated or corrupt)")
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
