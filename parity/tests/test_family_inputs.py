"""Input checks of the OpenSoraT2V v1.3 family (shared by both frameworks)."""

import numpy as np
import pytest

from parity.errors import ParityError
from parity.families.opensora_v13.cases import CASES
from parity.families.opensora_v13.config import OpenSoraConfig
from parity.families.opensora_v13.inputs import normalize_inputs

CASE = CASES["padded-batch"]
CFG = OpenSoraConfig.from_dict(CASE.config)


def test_text_inputs_get_their_singleton_dim():
    inputs = CASE.make_inputs()
    flat = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, 0],
                encoder_attention_mask=inputs["encoder_attention_mask"][:, 0])
    out = normalize_inputs(flat, CFG)
    assert out["encoder_hidden_states"].shape == (2, 1, 12, 32) and out["encoder_attention_mask"].shape == (2, 1, 12)


@pytest.mark.parametrize("change, match", [
    (lambda x: x.update(hidden_states=x["hidden_states"][0]), r"hidden_states has shape \(8, 3, 10, 6\), expected"),
    (lambda x: x.update(timestep=np.ones(3, np.float32)), "inconsistent batch sizes"),
    (lambda x: x.update(attention_mask=x["attention_mask"][:, :2]), "attention_mask has shape"),
    (lambda x: x.update(encoder_attention_mask=x["encoder_attention_mask"][..., :3]), "encoder_attention_mask has shape"),
    (lambda x: x.pop("timestep"), "missing timestep"),
    (lambda x: x.update(pooled_projections=np.zeros(3)), "unknown pooled_projections"),
    (lambda x: x["hidden_states"].__setitem__((0, 0, 0, 0, 0), np.nan), "NaN or Inf"),
    (lambda x: x.update(hidden_states=x["hidden_states"][:, :4]), "4 channels but the config says in_channels=8"),
    (lambda x: x.update(encoder_hidden_states=x["encoder_hidden_states"][..., :7]), "caption_channels=32"),
])
def test_bad_inputs_are_one_line_errors(change, match):
    inputs = CASE.make_inputs()
    change(inputs)
    with pytest.raises(ParityError, match=match) as exc:
        normalize_inputs(inputs, CFG, source="in.npz")
    assert str(exc.value).startswith("in.npz: ") and "\n" not in str(exc.value)
