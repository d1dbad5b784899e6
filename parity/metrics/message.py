"""How metrics read: the one failure-message builder (numpy.testing style) and the number formatters.

``mismatch_message(m, context=..., where=...)`` is what ``parity compare`` stores in a failing probe's
``message`` (and prints), for example:

    Not equal to tolerance rtol=1e-07, atol=1e-06 (profile fp32/block/isolated) — probe hidden_states_0_block: mismatched elements: 206 / 2304 (8.941%)
    Max absolute difference: 3.61353e-06 at index (37, 0, 32): ref=0.03479338 sub=0.03479699
    Max relative difference: 0.00041053
    Minimal passing atol at rtol=1e-07: 3.61005e-06
    torch: transformer_blocks.0 | ms: transformer_blocks.0
"""

from __future__ import annotations

import math

from parity.metrics.definitions import Metrics


def mismatch_message(m: Metrics, *, context: str, where: str) -> str:
    """The failure message of a probe judged by atol + rtol·|ref|: the first line is self-contained (tolerance,
    ``context`` such as ``profile fp32/block/isolated``, probe, mismatch count); then the worst element, max
    relative difference (if computed), the minimal passing atol and ``where`` (the model paths). With no
    compared position (every pair has a NaN/Inf) the difference lines are left out."""
    head = (f"Not equal to tolerance rtol={m.rtol:g}, atol={m.atol:g} ({context}) — probe {m.name}: mismatched "
            f"elements: {m.n_outside} / {m.n} ({100 * m.frac_outside:.4g}%)")
    lines = [head]
    if m.n_compared:
        lines.append(f"Max absolute difference: {m.max_abs:.6g} at index {format_index(m.argmax_abs)}: "
                     f"ref={m.ref_at_max:.7g} sub={m.sub_at_max:.7g}")
        if m.max_rel is not None:
            lines.append(f"Max relative difference: {m.max_rel:.6g}")
        lines.append(f"Minimal passing atol at rtol={m.rtol:g}: {m.min_passing_atol:.6g}")
    lines.append(where)
    if m.nan_sub or m.inf_sub:
        lines.append(f"subject has {m.nan_sub} NaN and {m.inf_sub} Inf values (never zeroed out)")
    return "\n".join(lines)


def format_index(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")" if idx is not None else "?"


def format_number(x) -> str:
    """Compact human formatting: 0, 0.5312, 3.1e-04, NaN, inf, —."""
    if _missing(x):
        return _missing(x)
    x = float(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.4g}"
    return f"{x:.1e}"


def format_cosine(c) -> str:
    """A cosine similarity that shows how far from 1 it is: 1, 1−3.2e-14, 0.998765, NaN, —."""
    if _missing(c):
        return _missing(c)
    c = float(c)
    if c == 1.0:
        return "1"
    if 0.999 < c < 1.0:
        return f"1−{1.0 - c:.1e}"
    return f"{c:.6f}"


def _missing(x) -> str:
    """"—" for no value, "NaN" for NaN, "" for a number."""
    return "—" if x is None else "NaN" if math.isnan(float(x)) else ""
