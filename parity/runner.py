"""Running a plug-in's model for the harness: the plug-in itself (resolved, wrapped for its family, options
checked), its probes (family map + its overlay, selected from a dump), capture with its framework's hooks around its
forward, and teacher forcing through its ``run_step``.

``ModelRun`` is what ``parity dump`` (reference side) and ``parity compare`` (subject side) run; tests and
other tools use it to capture a model's probes or teacher-force it on numpy arrays without a dump.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

import numpy as np

from parity.adapters import get_adapter
from parity.errors import ParityError
from parity.families import get_family
from parity.plugins import load_plugin, parse_options
from parity.plugins.contract import BuildRequest, OnProbe, StepNotRun
from parity.probemap import Probe, capture_items, load_probe_map, parse_overlay
from parity.teacher import plan_by_probe


def capture_class(framework: str):
    """The capture context manager for ``framework`` (imports that framework)."""
    if framework == "torch":
        from parity.capture_torch import TorchCapture
        return TorchCapture
    from parity.capture_ms import MsCapture
    return MsCapture


def plugin_overlay(plugin, family: str, config: dict):
    """The plug-in's overlay for ``family`` on ``config``, parsed (None: it holds every probe as the family map
    says)."""
    raw = plugin.overlay(family, config)
    if raw is None or hasattr(raw, "entries"):
        return raw
    return parse_overlay(raw, f"overlay of plug-in {plugin.name}", family)


def capture_run(plugin, model: Any, family: str, inputs: dict, items: list, on_probe: OnProbe,
                mode: str = "accumulated") -> Any:
    """``plugin.forward(model, family, inputs)`` with every ``items`` probe (``parity.probemap.CaptureItem``s)
    reported to ``on_probe(name, array, dtype_name)``; returns the forward's output. A plug-in with a ``capture``
    method of its own (e.g. one that replays recorded probes) is asked to do it itself, told the ``mode``."""
    custom = getattr(plugin, "capture", None)
    if custom is not None:
        return custom(model, family, inputs, items, on_probe, mode=mode)
    namer = getattr(plugin, "dtype_namer", None)
    hooks = capture_class(plugin.framework)(plugin.capture_root(model), items, on_probe,
                                            dtype_name=namer(model) if namer is not None else None)
    with hooks:
        return plugin.forward(model, family, inputs)


def module_paths(plugin, model: Any) -> set[str]:
    """Dotted names of every submodule/cell of the plug-in's capture root ("" = the root)."""
    root = plugin.capture_root(model)
    if plugin.framework == "torch":
        return {name for name, _ in root.named_modules()}
    return {name for name, _ in root.cells_and_names()}


class ModelRun:
    """A plug-in's model of ``family`` on one config, seen from ``side`` ("reference" or "subject")."""

    def __init__(self, plugin, family: str, config, side: str = "subject"):
        if family not in plugin.families:
            raise ParityError(f"the {side} plug-in {plugin.name} implements {', '.join(plugin.families) or 'no family'}"
                              f", not {family!r}; pick a {side} for {family}")
        self.plugin, self.family, self.side = plugin, family, side
        self.fam = get_family(family)
        self.config = config if hasattr(config, "to_dict") else self.fam.parse_config(config)
        self.adapters = dict(getattr(plugin, "adapters", {}) or {})
        self.probes: list[Probe] = load_probe_map(family).resolve(
            self.fam.num_layers(self.config), adapters=self.adapters,
            **{side: plugin_overlay(plugin, family, self.config.to_dict())})
        # a family running a sub-model of another family (a pipeline's text encoder) adds its probes
        adjust = getattr(self.fam, "adjust_probes", None)
        if adjust is not None:
            self.probes = adjust(self.config, self.probes)
        self.views = {p.name: getattr(p, side) for p in self.probes}
        self.model = None

    def build(self, weights, precision: str, device: str = "CPU", options: dict | None = None):
        self.model = self.plugin.build(BuildRequest(self.family, self.config.to_dict(), weights, precision, device,
                                                    dict(options or {})))
        return self.model

    def select(self, names=None) -> list[Probe]:
        return [p for p in self.probes if names is None or p.name in names]

    def capture(self, inputs: dict, on_probe: OnProbe, names=None) -> Any:
        """A forward on ``inputs`` reporting the probes ``names`` (default all) in this side's layout."""
        return capture_run(self.plugin, self.model, self.family, inputs, capture_items(self.select(names), self.side),
                           on_probe)

    def context(self, inputs: dict) -> dict:
        return self.fam.adapter_context(self.config, inputs)

    def to_reference(self, name: str, array, context: dict) -> np.ndarray:
        """``array`` of probe ``name`` from this side's layout into the reference's."""
        return get_adapter(self.views[name].adapter, self.adapters).to_reference(np.asarray(array), **context)

    def plan(self, inputs: dict) -> dict:
        return plan_by_probe(self.fam.teacher_plan(self.config, inputs))

    def isolated(self, inputs: dict, reference: Callable[[str], np.ndarray], on_probe: Callable[[str, Any], None],
                 names=None, present: set | None = None) -> list[dict]:
        """Teacher forcing (``run_isolated``) on ``reference(name)`` tensors in the reference layout;
        ``present``: the reference probes available (default: every probe)."""
        present = set(self.views) if present is None else present
        return run_isolated(self.plugin, self.model, self.family, inputs, self.select(names), self.views,
                            self.plan(inputs), self.context(inputs), reference, present, on_probe, self.adapters)


def wrap_for_family(plugin, family: str | None, side: str):
    """A family that runs another family's model inside it (the pipeline family: a denoiser inside the sampling
    loop) wraps a plug-in of that model into one of its own (``wrap_plugin``); any other plug-in is as given."""
    if family is None or family in plugin.families:
        return plugin
    wrap = getattr(get_family(family), "wrap_plugin", None)
    return plugin if wrap is None else wrap(plugin, side)


def resolve_plugin(given, side: str, path: str | None = None, options=None, family: str | None = None):
    """A plug-in (a name, ``module:attr`` or a plug-in object; the side's default when None) wrapped for
    ``family`` when that family runs it inside itself, and its checked options (``KEY=VALUE`` strings or a dict)."""
    plugin = given if given is not None and not isinstance(given, str) else load_plugin(given, side, path)
    plugin = wrap_for_family(plugin, family, side)
    pairs = [f"{k}={v}" for k, v in options.items()] if isinstance(options, dict) else options
    return plugin, parse_options(pairs, plugin, f"--{side}-option")


def select_probes(probes: list[Probe], dump, dump_path: str, patterns) -> list[Probe]:
    """The probes of ``probes`` the dump holds, narrowed to the ``--probes`` globs when given."""
    present = set(dump.probes)
    selected = [p for p in probes if p.name in present]
    if patterns:
        selected = [p for p in selected if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
        if not selected:
            raise ParityError(f"{dump_path}: --probes {' '.join(patterns)} matches no probe in the dump; use "
                              f"globs over its probe names (e.g. {dump.probes[0] if dump.probes else 'none'}, "
                              f"'hidden_states_*_block')")
    return selected


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
