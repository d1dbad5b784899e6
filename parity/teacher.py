"""Isolated mode as family data: which reference probes feed which teacher-forced step of a subject.

A family's ``teacher_plan(config, inputs)`` returns one ``TeacherStep`` per probe that isolated mode produces by
teacher forcing; a subject plug-in implements ``run_step(model, step, teacher)`` with ``teacher`` mapping each
role of ``step.inputs`` to the reference tensor (already in the subject's layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TeacherStep:
    probe: str      # the probe this step produces, e.g. "hidden_states_2_block" / "hidden_states_output"
    kind: str       # family-defined: "block", "output" (STDiT3: "spatial_block", "temporal_block", ...)
    index: int | None   # block index, None for the head
    inputs: dict = field(default_factory=dict)   # role -> name of the REFERENCE probe whose tensor feeds that role
    params: dict = field(default_factory=dict)   # role -> plain value (ints/floats/bools/tuples)
