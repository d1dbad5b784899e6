"""The one JSON reader for user-supplied files (configs, tolerance files, baselines, probe maps, overlays).

Regular files only (a FIFO or device would block), bounded size, UTF-8, duplicate keys refused (the safetensors
reader refuses them too), nesting depth bounded; every problem is one ``ParityError`` line naming the file.
"""

from __future__ import annotations

import json
import os
import stat

from parity.errors import ParityError

MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _depth(obj, limit: int) -> int:
    stack, deepest = [(obj, 1)], 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def parse_json_bytes(raw: bytes, path: str, what: str):
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise ParityError(f"{path}: {what} is not UTF-8 text; pass the {what} JSON file") from None
    except RecursionError:
        raise ParityError(f"{path}: {what} is nested too deeply; pass a plain {what} JSON file") from None
    except ValueError as exc:
        raise ParityError(f"{path}: {what} is not valid JSON ({' '.join(str(exc).split())[:100]}); fix the "
                          f"file") from None
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ParityError(f"{path}: {what} is nested more than {MAX_JSON_DEPTH} levels deep; pass a plain {what} "
                          f"JSON file")
    return data


def read_json_file(path: str, what: str):
    """The parsed JSON of ``path`` (see the module docstring)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ParityError(f"{path}: {what} not found; check the path") from None
    except OSError as exc:
        raise ParityError(f"{path}: cannot open the {what} ({exc.strerror}); check the file and its "
                          f"permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ParityError(f"{path}: {what} is not a regular file; pass the {what} file itself")
        if st.st_size > MAX_JSON_BYTES:
            raise ParityError(f"{path}: {what} is larger than {MAX_JSON_BYTES >> 20} MiB; pass the {what} file itself")
        raw = _read_bounded(fd, path, what)
    except OSError as exc:
        raise ParityError(f"{path}: cannot read the {what} ({exc.strerror}); check the file") from None
    finally:
        os.close(fd)
    return parse_json_bytes(raw, path, what)


def _read_bounded(fd: int, path: str, what: str) -> bytes:
    """The file's bytes, read in pieces (a file growing while read is still bounded)."""
    chunks, total = [], 0
    while True:
        piece = os.read(fd, 1 << 20)
        if not piece:
            return b"".join(chunks)
        total += len(piece)
        if total > MAX_JSON_BYTES:
            raise ParityError(f"{path}: {what} is larger than {MAX_JSON_BYTES >> 20} MiB; pass the {what} file itself")
        chunks.append(piece)
