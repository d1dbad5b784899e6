"""Probe names of the mT5 encoder, in the order ``MT5EncoderModel.forward`` produces them.

Layouts are transformers' at the point of capture (batch first throughout):

====================================  =================  ===============================================
probe                                 shape              what
====================================  =================  ===============================================
``input_ids_input``                   (B, L)             token ids as passed to forward
``attention_mask_input``              (B, L)             1 = token, 0 = padding, as passed to forward
``inputs_embeds``                     (B, L, D)          ``shared`` (= ``encoder.embed_tokens``) output
``extended_attention_mask``           (B, 1, 1, L)       additive mask: 0 or the dtype's lowest value
``relative_position_bias``            (1, H, L, L)       block 0's ``compute_bias(L, L)``
``position_bias``                     (B, H, L, L)       relative bias + mask: what blocks 1.. receive
``hidden_states_{i}_block``           (B, L, D)          ``encoder.block.{i}`` output 0
``final_layer_norm``                  (B, L, D)          ``encoder.final_layer_norm`` output
``prompt_embeds``                     (B, L, D)          ``last_hidden_state``: what the DiT receives
====================================  =================  ===============================================

``prompt_embeds`` keeps the padding rows as the encoder computed them: Open-Sora-Plan's
``encode_prompt`` takes ``last_hidden_state`` as is (cast to the DiT's dtype) and hands the tokenizer's
attention mask to the DiT separately, which turns it into a -10000 cross-attention bias. The padding rows
are compared like the others: they are computed values the port must reproduce, even though the DiT masks them.
"""

from __future__ import annotations

from parity.families.naming import block_index, block_probe  # noqa: F401 (the family's block names)
from parity.probemap import PROBE_CLASSES  # noqa: F401 (the harness's classes; re-exported for the family)


INPUT_NAMES = ("input_ids", "attention_mask")


_CLASSES = {
    "input_ids_input": "input", "attention_mask_input": "input", "inputs_embeds": "embedding",
    "extended_attention_mask": "mask", "relative_position_bias": "embedding", "position_bias": "embedding",
    "final_layer_norm": "output", "prompt_embeds": "output",
}


def probe_names(num_layers: int) -> list[str]:
    names = [f"{n}_input" for n in INPUT_NAMES]
    names += ["inputs_embeds", "extended_attention_mask", "relative_position_bias", "position_bias"]
    names += [block_probe(i) for i in range(num_layers)]
    names += ["final_layer_norm", "prompt_embeds"]
    return names


def probe_class(name: str) -> str:
    if name in _CLASSES:
        return _CLASSES[name]
    if block_index(name) is not None:
        return "block"
    raise KeyError(name)
