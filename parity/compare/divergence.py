"""The first divergence and the per-block growth table of a comparison's probe entries."""

from __future__ import annotations



from parity.probemap import MODES
from parity.report.schema import BlockRow, FirstDivergence

def first_divergence(probes: list[dict]) -> dict | None:
    """The first failing probe of isolated mode, else of accumulated mode, in the order given (the engine gives
    the family's data-flow order)."""
    for mode in MODES:
        for p in probes:
            if p["mode"] == mode and not p["passed"]:
                return FirstDivergence.of(p)
    return None


def block_table(probes: list[dict]) -> list[dict]:
    """One row per block probe (per block index, and per kind where a block index has several, e.g. STDiT3's
    spatial and temporal blocks), in the order given: isolated and accumulated max |Δ| and their ratio."""
    rows: dict[str, dict] = {}
    for p in probes:
        if p.get("block") is None:
            continue
        row = rows.setdefault(p["name"], BlockRow(p["block"], p["name"]).to_dict())
        row[f"{p['mode']}_max_abs"] = p["max_abs"]
    for row in rows.values():
        iso, acc = row["isolated_max_abs"], row["accumulated_max_abs"]
        if iso is not None and acc is not None:
            row["growth"] = acc / iso if iso > 0 else (None if acc > 0 else 1.0)
    return sorted(rows.values(), key=lambda r: r["block"])
