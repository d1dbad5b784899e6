"""msprobe dumps in: map an msprobe dump to the family's probes and write a parity dump.

The family's probe map says where each probe is captured (``capture``: module path, ``take`` input/output,
``arg``, ``select``, or a ``method``). An msprobe L0 dump records module *forward calls* only, so:

* a probe captured at a module call is found in the call's record: its output (``select`` indexes the list of
  returned values), or its input ``arg`` — from ``input_kwargs`` by name, or from the positional ``input_args`` by
  the index of ``arg`` in the family's forward signature for the class the dump names
  (``family.forward_signatures()``: dump.json names positional arguments by index only, and the family is what
  knows upstream's signatures without importing a framework);
* a probe captured at a method or static function is never in an msprobe dump (msprobe hooks module forwards and
  framework API calls, nothing else): it is reported missing, with the reason and what to do;
* the module passed to ``PrecisionDebugger.start()`` is not dumped itself; the engineer wraps the model, so its
  calls appear under the wrapper's attribute (``Module.model.<path>…``). The prefix is found from the dump: the one
  under which most of the probe map's module paths exist.

A dump of the reference side is read through the family's probe map; one of the subject side (a MindSpore dump)
through the subject plug-in's overlay (its captures and adapters, ``--subject``, default ``ms_impl``); ``load``
returns every probe in the reference layout.
"""

from __future__ import annotations

import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from parity.errors import ParityError
from parity.families import DEFAULT_FAMILY, get_family
from parity.ingest.msprobe_dump import ModuleCall, MsprobeDump, open_msprobe_dump
from parity.probemap import CaptureSpec, load_probe_map

SIDE_OF_FRAMEWORK = {"pytorch": "reference", "mindspore": "subject"}
_FROM_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
_CONFIG = "msprobe's config.json"
_NO_METHODS = ("msprobe dumps module forwards (L0) and framework API calls (L1) only, never other methods, so no "
               "msprobe configuration reaches it")


@dataclass(frozen=True)
class MissingProbe:
    name: str
    reason: str
    fix: str


@dataclass(frozen=True)
class UnfedStep:
    probe: str
    needs: tuple


@dataclass
class MsprobeMapping:
    """What an msprobe dump provides: ``found`` probe -> tensor, ``missing`` with reasons and fixes."""

    dump: MsprobeDump
    side: str
    prefix: str
    found: dict = field(default_factory=dict)          # probe -> (TensorRef, adapter)
    missing: list = field(default_factory=list)        # MissingProbe, in probe order
    order: list = field(default_factory=list)          # every probe name, data-flow order

    def load(self, probe: str, adapter_context: Mapping | None = None) -> tuple[np.ndarray, str]:
        """The probe's array in the reference layout and its dtype name (bfloat16 as exact float32)."""
        from parity.adapters import get_adapter

        ref, adapter = self.found[probe]
        arr, dtype = self.dump.load(ref)
        if adapter != "identity":
            arr = np.ascontiguousarray(get_adapter(adapter).to_reference(arr, **dict(adapter_context or {})))
        return arr, dtype


# ---- the probe map, as data ----------------------------------------------------------------------------------
def read_probe_rules(family: str, num_layers: int, side: str = "reference", overlay=None) -> list:
    """The family's probes (``parity.probemap.Probe``), ``{i}`` templates expanded, in data-flow order, seen from
    ``side`` (its ``SideView``: capture, adapter, not_applicable), ``overlay`` (that side's plug-in overlay)
    applied."""
    return load_probe_map(family).resolve(num_layers, **{side: overlay})


# ---- mapping ---------------------------------------------------------------------------------------------------
def find_prefix(dump: MsprobeDump, module_paths: list[str]) -> str:
    """The path prefix under which the probe map's module paths appear in the dump ("" when the model itself was
    passed to start(); "model." when a wrapper holding it as ``self.model`` was)."""
    votes: Counter = Counter()
    for mp in set(module_paths):
        for path in dump.calls:
            if path == mp:
                votes[""] += 1
            elif path.endswith("." + mp):
                votes[path[: -len(mp)]] += 1
    if votes:
        return max(votes.items(), key=lambda kv: (kv[1], -len(kv[0])))[0]
    tops = [p for p in dump.calls if "." not in p]
    return tops[0] + "." if len(tops) == 1 else ""


def _as_value(desc) -> Any:
    """A non-tensor argument's value as dump.json records it ({"type": "int", "value": 3})."""
    if isinstance(desc, dict) and "value" in desc:
        return desc["value"]
    return desc


def _argument(call: ModuleCall, arg: str, signatures: Mapping) -> tuple[Any, str | None]:
    """(the recorded argument, None) or (None, why it cannot be found)."""
    kwargs = call.record.get("input_kwargs")
    if isinstance(kwargs, dict) and arg in kwargs:
        return kwargs[arg], None
    args = call.record.get("input_args")
    args = args if isinstance(args, list) else []
    sig = signatures.get(call.cls)
    if sig is None:
        return None, (f"{call.name} has {len(args)} positional input(s), named by index only, and the family gives "
                      f"no forward signature for {call.cls} to find {arg!r} among them")
    if arg not in sig:
        return None, f"{arg!r} is not an argument of {call.cls}.forward per the family's signature"
    idx = sig.index(arg)
    if idx >= len(args):
        return None, f"{call.name} was called without {arg!r} (not passed, or passed as None)"
    return args[idx], None


def _select(value, steps: tuple) -> tuple[Any, str | None]:
    for step in steps:
        if isinstance(value, list) and isinstance(step, int) and not isinstance(step, bool) and -len(value) <= step < len(value):
            value = value[step]
        elif isinstance(value, dict) and str(step) in value:
            value = value[str(step)]
        else:
            return None, f"select {list(steps)} does not exist in the recorded value"
    return value, None


def _pick(call: ModuleCall, cap: CaptureSpec, signatures: Mapping) -> tuple[Any, str | None]:
    for key, want in cap.where.items():
        got, why = _argument(call, key, signatures)
        if why or _as_value(got) != want:
            return None, "where"
    if cap.take == "input":
        value, why = _argument(call, cap.arg, signatures)
        if why:
            return None, why
        return _select(value, cap.select)
    out = call.record.get("output")
    if not isinstance(out, list) or not out:
        return None, f"{call.name} has no recorded output"
    if not cap.select:
        if len(out) != 1:
            return None, f"{call.name} returned {len(out)} values and the capture selects none"
        return out[0], None
    return _select(out, cap.select)


def _list_entry(dump: MsprobeDump, prefix: str, cap: CaptureSpec, template: str, rules_found: dict) -> str:
    """The msprobe "list" entry that would dump this probe's module (msprobe matches list entries as substrings of
    its names): the full call name when a sibling of the same template tells the class."""
    path = prefix + cap.module
    for other in rules_found.get(template, ()):
        calls = dump.calls.get(prefix + other.module)
        if calls:
            return f"{dump.kind}.{path}.{calls[0].cls}.forward"
    return f"{path}."


def map_probes(dump: MsprobeDump, rules: list, signatures: Mapping, side: str) -> MsprobeMapping:
    """Find each probe of ``rules`` (``parity.probemap.Probe``s) in ``dump`` as ``side`` holds it; what is not found
    is listed with its reason and fix."""
    views = [(r, getattr(r, side)) for r in rules]
    prefix = find_prefix(dump, [v.capture.module for _, v in views
                                if v.capture and v.capture.module and not v.capture.method])
    root = prefix[:-1] if prefix else None
    mapping = MsprobeMapping(dump, side, prefix, order=[r.name for r in rules])
    by_template: dict[str, list[CaptureSpec]] = {}
    for r, v in views:
        if v.capture is not None:
            by_template.setdefault(r.template, []).append(v.capture)
    for rule, view in views:
        miss = _locate(dump, rule, view, prefix, root, signatures, by_template, mapping)
        if miss is not None:
            mapping.missing.append(miss)
    return mapping


def _locate(dump, rule, view, prefix, root, signatures, by_template, mapping) -> MissingProbe | None:
    cap = view.capture
    level_fix = (f'set "level": "L0" (or "mix") in {_CONFIG}: level {dump.level!r} records no module calls')
    if cap is None:
        return MissingProbe(rule.name, f"the {mapping.side} does not produce it ({view.not_applicable})", "none needed")
    if cap.method:
        owner = f"module {cap.module!r}" if cap.module else "the root model"
        what = "static function" if cap.static else "method"
        return MissingProbe(rule.name, f"captured inside the {what} {cap.method} of {owner}, not at a module forward; "
                            f"{_NO_METHODS}", "dump this probe with 'parity dump' (its hooks wrap methods)")
    if dump.level not in ("L0", "mix"):
        return MissingProbe(rule.name, f"the dump is level {dump.level!r}", level_fix)
    if not cap.module and root is None:
        return MissingProbe(rule.name, "captured at the model's own forward, which msprobe never dumps for the module "
                            "passed to PrecisionDebugger.start()",
                            "pass a wrapper module whose forward calls the model to start() (see docs/msprobe.md)")
    path = prefix + cap.module if cap.module else root
    calls = dump.calls.get(path)
    if not calls:
        entry = (f'"{dump.kind}.{root}.<model class>.forward"' if not cap.module
                 else f'"{_list_entry(dump, prefix, cap, rule.template, by_template)}"')
        return MissingProbe(rule.name, f"module {path!r} is not in the dump",
                            f'add {entry} to the "list" of the "tensor" section of {_CONFIG} (or widen its "scope")')
    why = "where"
    for call in calls:
        value, why = _pick(call, cap, signatures)
        if why == "where":
            continue
        if why:
            return MissingProbe(rule.name, why, "none in msprobe's config: the family's forward signatures or the "
                                "probe map need this argument")
        ref = dump.tensor_ref(value, f"{call.name} {cap.take}{'' if cap.arg is None else ' ' + cap.arg}"
                                     f"{list(cap.select) if cap.select else ''}")
        if ref is None:
            return MissingProbe(rule.name, f"{call.name} recorded no tensor there ({str(value)[:40]})",
                                "none: the model did not pass a tensor")
        if ref.file is None:
            return MissingProbe(rule.name, f"{call.name} has statistics but no saved tensor for it",
                                f'set "task": "tensor" and "data_mode": ["all"] in {_CONFIG}')
        mapping.found[rule.name] = (ref, view.adapter)
        return None
    return MissingProbe(rule.name, f"no call of {path!r} matches {cap.where}", "none: the model never made that call")


# ---- isolated mode ---------------------------------------------------------------------------------------------
def unfed_steps(plan, available: set) -> list[UnfedStep]:
    """Steps of a teacher plan (``TeacherStep``-like: ``probe``, ``inputs``) whose teacher inputs are not all
    ``available``."""
    out = []
    for step in plan:
        needs = tuple(p for p in dict.fromkeys(step.inputs.values()) if p not in available)
        if needs:
            out.append(UnfedStep(step.probe, needs))
    return out


# ---- writing a parity dump -------------------------------------------------------------------------------------
def _precision_of(mapping: MsprobeMapping, rules: list) -> str:
    for rule in rules:
        if rule.probe_class in ("block", "output", "embedding") and rule.name in mapping.found:
            dtype = mapping.found[rule.name][0].dtype
            if dtype in _FROM_DTYPE:
                return _FROM_DTYPE[dtype]
    return "fp32"


def ingest_msprobe(msprobe_dir: str, *, out: str, config: dict, weights_path: str, precision: str | None = None,
                   force: bool = False, family: str = DEFAULT_FAMILY, config_source: str = "config",
                   subject=None, subject_path: str | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Turn an msprobe dump into a parity dump at ``out``; returns a summary (found, missing with reasons and
    fixes, isolated steps that cannot be fed, precision, side).

    A MindSpore dump is the subject's: its probes are read through the overlay of the subject plug-in ``subject``
    (a name, ``module:attr`` or a plug-in object; default ``ms_impl``) loaded from ``subject_path``.
    """
    from parity.dumping import EXTERNAL_WEIGHTS_BYTES, WEIGHT_DTYPES, _check_precision, round_to_precision
    from parity.inputs_io import load_tensor_file
    from parity.store import DumpWriter, sha256_file
    from parity.weights import check_state_dict

    say = progress or (lambda _m: None)
    fam = get_family(family)
    cfg = fam.parse_config(config, source=config_source)
    dump = open_msprobe_dump(msprobe_dir)
    side = SIDE_OF_FRAMEWORK[dump.framework]
    overlay = None
    if side == "subject":
        from parity.plugins import load_plugin
        from parity.runner import plugin_overlay

        plugin = subject if subject is not None and not isinstance(subject, str) else \
            load_plugin(subject, "subject", subject_path)
        overlay = plugin_overlay(plugin, family, cfg.to_dict())
    rules = read_probe_rules(family, fam.num_layers(cfg), side, overlay)
    signatures = getattr(fam, "forward_signatures", dict)()
    mapping = map_probes(dump, rules, signatures, side)

    inputs_rules = [r for r in rules if r.probe_class == "input"]
    lacking = [m for m in mapping.missing if m.name in {r.name for r in inputs_rules}]
    if lacking:
        m = lacking[0]
        raise ParityError(f"{dump.json_path}: the model inputs are needed to run the other side, and "
                          f"{', '.join(x.name for x in lacking)} {'is' if len(lacking) == 1 else 'are'} missing: "
                          f"{m.reason}; fix: {m.fix}")
    if not mapping.found:
        raise ParityError(f"{dump.json_path}: none of the family's probes is in this dump; dump at level L0 with the "
                          "model (wrapped) passed to PrecisionDebugger.start()")
    inferred = _precision_of(mapping, rules)
    if precision is not None and precision != inferred:
        raise ParityError(f"--precision {precision}: the msprobe dump holds {inferred} states; drop --precision or "
                          f"pass --precision {inferred}")
    precision = inferred
    _check_precision(precision)

    say(f"reading {len(mapping.found)} probes from {dump.json_path}")
    raw_inputs = {}
    for r in inputs_rules:
        arr, _ = mapping.load(r.name)
        raw_inputs[r.reference.capture.arg] = arr
    inputs = fam.normalize_inputs(raw_inputs, cfg, source=f"{dump.json_path} (model inputs)")
    ctx = dict(fam.adapter_context(cfg, inputs))
    unfed = unfed_steps(fam.teacher_plan(cfg, inputs), set(mapping.found)) if side == "reference" else None

    weights = load_tensor_file(weights_path, "weights")
    check_state_dict(weights, fam.expected_state_dict_shapes(cfg), source=weights_path)
    missing = [{"name": m.name, "reason": m.reason, "fix": m.fix} for m in mapping.missing]
    nonfinite = []
    extra = {"ingested_from": {**dump.describe(), "module_prefix": mapping.prefix}, "side": side,
             "missing_probes": [m.name for m in mapping.missing], "missing_reasons": missing,
             "isolated_unfed": None if unfed is None else [{"probe": u.probe, "needs": list(u.needs)} for u in unfed]}
    with DumpWriter(out, family=family, precision=precision, config=cfg.to_dict(), seeds={},
                    versions={"python": platform.python_version(), "numpy": np.__version__}, case=None,
                    producer="parity ingest --from msprobe", force=force, extra=extra) as writer:
        for name, arr in inputs.items():
            writer.add_input(name, arr)
        if os.path.getsize(weights_path) > EXTERNAL_WEIGHTS_BYTES:
            writer.set_weights_file(weights_path, copy=False)
        else:
            writer.write_weights(round_to_precision(weights, precision), {k: WEIGHT_DTYPES[precision] for k in weights})
        for name in mapping.order:
            if name not in mapping.found:
                continue
            arr, dtype = mapping.load(name, ctx)
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                nonfinite.append(name)
            writer.add_state(name, arr, dtype="bfloat16" if dtype == "bfloat16" else None)  # as dumped
        writer.extra["nonfinite_states"] = nonfinite
    return {"out": out, "found": [n for n in mapping.order if n in mapping.found], "missing": missing,
            "unfed": unfed, "precision": precision, "side": side, "framework": dump.framework, "level": dump.level,
            "prefix": mapping.prefix, "nonfinite": nonfinite, "weights_sha256": sha256_file(weights_path)}
