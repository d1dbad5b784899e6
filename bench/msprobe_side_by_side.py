"""Side by side with msprobe: this project's metrics pass vs msprobe's per-tensor compare, on the same pair.

Optional (msprobe is not a project dependency): runs when an msprobe virtualenv is found — ``$MSPROBE_PYTHON``,
else ``.venv-msprobe/bin/python`` (``make msprobe-venv``) — and says so otherwise (exit 0).

One float32 pair of ``--mb`` MB per tensor (default 200): ``ref`` ~ N(0, 1) and ``sub = ref + U(-1e-6, 1e-6)``, a
pair that passes this project's fp32 accumulated-block tolerance (atol 5e-5, rtol 1e-5). Each measurement runs
in a fresh child process that first loads both tensors into memory, so "extra memory" is the child's peak RSS
(VmHWM, reset after loading) above its RSS with the pair loaded. Throughput counts both tensors' bytes. Rounds
are interleaved (parity, msprobe, parity, ...; best of ``--rounds``) because the machine is shared.

msprobe's compare is what its ``compare`` command runs per tensor pair: ``npy_data_check`` then
``compare_ops_apply`` (cosine, Euclidean distance, max absolute error, max relative error, one-thousandth and
five-thousandths error ratios). The bench also checks two facts of msprobe's metrics:

* cosine is rounded to 6 decimals once it exceeds 0.9999, so a 1 M-element pair failing by 1e-2 on 0.01 % of its
  elements shows cosine 1.0 (this call is also each child's warm-up);
* its relative error |n - b| / |b| has no floor (only exact zeros get an epsilon), so the timed pair, which
  passes, shows a maximum relative error far above 1 (its reference has values within ~1e-8 of zero).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 1e9
ATOL, RTOL = 5e-5, 1e-5  # parity/families/opensora_v13/tolerances.json: fp32, block, accumulated
SEED = 0


def msprobe_python() -> str | None:
    cand = os.environ.get("MSPROBE_PYTHON") or os.path.join(ROOT, ".venv-msprobe", "bin", "python")
    return cand if os.path.isfile(cand) and os.access(cand, os.X_OK) else None


# ---- pairs -----------------------------------------------------------------------------------------------------
def make_pair(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    ref = rng.standard_normal(n, dtype=np.float32)
    sub = ref + rng.uniform(-1e-6, 1e-6, n).astype(np.float32)
    return ref, sub


def failing_pair(n: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """0.01 % of the elements off by 1e-2: fails any fp32 tolerance here, cosine 1 - ~5e-9."""
    ref, sub = make_pair(n)
    sub[:: 10_000] += np.float32(1e-2)
    return ref, sub


# ---- children --------------------------------------------------------------------------------------------------
def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _parity_compare(ref, sub) -> dict:
    from parity.metrics import compute_metrics

    m = compute_metrics(ref, sub, atol=ATOL, rtol=RTOL)
    return {"cosine": m.cosine, "max_abs": m.max_abs, "max_rel": m.max_rel, "rel_floor": m.rel_floor,
            "frac_outside": m.frac_outside, "passed": bool(m.passed)}


def _msprobe_compare(ref, sub) -> dict:
    from msprobe.core.compare.npy_compare import compare_ops_apply, npy_data_check

    # msprobe's argument order: (npu/subject value, bench/reference value)
    flag, msg = npy_data_check(sub, ref)
    values, msg = compare_ops_apply(sub, ref, flag, msg)
    names = ("cosine", "euclidean", "max_abs", "max_rel", "one_thousandth_ratio", "five_thousandths_ratio")
    return dict(zip(names, values), message=msg)


def child(tool: str, ref_path: str, sub_path: str) -> dict:
    fn = _parity_compare if tool == "parity" else _msprobe_compare
    ref, sub = np.load(ref_path), np.load(sub_path)  # in memory before the baseline
    out = {"failing_pair": fn(*failing_pair())}  # also the warm-up: imports, numba's cached kernel
    base = _status_bytes("VmRSS")
    _reset_hwm()
    t0 = time.perf_counter()
    result = fn(ref, sub)
    out.update(seconds=time.perf_counter() - t0, extra_bytes=_status_bytes("VmHWM") - base,
               bytes=ref.nbytes + sub.nbytes, result=result)
    return out


def run_child(python: str, tool: str, ref_path: str, sub_path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT if tool == "parity" else "", OMP_NUM_THREADS="1")
    cmd = [python, os.path.abspath(__file__), "--child", tool, ref_path, sub_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"msprobe side-by-side: the {tool} child failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _r(x, nd=3):
    return round(float(x), nd) if isinstance(x, (int, float)) else x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=200, help="MB per tensor (default 200)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "msprobe_results.json"))
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "REF", "SUB"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        tool, ref_path, sub_path = args.child
        print(json.dumps(child(tool, ref_path, sub_path)), flush=True)
        return 0
    python = msprobe_python()
    if python is None:
        print("msprobe side-by-side: skipped — no msprobe virtualenv (make msprobe-venv creates .venv-msprobe; or set "
              "MSPROBE_PYTHON to a python that has mindstudio-probe)")
        return 0
    n = args.mb * 10**6 // 4
    runs = {"parity": [], "msprobe": []}
    with tempfile.TemporaryDirectory(prefix="parity-msprobe-bench-") as tmp:
        ref, sub = make_pair(n)
        paths = (os.path.join(tmp, "ref.npy"), os.path.join(tmp, "sub.npy"))
        np.save(paths[0], ref)
        np.save(paths[1], sub)
        del ref, sub
        for k in range(args.rounds):
            for tool, py in (("parity", sys.executable), ("msprobe", python)):
                print(f"  round {k + 1}/{args.rounds}: {tool}", file=sys.stderr, flush=True)
                runs[tool].append(run_child(py, tool, *paths))
    res = {"tensor_mb": args.mb, "rounds": args.rounds, "load_average": [round(x, 2) for x in os.getloadavg()]}
    for tool, rs in runs.items():
        best = min(rs, key=lambda r: r["seconds"])
        res[tool] = {"gbps": _r(best["bytes"] / best["seconds"] / GB), "seconds": _r(best["seconds"]),
                     "extra_memory_gb": _r(min(r["extra_bytes"] for r in rs) / GB),
                     "extra_memory_vs_pair": _r(min(r["extra_bytes"] for r in rs) / best["bytes"], 2),
                     "result": best["result"], "failing_pair": rs[0]["failing_pair"]}
    p, m = res["parity"], res["msprobe"]
    res["speed_ratio"] = _r(p["gbps"] / m["gbps"], 1)
    res["memory_ratio"] = _r(m["extra_memory_gb"] / p["extra_memory_gb"], 1) if p["extra_memory_gb"] > 0 else None
    res["facts"] = {
        "failing_pair_cosine_msprobe": m["failing_pair"]["cosine"],
        "failing_pair_cosine_parity": p["failing_pair"]["cosine"],
        "failing_pair_passed_parity": p["failing_pair"]["passed"],
        "cosine_rounding_hides_failure": m["failing_pair"]["cosine"] == 1.0 and not p["failing_pair"]["passed"],
        "passing_pair_max_rel_msprobe": m["result"]["max_rel"],
        "passing_pair_max_rel_parity": p["result"]["max_rel"],
        "passing_pair_passed_parity": p["result"]["passed"],
        "relative_error_without_floor": (isinstance(m["result"]["max_rel"], float)
                                         and m["result"]["max_rel"] > 1 and p["result"]["passed"]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    f = res["facts"]
    print(f"msprobe side by side, {args.mb} MB float32 pair, best of {args.rounds} (load {res['load_average']}):")
    print(f"  {'':28} {'GB/s':>8} {'extra memory':>14}")
    for tool in ("parity", "msprobe"):
        r = res[tool]
        print(f"  {tool + (' compute_metrics' if tool == 'parity' else ' compare_ops_apply'):28} {r['gbps']:>8} "
              f"{r['extra_memory_gb']:>10} GB ({r['extra_memory_vs_pair']}x the pair)")
    print(f"  parity is {res['speed_ratio']}x faster with 1/{res['memory_ratio']} of the extra memory")
    print(f"  failing pair: msprobe cosine {f['failing_pair_cosine_msprobe']} vs parity {f['failing_pair_cosine_parity']!r}"
          f" (parity: {'passed' if f['failing_pair_passed_parity'] else 'FAILED'})")
    print(f"  passing pair: msprobe max relative error {f['passing_pair_max_rel_msprobe']} vs parity "
          f"{f['passing_pair_max_rel_parity']:.3g} (floored; parity: "
          f"{'passed' if f['passing_pair_passed_parity'] else 'FAILED'})")
    print(f"wrote {os.path.relpath(args.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
