"""What every metric of a probe means: the ``Metrics`` record, ``passed`` and the constants, defined once.

Δ = sub − ref, computed in the *working dtype*: float32 when both inputs are at most 32-bit floats or small
ints/bools, else float64 — the arithmetic ``numpy.isclose`` uses for float32/float64. Arrays are read in chunks
of ``chunk_elems`` elements (``DEFAULT_CHUNK_ELEMS``); a chunk where Δ overflows the working dtype is computed in
float64 as a whole.

Verdict metrics (``parity.metrics.verdict``, one read of both arrays):

* ``n``            number of elements (1 for a 0-d array); ``n_compared``: positions where both are finite.
* ``max_abs``      max |Δ| over compared positions; ``argmax_abs`` its multi-index (first occurrence in C
                   order), ``ref_at_max`` / ``sub_at_max`` the two values there.
* ``mean_abs``     mean |Δ| over compared positions.
* ``cosine``       cos(ref, sub) in float64; 1 when both are all-zero, 0 when exactly one is. Evaluated as
                   1 − (‖Δ‖² − (‖sub‖−‖ref‖)²) / (2‖ref‖‖sub‖) from Σ Δ², Σ Δ·ref and Σ ref², so 1 − cos
                   keeps its relative precision even at 1e-14 (a plain dot/norm product would not).
* ``rel_fro``      ‖Δ‖₂ / ‖ref‖₂; when ‖ref‖ = 0 it is 0 if Δ = 0 and +inf otherwise.
* ``n_outside``    elements that are not close in ``numpy.isclose(sub, ref, rtol, atol, equal_nan=True)``
                   sense: finite pairs with |Δ| > atol + rtol·|ref| (same float arithmetic as numpy), plus
                   positions where the non-finite values disagree (NaN vs number, Inf vs anything but the
                   same Inf). ``frac_outside`` = n_outside / n.
* ``min_passing_atol`` max(0, max(|Δ| − rtol·|ref|)) over compared positions: the smallest atol with which
                   every finite pair passes at this rtol (exact up to working-dtype rounding).
* ``nan_ref, nan_sub, inf_ref, inf_sub`` counts; ``nonfinite_match``: NaN positions agree and every Inf
                   faces the same Inf; ``finite_ok``: neither side has any NaN/Inf;
                   ``first_nonfinite_mismatch``: multi-index of the first disagreeing non-finite position.
* ``rel_floor``    the floor of ``max_rel``: 1e-3 · max|ref| over the finite reference values, or 1e-12 when
                   that is 0 (all-zero reference), rounded to the working dtype (unless given).

Shown metrics (``parity.metrics.shown``, a second pass, only where a report or a failure message shows them;
``None`` when not computed). They never decide a verdict:

* ``max_rel``      max |Δ| / max(|ref|, rel_floor) (working dtype). The floor keeps near-zero reference entries
                   from dominating; a floor that underflows to 0 gives the plain |Δ|/|ref| (0/0 is NaN).
* ``p99_abs``      99th percentile of |Δ|, nearest rank: the smallest value v with at least 99% of the
                   compared |Δ| <= v. Exact.

NaN/Inf are never zeroed out: the finite metrics are computed over the positions where both sides are finite;
with no such position (and n > 0) they are NaN. ``passed(m)`` is allclose-style: ``n_outside == 0`` and no
NaN/Inf on either side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from parity.errors import ParityError

DEFAULT_CHUNK_ELEMS = 131072  # 512 KiB of float32 per chunk and array: a chunk and its |Δ| stay in L2
REL_FLOOR_FACTOR = 1e-3
REL_FLOOR_ZERO = 1e-12
P99_PERCENT = 99


@dataclass(frozen=True)
class Metrics:
    """All metrics of one probe (see the module docstring for exact definitions)."""

    name: str | None
    shape: tuple
    n: int
    n_compared: int
    max_abs: float
    mean_abs: float
    max_rel: float | None
    rel_floor: float
    cosine: float
    rel_fro: float
    p99_abs: float | None
    atol: float
    rtol: float
    n_outside: int
    frac_outside: float
    min_passing_atol: float
    argmax_abs: tuple | None
    ref_at_max: float | None
    sub_at_max: float | None
    nan_ref: int
    nan_sub: int
    inf_ref: int
    inf_sub: int
    nonfinite_match: bool
    finite_ok: bool
    first_nonfinite_mismatch: tuple | None

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (tuples become lists); NaN/Inf stay Python floats."""
        d = asdict(self)
        for k in ("shape", "argmax_abs", "first_nonfinite_mismatch"):
            if d[k] is not None:
                d[k] = [int(v) for v in d[k]]
        return d

    @property
    def passed(self) -> bool:
        return passed(self)


def passed(m: Metrics) -> bool:
    """allclose-style verdict: nothing outside atol + rtol·|ref| and no NaN/Inf on either side."""
    return m.n_outside == 0 and m.finite_ok


# ----------------------------------------------------------------------------------------------------------
# inputs

def working_dtype(ref: np.ndarray, sub: np.ndarray, name: str | None) -> np.dtype:
    f64 = _needs_f64(ref.dtype, "reference", name) | _needs_f64(sub.dtype, "subject", name)
    return np.dtype(np.float64 if f64 else np.float32)


def _needs_f64(dt: np.dtype, what: str, name: str | None) -> bool:
    kind = dt.kind
    if kind == "f":
        return dt.itemsize > 4
    if kind == "b":
        return False
    if kind in "iu":
        return dt.itemsize > 2
    if "float" in dt.name:  # e.g. ml_dtypes bfloat16 / float8 (kind 'V'), cast through float32
        return False
    raise ParityError(f"{_label(name)}: {what} has dtype {dt}, expected a real floating-point (or int/bool) array")


def as_array(a, what: str, name: str | None) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except Exception as exc:  # pragma: no cover - defensive
        raise ParityError(f"{_label(name)}: {what} is not array-like ({exc})") from None


def check_pair(ref: np.ndarray, sub: np.ndarray, name: str | None) -> None:
    if tuple(ref.shape) != tuple(sub.shape):
        raise ParityError(f"{_label(name)}: shape {tuple(sub.shape)} vs reference {tuple(ref.shape)}")


def check_number(what: str, val, name: str | None, *, positive: bool = False) -> None:
    ok = (isinstance(val, (int, float, np.floating, np.integer)) and not isinstance(val, bool)
          and math.isfinite(val) and (val > 0 if positive else val >= 0))
    if not ok:
        raise ParityError(f"{_label(name)}: {what} must be a finite number {'>' if positive else '>='} 0, got {val!r}")


def _label(name: str | None) -> str:
    return f"probe {name}" if name else "probe"


# ----------------------------------------------------------------------------------------------------------
# the relative-error floor

def floor_of(amax: float, work: np.dtype) -> float:
    """The default relative-error floor for max |ref| = ``amax``, rounded to the working dtype (it
    underflows to 0 only for references below ~1e-42 in float32; max_rel is then |Δ|/|ref| as is)."""
    return float(work.type(REL_FLOOR_FACTOR * amax if amax > 0 else REL_FLOOR_ZERO))


def p99_rank(n_compared: int) -> int:
    """Nearest-rank p99 of n values, counted from the top (1 = the largest)."""
    return n_compared - (P99_PERCENT * n_compared + 99) // 100 + 1
