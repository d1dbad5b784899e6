"""The stdit3 glue of the ``ms_impl`` plug-in: strict weight conversion (mindone's names mapped back) and the
plug-in's dispatch to it."""

from __future__ import annotations

import numpy as np
import pytest

from ms_impl import glue_stdit3 as glue
from ms_impl.plugin import make_plugin
from parity.errors import ParityError
from parity.families import stdit3 as fam
from parity.families.stdit3.cases import TINY
from parity.families.stdit3.testing import random_weights

CFG = fam.parse_config(TINY)


def mindone_names(weights: dict) -> dict:
    """A checkpoint as mindone's STDiT3 saves it: ``network.`` prefix, RMSNorm ``gamma``, linear patchify."""
    out = {}
    for k, v in weights.items():
        k = k.replace("q_norm.weight", "q_norm.gamma").replace("k_norm.weight", "k_norm.gamma")
        out["network." + k] = v.reshape(v.shape[0], -1) if k == "x_embedder.proj.weight" else v
    return out


def test_mindone_checkpoint_maps_back_exactly():
    weights = random_weights(CFG, 0)
    back = glue.convert_ms_to_torch(mindone_names(weights), CFG)
    assert list(back) == list(fam.expected_state_dict_shapes(CFG))
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
    assert glue.convert_torch_to_ms(weights, CFG).keys() == weights.keys()


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.pop("network.rope.freqs"), "rope.freqs"),
    (lambda w: w.__setitem__("network.extra.weight", np.zeros(3, np.float32)), "extra.weight"),
    (lambda w: w.__setitem__("network.spatial_blocks.0.attn.q_norm.weight", np.ones(16, np.float32)), "both map"),
])
def test_mindone_conversion_is_strict(edit, message):
    w = mindone_names(random_weights(CFG, 0))
    edit(w)
    with pytest.raises(ParityError, match=message):
        glue.convert_ms_to_torch(w, CFG)


def test_plugin_dispatches_stdit3():
    plugin = make_plugin()
    assert "stdit3" in plugin.families
    weights = random_weights(CFG, 0)
    out = plugin.convert_weights(weights, "stdit3", CFG.to_dict(), "subject")
    assert out.keys() == weights.keys()
