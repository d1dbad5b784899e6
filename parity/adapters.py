"""Layout and convention adapters, named in a family's probe map.

An adapter turns a tensor as the subject keeps it into the reference's form before comparison
(``to_reference``), and back for teacher forcing (``from_reference``). All are plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from parity.errors import ParityError


@dataclass(frozen=True)
class Adapter:
    name: str
    doc: str
    to_reference: Callable[..., np.ndarray]
    from_reference: Callable[..., np.ndarray]


def _identity(x: np.ndarray, **_: object) -> np.ndarray:
    return x


def _swap01(x: np.ndarray, **_: object) -> np.ndarray:
    return np.swapaxes(x, 0, 1)


def _repeat_heads(x: np.ndarray, *, num_heads: int, **_: object) -> np.ndarray:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ParityError(f"adapter repeat_heads: expected a (n*B, 1, 1, len) mask, got shape {tuple(x.shape)}")
    return np.repeat(x, num_heads, axis=1)


def _first_head(x: np.ndarray, **_: object) -> np.ndarray:
    if x.ndim != 4:
        raise ParityError(f"adapter repeat_heads: expected a (n*B, heads, 1, len) mask, got shape {tuple(x.shape)}")
    if not np.array_equal(x, np.broadcast_to(x[:, :1], x.shape)):
        raise ParityError("adapter repeat_heads: reference mask differs between heads; cannot collapse it")
    return np.ascontiguousarray(x[:, :1])


def _bool_discard_to_bias(x: np.ndarray, *, fill: float = -10000.0, **_: object) -> np.ndarray:
    return np.where(np.asarray(x, dtype=bool), np.float32(fill), np.float32(0.0))


def _bias_to_bool_discard(x: np.ndarray, **_: object) -> np.ndarray:
    return np.asarray(x) != 0


ADAPTERS: dict[str, Adapter] = {
    a.name: a for a in (
        Adapter("identity", "same layout and convention", _identity, _identity),
        Adapter("seq_first", "subject keeps (B, S, D) batch-first; reference is sequence-first (S, B, D)",
                _swap01, _swap01),
        Adapter("repeat_heads", "subject keeps one (n*B, 1, 1, len) bias broadcast over heads; reference repeats "
                "it per head (n*B, heads, 1, len)", _repeat_heads, _first_head),
        Adapter("bool_discard", "subject keeps a boolean mask (True = discard); reference an additive -10000 bias",
                _bool_discard_to_bias, _bias_to_bool_discard),
    )
}


def get_adapter(name: str | None) -> Adapter:
    if name is None:
        return ADAPTERS["identity"]
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ParityError(f"unknown adapter {name!r}; known adapters: {', '.join(sorted(ADAPTERS))}") from None
