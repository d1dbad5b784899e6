"""The torch STDiT3 reference: building blocks against hand-checked values (2D pos-emb tables, timestep sinusoid,
interleaved RoPE pairing, RMSNorm), packed cross-attention against padded-mask attention, state-dict names and
shapes on the meta device (the released size included), strict loading, probe capture through the probe map, and
the facts the MindSpore port relies on (upstream's channel-first residual stream, x_mask/mask defaults)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parity.capture_torch import TorchCapture
from parity.dtypes import round_to_bf16
from parity.families import stdit3 as fam
from parity.families.stdit3.cases import CASES, TINY
from parity.families.stdit3.config import released_config
from parity.families.stdit3.statedict import BUFFERS, expected_shapes
from parity.families.stdit3.testing import capture_specs, random_weights, rope_freqs
from reference_torch import modeling_stdit3 as R


def build(config: dict, seed: int = 0, dtype=torch.float32) -> R.STDiT3:
    cfg = fam.parse_config(config)
    model = R.STDiT3(cfg.to_dict()).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in random_weights(cfg, seed).items()}, strict=True)
    return model.to(dtype)


def torch_inputs(inputs: dict) -> dict:
    return {k: torch.from_numpy(np.array(v)) for k, v in inputs.items()}


def case_inputs(name: str) -> dict:
    case = CASES[name]
    return fam.normalize_inputs(case.make_inputs(), fam.parse_config(case.config))


# ---- building blocks against hand-checked values ----------------------------------------------------------
def test_position_embedding_2d_hand_values():
    """C = 8: inv_freq = [1, 1/100]; token (row 1, col 2) of a 2x3 grid: first half from the column (w)
    coordinate 2, second half from the row coordinate 1, each [sin, sin, cos, cos]."""
    pe = R.PositionEmbedding2D(8)
    np.testing.assert_allclose(pe.inv_freq.numpy(), [1.0, 0.01], rtol=1e-7)
    emb = pe(torch.zeros(1, dtype=torch.float32), 2, 3)[0].double().numpy()
    assert emb.shape == (6, 8)
    expect = [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02),
              math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    np.testing.assert_allclose(emb[1 * 3 + 2], expect, atol=2e-7)
    np.testing.assert_allclose(emb[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=0)


@pytest.mark.parametrize("h, w, scale, base", [(4, 6, 1.0, None), (15, 27, 0.6245, 20), (5, 3, 2.0, 4)])
def test_position_embedding_2d_scale_and_base_size(h, w, scale, base):
    """Grid coordinates arange(n) / scale · base_size / n, per axis; upstream's numpy get_2d_sincos_pos_embed
    formula in float64 (w-coordinate half first) agrees to float32 rounding."""
    dim = 32
    got = R.PositionEmbedding2D(dim)(torch.zeros(1), h, w, scale=scale, base_size=base)[0].double().numpy()
    gh = np.arange(h) / scale * (base / h if base else 1.0)
    gw = np.arange(w) / scale * (base / w if base else 1.0)
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))

    def sincos(pos):
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], 1)

    cols, rows = np.tile(gw, h), np.repeat(gh, w)
    np.testing.assert_allclose(got, np.concatenate([sincos(cols), sincos(rows)], 1), atol=2e-6)


def test_timestep_embedding_is_cos_first():
    emb = R.TimestepEmbedder.timestep_embedding(torch.tensor([0.0, 999.0]), 256).double().numpy()
    np.testing.assert_array_equal(emb[0], [1.0] * 128 + [0.0] * 128)
    freqs = np.exp(-math.log(10000) * np.arange(128) / 128)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(999 * freqs), np.sin(999 * freqs)]), atol=1e-4)


def test_rope_pairs_are_interleaved():
    """rotate_half pairs (x0, x1), (x2, x3): [a, b, c, d] -> [-b, a, -d, c]; a unit vector on the first pair at
    position p turns by p·freqs[0]; each pair keeps its norm; scores depend on relative positions only."""
    np.testing.assert_array_equal(R.rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).numpy(), [-2, 1, -4, 3])
    rope = R.RotaryEmbedding(8)
    np.testing.assert_array_equal(rope.freqs.numpy(), rope_freqs(8))
    x = torch.zeros(1, 1, 5, 8)
    x[..., 0] = 1.0
    x[..., 3] = 1.0
    out = rope.rotate_queries_or_keys(x)[0, 0].double().numpy()
    f = rope.freqs.double().numpy()
    p = np.arange(5)
    np.testing.assert_allclose(out[:, 0], np.cos(p * f[0]), atol=1e-6)
    np.testing.assert_allclose(out[:, 1], np.sin(p * f[0]), atol=1e-6)
    np.testing.assert_allclose(out[:, 2], -np.sin(p * f[1]), atol=1e-6)
    np.testing.assert_allclose(out[:, 3], np.cos(p * f[1]), atol=1e-6)
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64).expand(1, 1, 6, 8)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64).expand(1, 1, 6, 8)
    rope64 = R.RotaryEmbedding(8).double()
    s = (rope64.rotate_queries_or_keys(q) @ rope64.rotate_queries_or_keys(k).transpose(-1, -2))[0, 0].numpy()
    np.testing.assert_allclose(np.diag(s, 1), np.diag(s, 1)[0], rtol=1e-10)   # (p, p+1) pairs all alike


def test_rms_norm_hand_value():
    norm = R.LlamaRMSNorm(4)
    norm.weight.data = torch.tensor([1.0, 2.0, 0.5, 1.0])
    out = norm(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))
    rms = math.sqrt(25 / 4 + 1e-6)
    np.testing.assert_allclose(out.detach().numpy()[0], [3 / rms, 8 / rms, 0, 0], rtol=1e-6)


# ---- cross-attention: packed text == padded-mask attention per sample --------------------------------------
@pytest.mark.parametrize("lens", [(3, 7, 1), (5, 5, 5), (2, 6, 4)])
def test_packed_cross_attention_equals_padded_mask_attention(lens):
    torch.manual_seed(0)
    attn = R.MultiHeadCrossAttention(32, 4).eval()
    B, N, L = len(lens), 6, max(lens)
    x = torch.randn(B, N, 32)
    y_pad = torch.randn(B, L, 32)
    packed = torch.cat([y_pad[b, :n] for b, n in enumerate(lens)])[None]
    with torch.no_grad():
        got = attn(x, packed, list(lens))
        q = attn.q_linear(x).view(B, N, 4, 8).transpose(1, 2)
        k, v = attn.kv_linear(y_pad).view(B, L, 2, 4, 8).unbind(2)
        keep = torch.arange(L)[None] < torch.tensor(lens)[:, None]
        bias = torch.zeros(B, 1, 1, L).masked_fill(~keep[:, None, None], float("-inf"))
        ref = torch.nn.functional.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), bias)
        ref = attn.proj(ref.transpose(1, 2).reshape(B, N, 32))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=2e-6)
    with torch.no_grad():   # without y_lens every query sees every sample's text (upstream's mask=None)
        mixed = attn(x, packed, None)
    assert not torch.allclose(mixed, got, atol=1e-3)
    with torch.no_grad():
        one = attn(x[:1], packed[:, :lens[0]], None)
    np.testing.assert_allclose(one.numpy(), got[:1].numpy(), atol=1e-6)


# ---- state dict, loading -------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [TINY, dict(TINY, qk_norm=False, pred_sigma=False, patch_size=[2, 2, 2])],
                         ids=["tiny", "no-qk-norm"])
def test_state_dict_matches_the_family_on_the_meta_device(config):
    cfg = fam.parse_config(config)
    with torch.device("meta"):
        model = R.STDiT3(cfg.to_dict())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(cfg)
    assert list(model.state_dict()) == list(expected_shapes(cfg))
    assert {n for n, _ in model.named_buffers()} == {"pos_embed.inv_freq", "y_embedder.y_embedding"}


def test_released_size_on_the_meta_device():
    with torch.device("meta"):
        model = R.STDiT3(released_config().to_dict())
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(released_config())
    assert sum(p.numel() for p in model.parameters()) == 1_207_643_972
    assert sum(v.numel() for k, v in sd.items() if k in BUFFERS) == 300 * 4096 and len(sd) == 973
    assert model.rope.freqs.shape == (36,) and model.pos_embed.inv_freq.shape == (288,)


def test_strict_loading_refuses_missing_or_renamed_keys():
    cfg = fam.parse_config(TINY)
    model = R.STDiT3(cfg.to_dict())
    weights = {k: torch.from_numpy(v) for k, v in random_weights(cfg, 0).items()}
    weights["spatial_blocks.0.attn.q_norm.gamma"] = weights.pop("spatial_blocks.0.attn.q_norm.weight")
    with pytest.raises(RuntimeError, match="q_norm.weight"):
        model.load_state_dict(weights, strict=True)
    del weights["spatial_blocks.0.attn.q_norm.gamma"], weights["rope.freqs"]
    with pytest.raises(RuntimeError, match="rope.freqs"):
        model.load_state_dict(weights, strict=True)


# ---- forward: defaults, layout, flash switch, capture ----------------------------------------------------------
def test_absent_x_mask_and_mask_give_the_same_output_as_all_true_and_all_ones():
    model = build(TINY)
    inputs = torch_inputs(case_inputs("stdit3-tiny-padded"))
    full = dict(inputs, mask=torch.ones(2, 8, dtype=torch.int64), x_mask=torch.ones(2, 3, dtype=torch.bool))
    with torch.no_grad():
        a = model(**full)
        b = model(**{k: v for k, v in full.items() if k not in ("mask", "x_mask")})
        c = model(**dict(full, x_mask=torch.tensor([[False, True, True], [True, True, True]])))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0, :, 0], c[0, :, 0]) and torch.equal(a[1], c[1])


def test_the_residual_stream_keeps_the_patch_embeddings_channel_first_layout():
    """Upstream's x_embedder output is a transposed view; ``x + pos_emb`` and every residual add keep that memory
    layout, so cross_attn.q_linear reads a non-contiguous input in every block (torch's F.linear then rounds the
    matmul and the bias add separately in bf16/fp16). The MindSpore port reproduces this rounding."""
    model = build(dict(TINY, depth=2), dtype=torch.bfloat16)
    seen = {}

    def record(name):
        def hook(module, args):
            seen.setdefault(name, args[0].is_contiguous())
        return hook

    for name, mod in model.named_modules():
        if name.endswith(("cross_attn.q_linear", "attn.qkv", "mlp.fc1", "cross_attn.kv_linear", "final_layer.linear")):
            mod.register_forward_pre_hook(record(name))
    with torch.no_grad():
        model(**torch_inputs(case_inputs("stdit3-tiny-xmask")))
    assert {n for n, c in seen.items() if not c} == {f"{k}_blocks.{i}.cross_attn.q_linear"
                                                     for k in ("spatial", "temporal") for i in range(2)}


def test_flash_attention_switch_agrees_with_the_manual_path_in_fp32():
    inputs = torch_inputs(case_inputs("stdit3-tiny-padded"))
    manual, flash = build(TINY), build(dict(TINY, enable_flash_attn=True))
    calls = []
    orig = R.flash_attn_func
    R.flash_attn_func = lambda *a, **k: (calls.append(a[0].shape), orig(*a, **k))[1]
    try:
        with torch.no_grad():
            a, b = manual(**inputs), flash(**inputs)
    finally:
        R.flash_attn_func = orig
    # spatial attention (N = S = 15 > B·T = 6) takes flash, temporal (N = T = 3 < B·S = 30) stays manual
    assert calls == [(6, 15, 2, 16)] * 2
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-6 * float(a.abs().max()))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_probe_is_captured_with_its_documented_shape(precision):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    model = build(TINY, dtype=dtype)
    inputs = torch_inputs(case_inputs("stdit3-tiny-padded"))
    got = {}
    with TorchCapture(model, capture_specs(2), lambda n, a, d: got.__setitem__(n, (a, d))), torch.no_grad():
        out = model(**inputs)
    with torch.no_grad():
        plain = model(**inputs)
    assert torch.equal(out, plain)
    assert set(got) == set(fam.probe_names(fam.parse_config(TINY)))
    shapes = {k: a.shape for k, (a, _) in got.items()}
    C = 32
    assert shapes["pos_emb"] == (1, 15, C) and shapes["t_mlp"] == (2, 6 * C) and shapes["t0_mlp"] == (2, 6 * C)
    assert shapes["t"] == shapes["t0"] == shapes["t_embedding"] == shapes["fps_embedding"] == (2, C)
    assert shapes["y_projected"] == (2, 1, 8, C) and shapes["y"] == (1, 13, C)
    assert got["y_lens"][0].tolist() == [5, 8]
    assert shapes["hidden_states_patch_embedding"] == shapes["hidden_states_1_temporal_block"] == (2, 45, C)
    assert shapes["hidden_states_final_layer"] == (2, 45, 32) and shapes["hidden_states_output"] == (2, 8, 3, 6, 10)
    np.testing.assert_array_equal(got["hidden_states_output"][0], out.numpy())
    assert got["hidden_states_0_spatial_block"][1] == ("float32" if precision == "fp32" else "bfloat16")
    t_sum = got["t_embedding"][0] + got["fps_embedding"][0]                   # t = t_embedder + fps_embedder
    np.testing.assert_array_equal(got["t"][0], t_sum if precision == "fp32" else round_to_bf16(t_sum))
