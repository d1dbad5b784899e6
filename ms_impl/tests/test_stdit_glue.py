"""The stdit glue of the ms_impl plug-in: strict weight conversion to and from mindone's checkpoint convention."""

from __future__ import annotations

import numpy as np
import pytest

from ms_impl.glue_stdit import convert_ms_to_torch, convert_torch_to_ms, derived_tables
from parity.errors import ParityError
from parity.families.stdit.cases import CASES
from parity.families.stdit.config import STDiTConfig
from parity.families.stdit.statedict import DERIVED_BUFFERS, expected_shapes, random_weights

CFG = STDiTConfig.from_dict(CASES["stdit-small"].config)


def _torch_state():
    state = dict(random_weights(CFG, 0))
    state.update(derived_tables(CFG))
    return {k: state[k] for k in expected_shapes(CFG)}


def test_round_trip_is_exact_and_drops_the_tables():
    torch_state = _torch_state()
    ms_state = convert_torch_to_ms(torch_state, CFG)
    assert not set(DERIVED_BUFFERS) & set(ms_state) and "y_embedder.y_embedding" in ms_state
    back = convert_ms_to_torch(ms_state, CFG)
    assert list(back) == list(torch_state)
    for k in back:
        np.testing.assert_array_equal(back[k], torch_state[k])


@pytest.mark.parametrize("layout", ["linear", "conv2d"])
def test_mindone_prefixes_and_patchify_layouts(layout):
    torch_state = _torch_state()
    ms_state = {f"network.{k}": v for k, v in convert_torch_to_ms(torch_state, CFG).items()}
    w = torch_state["x_embedder.proj.weight"]
    ms_state["network.x_embedder.proj.weight"] = w.reshape(w.shape[0], -1) if layout == "linear" else w[:, :, 0]
    back = convert_ms_to_torch(ms_state, CFG)
    np.testing.assert_array_equal(back["x_embedder.proj.weight"], w)


def test_missing_and_unexpected_keys_are_refused_by_name():
    ms_state = convert_torch_to_ms(_torch_state(), CFG)
    del ms_state["blocks.1.attn_temp.qkv.bias"]
    ms_state["blocks.0.attn.q_norm.gamma"] = np.ones(16, np.float32)
    with pytest.raises(ParityError, match=r"blocks\.1\.attn_temp\.qkv\.bias.*|.*q_norm\.gamma"):
        convert_ms_to_torch(ms_state, CFG)
