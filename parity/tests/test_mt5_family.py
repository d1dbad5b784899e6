"""The ``mt5_encoder`` family's framework-free data: config schema, inputs, probe order, state-dict shapes, plan."""

from __future__ import annotations

import numpy as np
import pytest

from parity.errors import ParityError
from parity.families import mt5_encoder as fam
from parity.families.mt5_encoder.capture import capture_specs
from parity.families.mt5_encoder.statedict import parameter_count


def test_released_xxl_state_dict():
    cfg = fam.released_xxl_config()
    shapes = fam.expected_state_dict_shapes(cfg)
    # 2 embeddings (tied, both in state_dict) + 24 blocks x 9 + block 0's relative bias + final norm
    assert len(shapes) == 2 + 24 * 9 + 1 + 1 == 220
    assert shapes["shared.weight"] == (250112, 4096)
    assert shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] == (32, 64)
    assert shapes["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"] == (10240, 4096)
    assert shapes["encoder.block.5.layer.0.SelfAttention.o.weight"] == (4096, 4096)
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in shapes
    assert parameter_count(cfg) == 5_655_173_120
    assert cfg.extra["num_decoder_layers"] == 24 and cfg.to_dict()["tokenizer_class"] == "T5Tokenizer"


@pytest.mark.parametrize("key,value,words", [
    ("d_model", 0, "d_model"), ("num_heads", True, "num_heads"), ("vocab_size", 2.0, "vocab_size"),
    ("num_layers", 10**6, "num_layers"), ("feed_forward_proj", "gated-silu", "feed_forward_proj"),
    ("relative_attention_num_buckets", 7, "even"), ("relative_attention_max_distance", 2, "max_distance"),
    ("tie_word_embeddings", 1, "tie_word_embeddings"), ("eos_token_id", 96, "eos_token_id"),
    ("layer_norm_epsilon", "1e-6", "layer_norm_epsilon"), ("dropout_rate", 1.0, "dropout_rate"),
])
def test_config_refuses_bad_values(key, value, words):
    data = dict(fam.builtin_cases()["tiny-mt5"].config, **{key: value})
    with pytest.raises(ParityError, match=words) as exc:
        fam.parse_config(data, source="enc.json")
    assert str(exc.value).startswith("enc.json: ") and "\n" not in str(exc.value)


def test_config_round_trip_keeps_unknown_keys():
    data = dict(fam.builtin_cases()["tiny-mt5"].config, architectures=["MT5ForConditionalGeneration"])
    cfg = fam.parse_config(data)
    assert cfg.to_dict()["architectures"] == ["MT5ForConditionalGeneration"]
    assert fam.parse_config(cfg.to_dict()) == cfg


def _case():
    case = fam.builtin_cases()[fam.default_case_name()]
    return case, fam.parse_config(case.config)


@pytest.mark.parametrize("change,words", [
    (lambda d: d.pop("attention_mask"), "missing attention_mask"),
    (lambda d: d.update(extra=np.zeros((2, 3))), "unknown extra"),
    (lambda d: d.update(input_ids=d["input_ids"].astype(np.float32)), "integer token ids"),
    (lambda d: d.update(input_ids=d["input_ids"] + 96), "outside the vocabulary"),
    (lambda d: d.update(attention_mask=d["attention_mask"] * 2), "other than 0 and 1"),
    (lambda d: d.update(attention_mask=d["attention_mask"][:, :3]), "differ in shape"),
    (lambda d: d.update(input_ids=d["input_ids"][0]), r"expected \(B, L\)"),
    (lambda d: d.update(input_ids=np.zeros((2, 0), np.int64), attention_mask=np.zeros((2, 0), np.int64)), "zero size"),
])
def test_inputs_refused(change, words):
    case, cfg = _case()
    inputs = case.make_inputs()
    change(inputs)
    with pytest.raises(ParityError, match=words):
        fam.normalize_inputs(inputs, cfg, source="in.npz")


def test_cases_look_like_tokenizer_output():
    for case in fam.builtin_cases().values():
        cfg = fam.parse_config(case.config)
        inputs = fam.normalize_inputs(case.make_inputs(), cfg)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for row, n in zip(range(ids.shape[0]), case.valid):
            assert ids[row, n] == cfg.eos_token_id and mask[row, : n + 1].all() and not mask[row, n + 1:].any()
            assert (ids[row, n + 1:] == cfg.pad_token_id).all() and (ids[row, :n] >= 2).all()


def test_probe_order_plan_and_capture_specs_agree():
    case, cfg = _case()
    inputs = case.make_inputs()
    names = fam.probe_names(cfg)
    assert names[:6] == ["input_ids_input", "attention_mask_input", "inputs_embeds", "extended_attention_mask",
                         "relative_position_bias", "position_bias"]
    assert names[-2:] == ["final_layer_norm", "prompt_embeds"] and len(names) == 8 + cfg.num_layers
    assert [s.name for s in capture_specs(cfg.num_layers)] == names
    plan = fam.teacher_plan(cfg, inputs)
    order = {n: k for k, n in enumerate(names)}
    for step in plan:
        # every feed is a reference probe produced before the step's own probe
        assert all(order[src] < order[step.probe] for src in step.inputs.values()), step
    blocks = [s for s in plan if s.kind == "block"]
    assert [s.index for s in blocks] == list(range(cfg.num_layers))
    assert blocks[2].inputs == {"hidden_states": "hidden_states_1_block", "attention_mask": "extended_attention_mask",
                                "position_bias": "position_bias"}
    assert "position_bias" not in blocks[0].inputs
    assert fam.adapter_context(cfg, inputs) == {"num_heads": 4, "batch": 2, "seq_len": 24}
