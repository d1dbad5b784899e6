"""The comparison engine: a reference dump and a subject plug-in in, a per-probe verdict out.

Two modes, both reported:
- isolated: the subject runs each step of the family's teacher plan (every block, the output head) on the
  reference's own inputs to it and the reference's conditioning, so a probe's error is that layer's local error;
- accumulated: the subject runs freely from the reference inputs and every probe is compared.

The subject is any plug-in (``parity.plugins``): its overlay says where each probe lives in its model and how
its layout maps to the reference's; the family's teacher plan says which reference probes feed which step.
Probes are compared as the subject produces them, against the memory-mapped reference, and only their metrics
are kept (peak memory: the model plus a few states). The first divergence is the earliest failing probe in the
family's data-flow order in isolated mode, or, if none fails there, in accumulated mode.

For bf16/fp16 dumps the accumulated verdict is reference-relative: the subject's error against the torch
fp32 run may be at most k x the torch low-precision run's own error against it, plus a floor.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import platform
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from parity.adapters import compare_mask_meaning, get_adapter
from parity.errors import ParityError, ReferenceProblem
from parity.families import get_family
from parity.metrics import compute_metrics, mismatch_message
from parity.plugins import load_plugin, parse_options
from parity.plugins.contract import StepNotRun
from parity.probemap import MODES, PROBE_CLASSES, Probe, capture_items
from parity.progress import Progress
from parity.report.schema import SCHEMA as REPORT_SCHEMA, BlockRow, FirstDivergence, ProbeResult
from parity.runner import ModelRun, capture_run
from parity.safetensors_io import release_pages
from parity.stats import SAMPLE_SIZE, check as stats_check, subject_stats
from parity.store import open_dump
from parity.tolerances import family_path, load_profiles, relative_passed
from parity.weights import check_finite, check_shapes

REFERENCE_MASK_CONVENTION = "bias"   # the reference's masks are the model's additive biases


@dataclass
class CompareOptions:
    modes: tuple = MODES
    device: str = "CPU"
    precision: str | None = None
    probes: list | None = None            # glob patterns; None = every probe in the dump
    tolerance_file: str | None = None
    subject: Any = None                   # plug-in name, "module:attr", or a plug-in object; None = ms_impl
    subject_path: str | None = None       # a checkout holding the subject's code (--subject-path)
    subject_options: list | dict | None = None   # KEY=VALUE strings (CLI) or a dict
    subject_patch: Callable[[Any], Any] | None = None   # model -> context manager (deliberately wrong variants)
    against: str | None = None            # a subject dump (parity run-subject) to judge instead of running a subject
    progress: bool = True
    shown_metrics: bool = True   # p99_abs and max_rel of passing probes too (a second pass each); else None
    verify_checksums: bool = True
    extra: dict = field(default_factory=dict)


def _finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def resolve_subject(opts: CompareOptions, reference_path: str | None = None, family: str | None = None):
    """The subject plug-in (wrapped for ``family`` when that family runs it inside itself, e.g. a denoiser in the
    pipeline family's loop) and its checked options (with ``against``: the recorded subject of that dump)."""
    if opts.against is not None:
        from parity.subject_dump import RecordedSubject

        if opts.subject is not None or opts.subject_options:
            raise ParityError(f"--against {opts.against}: the subject was recorded there; drop --subject and "
                              f"--subject-option")
        return RecordedSubject(opts.against, reference_path, verify=opts.verify_checksums), {}
    plugin = opts.subject if opts.subject is not None and not isinstance(opts.subject, str) else \
        load_plugin(opts.subject, "subject", opts.subject_path)
    from parity.dumping import wrap_for_family
    plugin = wrap_for_family(plugin, family, "subject")
    if isinstance(opts.subject_options, dict):
        options = parse_options([f"{k}={v}" for k, v in opts.subject_options.items()], plugin, "--subject-option")
    else:
        options = parse_options(opts.subject_options, plugin, "--subject-option")
    return plugin, options


class _Evaluator:
    """Compares one probe at a time and keeps only the verdict and metrics."""

    def __init__(self, dump, probes: list[Probe], profiles, precision, context, adapters, progress, shown=True,
                 atol_scale: Callable[[str], float] | None = None):
        self.dump = dump
        self.shown = shown
        self.atol_scale = atol_scale
        self.probes = {p.name: p for p in probes}
        self.profiles = profiles
        self.precision = precision
        self.context = context
        self.adapters = adapters
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

    def __call__(self, mode: str, name: str, array) -> None:
        probe = self.probes.get(name)
        if probe is None or (mode, name) in self.results:
            return
        view = probe.subject
        array = np.asarray(array)
        if view.compare == "meaning":
            self._meaning_probe(mode, probe, array)
            return
        sub = get_adapter(view.adapter, self.adapters).to_reference(array, **self.context)
        if self.dump.stats_only:
            self._stats_probe(mode, probe, sub)
            return
        ref = self._reference(name)
        try:
            self._judge(mode, probe, sub, ref)
        finally:  # the reference's pages were only needed for this probe: out of RSS again (the file keeps them)
            release_pages(ref)

    def _judge(self, mode: str, probe: Probe, sub: np.ndarray, ref: np.ndarray) -> None:
        name = probe.name
        tol = self.profiles.lookup(self.precision, probe.probe_class, mode)
        if self.atol_scale is not None:   # a family's units (pipeline latents: model-input units)
            tol = replace(tol, atol=tol.atol * self.atol_scale(name))
        use_relative = (tol.relative is not None and mode == "accumulated" and self.dump.has_fp32_states
                        and probe.probe_class not in ("input", "mask"))
        if tuple(sub.shape) != tuple(ref.shape):
            self._record(mode, probe, None, tol, False, "absolute",
                         f"probe {name} ({mode}): subject shape {tuple(sub.shape)} vs reference {tuple(ref.shape)} "
                         f"(subject {probe.subject_path}, adapter {probe.subject.adapter})", shape=ref.shape)
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
                   f"= {bound:.3g} (profile {self.precision}/{probe.probe_class}/{mode}, relative); "
                   f"nan={metrics.nan_sub} inf={metrics.inf_sub}")
        else:
            metrics = compute_metrics(ref, sub, atol=tol.atol, rtol=tol.rtol, name=name, shown=self.shown)
            finite = metrics.nan_sub == 0 and metrics.inf_sub == 0
            passed = bool(finite and metrics.n_outside == 0)
            if not passed and not self.shown:  # a failing probe is always shown in full
                metrics = compute_metrics(ref, sub, atol=tol.atol, rtol=tol.rtol, name=name)
            atol, rtol, criterion = tol.atol, tol.rtol, "absolute"
            msg = "" if passed else mismatch_message(
                metrics, context=f"profile {self.precision}/{probe.probe_class}/{mode}",
                where=f"reference: {probe.reference_path} | subject: {probe.subject_path}")
        self._record(mode, probe, metrics, tol, passed, criterion, msg, atol=atol, rtol=rtol, lowp=lowp)

    def _meaning_probe(self, mode: str, probe: Probe, sub: np.ndarray) -> None:
        """A mask in another convention: compared by which keys each query may attend (and padding)."""
        tol = self.profiles.lookup(self.precision, probe.probe_class, mode)
        if self.dump.stats_only:
            self._record(mode, probe, None, tol, False, "meaning",
                         f"probe {probe.name} ({mode}): a stats-only dump cannot be compared by meaning; re-dump "
                         f"without --stats-only", shape=())
            return
        ref = np.asarray(self._reference(probe.name))
        v = compare_mask_meaning(ref, sub, REFERENCE_MASK_CONVENTION, probe.subject.convention)
        release_pages(ref)
        message = "" if v.passed else (f"probe {probe.name} ({mode}, compared by meaning: {v.checked}): {v.message}"
                                       f"\nreference: {probe.reference_path} | subject: {probe.subject_path}")
        extra = {"compared_by": f"meaning: {v.checked}; subject convention {probe.subject.convention!r}",
                 "frac_outside": (v.n_mismatch / v.n) if v.n else None}
        self._record(mode, probe, None, tol, v.passed, "meaning", message, shape=ref.shape, extra=extra)

    def _stats_probe(self, mode: str, probe: Probe, sub: np.ndarray) -> None:
        """Stats-only dump: judge the subject's statistics and sample (parity.stats.check)."""
        ref = self.dump.stats(probe.name)
        tol = self.profiles.lookup(self.precision, probe.probe_class, mode)
        got = subject_stats(sub, ref, where=f"probe {probe.name} (subject)")
        v = stats_check(ref, got, tol.atol, tol.rtol)
        msg = "" if v["passed"] else (
            f"probe {probe.name} ({mode}, stats-only comparison, profile {self.precision}/{probe.probe_class}/{mode} "
            f"atol={tol.atol:g} rtol={tol.rtol:g}): " + "; ".join(v["failures"][:4])
            + f"\nreference: {probe.reference_path} | subject: {probe.subject_path}")
        extra = {"shape": list(ref["shape"]), "max_abs": _finite_or_none(v["sample_max_abs"]),
                 "nan_ref": int(ref["nan"]), "inf_ref": int(ref["inf"]), "nan_sub": int(got["nan"]),
                 "inf_sub": int(got["inf"]),
                 "stats": {"bit_identical": v["bit_identical"], "sample_n": v["sample_n"],
                           "sample_outside": v["sample_outside"], "worst_statistic": v["worst"],
                           "worst_ratio": _finite_or_none(v["worst_ratio"])}}
        self._record(mode, probe, None, tol, v["passed"], "stats", msg, shape=ref["shape"], extra=extra)

    def _record(self, mode, probe: Probe, metrics, tol, passed, criterion, message, *, atol=None, rtol=None,
                lowp=None, shape=None, extra=None):
        m = metrics.to_dict() if metrics is not None else {}
        values = {
            "name": probe.name, "mode": mode, "probe_class": probe.probe_class, "block": probe.block,
            "shape": list(m.get("shape", shape or ())),
            **{k: _finite_or_none(m.get(k)) for k in ("max_abs", "mean_abs", "max_rel", "cosine", "rel_fro",
                                                      "p99_abs", "frac_outside", "min_passing_atol")},
            **{k: int(m.get(k, 0)) for k in ("nan_ref", "nan_sub", "inf_ref", "inf_sub")},
            "atol": float(tol.atol if atol is None else atol), "rtol": float(tol.rtol if rtol is None else rtol),
            "criterion": criterion, "lowp_ref_max_abs": _finite_or_none(lowp), "baseline_max_abs": None,
            "passed": bool(passed), "message": message, "reference_path": probe.reference_path,
            "subject_path": probe.subject_path,
        }
        if metrics is not None and not np.isfinite(m.get("max_abs", 0.0)):
            values["max_abs"] = None
        if extra:
            values.update(extra)
        self.results[(mode, probe.name)] = ProbeResult.make(values).to_dict()
        if self.progress is not None:
            self.progress.update(1, f"{mode} {probe.name}")


def _select(probes: list[Probe], dump, dump_path: str, patterns) -> list[Probe]:
    present = set(dump.probes)
    selected = [p for p in probes if p.name in present]
    if patterns:
        selected = [p for p in selected if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
        if not selected:
            raise ParityError(f"{dump_path}: --probes {' '.join(patterns)} matches no probe in the dump; use "
                              f"globs over its probe names (e.g. {dump.probes[0] if dump.probes else 'none'}, "
                              f"'hidden_states_*_block')")
    return selected


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
    if dump.manifest.get("extra", {}).get("side") == "subject":
        raise ParityError(f"{dump_path}: is a subject dump (parity run-subject); compare the reference dump it was made "
                          f"from with --against {dump_path}")
    fam = get_family(dump.family, source=dump.manifest_path)
    cfg = fam.parse_config(dump.config, source=os.path.join(dump_path, "config.json"))
    plugin, plugin_options = resolve_subject(opts, dump_path, dump.family)
    if opts.against is not None:
        missing = [m for m in opts.modes if m not in plugin.modes]
        if missing:
            raise ParityError(f"{opts.against}: the subject dump was made with --mode {' '.join(plugin.modes)}, not "
                              f"{' '.join(missing)}; compare with --mode {' '.join(plugin.modes)} or record it again")
        opts = replace(opts, device=plugin.device)
    run = ModelRun(plugin, dump.family, cfg)
    getattr(plugin, "check_device", lambda _d: None)(opts.device)
    probes = _select(run.probes, dump, dump_path, opts.probes)
    profiles = load_profiles(opts.tolerance_file or family_path(dump.family),
                             classes=getattr(fam, "PROBE_CLASSES", PROBE_CLASSES))
    notes = []
    if dump.stats_only:
        opts, notes = _stats_only_modes(dump, dump_path, opts)
    # everything about the reference is checked before the subject is built, so bad input costs no model run
    expected_shapes = getattr(fam, "expected_state_dict_shapes", None)
    if expected_shapes is not None:  # from the safetensors header: nothing is loaded yet
        wpath = dump.weights_path()
        check_shapes({k: s for k, (_, s) in dump.weights_header().items()}, expected_shapes(cfg),
                     source=wpath)
    inputs = fam.normalize_inputs(dump.inputs(), cfg, source=os.path.join(dump_path, "inputs"))
    _check_reference_finite(dump, probes, opts.modes)
    if hasattr(fam, "check_run"):
        fam.check_run(cfg, inputs, dump, dump.precision, source=dump.manifest_path)
    context = run.context(inputs)
    plan = run.plan(inputs)
    # memory-mapped, and released page by page once checked and once copied into the model: the weights are
    # held once (by the model), not twice
    weights = dump.load_weights(mmap=True)
    check_finite(weights, dump.weights_path())
    produced = [p for p in probes if p.subject.capture is not None or (p.name in plan and "isolated" in opts.modes)]
    progress = Progress(len(produced) * len(opts.modes), f"compare {os.path.basename(os.path.normpath(dump_path))}",
                        enabled=opts.progress)
    scale = getattr(fam, "atol_scale", None)
    evaluator = _Evaluator(dump, probes, profiles, dump.precision, context, run.adapters, progress,
                           shown=opts.shown_metrics,
                           atol_scale=None if scale is None else (lambda name: scale(cfg, name)))
    model = run.build(weights, dump.precision, opts.device, plugin_options)
    del weights
    not_evaluated: list[dict] = []
    patch = opts.subject_patch(model) if opts.subject_patch else contextlib.nullcontext()
    try:
        with patch:
            if "isolated" in opts.modes:
                not_evaluated += run.isolated(inputs, dump.state, lambda n, a: evaluator("isolated", n, a),
                                              names={p.name for p in probes}, present=set(dump.probes))
            if "accumulated" in opts.modes:
                run.capture(inputs, lambda n, a, _dt=None: evaluator("accumulated", n, a),
                            names={p.name for p in probes})
    finally:
        progress.close()
    not_applicable = [{"name": p.name, "why": p.subject.not_applicable} for p in probes
                      if p.subject.capture is None and p.subject.not_applicable]
    skipped = {(e["mode"], e["name"]) for e in not_evaluated} | {
        (m, e["name"]) for e in not_applicable for m in opts.modes
        if not (m == "isolated" and e["name"] in plan)}
    for mode in opts.modes:
        for p in probes:
            if (mode, p.name) not in evaluator.results and (mode, p.name) not in skipped:
                tol = profiles.lookup(dump.precision, p.probe_class, mode)
                evaluator._record(mode, p, None, tol, False, "absolute",
                                  f"probe {p.name} ({mode}): the subject never produced it (subject "
                                  f"{p.subject_path}); check the subject overlay's capture for it", shape=())
    ordered = [evaluator.results[(mode, p.name)] for mode in MODES if mode in opts.modes for p in probes
               if (mode, p.name) in evaluator.results]
    result = _assemble(dump, dump_path, opts, plugin, plugin_options, ordered, time.monotonic() - t0, profiles)
    result["not_evaluated"] = not_evaluated
    result["not_applicable"] = not_applicable
    if hasattr(fam, "summarize"):   # e.g. the pipeline family's per-step table (it replaces the block table)
        result["steps"] = fam.summarize(cfg, ordered)
        result["blocks"] = []
    if dump.stats_only:
        result["comparison"] = "stats-only"
    notes += _missing_reference_notes(dump)
    notes += [f"{side}: {n}" for side in ("subject", "reference") for n in (result[side].get("notes") or [])]
    if notes:
        result["notes"] = notes
    return result


def run_isolated(plugin, model, family: str, inputs: dict, probes: list[Probe], views: dict, plan: dict,
                 context: dict, reference: Callable[[str], np.ndarray], present: set, on_probe,
                 adapters: dict | None = None) -> list[dict]:
    """Teacher forcing. Plain probes (inputs, masks, embeddings) come from a forward on the reference inputs;
    every probe of ``plan`` (the family's ``teacher_plan``, by probe) from the subject's ``run_step`` on the
    reference's own inputs to it (``reference(name)``, reference layout), each converted to the subject's layout
    by the subject's adapter for that probe (``views``: probe name -> the subject's ``SideView``). Results go to
    ``on_probe(name, array)``; returns what could not be evaluated, with the reason."""
    plain = [p for p in probes if p.name not in plan]
    items = capture_items(plain, "subject")
    if items:
        capture_run(plugin, model, family, inputs, items, lambda n, a, _dt=None: on_probe(n, a), mode="isolated")
    steps = [plan[p.name] for p in probes if p.name in plan]
    run_step = getattr(plugin, "run_step", None)
    if steps and run_step is None:
        return [{"name": s.probe, "mode": "isolated", "why": f"the subject plug-in {plugin.name} has no run_step "
                 f"(isolated mode needs it)"} for s in steps]
    skipped = []
    for step in steps:
        missing = list(dict.fromkeys(p for p in step.inputs.values() if p not in present))
        if missing:
            what = (f"its teacher input {missing[0]} is" if len(missing) == 1
                    else f"its teacher inputs {', '.join(missing)} are")
            skipped.append({"name": step.probe, "mode": "isolated", "why": f"{what} not in the reference dump"})
            continue
        teacher = {}
        for role, source in step.inputs.items():
            view = views.get(source)
            if view is None:
                raise ParityError(f"family {family}: the teacher plan feeds {step.probe} from {source!r}, which is "
                                  f"not a probe of the family; fix the family's teacher_plan")
            arr = np.asarray(reference(source), dtype=np.float32)
            adapter = get_adapter(view.adapter if view.compare == "values" else "identity", adapters)
            teacher[role] = np.ascontiguousarray(adapter.from_reference(arr, **context), dtype=np.float32)
        try:
            out = run_step(model, step, teacher)
        except StepNotRun as exc:
            skipped.append({"name": step.probe, "mode": "isolated", "why": str(exc)})
            continue
        on_probe(step.probe, out)
    return skipped


def _missing_reference_notes(dump) -> list[str]:
    """A dump ingested from another tool's format (msprobe) says which probes it could not provide and how to get
    them; the report repeats it, grouped by fix."""
    groups: dict = {}
    for m in dump.manifest.get("extra", {}).get("missing_reasons") or []:
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            groups.setdefault((str(m.get("reason", "")), str(m.get("fix", ""))), []).append(m["name"])
    return [f"the reference dump lacks {', '.join(names)}: {reason}; to get {'it' if len(names) == 1 else 'them'}: "
            f"{fix}" for (reason, fix), names in groups.items()]


def _check_reference_finite(dump, probes, modes) -> None:
    """NaN/Inf in a reference state is a ReferenceProblem (exit 2, not a subject failure), raised up front."""
    roles = ("state", "state_fp32") if dump.has_fp32_states and "accumulated" in modes else ("state",)
    for p in probes:
        for role in roles:
            try:
                n_nan, n_inf = dump.nonfinite_counts(p.name, role)
            except ParityError:
                if role == "state":
                    raise
                continue  # no fp32 shadow for this probe: the relative criterion reports it if it needs one
            if n_nan or n_inf:
                folder = "states" if role == "state" else "states_fp32"
                raise ReferenceProblem(
                    f"{os.path.join(dump.path, folder, p.name + '.npy')}: reference problem — probe {p.name} "
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


def _assemble(dump, dump_path, opts, plugin, plugin_options, probes, duration, profiles) -> dict:
    described = dict(plugin.describe())
    described["options"] = dict(plugin_options)
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    versions.update(described.get("versions") or {})
    return {
        "schema": REPORT_SCHEMA,
        "case": dump.case or os.path.basename(os.path.normpath(dump_path)),
        "dump": os.path.abspath(dump_path),
        "family": dump.family,
        "precision": dump.precision,
        "subject_precision": plugin.precision_label(dump.precision, opts.device),
        "device": opts.device,
        "mode": "both" if len(opts.modes) == 2 else opts.modes[0],
        "passed": all(p["passed"] for p in probes),
        "first_divergence": first_divergence(probes),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions,
        "subject": described,
        "reference": dump.manifest.get("extra", {}).get("reference") or {"versions": dump.manifest.get("versions", {})},
        "duration_s": round(duration, 3),
        "tolerance_file": profiles.path,
        "tolerance_version": profiles.version,
        "reference_versions": dump.manifest.get("versions", {}),
        "probes": probes,
        "blocks": block_table(probes),
    }
