"""Subject dumps: run the subject where it lives, judge it anywhere.

``record_subject`` (``parity run-subject REF_DUMP --subject … --device … --out SUBJECT_DUMP``) runs a subject
plug-in on a reference dump's inputs — accumulated, and isolated on the reference's own teacher inputs — exactly
as ``parity compare`` would, and writes what the subject produced into a dump of the same format: accumulated
probes as role ``state``, isolated ones as ``state_isolated``, each already in the reference layout (the
subject's adapters applied; masks its overlay compares by meaning are kept as the subject holds them, with their
convention). The manifest records the subject (plug-in, versions, checkout commit, options), device, precision
label, the probes it does not produce and those isolated mode could not feed, and the reference dump it ran on
(path, manifest digest, input digests).

``RecordedSubject`` replays such a dump through the plug-in contract (its own ``capture`` and ``run_step``), so
``parity compare REF --against SUBJECT_DUMP`` runs the same engine, with no framework installed, and gives the
same verdicts, metrics, first divergence and growth table as the in-process compare.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from typing import Any

import numpy as np

from parity.errors import ParityError
from parity.families import get_family
from parity.plugins.contract import FRAMEWORKS, StepNotRun
from parity.probemap import MODES
from parity.runner import ModelRun, resolve_plugin, select_probes
from parity.store import MANIFEST, DumpWriter, open_dump
from parity.weights import check_finite

SIDE_SUBJECT = "subject"
ISOLATED_ROLE = "state_isolated"
ROLE_OF_MODE = {"accumulated": "state", "isolated": ISOLATED_ROLE}


def manifest_digest(dump_path: str) -> str:
    with open(os.path.join(dump_path, MANIFEST), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _input_digests(dump) -> dict:
    return {n: dump.manifest["files"][f"inputs/{n}.npy"]["sha256"] for n in dump.input_names}


def is_subject_dump(dump) -> bool:
    return dump.manifest.get("extra", {}).get("side") == SIDE_SUBJECT


def record_subject(reference_path: str, out: str, opts, force: bool = False) -> dict:
    """Run the subject of ``opts`` (``parity.compare.CompareOptions``: subject, its path and options, device,
    modes, probes) on the reference dump and write a subject dump to ``out``; returns a summary."""
    dump = open_dump(reference_path, verify=opts.verify_checksums)
    if is_subject_dump(dump):
        raise ParityError(f"{reference_path}: is a subject dump; run the subject on the reference dump it was made "
                          f"from")
    if dump.stats_only:
        raise ParityError(f"{reference_path}: is a stats-only dump: its inputs are there but isolated mode has no "
                          f"teacher tensors; run-subject needs a full reference dump")
    fam = get_family(dump.family)
    cfg = fam.parse_config(dump.config, source=os.path.join(reference_path, "config.json"))
    plugin, plugin_options = resolve_plugin(opts.subject, "subject", opts.subject_path, opts.subject_options,
                                            dump.family)
    run = ModelRun(plugin, dump.family, cfg)
    getattr(plugin, "check_device", lambda _d: None)(opts.device)
    probes = select_probes(run.probes, dump, reference_path, opts.probes)
    inputs = fam.normalize_inputs(dump.inputs(), cfg, source=os.path.join(reference_path, "inputs"))
    context = run.context(inputs)
    weights = dump.load_weights(mmap=True)
    check_finite(weights, dump.weights_path())
    described = dict(plugin.describe())
    described["options"] = dict(plugin_options)
    label = plugin.precision_label(dump.precision, opts.device)
    names = {p.name for p in probes}
    views = {p.name: p.subject for p in probes}
    kept_raw = {n: {"convention": v.convention} for n, v in views.items() if v.compare == "meaning"}
    extra = {"side": SIDE_SUBJECT, "subject": described, "device": opts.device, "subject_precision": label,
             "modes": list(opts.modes), "reference_dump": {
                 "path": os.path.abspath(reference_path), "case": dump.case,
                 "manifest_sha256": manifest_digest(reference_path), "inputs_sha256": _input_digests(dump)},
             "compared_by_meaning": kept_raw,
             "not_applicable": [{"name": p.name, "why": p.subject.not_applicable} for p in probes
                                if p.subject.capture is None and p.subject.not_applicable]}
    versions = {"python": platform.python_version(), "numpy": np.__version__, **(described.get("versions") or {})}
    model = run.build(weights, dump.precision, opts.device, plugin_options)
    del weights
    if plugin.describe().get("notes"):  # what the build switched on (e.g. memory machinery)
        described["notes"] = plugin.describe()["notes"]
    with DumpWriter(out, family=dump.family, precision=dump.precision, config=dump.config, seeds={},
                    versions=versions, case=dump.case, producer="parity run-subject", force=force,
                    extra=extra) as writer:
        for name in dump.input_names:
            writer.add_input(name, dump.input(name))

        def record(role: str):
            def on_probe(name: str, array, _dtype: Any = None) -> None:
                if name not in names:
                    return
                arr = np.asarray(array) if name in kept_raw else run.to_reference(name, array, context)
                if arr.dtype.kind == "f" and arr.dtype != np.float32:
                    arr = arr.astype(np.float32)   # exact for the subject's fp16 / emulated-bf16 values
                writer.add_state(name, np.ascontiguousarray(arr), role=role)
            return on_probe

        not_evaluated = []
        with opts.subject_patch(model) if opts.subject_patch else contextlib.nullcontext():
            if "isolated" in opts.modes:
                not_evaluated = run.isolated(inputs, dump.state, record(ISOLATED_ROLE), names=names,
                                             present=set(dump.probes))
            if "accumulated" in opts.modes:
                run.capture(inputs, record("state"), names=names)
        writer.extra["not_evaluated"] = not_evaluated
    del model
    return {"out": out, "subject": plugin.name, "device": opts.device, "precision": label, "modes": list(opts.modes),
            "not_evaluated": len(not_evaluated), "not_applicable": len(extra["not_applicable"])}


class RecordedSubject:
    """A subject dump as a subject plug-in (no framework needed): ``capture`` replays its accumulated probes,
    ``run_step`` its isolated ones; its overlay repeats what the recorded subject's overlay said about masks
    compared by meaning and probes it does not produce. Everything is already in the reference layout."""

    options: dict = {}

    def __init__(self, path: str, reference_path: str, verify: bool = True):
        self.path = path
        self.dump = open_dump(path, verify=verify)
        if not is_subject_dump(self.dump):
            raise ParityError(f"{path}: not a subject dump (made by 'parity run-subject'); pass one with --against, or "
                              f"compare this reference dump directly")
        ex = self.dump.manifest["extra"]
        self.recorded = dict(ex.get("subject") or {})
        self.name = str(self.recorded.get("plugin", "recorded"))
        framework = self.recorded.get("framework")
        self.framework = framework if framework in FRAMEWORKS else "mindspore"
        self.families = (self.dump.family,)
        self.device = str(ex.get("device", "?"))
        self.label = str(ex.get("subject_precision", self.dump.precision))
        self.modes = tuple(m for m in ex.get("modes", ()) if m in MODES)
        self.not_evaluated = {e.get("name"): e.get("why", "") for e in ex.get("not_evaluated") or []
                              if isinstance(e, dict)}
        self._check_made_from(reference_path, ex.get("reference_dump") or {})
        self._meaning = dict(ex.get("compared_by_meaning") or {})
        self._not_applicable = {e["name"]: e["why"] for e in ex.get("not_applicable") or []
                                if isinstance(e, dict) and isinstance(e.get("name"), str)}
        self._roles = {(e["role"], e["name"]) for e in self.dump.manifest["files"].values()}

    def _check_made_from(self, reference_path: str, made_from: dict) -> None:
        ref = open_dump(reference_path, verify=False)
        ours = _input_digests(ref)
        if made_from.get("inputs_sha256") != ours:
            raise ParityError(f"{self.path}: was made from other inputs than the reference dump {reference_path} "
                              f"(input digests differ); run the subject on this reference dump (parity run-subject)")
        if made_from.get("manifest_sha256") != manifest_digest(reference_path):
            raise ParityError(f"{self.path}: was made from another reference dump than {reference_path} (its manifest "
                              f"digest differs: re-created or changed since); run the subject on this one again")

    def describe(self) -> dict:
        return {**self.recorded, "recorded_in": os.path.abspath(self.path)}

    def overlay(self, family: str, config: dict):
        probes: dict = {n: {"compare": "meaning", "convention": v.get("convention")}
                        for n, v in self._meaning.items()}
        probes.update({n: {"not_applicable": why} for n, why in self._not_applicable.items()})
        return {"family": family, "version": 1, "description": f"recorded by parity run-subject ({self.name})",
                "probes": probes}

    def build(self, request):
        return self.dump

    def capture_root(self, model):
        return model

    def forward(self, model, family, inputs):  # pragma: no cover - capture() replays instead
        raise ParityError(f"{self.path}: a recorded subject cannot run a forward")

    def precision_label(self, precision: str, device: str) -> str:
        return self.label

    def capture(self, model, family, inputs, items, on_probe, mode="accumulated") -> None:
        """Replay the probes the subject produced in ``mode`` (isolated: the plain probes of its forward on the
        reference inputs). A probe it did not record is simply not reported (the engine says so)."""
        if mode not in self.modes:
            raise ParityError(f"{self.path}: the subject dump holds no {mode}-mode probes (it was made with --mode "
                              f"{' '.join(self.modes)}); compare with --mode {' '.join(self.modes)}")
        role = ROLE_OF_MODE[mode]
        for item in items:
            if (role, item.name) in self._roles:
                on_probe(item.name, self.dump.state(item.name, role=role), "float32")

    def run_step(self, model, step, teacher):
        if (ISOLATED_ROLE, step.probe) not in self._roles:
            raise StepNotRun(self.not_evaluated.get(step.probe) or "the subject dump has no isolated result for it")
        return self.dump.state(step.probe, role=ISOLATED_ROLE)
