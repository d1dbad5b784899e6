"""Reader and writer for the safetensors format, in pure python + numpy.

Layout: u64 little-endian header length N, N bytes of JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?: {str: str}}`` padded with
spaces to a multiple of 8, then the raw little-endian tensor bytes (offsets relative to the data start).
Files written here are byte-identical to the ``safetensors`` package's for the same tensors and
(at most one) metadata entry: same tensor order, same compact JSON, same padding.

Why not the maintained ``safetensors`` package (issue 14, item 5)? Measured with safetensors 0.8.0 and numpy
1.26: its numpy API cannot return BF16 tensors ("TypeError: data type 'bfloat16' not understood"), and every
dump of a bf16 run holds BF16 weights; ``safe_open`` takes a path, not a descriptor, so a reader cannot pin
the file it verified (``parity.store.reader``) — and it opens a FIFO named ``*.safetensors`` and blocks
forever; a header with a duplicate tensor name is accepted silently (the last entry wins), which the harness
refuses in every JSON it reads; ``get_tensor`` returns an in-memory copy, where the comparison memory-maps
the weights and drops their pages once copied into the subject (``release_pages``). Its writer cannot write
BF16 from numpy either. The package stays a test dependency: the tests check this writer's bytes against it.
"""

from __future__ import annotations

import errno
import json
import math
import mmap as _mmap
import os
import struct

import numpy as np

from parity import dtypes as _dt
from parity.errors import ParityError, shown as _short
from parity.jsonio import parse_json
from parity.store import fsio
from parity.dtypes import is_int

# safetensors code <-> project dtype name; list order is the safetensors dtype order (ascending),
# which decides tensor order in the file (descending dtype, then name).
_CODES = [
    ("BOOL", "bool"),
    ("U8", "uint8"),
    ("I8", "int8"),
    ("I16", "int16"),
    ("U16", "uint16"),
    ("F16", "float16"),
    ("BF16", "bfloat16"),
    ("I32", "int32"),
    ("U32", "uint32"),
    ("F32", "float32"),
    ("F64", "float64"),
    ("I64", "int64"),
    ("U64", "uint64"),
]
CODE_TO_DTYPE = dict(_CODES)
DTYPE_TO_CODE = {name: code for code, name in _CODES}
_RANK = {code: i for i, (code, _) in enumerate(_CODES)}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # same cap as the safetensors package
_CHUNK = 8 * 1024 * 1024


def _err(path, what: str, fix: str = "re-export the weights with 'parity dump' or safetensors") -> ParityError:
    return ParityError(f"{os.fspath(path)}: {what}; {fix}")


def _open(path) -> tuple[int, os.stat_result]:
    try:
        return fsio.open_regular(path, follow=True, fix="pass a .safetensors file")
    except FileNotFoundError:
        raise _err(path, "not found", "check the path") from None
    except OSError as e:
        raise _err(path, f"cannot read ({e.strerror or e})", "check the path and permissions") from None


def _parse_fd(fd: int, size: int, path):
    """Validated header of an open file: (entries {name: (dtype_name, shape, begin, end)}, metadata, data_start)."""
    if size < 8:
        raise _err(path, f"not a safetensors file (only {size} bytes)")
    try:
        (n,) = struct.unpack("<Q", fsio.read_exact(fd, 8, os.fspath(path)))
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise _err(path, f"corrupt safetensors header (claims {n} header bytes, file has {size})")
        raw = fsio.read_exact(fd, n, os.fspath(path), 8)
    except OSError as e:
        raise _err(path, f"cannot read ({e.strerror or e})", "check the path and permissions") from None
    header = parse_json(raw, f"{os.fspath(path)}: safetensors header", "re-export the weights with 'parity dump' "
                        "or safetensors")
    if not isinstance(header, dict):
        raise _err(path, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise _err(path, "safetensors __metadata__ must map strings to strings")
    data_len = size - 8 - n
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _err(path, f"tensor {_short(name)}: header entry is not an object")
        code, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(code, str) or code not in CODE_TO_DTYPE:
            raise _err(path, f"tensor {_short(name)}: unsupported dtype {_short(code)}")
        if not isinstance(shape, list) or len(shape) > 64 or not all(is_int(d) and d >= 0 for d in shape):
            raise _err(path, f"tensor {_short(name)}: invalid shape {_short(shape)}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(is_int(o) for o in offs)):
            raise _err(path, f"tensor {_short(name)}: invalid data_offsets {_short(offs)}")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            raise _err(path, f"tensor {_short(name)}: data_offsets {offs} outside the {data_len}-byte data section")
        dtype = CODE_TO_DTYPE[code]
        if end - begin != math.prod(shape) * _dt.itemsize(dtype):
            raise _err(path, f"tensor {_short(name)}: {end - begin} bytes do not match shape {_short(shape)} of {code}")
        entries[name] = (dtype, tuple(shape), begin, end)
    pos = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != pos:
            raise _err(path, f"tensor {_short(name)}: data_offsets overlap or leave a gap at byte {pos}")
        pos = end
    if pos != data_len:
        raise _err(path, f"{data_len - pos} trailing bytes after the last tensor (truncated or corrupt)")
    return entries, metadata, 8 + n


def _parse(path):
    fd, st = _open(path)
    try:
        return _parse_fd(fd, st.st_size, path)
    finally:
        os.close(fd)


def read_header_fd(fd: int, size: int, path) -> dict:
    """{name: (dtype_name, shape)} of the open safetensors file ``fd`` (``size`` bytes), validated."""
    entries, _, _ = _parse_fd(fd, size, path)
    return {k: (v[0], v[1]) for k, v in entries.items()}


def read_safetensors_header(path) -> dict:
    """{name: (dtype_name, shape)} of a safetensors file, validated; reads only the header."""
    entries, _, _ = _parse(path)
    return {k: (v[0], v[1]) for k, v in entries.items()}


def read_safetensors_metadata(path) -> dict | None:
    """The file's ``__metadata__`` dict (or None)."""
    return _parse(path)[1]


def load_safetensors_dtypes(path) -> dict:
    """{name: project dtype name} (e.g. "bfloat16") of a safetensors file."""
    return {k: v[0] for k, v in read_safetensors_header(path).items()}


def load_safetensors(path, names=None, *, mmap: bool = False) -> dict:
    """Load tensors as numpy arrays. BF16 is returned as float32 (exact upcast).

    ``names`` restricts loading to those tensors (unknown names -> ParityError). With ``mmap=True``
    non-BF16 tensors are read-only memory maps instead of in-memory copies.
    """
    fd, st = _open(path)
    try:
        return load_fd(fd, st.st_size, path, names, mmap=mmap)
    finally:
        os.close(fd)


def load_fd(fd: int, size: int, path, names=None, *, mmap: bool = False, check=None) -> dict:
    """``load_safetensors`` of the open file ``fd`` (``size`` bytes, as fstat gave it). ``check(header)``
    ({name: (dtype, shape)}) may refuse the file before any tensor is allocated."""
    entries, _, start = _parse_fd(fd, size, path)
    if check is not None:
        check({k: (v[0], v[1]) for k, v in entries.items()})
    if names is None:
        wanted = list(entries)
    else:
        wanted = [names] if isinstance(names, str) else list(names)
        missing = [k for k in wanted if k not in entries]
        if missing:
            raise _err(path, f"has no tensor(s) {', '.join(map(repr, missing[:5]))}",
                       "check the tensor names (see read_safetensors_header)")
    out = {}
    try:
        with open(fd, "rb", closefd=False) as f:
            for name in wanted:
                dtype, shape, begin, end = entries[name]
                sdt = _dt.storage_dtype(dtype)
                if mmap and dtype != "bfloat16" and end > begin:
                    out[name] = np.memmap(f, dtype=sdt, mode="r", offset=start + begin, shape=shape)
                    continue
                arr = np.empty(shape, dtype=sdt)
                if end > begin:
                    arr.reshape(-1).view(np.uint8)[:] = np.frombuffer(
                        fsio.read_exact(fd, end - begin, os.fspath(path), start + begin), np.uint8)
                out[name] = _dt.bf16_bits_to_float32(arr) if dtype == "bfloat16" else arr
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        raise _err(path, f"cannot read ({why})", "check the path and permissions") from None
    return out


def release_pages(arr) -> None:
    """Drop the resident pages of a ``numpy.memmap`` (``load_safetensors(mmap=True)`` weights, a dump's states; a
    no-op for other arrays): a mapped file's pages count in RSS until unmapped, and a weights dict (a dump) stays
    alive while the model is built (compared). The data are untouched; pages touched again are re-read from the
    file."""
    mapping = getattr(arr, "_mmap", None)  # numpy.memmap keeps its mmap.mmap here
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(_mmap, "MADV_DONTNEED"):
        mapping.madvise(_mmap.MADV_DONTNEED)


def _header_bytes(items, metadata) -> bytes:
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    pos = 0
    for name, code, data in items:
        header[name] = {"dtype": code, "shape": list(data.shape), "data_offsets": [pos, pos + data.nbytes]}
        pos += data.nbytes
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_buffer(f, data: np.ndarray) -> None:
    """Write a C-contiguous array's bytes in chunks without copying it."""
    flat = data.reshape(-1).view(np.uint8)
    for i in range(0, flat.size, _CHUNK):
        f.write(memoryview(flat[i : i + _CHUNK]))


fsync_dir = fsio.fsync_dir


def write_safetensors_to(f, tensors: dict, dtypes: dict | None = None, metadata: dict | None = None,
                        where: str = "safetensors") -> None:
    """Write the safetensors bytes of ``tensors`` to the open binary file ``f`` (OSError propagates)."""
    dtypes = dict(dtypes or {})
    unknown = [k for k in dtypes if k not in tensors]
    if unknown:
        raise ParityError(f"{where}: dtypes given for unknown tensor(s) {unknown[:5]}; fix the dtypes mapping")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise ParityError(f"{where}: metadata must map strings to strings; convert the values with str()")
    items = []
    for name, arr in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ParityError(f"{where}: invalid tensor name {name!r}; use strings other than __metadata__")
        dtype, data = _dt.to_storage(arr, dtypes.get(name), f"{where}: tensor {name!r}")
        items.append((name, DTYPE_TO_CODE[dtype], data))
    items.sort(key=lambda it: (-_RANK[it[1]], it[0]))
    f.write(_header_bytes(items, metadata))
    for _, _, data in items:
        write_buffer(f, data)


def save_safetensors(path, tensors: dict, dtypes: dict | None = None, metadata: dict | None = None, *,
                     replace: bool = True) -> None:
    """Atomically write ``tensors`` ({name: ndarray}) to ``path``: an exclusive temp file (never through a
    symlink), fsync, then its final name — replacing an existing file only with ``replace`` (the rename
    replaces the name, never writes into the old file or through a symlink), otherwise refusing.

    ``dtypes[name]`` may name a storage dtype; "bfloat16" rounds a float array to BF16 (RNE), or takes a
    uint16 array as raw bf16 bits. Other names cast within the same kind (e.g. float32 -> float16).
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        dfd = fsio.open_dir(d, follow=True, where=d)
    except FileNotFoundError:
        raise _err(path, "cannot write (its directory does not exist)", "check the directory exists and is writable") from None
    except OSError as e:
        raise _err(path, f"cannot write ({e.strerror or e})", "check the directory exists and is writable") from None
    try:
        tmp = fsio.write_temp(dfd, name, lambda fd: write_safetensors_to(fsio.FdWriter(fd), tensors, dtypes,
                                                                          metadata, where=path))
        try:
            if replace:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            elif not fsio.link_noreplace(tmp, name, dfd):
                raise _err(path, "exists", "pass --force to overwrite it, or choose another path")
        finally:
            fsio.unlink_quietly(tmp, dfd)
        fsio.fsync_dir(dfd)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _err(path, "no space left on device while writing", "free disk space and retry") from None
        if e.errno == errno.EFBIG:
            raise _err(path, "file too large for this process (ulimit -f?)", "raise the limit and retry") from None
        raise _err(path, f"cannot write ({e.strerror or e})", "check the directory exists and is writable") from None
    finally:
        os.close(dfd)
