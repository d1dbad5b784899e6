"""Isolated mode as family data: which reference probes feed which step of the subject.

A family's ``teacher_plan(config, inputs)`` lists one ``TeacherStep`` per probe that isolated mode produces by
teacher forcing (every block, the output head, or a denoising step of a pipeline). The engine reads the
reference probes named in ``inputs`` from the dump, converts each to the subject's layout with the subject's
adapter for that probe, and hands them to the subject plug-in's ``run_step(model, step, teacher)``. So the
plan is written once per family; a subject only says how to call *its* block or head.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TeacherStep:
    """One teacher-forced step.

    probe   the probe this step produces (e.g. ``hidden_states_2_block``, ``hidden_states_output``)
    kind    family-defined step kind the subject dispatches on (``block``, ``output``, ...)
    index   block (or step) index; None for a head
    inputs  role -> name of the reference probe whose tensor feeds that role
    params  role -> plain value (ints, floats, bools, tuples), e.g. the token grid
    """

    probe: str
    kind: str
    index: int | None
    inputs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        fed = ", ".join(f"{role} <- {probe}" for role, probe in self.inputs.items())
        return f"{self.kind}{'' if self.index is None else f' {self.index}'} ({fed})"


def plan_by_probe(plan: list[TeacherStep]) -> dict[str, TeacherStep]:
    out: dict[str, TeacherStep] = {}
    for step in plan:
        if step.probe in out:
            raise ValueError(f"teacher plan: two steps produce probe {step.probe!r}")
        out[step.probe] = step
    return out


def feeding_probes(plan: list[TeacherStep]) -> set[str]:
    """Every reference probe some step reads."""
    return {p for step in plan for p in step.inputs.values()}


__all__ = ["TeacherStep", "plan_by_probe", "feeding_probes"]
