"""The one JSON reader of the harness: manifests, configs, tolerance files, reports, baselines.

Strict and bounded: the file is read through ``parity.store.fsio`` (regular files only, at most ``limit``
bytes, a file that grows or shrinks while read is refused), decoded as UTF-8, and parsed with duplicate keys,
``NaN``/``Infinity`` and deep nesting refused (``parity.jsonparse``). Every failure is one ``ParityError`` line
naming the file and ending with the caller's fix.
"""

from __future__ import annotations

import os

from parity.jsonparse import dumps_bytes, parse_json  # noqa: F401 (one import site for callers)

MAX_JSON_BYTES = 64 * 2**20


def load_json(path, what: str, fix: str, *, dir_fd: int | None = None, follow: bool = True,
              limit: int = MAX_JSON_BYTES, where: str | None = None):
    """Read and parse the JSON file ``path`` (relative to ``dir_fd`` if given). ``what`` names it in messages
    ("config", "tolerance file", ...). ``follow`` False refuses a symlink in the last component."""
    from parity.store import fsio

    where = where or os.fspath(path)
    raw = fsio.read_file(path, what=what, fix=fix, dir_fd=dir_fd, follow=follow, limit=limit, where=where)
    return parse_json(raw, where, fix)
