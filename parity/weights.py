"""Strict state-dict checks shared by the dump, ingest, convert and compare paths (numpy only)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.errors import ParityError
from parity.safetensors_io import release_pages

_LIST_MAX = 5
_FIX = "use the config.json that belongs to these weights"


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_MAX])
    return shown + (f" (+{len(names) - _LIST_MAX} more)" if len(names) > _LIST_MAX else "")


def shape_problems(shapes: Mapping[str, tuple], expected: Mapping[str, tuple]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``{name: shape}``, each category as one phrase
    (empty list = strict match). Works on a safetensors header, so nothing has to be loaded."""
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [f"{k} (weights {tuple(shapes[k])}, config {tuple(expected[k])})"
                  for k in expected if k in shapes and tuple(shapes[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listed(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
    return problems


def state_dict_problems(weights: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> list[str]:
    """``shape_problems`` of a mapping of arrays."""
    return shape_problems({k: tuple(np.shape(v)) for k, v in weights.items()}, expected)


def check_shapes(shapes: Mapping[str, tuple], expected: Mapping[str, tuple], source: str) -> None:
    """ParityError naming ``source`` and every missing/unexpected/mis-shaped key."""
    problems = shape_problems(shapes, expected)
    if problems:
        raise ParityError(f"{source}: checkpoint does not match the model config — {'; '.join(problems)}; {_FIX}")


def nonfinite_weights(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Names of float tensors holding NaN or Inf (memory-mapped ones are released from RSS once checked)."""
    bad = []
    for k, v in weights.items():
        if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)):
            bad.append(k)
        release_pages(v)
    return bad


def check_finite(weights: Mapping[str, np.ndarray], source: str) -> None:
    bad = nonfinite_weights(weights)
    if bad:
        raise ParityError(f"{source}: {len(bad)} weight(s) contain NaN or Inf ({_listed(bad)}); the checkpoint is "
                          "corrupt — re-export it from a healthy training state")


def check_state_dict(weights: Mapping[str, np.ndarray], expected: Mapping[str, tuple], source: str) -> None:
    """Names and shapes must match ``expected`` exactly and every float tensor must be finite."""
    check_shapes({k: tuple(np.shape(v)) for k, v in weights.items()}, expected, source)
    for k, v in weights.items():
        if np.asarray(v).dtype.kind not in "fiub":
            raise ParityError(f"{source}: weight {k} has dtype {np.asarray(v).dtype}; re-export it as a float tensor")
    check_finite(weights, source)
