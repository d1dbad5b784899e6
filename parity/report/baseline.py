"""Baselines: fail a probe whose max |Δ| grew more than a factor over an earlier report, even inside tolerance."""

from __future__ import annotations

import math
from pathlib import Path

from parity.dtypes import is_number
from parity.errors import ParityError
from parity.metrics import format_number
from parity.report.schema import FirstDivergence, as_number, load_result

BASELINE_ZERO_TOL = 1e-30  # a baseline of exactly 0 regresses when the current max_abs exceeds this


def load_baseline(path: str | Path) -> dict[tuple[str, str], float]:
    """``{(probe name, mode): max_abs}`` from a previous parity.json (file or directory holding one).

    Probes whose max_abs is null are left out; NaN/Inf come back as floats.
    """
    result = load_result(path)
    base: dict[tuple[str, str], float] = {}
    for p in result["probes"]:
        v = p.get("max_abs")
        if v is None:
            continue
        base[(p["name"], p["mode"])] = float(v)
    return base


def apply_baseline(result: dict, baseline: dict[tuple[str, str], float], factor: float = 2.0) -> dict:
    """Fail probes whose max_abs grew more than ``factor``× over the baseline, even inside tolerance.

    Per probe found in the baseline (by name and mode): ``baseline_max_abs`` is set; it regresses when
    baseline > 0 and max_abs > factor × baseline, or baseline == 0 and max_abs > BASELINE_ZERO_TOL (NaN on
    either side is not judged here). A regressed probe gets ``passed = False``, ``baseline_regressed = True``
    and a one-line note prepended to its message. ``result["passed"]`` becomes False if any probe fails
    (never True again if it was False); ``first_divergence``, if null, becomes the first failing probe.
    The dict is updated IN PLACE and also returned.
    """
    if not is_number(factor) or not (0 < float(factor) < math.inf):
        raise ParityError(f"baseline factor must be a finite number > 0, got {factor!r}")
    factor = float(factor)
    probes = result.get("probes")
    if not isinstance(probes, list):
        raise ParityError("report: result has no 'probes' list to compare with the baseline")
    result["baseline_factor"] = factor
    for p in probes:
        key = (p.get("name"), p.get("mode"))
        if key not in baseline:
            continue
        b = float(baseline[key])
        p["baseline_max_abs"] = b
        c = p.get("max_abs")
        c = None if c is None else float(as_number(c))
        if c is None or math.isnan(c) or math.isnan(b):
            continue
        regressed = c > factor * b if b > 0 else c > BASELINE_ZERO_TOL
        if regressed:
            grow = f"{c / b:.3g}× the baseline" if b > 0 else "above the baseline"
            note = (f"probe {p.get('name')} ({p.get('mode')}): max abs {format_number(c)} is {grow} "
                    f"{format_number(b)} (limit {factor:g}×)")
            old = str(p.get("message") or "").strip()
            p["message"] = note + ("\n" + old if old else "")
            p["passed"] = False
            p["baseline_regressed"] = True
    result["passed"] = bool(result.get("passed", True)) and all(bool(p.get("passed")) for p in probes)
    if not result["passed"] and not result.get("first_divergence"):
        first = next((p for p in probes if not p.get("passed")), None)
        if first is not None:
            result["first_divergence"] = FirstDivergence.of(first)
    return result
