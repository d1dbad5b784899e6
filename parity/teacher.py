"""Isolated mode as data: which reference tensors feed each step of a subject (contract of issue 12).

A family's ``teacher_plan(config, inputs)`` lists ``TeacherStep``s; a subject implements
``run_step(model, step, teacher)`` where ``teacher`` maps each role to the reference tensor named in
``step.inputs`` (already in the subject's layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TeacherStep:
    probe: str                 # the probe this step produces
    kind: str                  # family-defined ("block", "output", ...)
    index: int | None          # block index, None for steps that are not a block
    inputs: dict = field(default_factory=dict)   # role -> name of the REFERENCE probe feeding that role
    params: dict = field(default_factory=dict)   # role -> plain value
