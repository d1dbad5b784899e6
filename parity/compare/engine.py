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
import os
import platform
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from parity.compare.criteria import Evaluator
from parity.compare.divergence import block_table, first_divergence
from parity.errors import ParityError, ReferenceProblem
from parity.families import get_family
from parity.probemap import MODES, PROBE_CLASSES
from parity.progress import Progress
from parity.report.schema import SCHEMA as REPORT_SCHEMA
from parity.runner import ModelRun, resolve_plugin, select_probes
from parity.stats import SAMPLE_SIZE
from parity.store import open_dump
from parity.tolerances import family_path, load_profiles
from parity.weights import check_finite, check_shapes

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


def resolve_subject(opts: CompareOptions, reference_path: str | None = None, family: str | None = None):
    """The subject plug-in (wrapped for ``family`` when that family runs it inside itself, e.g. a denoiser in the
    pipeline family's loop) and its checked options (with ``against``: the recorded subject of that dump)."""
    if opts.against is not None:
        from parity.subject_dump import RecordedSubject

        if opts.subject is not None or opts.subject_options:
            raise ParityError(f"--against {opts.against}: the subject was recorded there; drop --subject and "
                              f"--subject-option")
        return RecordedSubject(opts.against, reference_path, verify=opts.verify_checksums), {}
    return resolve_plugin(opts.subject, "subject", opts.subject_path, opts.subject_options, family)


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
    probes = select_probes(run.probes, dump, dump_path, opts.probes)
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
    evaluator = Evaluator(dump, probes, profiles, dump.precision, context, run.adapters, progress,
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
