"""The attention seam: portable path vs float64 math, chunking, and the Ascend branch (mask conversion, layouts,
head padding, scale) run on CPU against an emulation of ``flash_attention_score``'s documented contract."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import mindspore as ms
from mindspore import Tensor

from ms_impl import attention as A
from ms_impl.precision import round_to_bf16_split
from ms_impl.tests.helpers import FAST


def _ref_attention(q, k, v, bias, heads, scale):
    """float64 numpy reference of softmax(q k^T scale + bias) v, batch-first (B, S, H)."""
    b, sq, h = q.shape
    d = h // heads
    qh = q.astype(np.float64).reshape(b, sq, heads, d).transpose(0, 2, 1, 3)
    kh = k.astype(np.float64).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
    vh = v.astype(np.float64).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
    s = qh @ kh.transpose(0, 1, 3, 2) * scale
    if bias is not None:
        s = s + bias.astype(np.float64)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(b, sq, h)


def _bias(rng, b, sk, masked_frac, pad):
    """Additive bias (B, 1, 1, Sk): -10000 masked tokens, -9980 Skiparse padding at the end, >= 1 kept key."""
    bias = np.where(rng.random((b, 1, 1, sk)) < masked_frac, -10000.0, 0.0).astype(np.float32)
    if pad:
        bias[..., sk - pad:] = -9980.0
    bias[..., 0] = 0.0
    return bias


@st.composite
def attention_case(draw):
    b = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 3))
    d = draw(st.sampled_from([8, 12, 24, 32]))
    sq = draw(st.integers(1, 40))
    sk = draw(st.integers(1, 40))
    masked = draw(st.sampled_from([0.0, 0.3, 0.8]))
    pad = draw(st.integers(0, min(3, sk - 1)))
    seed = draw(st.integers(0, 2 ** 16))
    return b, heads, d, sq, sk, masked, pad, seed


def _qkv(rng, b, heads, d, sq, sk):
    q = rng.standard_normal((b, sq, heads * d)).astype(np.float32)
    k = rng.standard_normal((b, sk, heads * d)).astype(np.float32)
    v = rng.standard_normal((b, sk, heads * d)).astype(np.float32)
    return q, k, v


# MindSpore's fp32 softmax kernel (the default): its exp is up to ~100 ULP (6e-6 relative) off, and outputs are
# convex combinations of values |v| < ~5; normalised in float64 the port is within 1 ULP of the exact softmax.
@pytest.mark.parametrize("precise,atol", [(False, 1e-5), (True, 2e-6)], ids=["fp32-softmax", "fp64-softmax"])
@FAST
@given(case=attention_case(), budget=st.integers(1, 2000))
def test_portable_matches_float64_and_chunking_is_invisible(precise, atol, case, budget):
    default = A.PRECISE_SOFTMAX
    A.PRECISE_SOFTMAX = precise
    try:
        _check_portable_against_float64(case, budget, atol)
    finally:
        A.PRECISE_SOFTMAX = default


def _check_portable_against_float64(case, budget, atol):
    b, heads, d, sq, sk, masked, pad, seed = case
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, b, heads, d, sq, sk)
    bias = _bias(rng, b, sk, masked, pad)
    scale = d ** -0.5
    args = (Tensor(q), Tensor(k), Tensor(v), Tensor(bias))
    whole = A.portable_attention(*args, heads=heads, scale=scale, chunk_elements=1 << 30).asnumpy()
    chunked = A.portable_attention(*args, heads=heads, scale=scale, chunk_elements=budget).asnumpy()
    np.testing.assert_allclose(whole, _ref_attention(q, k, v, bias, heads, scale), rtol=0, atol=atol)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


@FAST
@given(attention_case())
def test_one_chunk_path_matches_the_prepared_keys_path(case):
    """Same softmax and value matmul; the score matmul with a transposed operand (no kᵀ copy) can round a score
    1 ULP differently from the matmul on prepared kᵀ at some shapes, which the fp32 softmax passes on."""
    b, heads, d, sq, sk, masked, pad, seed = case
    rng = np.random.default_rng(seed)
    q, k, v = (Tensor(x) for x in _qkv(rng, b, heads, d, sq, sk))
    bias = Tensor(_bias(rng, b, sk, masked, pad))
    whole = A.attend_whole(q, k, v, bias, heads=heads, scale=d ** -0.5).asnumpy()
    k_t, v_prepared = A.prepare_keys(k, v, heads)
    prepared = A.attend_prepared(q, k_t, v_prepared, bias, heads=heads, scale=d ** -0.5, chunk_elements=1 << 30)
    np.testing.assert_allclose(whole, prepared.asnumpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("a_shape,b_shape", [((4, 2, 49, 96), (4, 2, 96, 5280)),    # released Skiparse score chunk
                                              ((4, 2, 49, 5280), (4, 2, 5280, 96)),  # and its value matmul
                                              ((1, 3, 7, 24), (1, 3, 24, 40)), ((2, 1, 1, 8), (2, 1, 8, 3))])
def test_batch_matmul_primitive_gives_mint_matmul_values(a_shape, b_shape):
    """The portable path's BatchMatMul (operands read in place, no pool workspace) is mint.matmul bit for bit,
    also with a head-split (transposed) first operand."""
    from mindspore import mint

    rng = np.random.default_rng(1)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    np.testing.assert_array_equal(A._matmul(Tensor(a), Tensor(b)).asnumpy(),
                                  mint.matmul(Tensor(a), Tensor(b)).asnumpy())
    n, h, s, d = a_shape
    split = A.split_heads(Tensor(np.ascontiguousarray(a.transpose(0, 2, 1, 3)).reshape(n, s, h * d)), h)
    np.testing.assert_array_equal(A._matmul(split, Tensor(b)).asnumpy(), mint.matmul(split, Tensor(b)).asnumpy())


def test_portable_chunking_bounds_the_score_block(monkeypatch):
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 2, 2, 8, 50, 30)
    seen = []
    real = A.softmax_precise
    monkeypatch.setattr(A, "softmax_precise", lambda s: (seen.append(s.shape), real(s))[1])
    A.portable_attention(Tensor(q), Tensor(k), Tensor(v), None, heads=2, scale=0.3, chunk_elements=2 * 2 * 30 * 7)
    assert [s[2] for s in seen] == [7] * 7 + [1]
    assert all(int(np.prod(s)) <= 2 * 2 * 30 * 7 for s in seen)


@FAST
@given(attention_case(), st.sampled_from(["fp16", "bf16"]), st.sampled_from(A.ASCEND_LAYOUTS))
def test_ascend_branch_emulated_equals_portable(case, precision, layout):
    """Layout, bias->bool mask, head-dim padding and explicit scale of the Ascend branch, with the kernel emulated."""
    b, heads, d, sq, sk, masked, pad, seed = case
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, b, heads, d, sq, sk)
    bias = _bias(rng, b, sk, masked, pad)
    if precision == "fp16":
        act, kernel_dtype = ms.float16, ms.float16
        tq, tk, tv, tb = (Tensor(x).astype(ms.float16) for x in (q, k, v, bias))
    else:  # bf16 emulation: bf16-valued float32 activations, the kernel fed real bf16
        act, kernel_dtype = ms.float32, ms.bfloat16
        tq, tk, tv, tb = (round_to_bf16_split(Tensor(x)) for x in (q, k, v, bias))
    scale = d ** -0.5
    portable = A.portable_attention(tq, tk, tv, tb, heads=heads, scale=scale)
    emulated = A.ascend_attention(tq, tk, tv, tb, heads=heads, scale=scale, layout=layout,
                                  kernel=A.emulated_flash_attention_score, kernel_dtype=kernel_dtype)
    assert emulated.dtype == act and emulated.shape == portable.shape
    p = portable.astype(ms.float32).asnumpy()
    e = emulated.astype(ms.float32).asnumpy()
    if precision == "bf16":
        e_rounded = round_to_bf16_split(portable).asnumpy()  # the kernel returns bf16
        np.testing.assert_array_equal(e, e_rounded)
    else:
        np.testing.assert_array_equal(e, p)


def test_attention_dispatches_on_the_module_setting(monkeypatch):
    rng = np.random.default_rng(1)
    q, k, v = (Tensor(x).astype(ms.float16) for x in _qkv(rng, 1, 2, 24, 5, 6))
    calls = []
    real = A.emulated_flash_attention_score
    monkeypatch.setattr(A, "emulated_flash_attention_score", lambda *a, **kw: (calls.append(kw), real(*a, **kw))[1])
    with A.use_backend("ascend-emulated"):
        A.attention(q, k, v, None, heads=2, scale=24 ** -0.5)
    assert len(calls) == 1 and calls[0]["scalar_value"] == pytest.approx(24 ** -0.5)
    assert calls[0]["input_layout"] == A.ASCEND_LAYOUT
    with A.use_backend("portable"):
        A.attention(q, k, v, None, heads=2, scale=24 ** -0.5)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="unknown attention backend"):
        A.set_backend("cuda")


def test_default_backends():
    assert A.default_backend("CPU", "bf16") == "portable"
    assert A.default_backend("GPU", "fp16") == "portable"
    assert A.default_backend("Ascend", "fp16") == "ascend"
    assert A.default_backend("Ascend", "bf16") == "ascend"
    assert A.default_backend("Ascend", "fp32") == "portable"   # fp32 stays fp32: the kernel has no fp32


def test_fp32_is_refused_by_the_ascend_branch():
    q = Tensor(np.ones((1, 4, 32), np.float32))
    with pytest.raises(ValueError, match="float16/bfloat16"):
        A.ascend_attention(q, q, q, None, heads=2, scale=0.25, kernel=A.emulated_flash_attention_score)


def test_bias_to_discard_mask():
    bias = np.array([0.0, -10000.0, -9980.0, 0.0, -9984.0], np.float32).reshape(1, 1, 1, 5)
    bias = np.concatenate([bias, np.zeros_like(bias)], 0)
    mask = A.bias_to_discard_mask(Tensor(bias), 3)
    assert mask.dtype == ms.bool_ and mask.shape == (2, 1, 3, 5)
    expected = np.broadcast_to(bias != 0, (2, 1, 3, 5))
    np.testing.assert_array_equal(mask.asnumpy(), expected)
    assert A.bias_to_discard_mask(None, 3) is None
    with pytest.raises(ValueError, match=r"\(B, 1, 1, Sk\)"):
        A.bias_to_discard_mask(Tensor(np.zeros((2, 2, 1, 5), np.float32)), 3)


@pytest.mark.parametrize("layout", A.ASCEND_LAYOUTS)
@pytest.mark.parametrize("d", [12, 24, 32, 96])
def test_layout_round_trip_and_head_padding(layout, d):
    x = np.random.default_rng(2).standard_normal((2, 7, 3 * d)).astype(np.float32)
    dp = A.padded_head_dim(d)
    assert dp % 16 == 0 and d <= dp < d + 16
    y = A.to_fa_layout(Tensor(x), 3, dp, layout)
    yn = y.asnumpy()
    if layout == "BNSD":
        assert yn.shape == (2, 3, 7, dp)
        np.testing.assert_array_equal(yn[..., :d], x.reshape(2, 7, 3, d).transpose(0, 2, 1, 3))
        assert not yn[..., d:].any()
    else:
        assert yn.shape == (2, 7, 3 * dp)
        np.testing.assert_array_equal(yn.reshape(2, 7, 3, dp)[..., :d], x.reshape(2, 7, 3, d))
        assert not yn.reshape(2, 7, 3, dp)[..., d:].any()
    np.testing.assert_array_equal(A.from_fa_layout(y, 3, d, layout).asnumpy(), x)


def test_fully_masked_query_differs_between_additive_bias_and_hard_mask():
    """The one documented difference: a query whose keys are all masked.

    Additive bias (-10000 on every key): softmax(s - 10000) == softmax(s), i.e. ordinary attention over all keys.
    Hard mask (flash_attention_score): every key gets the same extreme score -> the uniform average of v.
    """
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 1, 16, 3, 5)
    q *= 0.5
    bias = np.full((1, 1, 1, 5), -10000.0, np.float32)
    tq, tk, tv = (Tensor(x).astype(ms.float16) for x in (q, k, v))
    tb = Tensor(bias).astype(ms.float16)
    additive = A.portable_attention(tq, tk, tv, tb, heads=1, scale=0.25).astype(ms.float32).asnumpy()
    hard = A.ascend_attention(tq, tk, tv, tb, heads=1, scale=0.25,
                              kernel=A.emulated_flash_attention_score).astype(ms.float32).asnumpy()
    q16, k16, v16 = (x.astype(np.float16).astype(np.float32) for x in (q, k, v))
    unmasked = _ref_attention(q16, k16, v16, None, 1, 0.25)
    uniform = np.broadcast_to(v16.mean(axis=1, keepdims=True), hard.shape)
    np.testing.assert_allclose(additive, unmasked, atol=4e-3)
    np.testing.assert_allclose(hard, uniform, atol=2e-3)
    assert np.abs(additive - hard).max() > 0.05


class TestEmulatedKernelContract:
    def _t(self, *shape, dtype=ms.float16):
        return Tensor(np.random.default_rng(4).standard_normal(shape).astype(np.float32)).astype(dtype)

    def test_rejects_fp32_and_bad_head_dim(self):
        with pytest.raises(ValueError, match="float16 or bfloat16"):
            A.emulated_flash_attention_score(*(self._t(1, 4, 32, dtype=ms.float32),) * 3, 2)
        with pytest.raises(ValueError, match="multiple of 16"):
            A.emulated_flash_attention_score(*(self._t(1, 4, 48),) * 3, 2)  # D = 24

    def test_rejects_bad_masks_and_dropout(self):
        q = self._t(1, 4, 32)
        with pytest.raises(ValueError, match="bool or uint8"):
            A.emulated_flash_attention_score(q, q, q, 2, attn_mask=Tensor(np.zeros((1, 1, 4, 4), np.float32)))
        with pytest.raises(ValueError, match="attn_mask shape"):
            A.emulated_flash_attention_score(q, q, q, 2, attn_mask=Tensor(np.zeros((1, 1, 1, 4), np.bool_)))
        with pytest.raises(ValueError, match="keep_prob"):
            A.emulated_flash_attention_score(q, q, q, 2, keep_prob=0.9)

    @pytest.mark.parametrize("layout", ["BSH", "BNSD", "SBH", "BSND"])
    def test_layouts_and_band_agree_with_an_explicit_mask(self, layout):
        b, n, s, d = 2, 2, 6, 16
        x = np.random.default_rng(5).standard_normal((3, b, n, s, d)).astype(np.float32)

        def lay(t):
            if layout == "BNSD":
                return t
            if layout == "BSND":
                return t.transpose(0, 2, 1, 3)
            bsh = t.transpose(0, 2, 1, 3).reshape(b, s, n * d)
            return bsh.transpose(1, 0, 2) if layout == "SBH" else bsh

        def unlay(o):
            if layout == "BNSD":
                return o
            if layout == "BSND":
                return o.transpose(0, 2, 1, 3)
            o = o.transpose(1, 0, 2) if layout == "SBH" else o
            return o.reshape(b, s, n, d).transpose(0, 2, 1, 3)

        q, k, v = (Tensor(lay(t)).astype(ms.float16) for t in x)
        i, j = np.arange(s)[:, None], np.arange(s)[None, :]
        band = (j < i - 1) | (j > i + 2)
        banded = A.emulated_flash_attention_score(q, k, v, n, pre_tokens=1, next_tokens=2, input_layout=layout,
                                                  scalar_value=0.25)
        masked = A.emulated_flash_attention_score(q, k, v, n, attn_mask=Tensor(band), input_layout=layout,
                                                  scalar_value=0.25)
        np.testing.assert_array_equal(banded.asnumpy(), masked.asnumpy())
        xh = x.astype(np.float16).astype(np.float64)
        sc = np.where(band, -np.inf, xh[0] @ xh[1].transpose(0, 1, 3, 2) * 0.25)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        ref = (p / p.sum(-1, keepdims=True)) @ xh[2]
        np.testing.assert_allclose(unlay(masked.astype(ms.float32).asnumpy()), ref, atol=2e-3)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_whole_model_ascend_emulated_equals_portable(precision):
    """The model's attention through the emulated Ascend branch (head_dim 24 padded to 32, Skiparse masks with
    -9980 padding, ragged text) gives the portable path's output."""
    from ms_impl import harness
    from ms_impl.attention import set_attention_backend
    from ms_impl.tests.helpers import make_inputs, numpy_weights, tiny_config

    cfg = tiny_config(num_layers=4)
    model = harness.build_model(cfg, numpy_weights(cfg, 3), precision, attention_backend="ascend-emulated")
    assert model.attention_backend == "ascend-emulated"
    inputs = make_inputs(seed=9)     # 45 tokens: Skiparse pads to 48; ragged text masks
    calls = []
    real = A.emulated_flash_attention_score
    try:
        A.emulated_flash_attention_score = lambda *a, **kw: (calls.append(1), real(*a, **kw))[1]
        emulated = harness.forward(model, inputs)
    finally:
        A.emulated_flash_attention_score = real
    assert len(calls) == 2 * cfg["num_layers"]
    set_attention_backend(model, "portable")
    portable = harness.forward(model, inputs)
    np.testing.assert_array_equal(emulated, portable)
    assert A.get_backend() is None          # building a model never changes the process-wide setting
