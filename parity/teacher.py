"""Isolated mode as data: a model family's ``teacher_plan(config, inputs)`` lists the steps a subject runs on the
reference's own tensors (one block, the output head, ...), each producing one probe."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherStep:
    probe: str      # the probe this step produces, e.g. "hidden_states_2_block" / "hidden_states_output"
    kind: str       # family-defined: "block", "output" (STDiT3 may use "spatial_block"/"temporal_block")
    index: int | None   # block index, None for the head
    inputs: dict    # role -> name of the REFERENCE probe whose tensor feeds that role
    params: dict    # role -> plain value (ints/floats/bools/tuples), e.g. {"frame": 3, "height": 4, "width": 4}
