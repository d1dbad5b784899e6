"""Each MindSpore STDiT3 building block, every block and the whole model against its PyTorch twin
(``reference_torch.modeling_stdit3``) with identical weights, property-based over shapes, batch sizes, text
lengths, x_mask patterns and pixel sizes, in fp32, fp16 and emulated bf16 (vs torch bf16). Layouts are
upstream's on both sides, so probes compare without adapters. Isolated mode runs the family's teacher plan on the
port with the reference's tensors (what a subject plug-in's ``run_step`` does)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch", exc_type=ImportError)

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

import ms_impl.modeling_stdit3 as M  # noqa: E402
import reference_torch.modeling_stdit3 as R  # noqa: E402
from ms_impl.convert import load_into  # noqa: E402
from ms_impl.precision import numerics_for, precision_label  # noqa: E402
from parity.capture_ms import MsCapture  # noqa: E402
from parity.capture_torch import TorchCapture  # noqa: E402
from parity.families import stdit3 as fam  # noqa: E402
from parity.families.stdit3.cases import CASES, TINY  # noqa: E402
from parity.families.stdit3.testing import capture_specs, random_weights  # noqa: E402

pytestmark = pytest.mark.torch

PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FAST = settings(max_examples=8, deadline=None)
FASTER = settings(max_examples=4, deadline=None)


# ---- twins and the comparison criterion ----------------------------------------------------------------------
def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter redrawn (upstream's init zeroes some layers): the family's random-weight recipe by name."""
    rng = np.random.default_rng(seed)
    for name, p in module.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("freqs"):
            continue
        if name.endswith("scale_shift_table"):
            a = rng.standard_normal(shape) / np.sqrt(shape[-1])
        elif name.endswith("norm.weight"):
            a = 1 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            a = 0.1 * rng.uniform(-1, 1, shape)
        else:
            a = rng.uniform(-1, 1, shape) * np.sqrt(3.0 / max(1, int(np.prod(shape[1:]))))
        p.data = torch.from_numpy(a.astype(np.float32))
    return module


def twin(torch_module, ms_cell, precision, seed=0):
    """Same weights in both (strict by name), each cast to ``precision`` (bf16 -> emulated on the MindSpore side)."""
    randomize(torch_module, seed)
    load_into(ms_cell, {k: v.detach().float().numpy().copy() for k, v in torch_module.state_dict().items()})
    M.set_precision(ms_cell, precision_label(precision, "CPU"))
    return torch_module.to(TORCH_DTYPES[precision]).eval(), ms_cell


def twin_rope(dim, precision):
    trope = R.RotaryEmbedding(dim)
    mrope = M.RotaryEmbedding(dim)
    mrope.freqs.set_data(Tensor(trope.freqs.detach().numpy()))
    M.set_precision(mrope, precision_label(precision, "CPU"))
    return trope.to(TORCH_DTYPES[precision]), mrope


def t_in(x, precision, channel_first=False):
    """A torch tensor of ``x``; ``channel_first`` lays (B, N, C) out like upstream's residual stream."""
    if channel_first:
        return torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2))).transpose(1, 2).to(TORCH_DTYPES[precision])
    return torch.from_numpy(np.ascontiguousarray(x)).to(TORCH_DTYPES[precision])


def m_in(x, precision):
    nx = numerics_for(precision_label(precision, "CPU"))
    return nx(Tensor(np.ascontiguousarray(x, dtype=np.float32)).astype(nx.dtype))


def t_np(x):
    return x.detach().float().numpy()


def m_np(x):
    return x.astype(ms.float32).asnumpy()


def assert_twin(got, ref, precision, fp32_atol=1e-6, low_ulps=2.0, what=""):
    """fp32: |d| <= fp32_atol · scale, scale = max(1, max|ref|).
    bf16 (emulated vs torch bf16): the emulation rounds where torch rounds, so elements differ only where the two
    libraries' float32 sums straddle a bf16 rounding boundary: at most 5% of them, each by at most ``low_ulps``
    bf16 ULPs of the scale. fp16 (MindSpore's native fp16, float32 accumulation): ``4 · low_ulps`` fp16 ULPs."""
    a, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert a.shape == r.shape, (what, a.shape, r.shape)
    assert np.isfinite(a).all() and np.isfinite(r).all(), what
    scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
    diff = float(np.abs(a - r).max()) if r.size else 0.0
    if precision == "fp32":
        assert diff <= fp32_atol * scale, f"{what}: max |d| {diff:.3e} > {fp32_atol} x scale {scale:.3f}"
    elif precision == "fp16":
        assert diff <= 4 * low_ulps * 2.0 ** -10 * scale, f"{what}: max |d| {diff:.3e} at scale {scale:.3f}"
    else:
        frac = float(np.mean(a != r)) if r.size else 0.0
        assert frac <= 0.05 and diff <= low_ulps * 2.0 ** -7 * scale, \
            f"{what}: {frac:.1%} of the elements differ, max |d| {diff:.3e} at scale {scale:.3f}"


# ---- embeddings -------------------------------------------------------------------------------------------------
@FAST
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from([(64, 96), (240, 426), (512, 512), (37, 1000)]),
       st.booleans(), st.sampled_from([16, 64, 72 * 4]), st.sampled_from(PRECISIONS))
def test_position_embedding(h, w, pixels, with_base, dim, precision):
    scale = (pixels[0] * pixels[1]) ** 0.5 / 512
    base = round((h * w) ** 0.5) if with_base else None
    ref = R.PositionEmbedding2D(dim).to(TORCH_DTYPES[precision])(t_in(np.zeros(1), precision), h, w, scale, base)
    got = M.PositionEmbedding2D(dim)
    M.set_precision(got, precision_label(precision, "CPU"))
    # fp32: one float32 ULP of the angle (torch's pow is an ULP off in a few inv_freq entries) and of the sin/cos
    # (computed on the host in float64)
    coordinate = max(h, w) / scale * (base / min(h, w) if base else 1.0)
    assert_twin(m_np(got(None, h, w, scale=scale, base_size=base)), t_np(ref), precision,
                fp32_atol=1.2e-7 * (1 + coordinate), low_ulps=1.0, what="pos_emb")


@FAST
@given(st.integers(1, 3), st.lists(st.floats(0, 1000, width=32), min_size=3, max_size=3), st.sampled_from([1, 0]),
       st.sampled_from([8, 64]), st.sampled_from(PRECISIONS), st.integers(0, 99))
def test_timestep_and_fps_embedders(b, ts, fps_rows, dim, precision, seed):
    ts = np.array(ts[:b], np.float32)
    fps = np.array([24.0, 30.0, 12.0][: (b if fps_rows else 1)], np.float32)
    tt, mt = twin(R.TimestepEmbedder(dim), M.TimestepEmbedder(dim), precision, seed)
    tf, mf = twin(R.SizeEmbedder(dim), M.SizeEmbedder(dim), precision, seed + 1)
    with torch.no_grad():
        ref_t = tt(t_in(ts, precision), dtype=TORCH_DTYPES[precision])
        ref_f = tf(torch.from_numpy(fps)[:, None], b)
    nx = numerics_for(precision_label(precision, "CPU"))
    # the timestep is cast to the model dtype first (upstream's forward), then the sinusoid in float32
    got_t = mt(nx.table(ts), dtype=nx.dtype)
    # fp32: torch's float32 exp is 1 ULP off in a few frequencies (the host table is correctly rounded):
    # up to ~1e-4 rad of angle at t = 1000, through two Linears
    assert_twin(m_np(got_t), t_np(ref_t), precision, fp32_atol=5e-6, what="t_embedder")
    assert_twin(m_np(mf(fps[:, None], b)), t_np(ref_f), precision, fp32_atol=1e-6, what="fps_embedder")


@FAST
@given(st.integers(1, 2), st.integers(2, 9), st.sampled_from([16, 32]), st.sampled_from(PRECISIONS), st.integers(0, 99))
def test_caption_embedder(b, length, dc, precision, seed):
    tc, mc = twin(R.CaptionEmbedder(dc, 48, 0.1, token_num=length), M.CaptionEmbedder(dc, 48, 0.1, token_num=length),
                  precision, seed)
    y = np.random.default_rng(seed).standard_normal((b, 1, length, dc)).astype(np.float32) * 2
    with torch.no_grad():
        ref = tc(t_in(y, precision), False)
    assert_twin(m_np(mc(m_in(y, precision))), t_np(ref), precision, what="y_embedder")


@FAST
@given(st.integers(1, 2), st.integers(1, 5), st.integers(1, 9), st.integers(1, 9),
       st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)), st.sampled_from(PRECISIONS),
       st.integers(0, 99))
def test_patch_embed_3d(b, t, h, w, patch, precision, seed):
    tp, mp = twin(R.PatchEmbed3D(patch, 4, 32), M.PatchEmbed3D(patch, 4, 32), precision, seed)
    x = np.random.default_rng(seed).standard_normal((b, 4, t, h, w)).astype(np.float32)
    with torch.no_grad():
        ref = tp(t_in(x, precision))
    assert_twin(m_np(mp(m_in(x, precision))), t_np(ref), precision, fp32_atol=5e-7, what="x_embedder")


# ---- rotary embedding, RMSNorm, attention ----------------------------------------------------------------------
@FAST
@given(st.integers(1, 12), st.integers(1, 3), st.sampled_from([4, 16, 72]), st.sampled_from(PRECISIONS),
       st.integers(0, 999))
def test_rope(seq, heads, d, precision, seed):
    trope, mrope = twin_rope(d, precision)
    x = np.random.default_rng(seed).standard_normal((3, heads, seq, d)).astype(np.float32) * 2
    ref = trope.rotate_queries_or_keys(t_in(x, precision))
    assert_twin(m_np(mrope.rotate_queries_or_keys(m_in(x, precision))), t_np(ref), precision, fp32_atol=5e-7,
                low_ulps=1.0, what="rope")


@FAST
@given(st.integers(1, 4), st.sampled_from([4, 16, 72]), st.floats(0.01, 100), st.sampled_from(PRECISIONS),
       st.integers(0, 999))
def test_rms_norm(rows, d, amplitude, precision, seed):
    tn, mn = twin(R.LlamaRMSNorm(d), M.LlamaRMSNorm(d), precision, seed)
    x = (np.random.default_rng(seed).standard_normal((2, rows, 3, d)) * amplitude).astype(np.float32)
    with torch.no_grad():
        ref = tn(t_in(x, precision))
    assert_twin(m_np(mn(m_in(x, precision))), t_np(ref), precision, fp32_atol=5e-7, low_ulps=1.0, what="rmsnorm")


@st.composite
def attention_case(draw):
    b, n = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    heads, head_dim = draw(st.sampled_from([(1, 8), (2, 16), (4, 8)]))
    return dict(b=b, n=n, heads=heads, head_dim=head_dim, qk_norm=draw(st.booleans()), rope=draw(st.booleans()),
                flash=draw(st.booleans()), seed=draw(st.integers(0, 999)))


@FAST
@given(attention_case(), st.sampled_from(PRECISIONS))
def test_self_attention(case, precision):
    """Manual path (upstream's rounding points) and the flash switch (N > B: the seam, float32 inside)."""
    c = case["heads"] * case["head_dim"]
    trope, mrope = twin_rope(case["head_dim"], precision)
    kw = dict(num_heads=case["heads"], qkv_bias=True, qk_norm=case["qk_norm"], enable_flash_attn=case["flash"])
    ta, ma = twin(R.Attention(c, rope=trope.rotate_queries_or_keys if case["rope"] else None, **kw),
                  M.Attention(c, rope=mrope.rotate_queries_or_keys if case["rope"] else None, **kw),
                  precision, case["seed"])
    x = np.random.default_rng(case["seed"]).standard_normal((case["b"], case["n"], c)).astype(np.float32)
    with torch.no_grad():
        ref = ta(t_in(x, precision))
    assert_twin(m_np(ma(m_in(x, precision))), t_np(ref), precision, what="attention")


@st.composite
def cross_case(draw):
    b = draw(st.integers(1, 3))
    lens = [draw(st.integers(1, 7)) for _ in range(b)]
    return dict(b=b, n=draw(st.integers(1, 10)), lens=lens, packed=draw(st.booleans()), seed=draw(st.integers(0, 999)))


@FAST
@given(cross_case(), st.sampled_from(PRECISIONS))
def test_cross_attention_packed_text(case, precision):
    """xformers' block-diagonal packed attention (torch) == the port's padded text with a -inf bias, per sample;
    without y_lens both attend across the whole batch (upstream's mask=None)."""
    tc, mc = twin(R.MultiHeadCrossAttention(32, 4), M.MultiHeadCrossAttention(32, 4), precision, case["seed"])
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["b"], case["n"], 32)).astype(np.float32)
    y = rng.standard_normal((1, sum(case["lens"]), 32)).astype(np.float32)
    mask = case["lens"] if case["packed"] else None
    with torch.no_grad():
        ref = tc(t_in(x, precision, channel_first=True), t_in(y, precision), mask)
    assert_twin(m_np(mc(m_in(x, precision), m_in(y, precision), mask)), t_np(ref), precision, what="cross_attn")


# ---- block, final layer ---------------------------------------------------------------------------------------
@st.composite
def block_case(draw):
    b, t, s = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 8))
    lens = [draw(st.integers(1, 6)) for _ in range(b)]
    x_mask = draw(st.sampled_from(["none", "all", "first", "random"]))
    return dict(b=b, t=t, s=s, lens=lens, x_mask=x_mask, temporal=draw(st.booleans()), qk_norm=draw(st.booleans()),
                seed=draw(st.integers(0, 9999)))


def _x_mask(kind, b, t, rng):
    if kind == "none":
        return None
    m = np.ones((b, t), bool)
    if kind == "first":
        m[:, 0] = False
    elif kind == "random":
        m = rng.random((b, t)) < 0.5
    return m


@FAST
@given(block_case(), st.sampled_from(PRECISIONS))
def test_one_block(case, precision):
    c, heads = 32, 2
    b, t, s = case["b"], case["t"], case["s"]
    trope, mrope = twin_rope(c // heads, precision)
    kw = dict(mlp_ratio=4.0, qk_norm=case["qk_norm"], temporal=case["temporal"])
    tb, mb = twin(R.STDiT3Block(c, heads, rope=trope.rotate_queries_or_keys if case["temporal"] else None, **kw),
                  M.STDiT3Block(c, heads, rope=mrope.rotate_queries_or_keys if case["temporal"] else None, **kw),
                  precision, case["seed"])
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((b, t * s, c)).astype(np.float32)
    y = rng.standard_normal((1, sum(case["lens"]), c)).astype(np.float32)
    tm, t0 = ((rng.standard_normal((b, 6 * c)) * 0.3).astype(np.float32) for _ in range(2))
    x_mask = _x_mask(case["x_mask"], b, t, rng)
    with torch.no_grad():   # the residual stream laid out as in upstream's model (channel-first)
        ref = tb(t_in(x, precision, channel_first=True), t_in(y, precision), t_in(tm, precision), case["lens"],
                 None if x_mask is None else torch.from_numpy(x_mask), t_in(t0, precision), t, s)
    got = mb(m_in(x, precision), m_in(y, precision), m_in(tm, precision), case["lens"], x_mask, m_in(t0, precision), t, s)
    assert_twin(m_np(got), t_np(ref), precision, fp32_atol=1e-6, low_ulps=2.0 if precision == "bf16" else 4.0,
                what=f"{'temporal' if case['temporal'] else 'spatial'} block")


@FAST
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 6), st.sampled_from(["none", "first", "random"]),
       st.sampled_from(PRECISIONS), st.integers(0, 999))
def test_final_layer_and_unpatchify(b, t, s, x_mask_kind, precision, seed):
    tf, mf = twin(R.T2IFinalLayer(32, 4, 8), M.T2IFinalLayer(32, 4, 8), precision, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t * s, 32)).astype(np.float32)
    tt, t0 = ((rng.standard_normal((b, 32)) * 0.5).astype(np.float32) for _ in range(2))
    x_mask = _x_mask(x_mask_kind, b, t, rng)
    with torch.no_grad():
        ref = tf(t_in(x, precision, channel_first=True), t_in(tt, precision),
                 None if x_mask is None else torch.from_numpy(x_mask), t_in(t0, precision), t, s)
    got = mf(m_in(x, precision), m_in(tt, precision), x_mask, m_in(t0, precision), t, s)
    assert_twin(m_np(got), t_np(ref), precision, what="final layer")


# ---- the whole model: every probe ----------------------------------------------------------------------------
def build_pair(config: dict, seed: int, precision: str):
    cfg = fam.parse_config(config)
    weights = random_weights(cfg, seed)
    ref = R.STDiT3(cfg.to_dict()).eval()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    sub = M.STDiT3(cfg.to_dict())
    load_into(sub, weights)
    M.set_precision(sub, precision_label(precision, "CPU"))
    return cfg, ref.to(TORCH_DTYPES[precision]), sub


def capture_both(cfg, ref, sub, inputs):
    specs = capture_specs(cfg.depth)
    got_r, got_m = {}, {}
    with TorchCapture(ref, specs, lambda n, a, d: got_r.__setitem__(n, (a, d))), torch.no_grad():
        ref(**{k: torch.from_numpy(np.array(v)) for k, v in inputs.items()})
    nx = sub.numerics
    with MsCapture(sub, specs, lambda n, a, d: got_m.__setitem__(n, (a, d)),
                   dtype_name=lambda v: nx.logical if isinstance(v, Tensor) and v.dtype == nx.dtype
                   else np.asarray(v.asnumpy() if isinstance(v, Tensor) else v).dtype.name):
        sub(**inputs)
    return specs, got_r, got_m


@st.composite
def model_case(draw):
    b = draw(st.integers(1, 2))
    tx, hx, wx = draw(st.integers(1, 3)), draw(st.integers(2, 7)), draw(st.integers(2, 7))
    lens = [draw(st.integers(1, 8)) for _ in range(b)]
    return dict(b=b, thw=(tx, hx, wx), lens=lens, x_mask=draw(st.sampled_from(["all", "first", "random"])),
                pixels=draw(st.sampled_from([(64, 96), (240, 426)])), flash=draw(st.booleans()),
                seed=draw(st.integers(0, 9999)))


def make_model_inputs(case, cfg):
    rng = np.random.default_rng(case["seed"])
    b, (tx, hx, wx) = case["b"], case["thw"]
    mask = np.zeros((b, 8), np.int64)
    for i, n in enumerate(case["lens"]):
        mask[i, rng.permutation(8)[:n]] = 1          # any pattern: upstream's masked_select keeps token order
    return fam.normalize_inputs(dict(
        x=rng.standard_normal((b, 4, tx, hx, wx)).astype(np.float32),
        timestep=rng.choice([0.0, 1.0, 248.0, 250.5, 512.0, 896.0, 999.0], b).astype(np.float32),
        y=rng.standard_normal((b, 1, 8, 32)).astype(np.float32), mask=mask,
        x_mask=_x_mask(case["x_mask"], b, tx, rng), fps=np.array([24.0], np.float32),
        height=np.array([case["pixels"][0]], np.float32), width=np.array([case["pixels"][1]], np.float32)), cfg)


def assert_probe(name, probe_class, got, ref, precision):
    (a, da), (r, dr) = got, ref
    # forward's last step casts to float32, which emulated bf16 (float32 storage) cannot tell apart
    assert da == dr or (name == "hidden_states_output" and (da, dr) == ("bfloat16", "float32")), (name, da, dr)
    if probe_class in ("input", "mask"):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(r), err_msg=name)
    elif precision == "fp32":
        # accumulated through the model: the timestep table (torch's exp 1 ULP off) dominates
        assert_twin(a, r, "fp32", fp32_atol=1e-5, what=name)
    elif probe_class == "embedding":
        assert_twin(a, r, precision, low_ulps=1.0, what=name)
    else:   # after blocks at low precision: rare 1-ULP flips propagate chaotically
        scale = max(1.0, float(np.abs(r).max()))
        assert np.abs(np.asarray(a, np.float64) - r).max() <= (0.03 if precision == "bf16" else 0.01) * scale, name


@FASTER
@given(model_case(), st.sampled_from(PRECISIONS))
def test_whole_model_every_probe(case, precision):
    cfg, ref, sub = build_pair(dict(TINY, enable_flash_attn=case["flash"]), case["seed"], precision)
    inputs = make_model_inputs(case, cfg)
    specs, got_r, got_m = capture_both(cfg, ref, sub, inputs)
    assert set(got_m) == set(got_r) == {s.name for s in specs}
    for spec in specs:
        assert_probe(spec.name, spec.probe_class, got_m[spec.name], got_r[spec.name], precision)


@pytest.mark.parametrize("case_name", sorted(CASES))
@pytest.mark.parametrize("precision", PRECISIONS)
def test_builtin_cases_every_probe_and_isolated_steps(case_name, precision):
    """Accumulated: every probe of the built-in case. Isolated: the family's teacher plan run on the port with the
    reference's own tensors (``run_step`` below is what a subject plug-in calls): each step within the block
    twin criterion of its precision."""
    case = CASES[case_name]
    cfg, ref, sub = build_pair(case.config, case.weights_seed, precision)
    inputs = fam.normalize_inputs(case.make_inputs(), cfg)
    specs, got_r, got_m = capture_both(cfg, ref, sub, inputs)
    for spec in specs:
        assert_probe(spec.name, spec.probe_class, got_m[spec.name], got_r[spec.name], precision)
    for step in fam.teacher_plan(cfg, inputs):
        teacher = {role: got_r[probe][0] for role, probe in step.inputs.items()}
        out = m_np(run_step(sub, step, teacher))
        assert_twin(out, got_r[step.probe][0], precision, fp32_atol=1e-6, low_ulps=2.0 if precision == "bf16" else 4.0,
                    what=f"isolated {step.probe}")


def run_step(model: M.STDiT3, step, teacher: dict):
    """One teacher-forced step on the MindSpore port: ``teacher`` maps each role of ``step.inputs`` to the
    reference tensor (numpy; float values as the dump holds them, ``mask`` = y_lens ints, ``x_mask`` bool)."""
    nx = model.numerics

    def act(name):
        return nx(Tensor(np.asarray(teacher[name], np.float32)).astype(nx.dtype))

    p = step.params
    if step.kind == "t_block":
        return model.t_block(act("t"))
    if step.kind in ("spatial_block", "temporal_block"):
        blocks = model.spatial_blocks if step.kind == "spatial_block" else model.temporal_blocks
        return blocks[step.index](act("x"), act("y"), act("t"), [int(n) for n in teacher["mask"]],
                                  np.asarray(teacher["x_mask"], bool), act("t0"), p["T"], p["S"])
    if step.kind == "final_layer":
        return model.final_layer(act("x"), act("t"), np.asarray(teacher["x_mask"], bool), act("t0"), p["T"], p["S"])
    if step.kind == "output":
        return model.unpatchify(act("x"), p["N_t"], p["N_h"], p["N_w"], p["R_t"], p["R_h"], p["R_w"]).astype(ms.float32)
    raise ValueError(f"unknown step kind {step.kind!r}")
