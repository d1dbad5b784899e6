"""``.npy`` files: the header numpy's own readers parse (``np.lib.format``, ``max_header_size``), checked
before anything is allocated, and standalone ``.npy`` files (hand dumps) loaded safely.

A header is parsed from a bounded prefix of the file (``MAX_HEADER`` bytes), never from the open stream: a
version-2 header may claim 4 GiB, and numpy reads the claimed length before it checks the limit. Object
(pickled) dtypes, structured dtypes, Fortran order where a dump expects C order, and sizes that disagree with
the header are refused with one line each.
"""

from __future__ import annotations

import io
import math
import os
from typing import NamedTuple

import numpy as np

from parity import dtypes as _dt
from parity.errors import ParityError, shown
from parity.store import fsio

MAX_HEADER = 10_000  # numpy's own default for untrusted files; the headers this tool writes are 128 bytes
PICKLED = "contains Python objects (pickled); refusing to load untrusted pickles"


class BadNpy(Exception):
    """A .npy problem, worded to follow the file's name ("<file>: <problem>")."""


class NpyHeader(NamedTuple):
    dtype: np.dtype
    fortran: bool
    shape: tuple
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def header_bytes(data: np.ndarray) -> bytes:
    """The version-1.0 header numpy.save writes for the C-contiguous array ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(data.dtype), "fortran_order": False, "shape": data.shape})
    return buf.getvalue()


def parse_header(prefix: bytes) -> NpyHeader:
    """The header at the start of ``prefix`` (the first bytes of a .npy file); raises BadNpy."""
    f = io.BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(f)
    except ValueError:
        raise BadNpy("is not a .npy file (bad magic bytes; truncated or corrupt)") from None
    if version == (1, 0):
        read = np.lib.format.read_array_header_1_0
    elif version == (2, 0):
        read = np.lib.format.read_array_header_2_0
    else:
        raise BadNpy(f"has unsupported .npy format version {version[0]}.{version[1]} (this tool reads 1.0 and 2.0)")
    try:
        shape, fortran, dtype = read(f, max_header_size=MAX_HEADER)
    except ValueError as e:
        text = str(e)
        if text.startswith("EOF"):
            if len(prefix) >= MAX_HEADER:
                raise BadNpy(f"has an absurd .npy header length (over {MAX_HEADER} bytes; corrupt)") from None
            raise BadNpy("is truncated inside the .npy header") from None
        if "large" in text and "header" in text.lower():
            raise BadNpy(f"has an absurd .npy header length (over {MAX_HEADER} bytes; corrupt)") from None
        if "dtype" in text and "O" in text:
            raise BadNpy(PICKLED) from None
        raise BadNpy("has an unreadable or malformed .npy header (corrupt)") from None
    except Exception:  # literal_eval of hostile text: SyntaxError, MemoryError, RecursionError...
        raise BadNpy("has an unreadable or malformed .npy header (corrupt)") from None
    if dtype.hasobject:
        raise BadNpy(PICKLED)
    if dtype.fields is not None or dtype.subdtype is not None:
        raise BadNpy(f"has an unsupported structured dtype {shown(dtype.descr, 60)}")
    if len(shape) > 64 or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise BadNpy(f"has an invalid shape {shown(shape, 80)} in its .npy header (corrupt)")
    return NpyHeader(dtype, bool(fortran), tuple(shape), f.tell())


def read_header_fd(fd: int, size: int) -> NpyHeader:
    return parse_header(os.pread(fd, min(size, MAX_HEADER + 16), 0))


def size_problem(header: NpyHeader, size: int) -> str | None:
    expected = header.offset + header.nbytes
    if size == expected:
        return None
    kind = "is truncated" if size < expected else "has trailing bytes"
    return f"{kind} ({size} bytes, its header implies {expected})"


def memmap(fd: int, header: NpyHeader, path: str | None = None) -> np.ndarray:
    """A read-only memory map of the array behind ``header`` in the open file ``fd`` (0-size: an empty array);
    ``filename`` is ``path`` (numpy cannot know it from a descriptor)."""
    if header.nbytes == 0:
        return np.zeros(header.shape, header.dtype)
    with open(fd, "rb", closefd=False) as f:
        m = np.memmap(f, dtype=header.dtype, mode="r", offset=header.offset, shape=header.shape,
                      order="F" if header.fortran else "C")
    m.filename = os.path.abspath(path) if path else None
    return m


def load_npy_checked(path, mmap: bool = True) -> np.ndarray:
    """Load a standalone .npy file safely (no pickles, header and size checked first, regular files only);
    ParityError on bad data. Returns a read-only memmap (``mmap=True``) or an in-memory array."""
    full = os.fspath(path)
    fix = "pass a .npy file written by numpy.save"
    try:
        fd, st = fsio.open_regular(full, follow=True, fix=fix)
    except FileNotFoundError:
        raise ParityError(f"{full}: not found; check the path") from None
    try:
        try:
            h = read_header_fd(fd, st.st_size)
        except BadNpy as e:
            raise ParityError(f"{full}: {e}; re-save it with numpy.save") from None
        if _dt.dtype_name(h.dtype) is None:
            raise ParityError(f"{full}: unsupported dtype {shown(h.dtype.str)}; save it as a numeric array "
                              f"({', '.join(n for n in _dt.DTYPE_NAMES if n != 'bfloat16')})")
        problem = size_problem(h, st.st_size)
        if problem:
            raise ParityError(f"{full}: {problem}; re-save it")
        if mmap:
            return memmap(fd, h, full)
        arr = np.empty(h.shape, h.dtype, order="F" if h.fortran else "C")
        if h.nbytes:
            arr.reshape(-1, order="A").view(np.uint8)[:] = np.frombuffer(
                fsio.read_exact(fd, h.nbytes, full, h.offset), np.uint8)
        fsio.check_unchanged(fd, st, full)
        return arr
    except OSError as e:
        raise fsio.io_error(full, e, "read", "check the path and permissions") from None
    finally:
        os.close(fd)
