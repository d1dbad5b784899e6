"""Per-probe statistics for stats-only dumps, and the (weaker) criterion a subject is judged by against them.

A stats-only dump (``parity dump --stats-only``) keeps no reference tensors, only, per probe (manifest key
``stats``)::

    shape, dtype, n          as a full dump's states/<probe>.npy would hold it
    sha256                   of the tensor bytes as stored (C order, little-endian; bf16 as its uint16 bits),
                             i.e. of the data section of the .npy a full dump would write
    nan, inf                 counts
    min, max, mean, std,     over the finite values, in float64 (std: population; rms = l2 norm / sqrt(n);
    absmax, rms, mean_abs    mean_abs = l1 norm / n); null when no value is finite
    sample                   {"index": [...], "value": [...]}: the values at SAMPLE_SIZE fixed, well-spread
                             flat (C-order) positions (all of them when n <= SAMPLE_SIZE); non-finite values as
                             the strings "NaN", "Infinity", "-Infinity"

Criterion (``check``), with the probe's tolerance profile (atol a, rtol r): the subject passes when

1. its shape equals the reference's and it has no NaN/Inf;
2. every sampled element satisfies |s_i − r_i| <= a + r·|r_i| (the full criterion, on the sample);
3. every statistic is within the bound that the full criterion implies for it: if |s_i − r_i| <= a + r·|r_i|
   for ALL i, then |Δmean| <= a + r·mean_abs, |Δmin|, |Δmax|, |Δabsmax| <= a + r·absmax and
   |Δstd|, |Δrms| <= a + r·rms, |Δmean_abs| <= a + r·mean_abs (reference statistics; slack: 1e-6 of each
   bound for the float32 evaluation of the full criterion, 1e-9 of the statistics for float64 summation).

So a subject that would pass the full comparison always passes this one. The converse does not hold: errors
confined to unsampled elements that leave the statistics inside their bounds go unseen (e.g. a wrong value in a
few hundred of 48 million elements). The sha256 says whether the subject is bit-identical (reported, not
required). Statistics and the sample are computed the same way on both sides (chunked, no full-size copies).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from parity import dtypes as _dt
from parity.errors import ParityError
from parity.dtypes import is_int, is_number

CHUNK = 1 << 20
SAMPLE_SIZE = 512
STAT_KEYS = ("min", "max", "mean", "std", "absmax", "rms", "mean_abs")
SLACK = 1e-9         # relative to the statistics: float64 summation order
BOUND_SLACK = 1e-6   # relative to a bound: the full comparison evaluates |Δ| <= atol + rtol·|ref| in float32
_WEYL = (math.sqrt(5.0) - 1.0) / 2.0  # golden-ratio step: positions spread evenly, aligned with no stride
_NONFINITE_TXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def sample_indices(n: int, k: int = SAMPLE_SIZE) -> np.ndarray:
    """``min(n, k)`` distinct flat positions in [0, n), sorted: all of them, or a golden-ratio sequence."""
    n = int(n)
    if n <= k:
        return np.arange(n, dtype=np.int64)
    j = np.arange(k, dtype=np.float64)
    idx = np.floor(np.mod(0.5 + j * _WEYL, 1.0) * n).astype(np.int64)
    return np.unique(np.clip(idx, 0, n - 1))


def encode_value(x: float):
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def decode_value(v) -> float:
    if isinstance(v, str):
        return _NONFINITE_TXT[v]
    return float(v)


def _logical(storage: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values of a storage chunk (bf16 bits -> exact values)."""
    if dtype == "bfloat16":
        return _dt.bf16_bits_to_float32(storage).astype(np.float64)
    return storage.astype(np.float64)


def tensor_stats(array, dtype: str | None = None, *, where: str = "array", hash_dtype: str | None = None) -> dict:
    """The stats entry of ``array`` stored as project dtype ``dtype`` (None: its own dtype).

    Values are those of the stored representation (a float32 array stored as bfloat16 is rounded first).
    ``hash_dtype`` (default ``dtype``) is the storage the sha256 is taken of; if the array cannot be stored as
    it, ``sha256`` is None. One chunked pass; memory: a few chunk-sized buffers.
    """
    arr = np.asarray(array)
    own = _dt.dtype_name(arr.dtype)
    if own is None:
        raise ParityError(f"{where}: unsupported dtype {arr.dtype}; convert it to a numeric numpy dtype")
    dtype = own if dtype is None else dtype
    hash_dtype = dtype if hash_dtype is None else hash_dtype
    flat = np.require(arr, requirements="C").reshape(-1)
    n = int(flat.size)
    h = hashlib.sha256()
    hashing = True
    n_fin = n_nan = n_inf = 0
    mean = m2 = s2 = s_abs = 0.0
    lo, hi = math.inf, -math.inf
    for i in range(0, n, CHUNK):
        piece = flat[i : i + CHUNK]
        _, st = _dt.to_storage(piece, dtype, where)
        if hashing:
            if hash_dtype == dtype:
                hs = st
            else:
                try:
                    _, hs = _dt.to_storage(piece, hash_dtype, where)
                except ParityError:
                    hashing = False
                    hs = None
            if hs is not None:
                h.update(memoryview(hs).cast("B"))
        v = _logical(st, dtype)
        fin = np.isfinite(v)
        if not fin.all():
            nan = int(np.count_nonzero(np.isnan(v)))
            n_nan += nan
            n_inf += int(v.size - np.count_nonzero(fin)) - nan
            v = v[fin]
        m = int(v.size)
        if m == 0:
            continue
        lo = min(lo, float(v.min()))
        hi = max(hi, float(v.max()))
        c_mean = float(v.sum()) / m
        d = v - c_mean
        c_m2 = float(np.dot(d, d))
        s2 += float(np.dot(v, v))
        np.abs(v, out=v)
        s_abs += float(v.sum())
        # Chan et al.: combine (count, mean, M2) of the chunk with the running ones
        tot = n_fin + m
        delta = c_mean - mean
        mean += delta * m / tot
        m2 += c_m2 + delta * delta * n_fin * m / tot
        n_fin = tot
    idx = sample_indices(n)
    if idx.size:
        _, st = _dt.to_storage(flat[idx], dtype, where)
        values = [encode_value(x) for x in _logical(st, dtype)]
    else:
        values = []
    entry = {"shape": [int(s) for s in arr.shape], "dtype": dtype, "n": n,
             "sha256": h.hexdigest() if hashing else None, "nan": n_nan, "inf": n_inf}
    if n_fin:
        entry.update(min=lo, max=hi, mean=mean, std=math.sqrt(max(0.0, m2 / n_fin)),
                     absmax=max(abs(lo), abs(hi)), rms=math.sqrt(s2 / n_fin), mean_abs=s_abs / n_fin)
    else:
        entry.update({k: None for k in STAT_KEYS})
    entry["sample"] = {"index": [int(x) for x in idx], "value": values}
    return entry


# --------------------------------------------------------------------------------------------------------------
# validation of a stored entry (the store calls this; problems are returned, never raised)

def entry_problems(e) -> list[str]:
    """Problems of a stats entry read from a manifest (empty list = usable)."""
    if not isinstance(e, dict):
        return ["must be an object"]
    out = []
    shape = e.get("shape")
    shape_ok = isinstance(shape, list) and len(shape) <= 64 and all(is_int(s) and s >= 0 for s in shape)
    if not shape_ok:
        out.append("shape must be a list of non-negative integers")
    if not _dt.is_dtype_name(e.get("dtype")):
        out.append(f"dtype {str(e.get('dtype'))[:40]!r} is not a known dtype")
    n = e.get("n")
    if not (is_int(n) and n >= 0):
        out.append("n must be a non-negative integer")
    elif shape_ok and math.prod(shape) != n:
        out.append(f"n {n} does not match shape {shape}")
    sha = e.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        out.append("sha256 must be a 64-digit lowercase hex string or null")
    for k in ("nan", "inf"):
        if not (is_int(e.get(k)) and 0 <= e[k] <= (n if is_int(n) else 0)):
            out.append(f"{k} must be an integer count between 0 and n")
    for k in STAT_KEYS:
        v = e.get(k)
        if v is not None and not _finite(v):
            out.append(f"{k} must be a finite number or null")
        if k not in e:
            out.append(f"missing {k!r}")
    s = e.get("sample")
    if not isinstance(s, dict) or not isinstance(s.get("index"), list) or not isinstance(s.get("value"), list):
        out.append("sample must be an object with 'index' and 'value' lists")
    else:
        idx, val = s["index"], s["value"]
        if len(idx) != len(val) or len(idx) > 1 << 16:
            out.append("sample index and value lists must have the same (bounded) length")
        elif not all(is_int(i) and 0 <= i < (n if is_int(n) else 0) for i in idx):
            out.append("sample indices must be integers in [0, n)")
        elif any(b <= a for a, b in zip(idx, idx[1:])):
            out.append("sample indices must be strictly increasing")
        elif not all(_finite(v) or (isinstance(v, str) and v in _NONFINITE_TXT) for v in val):
            out.append("sample values must be numbers or 'NaN'/'Infinity'/'-Infinity'")
    return out


def _finite(v) -> bool:
    """A JSON number that converts to a finite float (int/float comparison is exact, never overflows)."""
    return is_number(v) and abs(v) < 1.7e308


# --------------------------------------------------------------------------------------------------------------
# the criterion

def subject_stats(sub: np.ndarray, ref_entry: dict, where: str = "subject") -> dict:
    """Stats of the subject's array (its own values), hashed as the reference's storage dtype, with the sample
    taken at the reference's sample positions."""
    entry = tensor_stats(sub, None, where=where, hash_dtype=ref_entry["dtype"])
    idx = np.asarray(ref_entry["sample"]["index"], dtype=np.int64)
    flat = np.require(np.asarray(sub), requirements="C").reshape(-1)
    if idx.size and int(idx.max()) < flat.size:
        entry["sample"] = {"index": ref_entry["sample"]["index"],
                           "value": [encode_value(x) for x in flat[idx].astype(np.float64)]}
    return entry


def bounds(ref: dict, atol: float, rtol: float) -> dict:
    """The largest difference of each statistic that the full criterion allows (see the module docstring)."""
    a, r = float(atol), float(rtol)
    out = {}
    for k in STAT_KEYS:
        if ref.get(k) is None:
            continue
        if k == "mean":
            b = a + r * ref["mean_abs"]
        elif k in ("std", "rms"):
            b = a + r * ref["rms"]
        elif k == "mean_abs":
            b = a + r * ref["mean_abs"]  # | mean|s| - mean|r| | <= mean|Δ|
        else:
            b = a + r * ref["absmax"]
        out[k] = b
    return out


def check(ref: dict, sub: dict, atol: float, rtol: float) -> dict:
    """Judge subject stats ``sub`` against reference stats ``ref``; returns a verdict dict:
    ``passed``, ``bit_identical``, ``sample_n``, ``sample_max_abs``, ``sample_outside``, ``worst`` (statistic
    with the largest difference / bound ratio), ``worst_ratio``, ``failures`` (list of one-line reasons)."""
    failures = []
    if list(sub["shape"]) != list(ref["shape"]):
        failures.append(f"shape {tuple(sub['shape'])} vs reference {tuple(ref['shape'])}")
        return {"passed": False, "bit_identical": False, "sample_n": 0, "sample_max_abs": None, "sample_outside": 0,
                "worst": None, "worst_ratio": None, "failures": failures}
    if sub["nan"] or sub["inf"]:
        failures.append(f"subject has {sub['nan']} NaN and {sub['inf']} Inf values")
    a, r = float(atol), float(rtol)
    rv = np.array([decode_value(v) for v in ref["sample"]["value"]], dtype=np.float64)
    sv = np.array([decode_value(v) for v in sub["sample"]["value"]], dtype=np.float64)
    sample_max = None
    outside = 0
    if rv.size and rv.size == sv.size:
        with np.errstate(invalid="ignore"):
            diff = np.abs(sv - rv)
            ok = diff <= (a + r * np.abs(rv)) * (1.0 + BOUND_SLACK)
        ok |= (rv == sv) | (np.isnan(rv) & np.isnan(sv))
        outside = int(rv.size - np.count_nonzero(ok))
        finite = np.isfinite(diff)
        sample_max = float(diff[finite].max()) if finite.any() else None
        if outside:
            k = int(np.flatnonzero(~ok)[0])
            pos = int(ref["sample"]["index"][k])
            failures.append(f"{outside} of {rv.size} sampled elements outside atol + rtol*|ref| (first at flat "
                            f"index {pos}: ref={rv[k]:.7g} sub={sv[k]:.7g})")
    elif rv.size != sv.size:
        failures.append("the subject's sample could not be taken at the reference's positions")
    worst, worst_ratio = None, 0.0
    for k, b in bounds(ref, a, r).items():
        s = sub.get(k)
        if s is None:
            continue
        d = abs(float(s) - float(ref[k]))
        allowed = b * (1.0 + BOUND_SLACK) + SLACK * (abs(float(s)) + abs(float(ref[k])))
        ratio = d / allowed if allowed > 0 else (0.0 if d == 0 else math.inf)
        if ratio > worst_ratio or worst is None:
            worst, worst_ratio = k, ratio
        if d > allowed:
            failures.append(f"{k} {float(s):.7g} vs reference {float(ref[k]):.7g}: |difference| {d:.3g} > "
                            f"bound {b:.3g}")
    return {"passed": not failures, "bit_identical": bool(ref.get("sha256") and sub.get("sha256") == ref["sha256"]),
            "sample_n": int(rv.size), "sample_max_abs": sample_max, "sample_outside": outside, "worst": worst,
            "worst_ratio": worst_ratio if worst is not None else None, "failures": failures}
