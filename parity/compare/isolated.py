"""Isolated mode: teacher forcing through the subject plug-in's ``run_step``, driven by the family's teacher plan."""

from __future__ import annotations

from typing import Callable

import numpy as np

from parity.adapters import get_adapter
from parity.errors import ParityError
from parity.plugins.contract import StepNotRun
from parity.probemap import Probe, capture_items
from parity.runner import capture_run

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
