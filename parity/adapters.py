"""Layout and convention adapters, named in probe maps and overlays.

An adapter turns a tensor as one side keeps it into the reference's form before comparison (``to_reference``),
and back for teacher forcing (``from_reference``). Both take the array and the run's *context* as keyword
arguments (``num_heads``, ``batch``, ``grid``, ... from the family's ``adapter_context``; an adapter takes
what it needs and ignores the rest). All are plain numpy.

The registry is open: a plug-in registers its own adapters (``register_adapter``) or hands them to the engine
in its ``adapters`` mapping.

Masks can also be compared *by meaning* (overlay ``"compare": "meaning"``): both sides are reduced to which keys
each query may attend and, where the convention says so, which keys are padding — see ``mask_meaning``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

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


_BUILTIN = (
    Adapter("identity", "same layout and convention", _identity, _identity),
    Adapter("seq_first", "the side keeps (B, S, D) batch-first; the reference is sequence-first (S, B, D)",
            _swap01, _swap01),
    Adapter("repeat_heads", "the side keeps one (n*B, 1, 1, len) bias broadcast over heads; the reference repeats "
            "it per head (n*B, heads, 1, len)", _repeat_heads, _first_head),
    Adapter("bool_discard", "the side keeps a boolean mask (True = discard); the reference an additive -10000 bias",
            _bool_discard_to_bias, _bias_to_bool_discard),
)
ADAPTERS: dict[str, Adapter] = {a.name: a for a in _BUILTIN}


def register_adapter(adapter: Adapter) -> Adapter:
    """Add ``adapter`` to the registry (a plug-in calls this at import); re-registering the same one is a no-op."""
    if not isinstance(adapter, Adapter):
        raise ParityError(f"register_adapter: expected a parity.adapters.Adapter, got {type(adapter).__name__}")
    known = ADAPTERS.get(adapter.name)
    if known is not None and known != adapter:
        raise ParityError(f"adapter {adapter.name!r} is already registered with other functions; give yours another "
                          f"name")
    ADAPTERS[adapter.name] = adapter
    return adapter


def get_adapter(name: str | None, extra: Mapping[str, Adapter] | None = None) -> Adapter:
    if name is None:
        return ADAPTERS["identity"]
    if extra and name in extra:
        return extra[name]
    try:
        return ADAPTERS[name]
    except KeyError:
        known = sorted(set(ADAPTERS) | set(extra or ()))
        raise ParityError(f"unknown adapter {name!r}; known adapters: {', '.join(known)} (a plug-in registers its "
                          f"own with parity.adapters.register_adapter)") from None


def check_adapter(name: str, extra: Mapping[str, Adapter] | None, where: str) -> None:
    try:
        get_adapter(name, extra)
    except ParityError as exc:
        raise ParityError(f"{where}: {exc}") from None


# ---- masks by meaning -----------------------------------------------------------------------------------------
# Reference values: the model's additive biases (Open-Sora-Plan: -10000 masked, -9980 Skiparse padding, 0 kept).
MASKED_BIAS = -10000.0
PADDING_BIAS = -9980.0

# convention -> (what the side's mask encodes, whether it marks padding apart from masked keys)
MASK_CONVENTIONS = {
    "bias": "additive bias: 0 = attend, -10000 = masked, -9980 = Skiparse padding (the reference's)",
    "bias_no_padding": "additive bias: 0 = attend, any negative value = masked or padding (padding not told apart)",
    "keep": "0/1 (or bool) keep mask: 1 = attend, 0 = masked or padding (padding not told apart)",
    "discard": "bool discard mask: True = do not attend (padding not told apart)",
}


@dataclass(frozen=True)
class MaskMeaning:
    allowed: np.ndarray            # bool: this query may attend this key
    padding: np.ndarray | None     # bool: this key is padding (None: the convention does not say)


def mask_meaning(x: np.ndarray, convention: str) -> MaskMeaning:
    """What a mask means, whatever its encoding (see ``MASK_CONVENTIONS``)."""
    x = np.asarray(x)
    if convention == "bias":
        return MaskMeaning(x == 0, np.isclose(x, PADDING_BIAS, rtol=0, atol=1.0))
    if convention == "bias_no_padding":
        return MaskMeaning(x == 0, None)
    if convention == "keep":
        return MaskMeaning(x != 0, None)
    if convention == "discard":
        return MaskMeaning(~x.astype(bool), None)
    raise ParityError(f"unknown mask convention {convention!r}; use one of {', '.join(MASK_CONVENTIONS)}")


def _constant_along(x: np.ndarray, axis: int) -> bool:
    return bool(np.array_equal(x, np.broadcast_to(np.take(x, [0], axis=axis), x.shape)))


def _align(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Bring two masks of the same rank to one shape. Where one side has length 1 on an axis and the other more (a
    mask kept per query or per head on one side, broadcast on the other): if the longer side repeats one value
    along that axis it is collapsed to length 1; otherwise the short side is broadcast (a view), so a difference
    between queries or heads is still seen."""
    if a.ndim != b.ndim:
        return None
    for axis in range(a.ndim):
        la, lb = a.shape[axis], b.shape[axis]
        if la == lb:
            continue
        if la == 1 and _constant_along(b, axis):
            b = np.take(b, [0], axis=axis)
        elif lb == 1 and _constant_along(a, axis):
            a = np.take(a, [0], axis=axis)
        elif la == 1:
            a = np.broadcast_to(a, a.shape[:axis] + (lb,) + a.shape[axis + 1:])
        elif lb == 1:
            b = np.broadcast_to(b, b.shape[:axis] + (la,) + b.shape[axis + 1:])
        else:
            return None
    return a, b


@dataclass(frozen=True)
class MeaningResult:
    passed: bool
    checked: str                   # what was compared, for the report
    n: int                         # permissions compared
    n_mismatch: int
    first_index: tuple | None
    message: str


def compare_mask_meaning(ref: np.ndarray, sub: np.ndarray, ref_convention: str, sub_convention: str) -> MeaningResult:
    """Compare two masks by meaning: the same keys allowed for every query (and, when both conventions mark it,
    the same keys flagged as padding)."""
    r, s = mask_meaning(ref, ref_convention), mask_meaning(sub, sub_convention)
    aligned = _align(r.allowed, s.allowed)
    what = "which keys each query may attend"
    if aligned is None:
        return MeaningResult(False, what, 0, 0, None,
                             f"mask shapes cannot be brought together: reference {tuple(ref.shape)} vs subject "
                             f"{tuple(sub.shape)} (an axis differs in length and neither side has length 1 on it)")
    ra, sa = aligned
    bad = ra != sa
    if r.padding is not None and s.padding is not None:
        padded = _align(r.padding, s.padding)
        if padded is not None and padded[0].shape == bad.shape:
            bad = bad | (padded[0] != padded[1])
            what += " and which keys are padding"
    else:
        what += " (padding not told apart: the subject's convention does not mark it)"
    n_bad = int(bad.sum())
    first = tuple(int(i) for i in np.argwhere(bad)[0]) if n_bad else None
    message = "" if not n_bad else (f"{n_bad} of {bad.size} attention permissions differ ({what}); first at index "
                                    f"{first} of the aligned shape {tuple(bad.shape)}: reference allows "
                                    f"{bool(ra[first])}, subject allows {bool(sa[first])}")
    return MeaningResult(n_bad == 0, what, int(bad.size), n_bad, first, message)
