"""Each MindSpore building block of the STDiT port, and the whole model, against its PyTorch twin
(``reference_torch.modeling_stdit``) with identical weights: property-based over shapes, batches, text lengths and
masks, in fp32, fp16 and emulated bf16 (vs torch bf16), with the v1.3 twins' bounds. Tensors the torch model sees
in upstream's residual-stream layout (the patch embedding's transposed view) are given to the twin in that layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch", exc_type=ImportError)

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

import ms_impl.modeling_stdit as M  # noqa: E402
import parity.families.stdit as family  # noqa: E402
import reference_torch.modeling_stdit as R  # noqa: E402
from ms_impl.precision import numerics_for  # noqa: E402
from ms_impl.tests import stdit_helpers as H  # noqa: E402
from parity.families.stdit.cases import CASES  # noqa: E402
from parity.families.stdit.config import STDiTConfig  # noqa: E402
from parity.families.stdit.statedict import random_weights  # noqa: E402
from parity.families.stdit.testing import make_inputs, probe_specs, tiny_config  # noqa: E402
from reference_torch.tests import stdit_helpers as TH  # noqa: E402

pytestmark = pytest.mark.torch

PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = TH.TORCH_DTYPES
FAST = settings(max_examples=10, deadline=None)
FASTER = settings(max_examples=5, deadline=None)


def twin(torch_module, ms_cell, precision):
    """The same weights in both (torch's default init), each cast to ``precision`` (bf16 -> emulated here)."""
    ms_cell.load_state_dict({k: Tensor(v.detach().float().numpy().copy()) for k, v in
                             torch_module.state_dict().items()}, strict=True)
    M.set_precision(ms_cell, numerics_for(precision).label)
    return torch_module.to(TORCH_DTYPES[precision]).eval(), ms_cell


def t_in(x, precision):
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(TORCH_DTYPES[precision])


def t_stream(x, precision):
    """(B, N, C) in upstream's residual-stream layout: a transposed view of a (B, C, N) buffer."""
    return t_in(x, precision).transpose(1, 2).contiguous().transpose(1, 2)


def m_in(x, precision):
    nx = numerics_for(precision)
    return nx(Tensor(np.ascontiguousarray(x, np.float32)).astype(nx.dtype))


def t_np(x):
    return x.detach().float().numpy()


def m_np(x):
    return x.astype(ms.float32).asnumpy()


# ---- embeddings ------------------------------------------------------------------------------------------------------
# MindSpore's CPU matmul reproduces torch's sums from this many rows on (fewer rows take another kernel)
EXACT_MATMUL_ROWS = 16


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.integers(1, 13),
       st.sampled_from(PRECISIONS), st.integers(0, 99))
def test_patch_embed(b, c, t, h, w, precision, seed):
    """fp32: bit for bit from 16 patches on (the matmul sums each patch in the order torch's CPU convolution takes
    for the shape; odd H/W are zero-padded as upstream); within a few ULP below."""
    torch.manual_seed(seed)
    tm, mm = twin(R.PatchEmbed3D((1, 2, 2), c, 32), M.PatchEmbed3D((1, 2, 2), c, 32), precision)
    x = np.random.default_rng(seed).standard_normal((b, c, t, h, w)).astype(np.float32)
    with torch.no_grad():
        ref = t_np(tm(t_in(x, precision)))
    got = m_np(mm(m_in(x, precision)))
    if precision == "fp32" and got.shape[0] * got.shape[1] >= EXACT_MATMUL_ROWS:
        np.testing.assert_array_equal(got, ref)
    elif precision == "fp32":
        H.assert_twin(got, ref, precision, fp32_atol=4e-7, what="patch embed (few patches)")
    else:
        H.assert_twin(got, ref, precision, low_ulps=1.0, what="patch embed")


def test_timestep_frequencies_and_sinusoid_against_torch():
    """The host table equals torch's float32 chain but in a few of 128 entries, where torch's own fp32 exp is one
    ULP off (2 entries with torch's AVX2 kernels, 3 with its AVX512 ones); the sinusoid then differs by at most
    |t|·(that ULP) in those channels, and by <= 1 fp32 ULP elsewhere."""
    half = 128
    ref = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half).numpy()
    got = M.timestep_frequencies(half)
    off = np.flatnonzero(got != ref)
    assert len(off) <= 4 and np.all(np.abs(got[off] - ref[off]) <= np.spacing(ref[off]))
    t = np.array([0.0, 1.0, 249.5, 999.0], np.float32)
    ref_emb = R.TimestepEmbedder.timestep_embedding(torch.from_numpy(t), 256).numpy()
    got_emb = M.TimestepEmbedder.timestep_embedding(Tensor(t), 256).asnumpy()
    bound = np.full(256, 1.2e-7)
    for i in off:
        bound[[i, i + half]] += float(t.max()) * float(np.spacing(ref[i])) * 1.01
    assert np.all(np.abs(got_emb - ref_emb) <= bound[None])


@FAST
@given(st.integers(1, 3), st.sampled_from([16, 64]), st.lists(st.floats(0, 1000, width=32), min_size=3, max_size=3),
       st.sampled_from(PRECISIONS), st.integers(0, 99))
def test_timestep_embedder_mlp_and_t_block(b, d, ts, precision, seed):
    """Given the same sinusoid (tested above), the embedder's MLP and t_block (SiLU, Linear)."""
    torch.manual_seed(seed)
    te, me = twin(R.TimestepEmbedder(d), M.TimestepEmbedder(d), precision)
    tb, mb = twin(torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(d, 6 * d)),
                  M.nn.SequentialCell(M.SiLU(), M.Linear(d, 6 * d)), precision)
    freq = R.TimestepEmbedder.timestep_embedding(torch.tensor(ts[:b]), 256).numpy()
    with torch.no_grad():
        ref = te.mlp(t_in(freq, precision))
        ref6 = tb(ref)
    got = me.mlp(m_in(freq, precision))
    got6 = mb(got)
    H.assert_twin(m_np(got), t_np(ref), precision, what="t_embedder.mlp")
    H.assert_twin(m_np(mb(m_in(t_np(ref), precision))), t_np(ref6), precision, what="t_block")
    assert np.isfinite(m_np(got6)).all()


@FAST
@given(st.integers(1, 3), st.integers(2, 9), st.sampled_from([16, 48]), st.sampled_from(PRECISIONS), st.integers(0, 99))
def test_caption_embedder(b, length, dc, precision, seed):
    torch.manual_seed(seed)
    tm, mm = twin(R.CaptionEmbedder(dc, 32, 0.1, token_num=length), M.CaptionEmbedder(dc, 32, 0.1, token_num=length),
                  precision)
    y = np.random.default_rng(seed).standard_normal((b, 1, length, dc)).astype(np.float32) * 2
    with torch.no_grad():
        ref = tm(t_in(y, precision), False)
    H.assert_twin(m_np(mm(m_in(y, precision), False)), t_np(ref), precision, what="y_embedder")


# ---- attention -------------------------------------------------------------------------------------------------------
@FAST
@given(st.integers(1, 6), st.integers(1, 20), st.sampled_from([(32, 2), (48, 3), (64, 4)]), st.booleans(),
       st.sampled_from(PRECISIONS), st.integers(0, 999))
def test_self_attention(b, n, width_heads, flash, precision, seed):
    c, heads = width_heads
    torch.manual_seed(seed)
    tm, mm = twin(R.Attention(c, heads, qkv_bias=True, enable_flashattn=flash),
                  M.Attention(c, heads, qkv_bias=True, enable_flashattn=flash), precision)
    x = np.random.default_rng(seed).standard_normal((b, n, c)).astype(np.float32) * 2
    with torch.no_grad():
        ref = tm(t_in(x, precision))
    H.assert_twin(m_np(mm(m_in(x, precision))), t_np(ref), precision,
                  what=f"{'flash' if flash else 'math'} self-attention")


@st.composite
def text_case(draw):
    b = draw(st.integers(1, 4))
    return b, draw(st.integers(1, 16)), [draw(st.integers(1, 9)) for _ in range(b)], draw(st.integers(0, 999))


@FAST
@given(text_case(), st.sampled_from([(32, 2), (48, 4)]), st.booleans(), st.sampled_from(PRECISIONS))
def test_cross_attention_packed_text(case, width_heads, lengths_given, precision):
    b, n, y_lens, seed = case
    c, heads = width_heads
    torch.manual_seed(seed)
    tm, mm = twin(R.MultiHeadCrossAttention(c, heads), M.MultiHeadCrossAttention(c, heads), precision)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, n, c)).astype(np.float32)
    packed = rng.standard_normal((1, sum(y_lens), c)).astype(np.float32)
    lens = y_lens if lengths_given else None
    with torch.no_grad():
        ref = tm(t_stream(x, precision), t_in(packed, precision), lens)
    got = mm(m_in(x, precision), m_in(packed, precision), lens)
    H.assert_twin(m_np(got), t_np(ref), precision, what=f"cross-attention y_lens={lens}")


@FAST
@given(st.integers(1, 3), st.integers(1, 30), st.sampled_from(PRECISIONS), st.integers(0, 99))
def test_final_layer_and_unpatchify(b, n, precision, seed):
    torch.manual_seed(seed)
    tm, mm = twin(R.T2IFinalLayer(32, 4, 8), M.T2IFinalLayer(32, 4, 8), precision)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, n, 32)).astype(np.float32)
    t = (rng.standard_normal((b, 32)) * 0.5).astype(np.float32)
    with torch.no_grad():
        ref = tm(t_stream(x, precision), t_in(t, precision))
    H.assert_twin(m_np(mm(m_in(x, precision), m_in(t, precision))), t_np(ref), precision, what="final layer")


# ---- one block, the whole model --------------------------------------------------------------------------------------
@st.composite
def block_case(draw):
    b = draw(st.integers(1, 3))
    t, s = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    y_lens = [draw(st.integers(1, 7)) for _ in range(b)]
    return b, t, s, y_lens, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 9999))


@FAST
@given(block_case(), st.sampled_from(PRECISIONS))
def test_one_block(case, precision):
    b, t, s, y_lens, with_tpe, flash, seed = case
    c, heads = 48, 3
    torch.manual_seed(seed)
    tb, mb = twin(R.STDiTBlock(c, heads, d_s=s, d_t=t, enable_flashattn=flash),
                  M.STDiTBlock(c, heads, d_s=s, d_t=t, enable_flashattn=flash), precision)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t * s, c)).astype(np.float32)
    y = rng.standard_normal((1, sum(y_lens), c)).astype(np.float32)
    t0 = (rng.standard_normal((b, 6 * c)) * 0.3).astype(np.float32)
    tpe = rng.standard_normal((1, t, c)).astype(np.float32) if with_tpe else None
    with torch.no_grad():
        ref = tb(t_stream(x, precision), t_in(y, precision), t_in(t0, precision), y_lens,
                 None if tpe is None else t_in(tpe, precision))
    got = mb(m_in(x, precision), m_in(y, precision), m_in(t0, precision), y_lens,
             None if tpe is None else m_in(tpe, precision))
    H.assert_twin(m_np(got), t_np(ref), precision, low_ulps=2.0 if precision == "bf16" else 4.0,
                  what=f"block (tpe {with_tpe}, flash {flash})")


@st.composite
def model_case(draw):
    b = draw(st.integers(1, 3))
    t, hp, wp = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    length = draw(st.integers(2, 7))
    text_lens = [draw(st.integers(1, length)) for _ in range(b)]
    return b, (t, 2 * hp, 2 * wp), length, text_lens, draw(st.booleans()), draw(st.integers(0, 9999))


@FASTER
@given(model_case(), st.sampled_from(PRECISIONS))
def test_whole_model_every_probe(case, precision):
    b, latent, length, text_lens, flash, seed = case
    cfg = STDiTConfig.from_dict(tiny_config(depth=3, hidden_size=32, num_heads=2, input_size=latent,
                                            caption_channels=16, enable_flashattn=flash))
    inputs = make_inputs(cfg.to_dict(), seed=seed, batch=b, text_len=length, text_lens=text_lens,
                         timesteps=[999.0, 321.0, 1.0][:b])
    weights = random_weights(cfg, seed)
    specs = probe_specs(cfg.depth)
    _, ref = TH.capture(TH.build_model(cfg, weights, precision), inputs, specs)
    _, got = H.capture(H.build_model(cfg, weights, precision), inputs, specs)
    assert set(got) == set(ref) == set(family.probe_names(cfg))
    for spec in specs:
        (arr, dtype), (r, r_dtype) = got[spec.name], ref[spec.name]
        assert dtype == r_dtype, (spec.name, dtype, r_dtype)
        exact_patches = spec.name == "hidden_states_patch_embed" and precision != "fp16" and \
            arr.shape[0] * arr.shape[1] >= EXACT_MATMUL_ROWS
        if spec.probe_class in ("input", "mask") or spec.name == "pos_embed_temporal" or exact_patches:
            np.testing.assert_array_equal(arr, r, err_msg=spec.name)
        elif precision == "fp32":
            # the timestep sinusoid's one channel (torch's fp32 exp one ULP off, see above) reaches every probe
            # after the timestep embedding: ~|t|·6e-8·|W|
            H.assert_twin(arr, r, "fp32", fp32_atol=1e-5, what=spec.name)
        elif spec.probe_class == "embedding":
            H.assert_twin(arr, r, precision, low_ulps=1.0, what=spec.name)
        else:  # low precision after blocks: a rare one-ULP flip may propagate
            scale = max(1.0, float(np.abs(r).max()))
            assert np.abs(arr - r).max() <= (0.03 if precision == "bf16" else 0.01) * scale, spec.name


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_teacher_forced_steps_on_the_builtin_cases(case_name, precision):
    """Isolated mode as a subject plug-in will run it: each teacher-plan step of the port on the reference's own
    probes. fp32: every block within 1e-6 of the block's scale, the final layer within 1e-6, unpatchify exact;
    bf16: the twin criterion; and the accumulated output within the fp32 fidelity target."""
    case = CASES[case_name]
    cfg = family.parse_config(case.config)
    inputs = case.make_inputs()
    weights = random_weights(cfg, case.weights_seed)
    out_ref, ref = TH.capture(TH.build_model(cfg, weights, precision), inputs, probe_specs(cfg.depth))
    model = H.build_model(cfg, weights, precision)
    for step in family.teacher_plan(cfg, inputs):
        teacher = {role: ref[name][0] for role, name in step.inputs.items()}
        got = H.run_step(model, step, teacher)
        if step.kind == "output":
            np.testing.assert_array_equal(got, ref[step.probe][0])
        else:
            H.assert_twin(got, ref[step.probe][0], precision, fp32_atol=1e-6, low_ulps=1.0, what=step.probe)
    if precision == "fp32":
        out = H.forward(model, inputs)
        assert np.abs(out - out_ref).max() <= 1e-5 * max(1.0, float(np.abs(out_ref).max()))


def test_fp16_overflow_is_non_finite_in_both_at_the_same_probe():
    cfg = STDiTConfig.from_dict(tiny_config())
    weights = random_weights(cfg, 5)
    weights["blocks.0.attn.qkv.weight"] = weights["blocks.0.attn.qkv.weight"] * 300.0
    inputs = make_inputs(cfg.to_dict(), seed=5)
    specs = probe_specs(cfg.depth)
    _, ref = TH.capture(TH.build_model(cfg, weights, "fp16"), inputs, specs)
    _, got = H.capture(H.build_model(cfg, weights, "fp16"), inputs, specs)

    def first_non_finite(probes):
        return next(s.name for s in specs if not np.isfinite(probes[s.name][0]).all())

    assert first_non_finite(ref) == first_non_finite(got) == "hidden_states_0_block"
    assert not np.isfinite(got["hidden_states_output"][0]).all()
