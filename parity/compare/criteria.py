"""Judging one probe: the tolerance profile's criterion (absolute, reference-relative for low precision, by meaning
for masks in another convention, statistics for a stats-only dump), the metrics kept and the failure message."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from parity.adapters import compare_mask_meaning, get_adapter
from parity.metrics import compute_metrics, mismatch_message
from parity.probemap import Probe
from parity.report.schema import ProbeResult
from parity.safetensors_io import release_pages
from parity.stats import check as stats_check, subject_stats
from parity.tolerances import relative_passed

REFERENCE_MASK_CONVENTION = "bias"   # the reference's masks are the model's additive biases


def _finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


class Evaluator:
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
