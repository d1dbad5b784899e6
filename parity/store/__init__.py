"""The dump store: a directory holding a reference run (inputs, probe states, weights) and its manifest.

Layout::

    DIR/manifest.json          written last; a directory without it is never loadable
    DIR/config.json            the model config (same dict as manifest["config"])
    DIR/weights.safetensors    unless manifest["weights"]["external"]
    DIR/inputs/<name>.npy      role "input"
    DIR/states/<probe>.npy     role "state" (reference at the dump's precision)
    DIR/states_fp32/<probe>.npy role "state_fp32" (bf16/fp16 dumps only: same model run in fp32)
    DIR/states_isolated/<probe>.npy role "state_isolated" (subject dumps only: the subject's isolated-mode probes;
                               its accumulated-mode probes are the "state" role)

A *subject dump* (``parity run-subject``, ``extra.side == "subject"``) holds a subject's probes in the reference
layout, made on the reference dump's inputs; ``parity compare REF --against SUBJECT_DUMP`` judges it offline.

bf16 arrays are stored as uint16 bit patterns with manifest dtype "bfloat16"; loaders upcast exactly to
float32. Writers build the dump in a hidden sibling temp directory and rename it into place.

Stats-only dumps (``DumpWriter(..., stats_only=True)``, ``parity dump --stats-only``) have no states/ or
states_fp32/: the manifest carries ``"stats_only": true`` and ``"stats": {probe: entry}`` (shape, dtype, sha256
of the tensor bytes, NaN/Inf counts, min/max/mean/std/absmax/rms/mean_abs and a fixed sample of values; see
``parity.stats``). Inputs and weights are stored as usual.

Modules, one job each: ``fsio`` (the file-system discipline, docs/filesystem.md), ``npy`` (.npy headers and
standalone .npy files), ``manifest`` (schema and field checks), ``reader`` (``open_dump``, ``verify_dump``,
``Dump``), ``writer`` (``DumpWriter``), ``lock`` (the writer's lock), ``layout`` (recognising and removing a
dump before ``--force`` replaces it).
"""

from __future__ import annotations

import os

from parity.errors import ParityError
from parity.store import fsio
from parity.store.manifest import (CONFIG, MANIFEST, ROLE_DIRS, SCHEMA, SCHEMA_VERSION,  # noqa: F401
                                   SUPPORTED_SCHEMA_VERSIONS, WEIGHTS, validate_name)
from parity.store.npy import load_npy_checked  # noqa: F401
from parity.store.reader import Dump, inspect_dump, open_dump, verify_dump, weights_location  # noqa: F401
from parity.store.writer import DumpWriter  # noqa: F401


def sha256_file(path, chunk: int = fsio.CHUNK) -> str:
    """Hex sha256 of a regular file (symlinks followed), read through one descriptor."""
    full = os.fspath(path)
    try:
        fd, st = fsio.open_regular(full, follow=True, where=full)
    except OSError as e:
        raise ParityError(f"{full}: cannot read ({e.strerror or e}); check the path and permissions") from None
    try:
        return fsio.sha256_fd(fd, st.st_size, full)
    finally:
        os.close(fd)
