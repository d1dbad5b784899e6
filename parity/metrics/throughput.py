"""The verdict metrics pass against a read-bandwidth probe (``make bench``), both in GB/s of input read."""

from __future__ import annotations

import math
import time

import numpy as np

from parity.metrics import compute_metrics
from parity.metrics.definitions import DEFAULT_CHUNK_ELEMS


def read_bandwidth_probe(nbytes: int = 200_000_000, repeats: int = 5) -> float:
    """GB/s of ``a.sum()`` over a float32 array of ``nbytes`` (best of ``repeats``; one thread, as numpy does)."""
    a = np.ones(max(1, int(nbytes) // 4), dtype=np.float32)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def metrics_throughput(n: int = 50_000_000, repeats: int = 3, *, atol: float = 1e-5, rtol: float = 1e-5,
                       chunk_elems: int = DEFAULT_CHUNK_ELEMS, seed: int = 0, shown: bool = False) -> float:
    """GB/s (bytes of ref + sub per second) of ``compute_metrics`` on two float32 arrays of ``n`` elements: the
    verdict pass (``shown=False``), or with the second pass behind p99 and max_rel (``shown=True``).

    The subject is the reference plus ~1e-6 relative noise (a realistic passing probe).
    """
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(int(n), dtype=np.float32)
    sub = rng.standard_normal(int(n), dtype=np.float32)
    sub *= np.float32(1e-6)
    sub += ref
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        compute_metrics(ref, sub, atol=atol, rtol=rtol, chunk_elems=chunk_elems, shown=shown)
        best = min(best, time.perf_counter() - t0)
    return (ref.nbytes + sub.nbytes) / best / 1e9
