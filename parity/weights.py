"""Strict state-dict checks shared by the dump, ingest and convert paths (numpy only)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.errors import ParityError

_LIST_MAX = 5


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_MAX])
    return shown + (f" (+{len(names) - _LIST_MAX} more)" if len(names) > _LIST_MAX else "")


def state_dict_problems(weights: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> list[str]:
    """Missing, unexpected and mis-shaped keys, each category as one phrase (empty list = strict match)."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k} {tuple(np.shape(weights[k]))} vs expected {tuple(expected[k])}"
                  for k in expected if k in weights and tuple(np.shape(weights[k])) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
    return problems


def check_state_dict(weights: Mapping[str, np.ndarray], expected: Mapping[str, tuple], source: str) -> None:
    problems = state_dict_problems(weights, expected)
    if problems:
        raise ParityError(f"{source}: checkpoint does not match the model config — {'; '.join(problems)}; "
                          f"use the config.json that belongs to these weights")
    for k, v in weights.items():
        if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ParityError(f"{source}: weight {k} contains NaN or Inf; the checkpoint is corrupt")
