"""Positional parameters of the forward methods whose inputs the probe map captures by argument name.

Dump formats that record a call's positional arguments by index only (msprobe's ``input.<i>``) are matched to
the probe map's ``arg`` names through these, keyed by the class name the dump records. They are upstream's
``forward`` signatures (the MindSpore port's ``construct`` keeps the same order); only the leading parameters a
caller may pass positionally are listed.
"""

from __future__ import annotations

FORWARD_SIGNATURES: dict[str, tuple[str, ...]] = {
    "OpenSoraT2V_v1_3": ("hidden_states", "timestep", "encoder_hidden_states", "attention_mask",
                         "encoder_attention_mask"),
    "BasicTransformerBlock": ("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                              "timestep", "frame", "height", "width"),
}
