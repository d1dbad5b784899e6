"""The comparison engine: a reference dump and the subject model in, a per-probe verdict out.

Two modes, both reported:
- isolated: the subject runs each block (and the output head) on the reference's own inputs to it and
  the reference's conditioning, so a probe's error is that layer's local error;
- accumulated: the subject runs freely from the reference inputs and every probe is compared.

Probes are compared as the subject produces them, against the memory-mapped reference, and only their
metrics are kept (peak memory: the model plus a few states). The first divergence is the earliest failing
probe in isolated mode, or, if none fails there, in accumulated mode.

For bf16/fp16 dumps the accumulated verdict is reference-relative: the subject's error against the torch
fp32 run may be at most k x the torch low-precision run's own error against it, plus a floor.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import platform
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from parity.adapters import get_adapter
from parity.errors import MissingProbe, ParityError, ReferenceProblem
from parity.families import get_family
from parity.metrics import compute_metrics, mismatch_message
from parity.probemap import load_probe_map
from parity.progress import Progress
from parity.safetensors_io import read_safetensors_header, release_pages
from parity.stats import SAMPLE_SIZE, check as stats_check, subject_stats
from parity.store import open_dump
from parity.tolerances import load_profiles, relative_passed
from parity.weights import check_finite, check_shapes

MODES = ("isolated", "accumulated")
REPORT_SCHEMA = "opensora-parity/report@1"


@dataclass
class CompareOptions:
    modes: tuple = MODES
    device: str = "CPU"
    precision: str | None = None
    probes: list | None = None            # glob patterns; None = every probe in the dump
    tolerance_file: str | None = None
    attention_backend: str | None = None
    subject_patch: Callable[[Any], Any] | None = None   # model -> context manager (deliberately wrong variants)
    progress: bool = True
    verify_checksums: bool = True
    shown_metrics: bool = True   # p99_abs and max_rel of passing probes too (a second pass each); else None
    extra: dict = field(default_factory=dict)


def _finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


class _Evaluator:
    """Compares one probe at a time and keeps only the verdict and metrics."""

    def __init__(self, dump, specs, profiles, precision, adapter_params, progress, shown=True):
        self.dump = dump
        self.shown = shown
        self.specs = {s.name: s for s in specs}
        self.profiles = profiles
        self.precision = precision
        self.params = adapter_params
        self.progress = progress
        self.results: dict[tuple[str, str], dict] = {}
        self._lowp_err: dict[str, float] = {}

    def _reference(self, name: str, role: str = "state") -> np.ndarray:
        # a read-only memmap: nothing of the reference is held in memory beyond the pages being compared.
        # NaN/Inf in it were ruled out up front (_check_reference_finite), chunk by chunk.
        return self.dump.state(name, role=role)

    def lowp_error(self, name: str) -> float:
        if name not in self._lowp_err:
            ref32, ref = self._reference(name, "state_fp32"), self._reference(name)
            m = compute_metrics(ref32, ref, atol=0.0, rtol=0.0, name=name, shown=False)
            release_pages(ref32)
            release_pages(ref)
            self._lowp_err[name] = float(m.max_abs)
        return self._lowp_err[name]

    def __call__(self, mode: str, name: str, array: np.ndarray) -> None:
        spec = self.specs.get(name)
        if spec is None or (mode, name) in self.results:
            return
        sub = get_adapter(spec.ms_adapter).to_reference(np.asarray(array), **self.params)
        if self.dump.stats_only:
            self._stats_probe(mode, spec, sub)
            return
        ref = self._reference(name)
        try:
            self._judge(mode, spec, sub, ref)
        finally:  # the reference's pages were only needed for this probe: out of RSS again (the file keeps them)
            release_pages(ref)

    def _judge(self, mode: str, spec, sub: np.ndarray, ref: np.ndarray) -> None:
        name = spec.name
        tol = self.profiles.lookup(self.precision, spec.probe_class, mode)
        use_relative = (tol.relative is not None and mode == "accumulated" and self.dump.has_fp32_states
                        and spec.probe_class not in ("input", "mask"))
        if tuple(sub.shape) != tuple(ref.shape):
            self._record(mode, spec, None, tol, False, "absolute",
                         f"probe {name} ({mode}): subject shape {tuple(sub.shape)} vs reference {tuple(ref.shape)} "
                         f"(ms {spec.ms_path}, adapter {spec.ms_adapter})", shape=ref.shape)
            return
        lowp = None
        if use_relative:
            lowp = self.lowp_error(name)
            bound = tol.relative.k * lowp + tol.relative.floor
            ref32 = self._reference(name, "state_fp32")
            metrics = compute_metrics(ref32, sub, atol=bound, rtol=0.0, name=name, shown=self.shown)
            finite = metrics.nan_sub == 0 and metrics.inf_sub == 0
            passed = bool(finite and relative_passed(metrics.max_abs, lowp, tol.relative))
            if not passed and not self.shown:  # a failing probe is always shown in full
                metrics = compute_metrics(ref32, sub, atol=bound, rtol=0.0, name=name)
            release_pages(ref32)
            atol, rtol, criterion = bound, 0.0, "relative"
            msg = ("" if passed else
                   f"probe {name} ({mode}): error vs the torch fp32 run {metrics.max_abs:.3g} exceeds "
                   f"k={tol.relative.k:g} x torch-{self.precision} error {lowp:.3g} + floor {tol.relative.floor:g} "
                   f"= {bound:.3g} (profile {self.precision}/{spec.probe_class}/{mode}, relative); "
                   f"nan={metrics.nan_sub} inf={metrics.inf_sub}")
        else:
            metrics = compute_metrics(ref, sub, atol=tol.atol, rtol=tol.rtol, name=name, shown=self.shown)
            finite = metrics.nan_sub == 0 and metrics.inf_sub == 0
            passed = bool(finite and metrics.n_outside == 0)
            if not passed and not self.shown:  # a failing probe is always shown in full
                metrics = compute_metrics(ref, sub, atol=tol.atol, rtol=tol.rtol, name=name)
            atol, rtol, criterion = tol.atol, tol.rtol, "absolute"
            msg = "" if passed else mismatch_message(
                metrics, context=f"profile {self.precision}/{spec.probe_class}/{mode}",
                where=f"torch: {spec.torch_path} | ms: {spec.ms_path}")
        self._record(mode, spec, metrics, tol, passed, criterion, msg, atol=atol, rtol=rtol, lowp=lowp)

    def _stats_probe(self, mode: str, spec, sub: np.ndarray) -> None:
        """Stats-only dump: judge the subject's statistics and sample (parity.stats.check)."""
        ref = self.dump.stats(spec.name)
        tol = self.profiles.lookup(self.precision, spec.probe_class, mode)
        got = subject_stats(sub, ref, where=f"probe {spec.name} (subject)")
        v = stats_check(ref, got, tol.atol, tol.rtol)
        msg = "" if v["passed"] else (
            f"probe {spec.name} ({mode}, stats-only comparison, profile {self.precision}/{spec.probe_class}/{mode} "
            f"atol={tol.atol:g} rtol={tol.rtol:g}): " + "; ".join(v["failures"][:4])
            + f"\ntorch: {spec.torch_path} | ms: {spec.ms_path}")
        extra = {"shape": list(ref["shape"]), "max_abs": _finite_or_none(v["sample_max_abs"]),
                 "nan_ref": int(ref["nan"]), "inf_ref": int(ref["inf"]), "nan_sub": int(got["nan"]),
                 "inf_sub": int(got["inf"]),
                 "stats": {"bit_identical": v["bit_identical"], "sample_n": v["sample_n"],
                           "sample_outside": v["sample_outside"], "worst_statistic": v["worst"],
                           "worst_ratio": _finite_or_none(v["worst_ratio"])}}
        self._record(mode, spec, None, tol, v["passed"], "stats", msg, shape=ref["shape"], extra=extra)

    def _record(self, mode, spec, metrics, tol, passed, criterion, message, *, atol=None, rtol=None, lowp=None,
                shape=None, extra=None):
        m = metrics.to_dict() if metrics is not None else {}
        entry = {
            "name": spec.name, "mode": mode, "probe_class": spec.probe_class, "block": spec.block,
            "shape": list(m.get("shape", shape or ())),
            **{k: _finite_or_none(m.get(k)) for k in ("max_abs", "mean_abs", "max_rel", "cosine", "rel_fro",
                                                      "p99_abs", "frac_outside", "min_passing_atol")},
            **{k: int(m.get(k, 0)) for k in ("nan_ref", "nan_sub", "inf_ref", "inf_sub")},
            "atol": float(tol.atol if atol is None else atol), "rtol": float(tol.rtol if rtol is None else rtol),
            "criterion": criterion, "lowp_ref_max_abs": _finite_or_none(lowp), "baseline_max_abs": None,
            "passed": bool(passed), "message": message, "torch_path": spec.torch_path, "ms_path": spec.ms_path,
        }
        if metrics is not None and not np.isfinite(m.get("max_abs", 0.0)):
            entry["max_abs"] = None
        if extra:
            entry.update(extra)
        self.results[(mode, spec.name)] = entry
        if self.progress is not None:
            self.progress.update(1, f"{mode} {spec.name}")


def _config_mismatch(dump) -> None:
    path = os.path.join(dump.path, "config.json")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            on_disk = json.load(fh)
    except (OSError, ValueError):
        raise ParityError(f"{path}: missing or unreadable; the dump is incomplete — re-create it") from None
    if on_disk != dump.config:
        diff = sorted(k for k in set(on_disk) | set(dump.config) if on_disk.get(k) != dump.config.get(k))
        raise ParityError(f"{path}: differs from the config in manifest.json ({', '.join(diff[:5])}); the reference "
                          f"and the subject would be built from different configs — re-create the dump")


def compare_dump(dump_path: str, options: CompareOptions | None = None) -> dict:
    """Compare the subject against one reference dump; returns the report dict (see parity.report)."""
    opts = options or CompareOptions()
    for mode in opts.modes:
        if mode not in MODES:
            raise ParityError(f"unknown mode {mode!r}; use isolated, accumulated or both")
    t0 = time.monotonic()
    dump = open_dump(dump_path, verify=opts.verify_checksums)
    if opts.precision is not None and opts.precision != dump.precision:
        raise ParityError(f"{dump_path}: dump precision is {dump.precision} but --precision {opts.precision} was "
                          f"asked; compare it at {dump.precision} or pick a {opts.precision} dump")
    _config_mismatch(dump)
    fam = get_family(dump.family)
    cfg = fam.parse_config(dump.config, source=os.path.join(dump_path, "config.json"))
    pmap = load_probe_map(dump.family)
    specs = [s for s in pmap.probes(fam.num_layers(cfg)) if s.name in set(dump.probes)]
    if opts.probes:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.name, pat) for pat in opts.probes)]
        if not specs:
            raise ParityError(f"{dump_path}: --probes {' '.join(opts.probes)} matches no probe in the dump; use "
                              f"globs over its probe names (e.g. {dump.probes[0] if dump.probes else 'none'}, "
                              f"'hidden_states_*_block')")
    profiles = load_profiles(opts.tolerance_file)
    notes = []
    if dump.stats_only:
        opts, notes = _stats_only_modes(dump, dump_path, opts)
    cfg_dict = cfg.to_dict()
    # everything about the reference is checked before the subject is built, so bad input costs no model run
    expected_shapes = getattr(fam, "expected_state_dict_shapes", None)
    if expected_shapes is not None:  # from the safetensors header: nothing is loaded yet
        wpath = dump.weights_path()
        check_shapes({k: s for k, (_, s) in read_safetensors_header(wpath).items()}, expected_shapes(cfg),
                     source=wpath)
    inputs = fam.normalize_inputs(dump.inputs(), cfg, source=os.path.join(dump_path, "inputs"))
    _check_reference_finite(dump, specs, opts.modes)
    subject = pmap.harness("subject")
    # memory-mapped, and released page by page once checked and once copied into the model: the weights are
    # held once (by the model), not twice
    weights = dump.load_weights(mmap=True)
    check_finite(weights, dump.weights_path())
    progress = Progress(len(specs) * len(opts.modes), f"compare {os.path.basename(os.path.normpath(dump_path))}",
                        enabled=opts.progress)
    evaluator = _Evaluator(dump, specs, profiles, dump.precision, pmap.adapter_params(cfg_dict), progress,
                           shown=opts.shown_metrics)
    model = subject.build_model(cfg_dict, weights, dump.precision, device=opts.device,
                                attention_backend=opts.attention_backend)
    del weights
    patch = opts.subject_patch(model) if opts.subject_patch else contextlib.nullcontext()
    try:
        with patch:
            if "isolated" in opts.modes:
                subject.run_isolated(model, cfg_dict, _reference_getter(dump), inputs, specs,
                                     lambda n, a, _dt=None: evaluator("isolated", n, a))
            if "accumulated" in opts.modes:
                subject.capture(model, inputs, specs, lambda n, a, _dt=None: evaluator("accumulated", n, a))
    finally:
        progress.close()
    partial = len(dump.probes) < len(pmap.probes(fam.num_layers(cfg)))
    not_evaluated = []
    for mode in opts.modes:
        for spec in specs:
            if (mode, spec.name) not in evaluator.results and mode == "isolated" and partial:
                not_evaluated.append({"name": spec.name, "mode": mode, "why": "its teacher-forcing input is missing "
                                      "from this partial reference dump"})
                continue
            if (mode, spec.name) not in evaluator.results:
                tol = profiles.lookup(dump.precision, spec.probe_class, mode)
                evaluator._record(mode, spec, None, tol, False, "absolute",
                                  f"probe {spec.name} ({mode}): the subject never produced it "
                                  f"(ms {spec.ms_path}); check the probe map's ms_capture", shape=())
    probes = [evaluator.results[(mode, s.name)] for mode in MODES if mode in opts.modes for s in specs
              if (mode, s.name) in evaluator.results]
    result = _assemble(dump, dump_path, opts, subject, probes, time.monotonic() - t0, profiles)
    result["not_evaluated"] = not_evaluated
    if dump.stats_only:
        result["comparison"] = "stats-only"
    if notes:
        result["notes"] = notes
    return result


def _check_reference_finite(dump, specs, modes) -> None:
    """NaN/Inf in a reference state is a ReferenceProblem (exit 2, not a subject failure), raised up front."""
    roles = ("state", "state_fp32") if dump.has_fp32_states and "accumulated" in modes else ("state",)
    for spec in specs:
        for role in roles:
            try:
                n_nan, n_inf = dump.nonfinite_counts(spec.name, role)
            except ParityError:
                if role == "state":
                    raise
                continue  # no fp32 shadow for this probe: the relative criterion reports it if it needs one
            if n_nan or n_inf:
                folder = "states" if role == "state" else "states_fp32"
                raise ReferenceProblem(
                    f"{os.path.join(dump.path, folder, spec.name + '.npy')}: reference problem — probe {spec.name} "
                    f"has {n_nan} NaN and {n_inf} Inf value(s) in the reference itself, not in the subject; fix the "
                    f"reference run (low-precision overflow or bad inputs?) and re-create the dump")


def _stats_only_modes(dump, dump_path, opts):
    """A stats-only dump supports accumulated mode only (isolated mode feeds blocks the reference's tensors)."""
    if "accumulated" not in opts.modes:
        raise ParityError(f"{dump_path}: is a stats-only dump (parity dump --stats-only): it has no reference tensors "
                          f"to feed blocks in isolated mode; compare it with --mode accumulated, or re-dump without "
                          f"--stats-only")
    notes = []
    if "isolated" in opts.modes:
        notes.append("isolated mode skipped: a stats-only dump has no reference tensors to teacher-force blocks with")
    notes.append(f"stats-only comparison (weaker than a full one): the dump holds per-probe statistics, not tensors; "
                 f"each probe is judged on its shape, NaN/Inf, {SAMPLE_SIZE} fixed sampled elements (|sub - ref| <= "
                 f"atol + rtol*|ref|) and the bounds that criterion implies for min, max, mean, std, absmax, rms and "
                 f"mean abs; max_abs is over the sample only; see parity/stats.py")
    if dump.precision != "fp32":
        notes.append(f"{dump.precision} stats-only dumps carry no fp32 shadow run: the absolute fallback bounds of the "
                     f"{dump.precision} profile apply instead of the reference-relative criterion")
    return replace(opts, modes=("accumulated",)), notes


def _reference_getter(dump) -> Callable[[str], np.ndarray]:
    """The reference states for teacher forcing; a probe absent from a partial dump is a ``MissingProbe``."""
    present = set(dump.probes)

    def reference(name: str) -> np.ndarray:
        if name not in present:
            raise MissingProbe(f"{dump.path}: the reference dump has no probe {name!r}")
        return dump.state(name)
    return reference


def first_divergence(probes: list[dict]) -> dict | None:
    for mode in MODES:
        for p in probes:
            if p["mode"] == mode and not p["passed"]:
                return {"probe": p["name"], "mode": mode, "torch_path": p["torch_path"], "ms_path": p["ms_path"]}
    return None


def block_table(probes: list[dict]) -> list[dict]:
    blocks: dict[int, dict] = {}
    for p in probes:
        if p.get("block") is None:
            continue
        row = blocks.setdefault(p["block"], {"block": p["block"], "isolated_max_abs": None, "accumulated_max_abs": None,
                                             "growth": None})
        row[f"{p['mode']}_max_abs"] = p["max_abs"]
    for row in blocks.values():
        iso, acc = row["isolated_max_abs"], row["accumulated_max_abs"]
        if iso is not None and acc is not None:
            row["growth"] = acc / iso if iso > 0 else (None if acc > 0 else 1.0)
    return [blocks[k] for k in sorted(blocks)]


def _assemble(dump, dump_path, opts, subject, probes, duration, profiles) -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    versions.update(getattr(subject, "versions", lambda: {})())
    return {
        "schema": REPORT_SCHEMA,
        "case": dump.case or os.path.basename(os.path.normpath(dump_path)),
        "dump": os.path.abspath(dump_path),
        "precision": dump.precision,
        "subject_precision": subject.precision_label(dump.precision, opts.device),
        "device": opts.device,
        "mode": "both" if len(opts.modes) == 2 else opts.modes[0],
        "passed": all(p["passed"] for p in probes),
        "first_divergence": first_divergence(probes),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions,
        "duration_s": round(duration, 3),
        "tolerance_file": profiles.path,
        "tolerance_version": profiles.version,
        "reference_versions": dump.manifest.get("versions", {}),
        "probes": probes,
        "blocks": block_table(probes),
    }
