"""The reference model's pieces against independent formulations: Skiparse == masked dense attention,
3D RoPE vs an fp64 numpy implementation, patch (un)embedding order, mask preparation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parity.families.opensora_v13.shapes import skiparse_allowed, skiparse_token_order, sparse_padded_length
from reference_torch import modeling_opensora as M

pytestmark = pytest.mark.torch


def _attention_pair(sparse_n: int, group: bool, cross: bool, dim: int = 48, heads: int = 2, seed: int = 0):
    """(sparse, dense) Attention modules with identical weights."""
    torch.manual_seed(seed)
    kw = dict(query_dim=dim, heads=heads, dim_head=dim // heads, bias=True, sparse_n=sparse_n, sparse_group=group,
              is_cross_attn=cross, cross_attention_dim=dim if cross else None)
    sparse = M.Attention(sparse1d=True, **kw)
    dense = M.Attention(sparse1d=False, **kw)
    dense.load_state_dict(sparse.state_dict())
    return sparse.eval(), dense.eval()


@pytest.mark.parametrize("grid", [(3, 5, 3), (4, 4, 4), (1, 3, 5), (2, 5, 7)])  # S = 45, 64, 15, 70
@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("sparse_n", [4, 2])
def test_skiparse_self_attention_equals_dense_with_block_mask(grid, group, sparse_n):
    t, h, w = grid
    seq = t * h * w
    batch, heads = 2, 2
    sparse, dense = _attention_pair(sparse_n, group, cross=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(seq, batch, 48, generator=gen)
    valid = torch.ones(batch, seq, dtype=torch.bool)
    valid[0, seq // 3: seq // 2] = False  # some masked keys in sample 0
    bias = (1 - valid.float()) * -10000.0  # (B, S)
    masks = M.Attention.prepare_sparse_mask(bias[:, None], torch.zeros(batch, 1, 3), sparse_n, heads)
    with torch.no_grad():
        out_sparse = sparse(x, attention_mask=masks[group][0], frame=t, height=h, width=w)
        allowed = torch.from_numpy(skiparse_allowed(seq, sparse_n, group))  # (S, S)
        dense_bias = torch.where(allowed[None] & valid[:, None, :], 0.0, -10000.0)[:, None]  # (B, 1, S, S)
        out_dense = dense(x, attention_mask=dense_bias, frame=t, height=h, width=w)
    assert out_sparse.shape == (seq, batch, 48)
    np.testing.assert_allclose(out_sparse.numpy(), out_dense.numpy(), atol=2e-6, rtol=0)


@pytest.mark.parametrize("group", [False, True])
def test_skiparse_cross_attention_equals_dense(group):
    t, h, w = 3, 5, 3
    seq, batch, heads, text_len = t * h * w, 2, 2, 6
    sparse, dense = _attention_pair(4, group, cross=True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(seq, batch, 48, generator=gen)
    text = torch.randn(text_len, batch, 48, generator=gen)
    text_bias = torch.zeros(batch, 1, text_len)
    text_bias[0, 0, 4:] = -10000.0
    video_bias = torch.zeros(batch, 1, seq)
    sparse_masks = M.Attention.prepare_sparse_mask(video_bias, text_bias, 4, heads)
    dense_masks = M.Attention.prepare_sparse_mask(video_bias, text_bias, 1, heads)
    with torch.no_grad():
        a = sparse(x, encoder_hidden_states=text, attention_mask=sparse_masks[group][1], frame=t, height=h, width=w)
        b = dense(x, encoder_hidden_states=text, attention_mask=dense_masks[group][1], frame=t, height=h, width=w)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("seq", [45, 64, 5])
def test_sparse_1d_regrouping_matches_token_order_and_inverts(group, seq):
    proc = M.OpenSoraAttnProcessor2_0(sparse1d=True, sparse_n=4, sparse_group=group, is_cross_attn=False)
    batch = 3
    x = torch.arange(seq, dtype=torch.float32)[:, None, None].expand(seq, batch, 2) * 10 + \
        torch.arange(batch, dtype=torch.float32)[None, :, None]
    grouped, pad = proc._sparse_1d(x, 1, 1, seq)
    s_pad = sparse_padded_length(seq, 4)
    assert pad == s_pad - seq and grouped.shape == (s_pad // 4, 4 * batch, 2)
    order = skiparse_token_order(seq, 4, group)  # (k, S_pad/k) token index
    for j in range(4):
        for b in range(batch):
            got = grouped[:, j * batch + b, 0].numpy()  # k-major sub-batch index j*B + b
            want = np.where(order[j] < seq, order[j] * 10.0 + b, 0.0)  # zero padding
            np.testing.assert_array_equal(got, want)
    back = proc._reverse_sparse_1d(grouped, 1, 1, seq, pad)
    assert torch.equal(back, x)


# ---------------------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------------------


def _rope_numpy(tokens: np.ndarray, t: int, h: int, w: int, scales=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Independent fp64 3D RoPE: per-axis chunk, rotate-half pairing i <-> i + D3/2."""
    s, b, n, d = tokens.shape
    d3 = d // 3
    half = d3 // 2
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    positions = [tt.ravel(), hh.ravel(), ww.ravel()]
    out = np.empty_like(tokens, dtype=np.float64)
    for axis in range(3):
        chunk = tokens[..., axis * d3:(axis + 1) * d3].astype(np.float64)
        inv = 1.0 / 10000.0 ** (np.arange(0, d3, 2) / d3)
        ang = (positions[axis] / scales[axis])[:, None] * inv[None, :]  # (S, half)
        cos, sin = np.cos(ang)[:, None, None, :], np.sin(ang)[:, None, None, :]
        x1, x2 = chunk[..., :half], chunk[..., half:]
        out[..., axis * d3: axis * d3 + half] = x1 * cos - x2 * sin
        out[..., axis * d3 + half:(axis + 1) * d3] = x2 * cos + x1 * sin
    return out


@pytest.mark.parametrize("head_dim,grid", [(24, (3, 5, 4)), (96, (5, 6, 9)), (48, (7, 2, 3))])
def test_rope3d_matches_independent_fp64(head_dim, grid):
    t, h, w = grid
    seq, batch, heads = t * h * w, 2, 3
    tokens = torch.randn(seq, batch, heads, head_dim, generator=torch.Generator().manual_seed(0))
    rope, getter = M.RoPE3D(), M.PositionGetter3D()
    got = rope(tokens, getter(batch, t, h, w, tokens.device)).numpy()
    want = _rope_numpy(tokens.numpy(), t, h, w)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_rope_tables_cast_to_activation_dtype_before_cos_sin_and_cached():
    rope = M.RoPE3D()
    cos16, _ = rope.get_cos_sin(32, 40, torch.device("cpu"), torch.float16)
    cos32, _ = rope.get_cos_sin(32, 40, torch.device("cpu"), torch.float32)
    assert cos16.dtype == torch.float16 and cos32.dtype == torch.float32
    inv = 1.0 / (10000.0 ** (torch.arange(0, 32, 2).float() / 32))
    angles16 = torch.outer(torch.arange(40).float(), inv).half()
    assert torch.equal(cos16[:, :16], angles16.cos())  # fp16 angle, then cos — as upstream
    assert torch.equal(cos16[:, 16:], cos16[:, :16])  # cat(freqs, freqs)
    assert len(rope.cache) == 2
    assert rope.get_cos_sin(32, 40, torch.device("cpu"), torch.float16)[0] is cos16


def test_rotate_half_pairing():
    x = torch.arange(8.0)
    assert M.RoPE3D.rotate_half(x).tolist() == [-4.0, -5.0, -6.0, -7.0, 0.0, 1.0, 2.0, 3.0]


# ---------------------------------------------------------------------------------------------------------
# patch embedding / unpatchify
# ---------------------------------------------------------------------------------------------------------


def _patchify_numpy(x: np.ndarray, p: int) -> np.ndarray:
    """(B, C, T, H, W) -> (B, T·H'·W', p·p·C) with tokens t-major then h, w and features (ph, pw, C)."""
    b, c, t, h, w = x.shape
    hp, wp = h // p, w // p
    x = x[:, :, :, :hp * p, :wp * p].reshape(b, c, t, hp, p, wp, p)
    return x.transpose(0, 2, 3, 5, 4, 6, 1).reshape(b, t * hp * wp, p * p * c)


def test_unpatchify_feature_order_and_round_trip():
    model = M.OpenSoraT2V_v1_3(**_tiny_kwargs())
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 6, 4)).astype(np.float32)
    tokens = _patchify_numpy(x, 2)  # features ordered (pt=1, ph, pw, C)
    out = model._unpatchify(torch.from_numpy(tokens), 3, 3, 2).numpy()
    np.testing.assert_array_equal(out, x)
    # feature index f = (ph·p + pw)·C + c lands at channel c, pixel (2h'+ph, 2w'+pw)
    one = np.zeros((1, 3 * 3 * 2, 32), np.float32)
    one[0, 0, (1 * 2 + 0) * 8 + 5] = 1.0
    img = model._unpatchify(torch.from_numpy(one), 3, 3, 2).numpy()
    assert img[0, 5, 0, 1, 0] == 1.0 and img.sum() == 1.0


def test_patch_embed_token_order_and_identity_round_trip():
    c, p = 8, 2
    embed = M.PatchEmbed2D(patch_size=p, in_channels=c, embed_dim=p * p * c)
    with torch.no_grad():  # one-hot conv: output feature (ph·p + pw)·C + c  <-  input (c, ph, pw)
        weight = torch.zeros(p * p * c, c, p, p)
        for ph in range(p):
            for pw in range(p):
                for ch in range(c):
                    weight[(ph * p + pw) * c + ch, ch, ph, pw] = 1.0
        embed.proj.weight.copy_(weight)
        embed.proj.bias.zero_()
    x = np.random.default_rng(1).standard_normal((2, c, 3, 7, 5)).astype(np.float32)  # odd H/W are floored
    tokens = embed(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(tokens, _patchify_numpy(x, p))
    model = M.OpenSoraT2V_v1_3(**_tiny_kwargs())
    back = model._unpatchify(torch.from_numpy(tokens), 3, 3, 2).numpy()
    np.testing.assert_array_equal(back, x[:, :, :, :6, :4])


def _tiny_kwargs(**kw):
    from reference_torch.tests.helpers import tiny_config
    return tiny_config(**kw)


# ---------------------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------------------


def test_prepare_sparse_mask_shapes_from_fact_sheet():
    video, text = torch.zeros(1, 1, 320), torch.zeros(1, 1, 16)
    m1 = M.Attention.prepare_sparse_mask(video, text, 1, 2)
    m4 = M.Attention.prepare_sparse_mask(video, text, 4, 2)
    for group in (False, True):
        assert tuple(m1[group][0].shape) == (1, 2, 1, 320) and tuple(m1[group][1].shape) == (1, 2, 1, 16)
        assert tuple(m4[group][0].shape) == (4, 2, 1, 80) and tuple(m4[group][1].shape) == (4, 2, 1, 16)
    assert torch.equal(m1[False][0], m1[True][0])


@pytest.mark.parametrize("group", [False, True])
def test_prepare_sparse_mask_content_k_major_and_padding(group):
    batch, seq, text_len, heads, n = 2, 45, 5, 3, 4
    rng = np.random.default_rng(0)
    video = np.where(rng.random((batch, 1, seq)) > 0.6, -10000.0, 0.0).astype(np.float32)
    text = np.where(rng.random((batch, 1, text_len)) > 0.5, -10000.0, 0.0).astype(np.float32)
    masks = M.Attention.prepare_sparse_mask(torch.from_numpy(video), torch.from_numpy(text), n, heads)
    v, t = masks[group][0].numpy(), masks[group][1].numpy()
    s_pad = sparse_padded_length(seq, n)
    assert v.shape == (n * batch, heads, 1, s_pad // n) and t.shape == (n * batch, heads, 1, text_len)
    padded = np.concatenate([video, np.full((batch, 1, s_pad - seq), -9980.0, np.float32)], axis=-1)
    order = skiparse_token_order(seq, n, group)
    for j in range(n):
        for b in range(batch):
            for hd in range(heads):  # repeat_interleave over heads: identical per head
                np.testing.assert_array_equal(v[j * batch + b, hd, 0], padded[b, 0, order[j]])
                np.testing.assert_array_equal(t[j * batch + b, hd, 0], text[b, 0])  # tiled, k-major
    assert (v == -9980.0).sum() == batch * heads * (s_pad - seq)


def test_mask_conversion_maxpool_any_valid_and_bias():
    from reference_torch import harness as H
    from reference_torch.tests.helpers import make_inputs, tiny_config
    from parity.probemap import family_capture_items

    cfg = tiny_config(num_layers=2, sparse1d=False, sparse_n=1)
    model = H.build_model(cfg, H.random_weights(cfg, 0), "fp32")
    inputs = make_inputs(0, batch=2, frames=2, height=6, width=6, text_len=4, text_lens=[2, 4])
    video = np.ones((2, 2, 6, 6), np.float32)
    video[0, :, :, 3:] = 0  # column 3 is the left pixel of patch column 1 -> patch column 1 stays valid
    video[1, 1, :2, :2] = 0  # one whole patch masked
    video[1, 0, 0, 0] = 0  # one pixel of a patch: still valid
    video[1, 0, 2, 2] = 7.0  # any non-zero value counts as valid
    inputs["attention_mask"] = video
    got = {}
    specs = [s for s in family_capture_items("opensora_v13", 2) if s.name.endswith("_converted")]
    H.capture(model, inputs, specs, lambda name, arr, dt: got.__setitem__(name, (arr, dt)))
    conv, dtype = got["attention_mask_converted"]
    assert dtype == "float32" and conv.shape == (2, 1, 2 * 3 * 3)
    pooled = video.reshape(2, 2, 3, 2, 3, 2).max(axis=(3, 5)).reshape(2, 1, -1)
    np.testing.assert_array_equal(conv, np.where(pooled != 0, 0.0, -10000.0))
    assert conv[0, 0].reshape(2, 3, 3)[:, :, 2].min() == -10000.0 and conv[0, 0].reshape(2, 3, 3)[:, :, 1].max() == 0
    assert conv[1, 0, 9] == -10000.0 and conv[1, 0, 0] == 0.0
    text, _ = got["encoder_attention_mask_converted"]
    np.testing.assert_array_equal(text, (1 - inputs["encoder_attention_mask"]) * -10000.0)


# ---------------------------------------------------------------------------------------------------------
# timestep embedding
# ---------------------------------------------------------------------------------------------------------


def test_timestep_sinusoid_cos_first_shift_zero():
    t = torch.tensor([0.0, 1.0, 999.0])
    emb = M.get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
    freqs = np.exp(-math.log(10000) * np.arange(128) / 128.0)
    args = t.numpy()[:, None].astype(np.float64) * freqs[None]
    np.testing.assert_allclose(emb[:, :128], np.cos(args), atol=2e-4)
    np.testing.assert_allclose(emb[:, 128:], np.sin(args), atol=2e-4)
    assert emb[0, 0] == 1.0 and emb[0, 128] == 0.0
