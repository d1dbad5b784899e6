"""Probe-name conventions shared by families: the output of block ``i`` is ``hidden_states_{i}_block`` (what an
engineer saves by hand from ``for i, block in enumerate(blocks)``). Families whose blocks come in several kinds
(STDiT3's spatial and temporal) name theirs themselves."""

from __future__ import annotations

import re

BLOCK_RE = re.compile(r"^hidden_states_(\d+)_block$")


def block_probe(i: int) -> str:
    return f"hidden_states_{i}_block"


def block_index(name: str) -> int | None:
    """The block index of a ``hidden_states_{i}_block`` name, else None."""
    m = BLOCK_RE.match(name)
    return int(m.group(1)) if m else None
