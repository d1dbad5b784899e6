"""Isolated mode of the mT5 encoder as data: each step, the reference probes that feed it.

* ``inputs_embeds`` (kind ``embedding``): the token embedding of the reference ``input_ids``.
* ``relative_position_bias`` (kind ``relative_position_bias``): block 0's ``compute_bias(L, L)``.
* ``position_bias`` (kind ``block_position_bias``, index 0) and ``hidden_states_0_block`` (kind ``block``):
  block 0 on the reference embeddings and extended mask; it computes the bias itself (``position_bias=None``)
  and returns ``(hidden_states, bias + mask)``.
* ``hidden_states_{i}_block``, i >= 1 (kind ``block``): block i on the reference output of block i-1, the
  reference extended mask and the reference ``position_bias`` (with a bias given, the mask is not re-added).
* ``final_layer_norm`` and ``prompt_embeds`` (kind ``output``): the final RMS norm (dropout is the identity in
  eval) on the reference output of the last block.

The inputs and ``extended_attention_mask`` have no step: the mask is built inline in the stack's forward, so
it is compared from the subject's forward on the reference inputs.
"""

from __future__ import annotations

from parity.teacher import TeacherStep
from .config import MT5EncoderConfig
from .probes import block_probe


def teacher_plan(config: MT5EncoderConfig, inputs: dict) -> list[TeacherStep]:
    seq_len = int(inputs["input_ids"].shape[1])
    block0 = {"hidden_states": "inputs_embeds", "attention_mask": "extended_attention_mask"}
    steps = [
        TeacherStep("inputs_embeds", "embedding", None, {"input_ids": "input_ids_input"}, {}),
        TeacherStep("relative_position_bias", "relative_position_bias", 0, {},
                    {"query_length": seq_len, "key_length": seq_len}),
        TeacherStep("position_bias", "block_position_bias", 0, dict(block0), {}),
    ]
    for i in range(config.num_layers):
        if i == 0:
            feeds = dict(block0)
        else:
            feeds = {"hidden_states": block_probe(i - 1), "attention_mask": "extended_attention_mask",
                     "position_bias": "position_bias"}
        steps.append(TeacherStep(block_probe(i), "block", i, feeds, {}))
    last = block_probe(config.num_layers - 1)
    steps += [TeacherStep(name, "output", None, {"hidden_states": last}, {})
              for name in ("final_layer_norm", "prompt_embeds")]
    return steps


def adapter_context(config: MT5EncoderConfig, inputs: dict) -> dict:
    batch, seq_len = (int(s) for s in inputs["input_ids"].shape)
    return {"num_heads": config.num_heads, "batch": batch, "seq_len": seq_len}
