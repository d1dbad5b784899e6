"""Per-probe error metrics. One job per module:

* ``definitions``  what every metric means: the ``Metrics`` record, ``passed``, the constants;
* ``verdict``      the verdict metrics in one chunked read of (reference, subject), on every core;
* ``shown``        exact p99 |Δ| and max rel: a second pass, only where a report or a message shows them;
* ``fused``        the compiled per-chunk loops both passes run (numba; numpy calls without it);
* ``message``      the failure message (numpy.testing style) and the number formatters;
* ``throughput``   the bench's read-bandwidth probe and metrics throughput.

``compute_metrics(ref, sub, atol=..., rtol=...)`` runs the verdict pass and, unless ``shown=False``, the second.
"""

from __future__ import annotations

import math

import numpy as np

from parity.metrics.definitions import (
    DEFAULT_CHUNK_ELEMS,
    P99_PERCENT,
    REL_FLOOR_FACTOR,
    REL_FLOOR_ZERO,
    Metrics,
    as_array,
    check_number,
    check_pair,
    passed,
    working_dtype,
)
from parity.metrics.message import format_cosine, format_number, mismatch_message
from parity.metrics.shown import shown_metrics
from parity.metrics.verdict import VerdictPass, cosine

__all__ = [
    "DEFAULT_CHUNK_ELEMS",
    "P99_PERCENT",
    "REL_FLOOR_FACTOR",
    "REL_FLOOR_ZERO",
    "Metrics",
    "compute_metrics",
    "passed",
    "mismatch_message",
    "format_number",
    "format_cosine",
]


def compute_metrics(ref, sub, *, atol: float, rtol: float, rel_floor: float | None = None,
                    chunk_elems: int = DEFAULT_CHUNK_ELEMS, name: str | None = None,
                    ref_absmax: float | None = None, shown: bool = True) -> Metrics:
    """All metrics of one probe (``parity.metrics.definitions`` has the exact definitions).

    ``ref``/``sub``: same-shape real arrays (ndarray or memmap, any float dtype; ints/bools are accepted for
    masks). ``name`` is used in messages. ``rel_floor`` (> 0) or ``ref_absmax`` (max |ref| over finite values)
    fix the floor of max_rel instead of 1e-3·max|ref|. ``shown=False`` skips the second pass: ``p99_abs`` and
    ``max_rel`` are then None. Raises ``ParityError`` on a shape/dtype/argument problem.
    """
    ref = as_array(ref, "reference", name)
    sub = as_array(sub, "subject", name)
    check_pair(ref, sub, name)
    check_number("atol", atol, name)
    check_number("rtol", rtol, name)
    if rel_floor is not None:
        check_number("rel_floor", rel_floor, name, positive=True)
    if ref_absmax is not None:
        check_number("ref_absmax", ref_absmax, name)
    work = working_dtype(ref, sub, name)
    shape = tuple(int(x) for x in ref.shape)
    n = int(ref.size)
    chunk = min(max(1, int(chunk_elems)), max(n, 1))

    vp = VerdictPass(ref, sub, work, chunk, atol, rtol).run()
    floor = vp.rel_floor(rel_floor, ref_absmax)
    n_c = vp.n_c
    p99_abs = max_rel = None
    if n_c == 0:
        empty = n == 0
        max_abs = mean_abs = min_pass = rel_fro = 0.0 if empty else math.nan
        cos = 1.0 if empty else math.nan
        if shown:
            p99_abs = max_rel = max_abs
        argmax = None
    else:
        max_abs = vp.max_abs
        mean_abs = vp.s_abs / n_c
        min_pass = max(0.0, vp.max_e)
        argmax = tuple(int(x) for x in np.unravel_index(vp.argmax, shape)) if shape else ()
        cos = cosine(vp.s_dd, vp.s_dr, vp.s_rr)
        if vp.s_rr > 0:
            rel_fro = math.sqrt(vp.s_dd / vp.s_rr)
        else:
            rel_fro = 0.0 if vp.s_dd == 0 else math.inf
        if shown:
            p99_abs, max_rel = shown_metrics(vp, floor)
    first_mism = None
    if vp.first_mism is not None:
        first_mism = tuple(int(x) for x in np.unravel_index(vp.first_mism, shape)) if shape else ()
    n_out = vp.n_out + vp.n_mism
    return Metrics(
        name=name, shape=shape, n=n, n_compared=n_c,
        max_abs=float(max_abs), mean_abs=float(mean_abs), max_rel=None if max_rel is None else float(max_rel),
        rel_floor=float(floor), cosine=float(cos), rel_fro=float(rel_fro),
        p99_abs=None if p99_abs is None else float(p99_abs),
        atol=float(atol), rtol=float(rtol), n_outside=int(n_out),
        frac_outside=(n_out / n) if n else 0.0, min_passing_atol=float(min_pass),
        argmax_abs=argmax, ref_at_max=vp.ref_at if n_c else None, sub_at_max=vp.sub_at if n_c else None,
        nan_ref=vp.nan_r, nan_sub=vp.nan_s, inf_ref=vp.inf_r, inf_sub=vp.inf_s,
        nonfinite_match=vp.n_mism == 0,
        finite_ok=(vp.nan_r + vp.nan_s + vp.inf_r + vp.inf_s) == 0,
        first_nonfinite_mismatch=first_mism,
    )
