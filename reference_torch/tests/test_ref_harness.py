"""The reference harness: state-dict layout (fact sheet §4), config handling, strict weight loading, inputs,
precisions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parity.errors import ParityError
from parity.families.opensora_v13.config import load_config, released_2b_config
from reference_torch import harness as H
from reference_torch.modeling_opensora import OpenSoraT2V_v1_3, OpenSoraT2V_v1_3_2B_122
from reference_torch.tests.helpers import make_inputs, tiny_config

pytestmark = pytest.mark.torch


def _tiny_expected_layout() -> list[tuple[str, tuple]]:
    """Fact sheet §4, tiny instance (D=48, Dc=32, C=8, p=2, F=192, 4 layers), in state_dict() order."""
    d, f = 48, 192
    keys = [("scale_shift_table", (2, d)),
            ("caption_projection.linear_1.weight", (d, 32)), ("caption_projection.linear_1.bias", (d,)),
            ("caption_projection.linear_2.weight", (d, d)), ("caption_projection.linear_2.bias", (d,)),
            ("pos_embed.proj.weight", (d, 8, 2, 2)), ("pos_embed.proj.bias", (d,))]
    for i in range(4):
        pre = f"transformer_blocks.{i}."
        keys.append((pre + "scale_shift_table", (6, d)))
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                keys += [(f"{pre}{attn}.{proj}.weight", (d, d)), (f"{pre}{attn}.{proj}.bias", (d,))]
        keys += [(pre + "ff.net.0.proj.weight", (f, d)), (pre + "ff.net.0.proj.bias", (f,)),
                 (pre + "ff.net.2.weight", (d, f)), (pre + "ff.net.2.bias", (d,))]
    keys += [("proj_out.weight", (32, d)), ("proj_out.bias", (32,)),
             ("adaln_single.emb.timestep_embedder.linear_1.weight", (d, 256)),
             ("adaln_single.emb.timestep_embedder.linear_1.bias", (d,)),
             ("adaln_single.emb.timestep_embedder.linear_2.weight", (d, d)),
             ("adaln_single.emb.timestep_embedder.linear_2.bias", (d,)),
             ("adaln_single.linear.weight", (6 * d, d)), ("adaln_single.linear.bias", (6 * d,))]
    return keys


def test_tiny_state_dict_layout_matches_fact_sheet():
    shapes = H.expected_state_dict_shapes(tiny_config())
    assert list(shapes.items()) == _tiny_expected_layout()
    assert len(shapes) == 99
    assert sum(int(np.prod(s)) for s in shapes.values()) == 187_088


def test_released_2b_state_dict_on_meta_device():
    shapes = H.expected_state_dict_shapes(released_2b_config().to_dict())
    assert len(shapes) == 687
    assert sum(int(np.prod(s)) for s in shapes.values()) == 2_771_981_600
    assert shapes["caption_projection.linear_1.weight"] == (2304, 4096)
    assert shapes["pos_embed.proj.weight"] == (2304, 8, 2, 2)
    assert shapes["transformer_blocks.0.ff.net.0.proj.weight"] == (9216, 2304)
    assert shapes["transformer_blocks.31.attn2.to_k.weight"] == (2304, 2304)
    assert shapes["proj_out.weight"] == (32, 2304)
    assert shapes["adaln_single.linear.weight"] == (13824, 2304)
    block = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("transformer_blocks.0."))
    assert block == 84_978_432
    with torch.device("meta"):
        factory = OpenSoraT2V_v1_3_2B_122(in_channels=8, out_channels=8, sparse1d=True, sparse_n=4,
                                          skip_connection=True)
    assert {k: tuple(v.shape) for k, v in factory.state_dict().items()} == shapes
    assert all(p.is_meta for p in factory.parameters())


def test_block_sparsity_layout_of_released_model():
    with torch.device("meta"):
        model = OpenSoraT2V_v1_3.from_config(released_2b_config().to_dict())
    procs = [b.attn1.processor for b in model.transformer_blocks]
    assert [p.sparse1d for p in procs] == [False, False] + [True] * 28 + [False, False]
    assert [p.sparse_group for p in procs] == [i % 2 == 1 for i in range(32)]
    assert all(b.attn2.processor.is_cross_attn and not b.attn1.processor.is_cross_attn
               for b in model.transformer_blocks)
    assert model.norm_out.eps == 1e-6 and model.transformer_blocks[0].norm1.eps == 1e-6
    assert model.transformer_blocks[0].norm1.weight is None


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------


def test_upstream_style_config_json_with_ema_and_unknown_keys(tmp_path):
    data = dict(tiny_config(), _class_name="OpenSoraT2V_v1_3", _diffusers_version="0.30.2", decay=0.9999,
                inv_gamma=1.0, min_decay=0.0, optimization_step=43000, power=0.6667, update_after_step=0,
                use_ema_warmup=False, sample_size_h=[44, 80], sample_size_w=[44, 80], sample_size_t=24,
                some_future_key=1, interpolation_scale_t=1.0, interpolation_scale_h=1.0, interpolation_scale_w=1.0)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    cfg = load_config(path)
    with torch.device("meta"):
        model = OpenSoraT2V_v1_3.from_config(cfg.to_dict())
        model2 = OpenSoraT2V_v1_3.from_config(data)
    assert model.config.sample_size == ([44, 80], [44, 80]) and model.config.hidden_size == 48
    assert list(model.state_dict()) == list(model2.state_dict())
    assert H.expected_state_dict_shapes(data) == H.expected_state_dict_shapes(tiny_config())


def test_missing_required_config_keys_are_a_value_error_of_the_model_and_a_parity_error_of_the_harness():
    data = tiny_config()
    del data["caption_channels"], data["patch_size"]
    with pytest.raises(ValueError, match="patch_size, caption_channels"):
        OpenSoraT2V_v1_3.from_config(data)
    with pytest.raises(ParityError, match="patch_size"):
        H.expected_state_dict_shapes(data)


def test_sparse_n_2_is_refused_naming_1_and_4():
    for build, error in ((lambda: OpenSoraT2V_v1_3.from_config(tiny_config(sparse_n=2)), ValueError),
                         (lambda: OpenSoraT2V_v1_3(**tiny_config(sparse_n=2)), ValueError),
                         (lambda: H.random_weights(tiny_config(sparse_n=2), 0), ParityError)):
        with pytest.raises(error) as exc:
            build()
        msg = str(exc.value)
        assert "sparse_n" in msg and "1" in msg and "4" in msg and "\n" not in msg


def test_from_config_rejects_other_types():
    with pytest.raises(TypeError, match="config dict"):
        OpenSoraT2V_v1_3.from_config(["not", "a", "config"])


# ---------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------


def test_random_weights_are_deterministic_fp32_and_use_upstream_init():
    a, b = H.random_weights(tiny_config(), 7), H.random_weights(tiny_config(), 7)
    c = H.random_weights(tiny_config(), 8)
    assert list(a) == [k for k, _ in _tiny_expected_layout()]
    assert all(v.dtype == np.float32 for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["proj_out.weight"], c["proj_out.weight"])
    # scale_shift_table ~ randn / sqrt(D); default Linear init is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert 0.05 < a["transformer_blocks.0.scale_shift_table"].std() < 0.25
    assert np.abs(a["adaln_single.linear.weight"]).max() <= 1 / np.sqrt(48)


def test_build_model_loads_exact_weights_at_each_precision():
    cfg, weights = tiny_config(), H.random_weights(tiny_config(), 0)
    for precision, dtype in H.PRECISION_DTYPES.items():
        model = H.build_model(cfg, weights, precision)
        assert not model.training and model.dtype == dtype
        assert all(p.device.type == "cpu" and p.dtype == dtype for p in model.parameters())
        sd = model.state_dict()
        assert list(sd) == list(weights)
        for k in ("proj_out.weight", "transformer_blocks.3.attn1.to_q.bias"):
            assert torch.equal(sd[k], torch.from_numpy(weights[k]).to(dtype))
    with pytest.raises(ParityError, match="precision"):
        H.build_model(cfg, weights, "fp8")


def test_strict_loading_lists_missing_unexpected_and_mismatched_keys_in_one_line():
    cfg = tiny_config()
    weights = H.random_weights(cfg, 0)
    del weights["proj_out.bias"], weights["transformer_blocks.2.attn2.to_v.weight"]
    weights["transformer_blocks.4.attn1.to_q.weight"] = np.zeros((48, 48), np.float32)
    weights["pos_embed.proj.weight"] = np.zeros((48, 4, 2, 2), np.float32)
    with pytest.raises(ParityError) as exc:
        H.build_model(cfg, weights, "fp32")
    msg = str(exc.value)
    assert "\n" not in msg
    for name in ("proj_out.bias", "transformer_blocks.2.attn2.to_v.weight", "transformer_blocks.4.attn1.to_q.weight",
                 "pos_embed.proj.weight"):
        assert name in msg
    assert "missing 2" in msg and "unexpected 1" in msg and "1 shape mismatch" in msg and "config.json" in msg


def test_config_whose_sizes_disagree_with_the_weights():
    weights = H.random_weights(tiny_config(heads=3), 0)  # D = 72
    with pytest.raises(ParityError) as exc:
        H.build_model(tiny_config(), weights, "fp32")  # D = 48
    msg = str(exc.value)
    assert "shape mismatch" in msg and "(weights (72, 32), config (48, 32))" in msg and "+" in msg  # capped list
    weights = H.random_weights(tiny_config(num_layers=6), 0)
    with pytest.raises(ParityError, match=r"unexpected 42 key\(s\).*transformer_blocks\.4\."):
        H.build_model(tiny_config(), weights, "fp32")


# ---------------------------------------------------------------------------------------------------------
# inputs and forward
# ---------------------------------------------------------------------------------------------------------


def test_to_torch_inputs_adds_singletons_and_keeps_dtypes():
    inputs = make_inputs()
    flat = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, 0],
                encoder_attention_mask=inputs["encoder_attention_mask"][:, 0])
    tensors = H.to_torch_inputs(flat, tiny_config())
    assert tensors["encoder_hidden_states"].shape == (2, 1, 5, 32) and tensors["timestep"].dtype == torch.float32
    with pytest.raises(ParityError, match=r"hidden_states has shape \(8, 3, 10, 6\)"):
        H.to_torch_inputs(dict(inputs, hidden_states=inputs["hidden_states"][0]), tiny_config())


def test_forward_fp32_bf16_fp16_and_low_precision_error_is_small_but_nonzero():
    cfg = tiny_config()
    weights = H.random_weights(cfg, 0)
    inputs = make_inputs(1)
    outs = {p: H.forward(H.build_model(cfg, weights, p), inputs) for p in H.PRECISION_DTYPES}
    for p, out in outs.items():  # bf16 comes back as exact float32 (numpy has no bf16), fp16 as float16
        want = np.float16 if p == "fp16" else np.float32
        assert out.shape == (2, 8, 3, 10, 6) and out.dtype == want and np.isfinite(out).all(), p
    ref = outs["fp32"]
    assert 0.3 < ref.std() < 3
    for p, limit in (("bf16", 0.1), ("fp16", 0.02)):
        diff = np.abs(outs[p].astype(np.float32) - ref).max()
        assert 0 < diff < limit, (p, diff)
    # bf16 outputs are exactly representable in bf16
    bits = outs["bf16"].view(np.uint32)
    assert not (bits & 0xFFFF).any()


def test_forward_accepts_return_dict_and_extra_kwargs():
    cfg = tiny_config()
    model = H.build_model(cfg, H.random_weights(cfg, 0), "fp32")
    tensors = H.to_torch_inputs(make_inputs(2), cfg)
    with torch.no_grad():
        a = model(**tensors, pooled_projections=None)
        (b,) = model(**tensors, return_dict=False)
    assert torch.equal(a.sample, b) and torch.equal(a[0], b)
    np.testing.assert_array_equal(H.forward(model, make_inputs(2)), b.numpy())


def test_single_token_text_and_fully_masked_text_row_stay_finite():
    cfg = tiny_config()
    model = H.build_model(cfg, H.random_weights(cfg, 0), "fp32")
    inputs = make_inputs(4, text_len=1, text_lens=[0, 1])
    assert np.isfinite(H.forward(model, inputs)).all()
