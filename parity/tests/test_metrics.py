"""parity.metrics against straightforward full-array numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity.errors import ParityError
from parity.metrics import (
    Metrics,
    compare_close,
    compute_metrics,
    format_number,
    metrics_throughput,
    passed,
    read_bandwidth_probe,
)


# ----------------------------------------------------------------------------------------------------------
# every test runs with both versions of the per-chunk arithmetic (parity.fused): the compiled loop and the
# numpy calls; every exact metric must come out the same

@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def chunk_kernel(request, monkeypatch):
    from parity import fused

    if request.param == "numpy":
        monkeypatch.setattr(fused, "_compiled", False)
    else:
        assert fused._kernel(), "numba is a dependency: the compiled chunk loop must be available"
    return request.param


# ----------------------------------------------------------------------------------------------------------
# the reference: plain numpy over whole arrays

def _work(r, s):
    big = any(a.dtype.itemsize > 4 or (a.dtype.kind in "iu" and a.dtype.itemsize > 2) for a in (r, s))
    return np.float64 if big else np.float32


def reference(r, s, atol, rtol, rel_floor=None):
    r = np.asarray(r)
    s = np.asarray(s)
    wt = _work(r, s)
    rw = r.astype(wt).reshape(-1)
    sw = s.astype(wt).reshape(-1)
    fin = np.isfinite(rw) & np.isfinite(sw)
    pos = np.flatnonzero(fin)
    rc, sc = rw[fin], sw[fin]
    ad = np.abs(sc - rc)
    out = {"n": r.size, "n_compared": int(fin.sum())}
    if rel_floor is None:
        fr = rw[np.isfinite(rw)]
        amax = float(np.abs(fr).max()) if fr.size else 0.0
        rel_floor = 1e-3 * amax if amax > 0 else 1e-12
    floor = wt(rel_floor)
    out["rel_floor"] = float(floor)
    close = np.isclose(sw, rw, rtol=rtol, atol=atol, equal_nan=True)
    out["n_outside"] = int((~close).sum())
    if ad.size:
        k = int(np.argmax(ad))
        out["max_abs"] = float(ad[k])
        out["argmax_abs"] = tuple(int(x) for x in np.unravel_index(pos[k], r.shape)) if r.shape else ()
        out["ref_at_max"] = float(rc[k])
        out["sub_at_max"] = float(sc[k])
        out["mean_abs"] = float(ad.astype(np.float64).mean())
        out["max_rel"] = float(np.max(ad / np.maximum(np.abs(rc), floor)))
        out["min_passing_atol"] = max(0.0, float(np.max(ad - wt(rtol) * np.abs(rc))))
        r64, s64 = rc.astype(np.float64), sc.astype(np.float64)
        nr, ns = np.linalg.norm(r64), np.linalg.norm(s64)
        if nr == 0 and ns == 0:
            out["cosine"] = 1.0
        elif nr == 0 or ns == 0:
            out["cosine"] = 0.0
        else:
            out["cosine"] = float(np.dot(r64, s64) / (nr * ns))
        nd = np.linalg.norm(s64 - r64)
        out["rel_fro"] = float(nd / nr) if nr > 0 else (0.0 if nd == 0 else math.inf)
        srt = np.sort(ad)
        out["p99_abs"] = float(srt[-(-99 * srt.size // 100) - 1])
    out["nan_ref"] = int(np.isnan(rw).sum())
    out["nan_sub"] = int(np.isnan(sw).sum())
    out["inf_ref"] = int(np.isinf(rw).sum())
    out["inf_sub"] = int(np.isinf(sw).sum())
    bad = ~fin
    agree = (np.isnan(rw) & np.isnan(sw)) | (rw == sw)
    out["nonfinite_match"] = not bool(np.any(bad & ~agree))
    return out


def check(m: Metrics, r, s, atol, rtol, rel_floor=None, rtol_sums=2e-5):
    exp = reference(r, s, atol, rtol, rel_floor)
    assert m.n == exp["n"] and m.n_compared == exp["n_compared"]
    assert m.shape == tuple(np.asarray(r).shape)
    for k in ("n_outside", "nan_ref", "nan_sub", "inf_ref", "inf_sub", "nonfinite_match"):
        assert getattr(m, k) == exp[k], k
    assert m.rel_floor == exp["rel_floor"]
    if exp["n_compared"] == 0:
        return exp
    for k in ("max_abs", "max_rel", "min_passing_atol", "p99_abs", "ref_at_max", "sub_at_max"):
        assert getattr(m, k) == pytest.approx(exp[k], rel=1e-12, abs=0), k
    assert m.argmax_abs == exp["argmax_abs"]
    assert m.mean_abs == pytest.approx(exp["mean_abs"], rel=rtol_sums, abs=1e-30)
    assert m.rel_fro == pytest.approx(exp["rel_fro"], rel=rtol_sums, abs=1e-30)
    # 1 - cos to a relative precision (the metric is designed for that), or absolutely for far-apart data
    assert (1 - m.cosine) == pytest.approx(1 - exp["cosine"], rel=1e-3, abs=1e-12)
    return exp


def _pair(rng, shape, noise=1e-3, dtype=np.float32):
    r = rng.standard_normal(shape).astype(dtype)
    s = (r.astype(np.float64) + noise * rng.standard_normal(shape)).astype(dtype)
    return r, s


# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 127, 128, 129, 64 * 7 + 5, 5000])
@pytest.mark.parametrize("chunk", [64, 1000, 131072])
def test_random_sizes_and_chunk_boundaries(n, chunk):
    rng = np.random.default_rng(n * 7 + chunk)
    r, s = _pair(rng, (n,))
    m = compute_metrics(r, s, atol=1e-3, rtol=1e-3, chunk_elems=chunk, name="x")
    check(m, r, s, 1e-3, 1e-3)


@pytest.mark.parametrize("shape", [(), (1,), (3, 5, 7), (2, 1, 33, 4), (0,), (4, 0, 3)])
def test_shapes(shape):
    rng = np.random.default_rng(1)
    r, s = _pair(rng, shape)
    m = compute_metrics(r, s, atol=1e-4, rtol=1e-4, chunk_elems=16)
    check(m, r, s, 1e-4, 1e-4)
    if r.size == 0:
        assert m.max_abs == 0 and m.cosine == 1 and m.argmax_abs is None and passed(m)
    elif shape == ():
        assert m.argmax_abs == ()


def test_zero_sized_and_all_zero():
    z = np.zeros((4, 5), np.float32)
    m = compute_metrics(z, z.copy(), atol=0, rtol=0)
    assert (m.max_abs, m.mean_abs, m.max_rel, m.rel_fro, m.cosine, m.p99_abs) == (0, 0, 0, 0, 1, 0)
    assert m.rel_floor == pytest.approx(1e-12, rel=1e-6) and passed(m) and m.argmax_abs == (0, 0)
    s = z.copy()
    s[2, 3] = 1e-6
    m = compute_metrics(z, s, atol=0, rtol=0)
    assert m.cosine == 0.0 and m.rel_fro == math.inf and m.n_outside == 1 and not passed(m)
    assert m.argmax_abs == (2, 3) and m.max_rel == pytest.approx(1e6, rel=1e-6)
    check(m, z, s, 0, 0)


@pytest.mark.parametrize("chunk", [7, 64, 131072])
def test_nan_inf_same_positions(chunk):
    rng = np.random.default_rng(2)
    r, s = _pair(rng, (300,))
    for a in (r, s):
        a[[3, 100, 299]] = np.nan
        a[[5, 150]] = np.inf
        a[7] = -np.inf
    m = compute_metrics(r, s, atol=1e-2, rtol=1e-2, chunk_elems=chunk)
    exp = check(m, r, s, 1e-2, 1e-2)
    assert m.nonfinite_match and not m.finite_ok and not passed(m)
    assert m.n_outside == 0 and m.n_compared == 294 and exp["nan_ref"] == 3 and m.inf_sub == 3
    assert m.first_nonfinite_mismatch is None


@pytest.mark.parametrize("chunk", [7, 131072])
def test_nan_inf_different_positions_and_one_side(chunk):
    rng = np.random.default_rng(3)
    r, s = _pair(rng, (20, 10))
    r[1, 2] = np.nan
    s[1, 3] = np.nan
    s[4, 4] = np.inf
    r[5, 5] = np.inf
    s[5, 5] = -np.inf
    m = compute_metrics(r, s, atol=1e-2, rtol=1e-2, chunk_elems=chunk, name="p")
    check(m, r, s, 1e-2, 1e-2)
    assert not m.nonfinite_match and m.n_outside == 4 and m.first_nonfinite_mismatch == (1, 2)
    # the finite metrics ignore the non-finite positions but are not zeroed out
    assert m.max_abs > 0 and math.isfinite(m.max_abs) and m.n_compared == 196
    ok, _, msg = compare_close(r, s, 1e-2, 1e-2, "p")
    assert not ok and "NaN/Inf" in msg.splitlines()[0] and "first at index (1, 2)" in msg


def test_all_nonfinite():
    r = np.full(10, np.nan, np.float32)
    m = compute_metrics(r, r.copy(), atol=1, rtol=1)
    assert math.isnan(m.max_abs) and math.isnan(m.cosine) and m.n_compared == 0 and m.nonfinite_match
    assert m.argmax_abs is None and not passed(m) and m.n_outside == 0


@pytest.mark.parametrize("dt_r,dt_s", [(np.float16, np.float16), (np.float64, np.float64),
                                       (np.float16, np.float32), (np.float32, np.float64)])
def test_dtypes(dt_r, dt_s):
    rng = np.random.default_rng(4)
    r = rng.standard_normal(1000)
    s = r + 1e-2 * rng.standard_normal(1000)
    r, s = r.astype(dt_r), s.astype(dt_s)
    m = compute_metrics(r, s, atol=1e-2, rtol=1e-2, chunk_elems=100)
    check(m, r, s, 1e-2, 1e-2)


def test_int_and_bool_masks():
    a = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    b = a.copy()
    m = compute_metrics(a, b, atol=0, rtol=0)
    assert passed(m) and m.max_abs == 0
    b[1, 1] = True
    m = compute_metrics(a.astype(np.int64), b.astype(np.int64), atol=0, rtol=0)
    assert m.n_outside == 1 and m.argmax_abs == (1, 1) and m.max_abs == 1


def test_memmap_and_noncontiguous(tmp_path):
    rng = np.random.default_rng(5)
    r, s = _pair(rng, (37, 29))
    pr, ps = tmp_path / "r.bin", tmp_path / "s.bin"
    r.tofile(pr)
    s.tofile(ps)
    mr = np.memmap(pr, dtype=np.float32, mode="r", shape=r.shape)
    ms = np.memmap(ps, dtype=np.float32, mode="r", shape=s.shape)
    m = compute_metrics(mr, ms, atol=1e-3, rtol=1e-3, chunk_elems=100)
    check(m, r, s, 1e-3, 1e-3)
    # transposed (non-contiguous) views are read in C order of the view
    m = compute_metrics(mr.T, ms.T, atol=1e-3, rtol=1e-3, chunk_elems=100)
    check(m, r.T, s.T, 1e-3, 1e-3)
    # float16 memmap (converted chunk by chunk)
    r16 = tmp_path / "r16.bin"
    r.astype(np.float16).tofile(r16)
    m16 = np.memmap(r16, dtype=np.float16, mode="r", shape=r.shape)
    m = compute_metrics(m16, ms, atol=1e-3, rtol=1e-3, chunk_elems=100)
    check(m, r.astype(np.float16), s, 1e-3, 1e-3)


def test_tolerance_count_matches_isclose_at_the_boundary():
    rng = np.random.default_rng(6)
    r = rng.standard_normal(20000).astype(np.float32)
    s = (r * (1 + 1e-5 * rng.standard_normal(20000))).astype(np.float32)
    for atol, rtol in [(0, 1e-5), (1e-6, 1e-5), (1e-5, 0), (0, 0), (3e-6, 3e-6)]:
        m = compute_metrics(r, s, atol=atol, rtol=rtol, chunk_elems=999)
        assert m.n_outside == int((~np.isclose(s, r, rtol=rtol, atol=atol)).sum())
        check(m, r, s, atol, rtol)
        # the minimal passing atol really makes everything (but rounding ties) pass
        assert (~np.isclose(s, r, rtol=rtol, atol=m.min_passing_atol * (1 + 1e-6))).sum() == 0


def test_p99_nonstationary_fallback():
    """First chunk's errors are large, the rest tiny: the speculative threshold is too high."""
    rng = np.random.default_rng(7)
    r = rng.standard_normal(5000).astype(np.float32)
    s = r.copy()
    s[:100] += 1.0 + rng.random(100).astype(np.float32)
    s[100:] += (1e-4 * rng.standard_normal(4900)).astype(np.float32)
    m = compute_metrics(r, s, atol=1, rtol=0, chunk_elems=100)
    check(m, r, s, 1, 0)
    # and the reverse: growing errors (threshold too low; many kept, re-thresholded)
    s = r + (np.linspace(0, 1, 5000) * rng.standard_normal(5000)).astype(np.float32)
    m = compute_metrics(r, s, atol=1, rtol=0, chunk_elems=64)
    check(m, r, s, 1, 0)
    # a fallback large enough to re-threshold inside the extra pass
    r = rng.standard_normal(200000).astype(np.float32)
    s = r.copy()
    s[:1000] += 5
    s[1000:] += (1e-3 * rng.standard_normal(199000)).astype(np.float32)
    m = compute_metrics(r, s, atol=1, rtol=0, chunk_elems=1000)
    check(m, r, s, 1, 0)


def test_argmax_first_occurrence_across_chunks():
    r = np.zeros(1000, np.float32)
    s = r.copy()
    s[[10, 500, 999]] = 2.0
    s[[300]] = -2.0
    m = compute_metrics(r, s, atol=0, rtol=0, chunk_elems=64)
    assert m.argmax_abs == (10,) and m.sub_at_max == 2.0 and m.n_outside == 4


def test_cosine_keeps_precision_near_one():
    rng = np.random.default_rng(8)
    r = rng.standard_normal(100000)
    s = r + 1e-7 * rng.standard_normal(100000)
    m = compute_metrics(r, s, atol=1, rtol=0)
    exact = 0.5e-14  # E[1 - cos] = ½·(noise/σ)² for independent noise
    assert 1 - m.cosine == pytest.approx(exact, rel=0.05)
    assert compute_metrics(r, -r, atol=1, rtol=0).cosine == pytest.approx(-1)
    assert compute_metrics(r, 3 * r, atol=1, rtol=0).cosine == pytest.approx(1, abs=1e-15)


def test_overflow_and_huge_values_are_summed_in_float64():
    r = np.array([3e38, 1.0, -2.0], np.float32)
    s = np.array([-3e38, 1.0, -2.0], np.float32)
    m = compute_metrics(r, s, atol=0, rtol=0)
    assert m.finite_ok and m.max_abs == pytest.approx(6e38, rel=1e-6) and m.n_outside == 1
    assert m.rel_fro == pytest.approx(2.0, rel=1e-6) and m.cosine == pytest.approx(-1, abs=1e-6)
    tiny = np.array([1e-30, 2e-30, 0], np.float32)
    m = compute_metrics(tiny, tiny * 2, atol=0, rtol=0)
    assert m.rel_fro == pytest.approx(1.0, rel=1e-6) and m.mean_abs == pytest.approx(1e-30, rel=1e-6)


def test_rel_floor_and_ref_absmax():
    rng = np.random.default_rng(9)
    r, s = _pair(rng, (3000,))
    m1 = compute_metrics(r, s, atol=1, rtol=1)
    m2 = compute_metrics(r, s, atol=1, rtol=1, ref_absmax=float(np.abs(r).max()))
    assert m1 == m2
    m3 = compute_metrics(r, s, atol=1, rtol=1, rel_floor=0.5)
    check(m3, r, s, 1, 1, rel_floor=0.5)
    assert m3.max_rel < m1.max_rel


def test_errors():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ParityError, match=r"probe hs: shape \(3, 2\) vs reference \(2, 3\)"):
        compute_metrics(a, np.zeros((3, 2), np.float32), atol=0, rtol=0, name="hs")
    with pytest.raises(ParityError, match="atol"):
        compute_metrics(a, a, atol=-1, rtol=0)
    with pytest.raises(ParityError, match="rtol"):
        compute_metrics(a, a, atol=0, rtol=float("nan"))
    with pytest.raises(ParityError, match="rel_floor"):
        compute_metrics(a, a, atol=0, rtol=0, rel_floor=0)
    with pytest.raises(ParityError, match="dtype"):
        compute_metrics(a.astype(np.complex64), a, atol=0, rtol=0, name="c")
    try:
        compute_metrics(a, np.zeros(6), atol=0, rtol=0, name="x")
    except ParityError as e:
        assert "\n" not in str(e)
    else:
        pytest.fail("compute_metrics accepted arrays of shapes (2, 3) and (6,)")


def test_compare_close_message():
    rng = np.random.default_rng(10)
    r = rng.standard_normal((64, 4, 60)).astype(np.float32)
    s = r.copy()
    s[12, 0, 7] += 3.1e-4
    s[1, 1, 1] += 2e-5
    ok, m, msg = compare_close(r, s, 1e-6, 1e-5, "hidden_states_2_block",
                               context="profile fp32/block/accumulated")
    assert not ok and not passed(m)
    lines = msg.splitlines()
    first = lines[0]
    assert first.startswith("probe hidden_states_2_block: Not equal to tolerance rtol=1e-05, atol=1e-06")
    assert "(profile fp32/block/accumulated)" in first and "2 / 15360 mismatched" in first
    assert any(line.startswith("Max absolute difference: 3.1e-04 at index (12, 0, 7): ref=") for line in lines)
    assert any(line.startswith("Minimal passing atol at rtol=1e-05: ") for line in lines)
    assert "Mismatched elements: 2 / 15360 (0.013%)" in msg
    ok, m, msg = compare_close(r, r.copy(), 1e-6, 1e-5, "x")
    assert ok and "\n" not in msg and msg.startswith("probe x: within tolerance")


def test_to_dict_and_format_number():
    m = compute_metrics(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), atol=0, rtol=0)
    d = m.to_dict()
    assert d["shape"] == [2, 2] and d["argmax_abs"] == [0, 0] and d["cosine"] == 1.0
    assert set(d) >= {"max_abs", "mean_abs", "max_rel", "cosine", "rel_fro", "p99_abs", "n_outside",
                      "frac_outside", "min_passing_atol", "nan_ref", "nan_sub", "inf_ref", "inf_sub",
                      "nonfinite_match", "finite_ok"}
    assert [format_number(x) for x in (0, 0.5312, 3.1e-4, float("nan"), float("inf"), None, 12345.0)] == \
        ["0", "0.5312", "3.1e-04", "NaN", "inf", "—", "1.2e+04"]


def test_throughput_helpers_run():
    assert read_bandwidth_probe(nbytes=4_000_000, repeats=2) > 0
    assert metrics_throughput(200_000, repeats=1) > 0


# ----------------------------------------------------------------------------------------------------------

_floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.tuples(_floats, _floats, st.sampled_from([0, 0, 0, 1, 2, 3])), min_size=0, max_size=300),
    chunk=st.sampled_from([1, 3, 16, 1000]),
    atol=st.sampled_from([0.0, 1e-3, 1.0]),
    rtol=st.sampled_from([0.0, 1e-3, 0.5]),
)
def test_property_matches_reference(data, chunk, atol, rtol):
    special = [None, np.nan, np.inf, -np.inf]
    r = np.array([a for a, _, _ in data], np.float32)
    s = np.array([b for _, b, _ in data], np.float32)
    for i, (_, _, k) in enumerate(data):  # sprinkle non-finite values on one or both sides
        if k == 1:
            r[i] = special[1 + i % 3]
        elif k == 2:
            s[i] = special[1 + i % 3]
        elif k == 3:
            r[i] = s[i] = special[1 + i % 3]
    m = compute_metrics(r, s, atol=atol, rtol=rtol, chunk_elems=chunk)
    exp = reference(r, s, atol, rtol)
    for key in ("n_outside", "nan_ref", "nan_sub", "inf_ref", "inf_sub", "nonfinite_match", "n_compared"):
        assert getattr(m, key) == exp[key], key
    if exp["n_compared"]:
        for key in ("max_abs", "max_rel", "p99_abs", "min_passing_atol"):
            assert getattr(m, key) == exp[key], key
        assert m.mean_abs == pytest.approx(exp["mean_abs"], rel=1e-5, abs=1e-30)
    assert passed(m) == (exp["n_outside"] == 0 and m.finite_ok)


# ----------------------------------------------------------------------------------------------------------
# the fast paths of the chunked pass: word scans (chunk lengths that are multiples of 8), candidate queue,
# p99 band (sampled first chunk, narrowing, degenerate band, fallback pass), running rel floor

def _big_pair(rng, n, noise=1e-6, dtype=np.float32):
    r = rng.standard_normal(n).astype(dtype)
    s = (r.astype(np.float64) + noise * rng.standard_normal(n)).astype(dtype)
    return r, s


@pytest.mark.parametrize("chunk", [32768, 40000, 40001, 65536])  # 40001: not a multiple of the word size
@pytest.mark.parametrize("atol,rtol", [(1e-5, 1e-5), (1e-6, 1e-6), (3e-6, 0.0), (0.0, 0.0)])
def test_large_probe_passing_and_failing_chunks(chunk, atol, rtol):
    rng = np.random.default_rng(11)
    r, s = _big_pair(rng, 400_000)
    m = compute_metrics(r, s, atol=atol, rtol=rtol, chunk_elems=chunk)
    check(m, r, s, atol, rtol)
    m2 = compute_metrics(r, s, atol=atol, rtol=rtol, chunk_elems=chunk, ref_absmax=float(np.abs(r).max()))
    assert m2 == m


def test_large_probe_half_failing_and_dense_chunks():
    rng = np.random.default_rng(12)
    r, s = _big_pair(rng, 500_000)
    s[250_000:] += (1e-2 * rng.standard_normal(250_000)).astype(np.float32)  # every element fails there
    s[100_000:100_050] += 1e-3  # a few failing elements inside passing chunks
    m = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=32768)
    check(m, r, s, 1e-5, 1e-5)
    assert m.n_outside > 200_000
    # 2% failing elements spread everywhere: ~15% of the words hold one (queued, not dense)
    s2 = r.copy()
    bad = rng.random(500_000) < 0.02
    s2[bad] += 1e-3
    m = compute_metrics(r, s2, atol=1e-5, rtol=0, chunk_elems=65536)
    check(m, r, s2, 1e-5, 0)


def test_candidate_queue_flushes(monkeypatch):
    from parity import metrics as mod

    rng = np.random.default_rng(20)
    r, s = _big_pair(rng, 300_000)
    s[rng.random(r.size) < 0.005] += 1e-4
    want = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=32768)
    monkeypatch.setattr(mod, "_QUEUE", 16)
    got = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=32768)
    assert got == want
    check(got, r, s, 1e-5, 1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_probe_nonfinite_inside_fast_chunks(dtype):
    rng = np.random.default_rng(13)
    r, s = _big_pair(rng, 300_000, dtype=dtype)
    s[1000] = r[1000] + 0.5  # the max |Δ| sits in a fast (NaN-free) chunk ...
    r[70_000], s[70_000] = r[1000], s[1000]  # ... and again, later, in a chunk with NaN/Inf (a tie)
    r[70_001] = np.nan
    s[70_002] = np.inf
    r[131_071] = s[131_071] = -np.inf  # on a chunk edge
    s[299_999] = np.nan  # in the last (partial) chunk
    m = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=65536)
    check(m, r, s, 1e-5, 1e-5)
    assert m.argmax_abs == (1000,) and not m.nonfinite_match and m.nan_ref == 1 and m.inf_sub == 2


def test_large_probe_overflowing_difference_in_one_chunk():
    rng = np.random.default_rng(14)
    r, s = _big_pair(rng, 200_000)
    r[150_000], s[150_000] = 3e38, -3e38
    m = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=32768)
    assert m.max_abs == pytest.approx(6e38, rel=1e-6) and m.argmax_abs == (150_000,)
    assert m.n_outside == 1 and m.finite_ok
    keep = np.ones(r.size, bool)
    keep[150_000] = False
    ad = np.abs(s[keep] - r[keep])
    assert m.p99_abs == float(np.sort(ad)[-(-99 * (ad.size + 1) // 100) - 1])


def test_running_rel_floor_late_large_reference():
    """The default floor depends on max|ref|, only known at the end: a huge late value raises it 1000x."""
    rng = np.random.default_rng(15)
    r, s = _big_pair(rng, 400_000, noise=1e-3)
    r[399_990] = s[399_990] = 5000.0
    m = compute_metrics(r, s, atol=1, rtol=0, chunk_elems=32768)
    check(m, r, s, 1, 0)
    assert m.rel_floor == pytest.approx(5.0)
    assert m == compute_metrics(r, s, atol=1, rtol=0, chunk_elems=32768, ref_absmax=5000.0)
    # slowly growing reference scale (the floor rises chunk after chunk), and an all-zero prefix
    r2 = (r * np.linspace(0, 100, r.size)).astype(np.float32)
    s2 = (r2 + 1e-4 * rng.standard_normal(r.size)).astype(np.float32)
    r2[:100_000] = 0
    m = compute_metrics(r2, s2, atol=1, rtol=0, chunk_elems=32768)
    check(m, r2, s2, 1, 0)


def test_rel_floor_given_and_floor_dominated_max_rel():
    rng = np.random.default_rng(16)
    r, s = _big_pair(rng, 300_000)
    r[5000], s[5000] = 0.0, 1e-5  # rel = 1e-5 / floor: only the floor bounds it
    for fl in (None, 1e-3, 1e-9):
        m = compute_metrics(r, s, atol=1e-5, rtol=1e-5, rel_floor=fl, chunk_elems=32768)
        check(m, r, s, 1e-5, 1e-5, rel_floor=fl)


def test_rel_candidates_adversarial_error_growth():
    """|Δ| grows along the array while |Δ|/|ref| shrinks: every element stays a max_rel candidate until
    the candidate set overflows and the floor is fixed from a scan of the rest of the reference."""
    r = np.linspace(1, 1e4, 300_000)
    s = r + 1e-3 * np.sqrt(r)
    for rr, ss in ((r, s), (r[::-1], s[::-1]), (r.astype(np.float32), s.astype(np.float32))):
        m = compute_metrics(rr, ss, atol=1, rtol=0, chunk_elems=8192)
        check(m, rr, ss, 1, 0)
    # pure relative errors (|Δ| = one ulp), with NaN and Inf in the part of ref scanned for the floor
    rng = np.random.default_rng(21)
    r = rng.standard_normal(300_000).astype(np.float32)
    s = (r * np.float32(1 + 1e-7)).astype(np.float32)
    r[299_000], r[299_100], s[299_200] = np.nan, -np.inf, np.inf  # in the last chunk
    m = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=8192)
    check(m, r, s, 1e-5, 1e-5)
    r[299_500] = s[299_500] = -40.0  # the floor is set by the scanned part
    m = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=8192)
    check(m, r, s, 1e-5, 1e-5)
    assert m.rel_floor == pytest.approx(0.04)


def test_p99_band_identical_quantized_and_nonstationary():
    rng = np.random.default_rng(17)
    r = rng.standard_normal(300_000).astype(np.float32)
    m = compute_metrics(r, r.copy(), atol=0, rtol=0, chunk_elems=65536)  # |Δ| = 0: degenerate band
    assert m.p99_abs == 0 and m.max_abs == 0 and passed(m)
    s = r + np.float32(2 ** -20) * rng.integers(-3, 4, r.size).astype(np.float32)  # few distinct |Δ|
    m = compute_metrics(r, s, atol=1e-6, rtol=0, chunk_elems=65536)
    check(m, r, s, 1e-6, 0)
    # the band placed from the first chunk misses: errors grow (p99 above it) / shrink (below it)
    for scale in (np.linspace(0, 1, r.size) ** 4, np.linspace(1, 0, r.size) ** 4):
        s = (r + 1e-3 * scale * rng.standard_normal(r.size)).astype(np.float32)
        m = compute_metrics(r, s, atol=1, rtol=0, chunk_elems=65536)
        check(m, r, s, 1, 0)


def test_word_scan_without_float64_words(monkeypatch):
    """With denormals-are-zero active the masks are scanned as uint32 words; same results."""
    from parity import metrics as mod

    rng = np.random.default_rng(18)
    r, s = _big_pair(rng, 200_000)
    s[rng.random(r.size) < 0.01] += 1e-4
    want = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=32768)
    monkeypatch.setattr(mod, "_word_view", lambda: (np.dtype(np.uint32), 4))
    got = compute_metrics(r, s, atol=1e-5, rtol=1e-5, chunk_elems=32768)
    assert got == want
    check(got, r, s, 1e-5, 1e-5)


def test_floor_underflowing_to_zero_follows_the_plain_formula():
    """1e-3·max|ref| below the float32 range rounds to 0, exactly as in the reference formula."""
    r = np.array([6.586e-44], np.float32)
    m = compute_metrics(r, np.zeros(1, np.float32), atol=0, rtol=0)
    assert m.rel_floor == 0.0 and m.max_rel == 1.0
    r = np.array([1e-44, 0.0, 3e-45], np.float32)
    s = np.array([2e-44, 1e-45, 3e-45], np.float32)
    m = compute_metrics(r, s, atol=0, rtol=0, chunk_elems=2)
    assert m.max_rel == math.inf and m.n_outside == 2
    s[1] = 0.0  # 0/0
    assert math.isnan(compute_metrics(r, s, atol=0, rtol=0).max_rel)
    rng = np.random.default_rng(19)
    r, s = _big_pair(rng, 100_000)
    m = compute_metrics(r, s, atol=1e-5, rtol=1e-5, rel_floor=1e-50, chunk_elems=32768)
    check(m, r, s, 1e-5, 1e-5, rel_floor=1e-50)
    assert m.rel_floor == 0.0


def test_fast_path_on_converted_and_strided_sources(tmp_path):
    """Queued candidates read ref/sub back by position: memmaps, transposed views, float16 inputs."""
    rng = np.random.default_rng(22)
    r, s = _big_pair(rng, 300 * 700, noise=1e-3)
    r, s = r.reshape(300, 700), s.reshape(300, 700)
    s[123, 456] += 0.5
    pr, ps = tmp_path / "r.bin", tmp_path / "s.bin"
    r.tofile(pr)
    s.tofile(ps)
    mr = np.memmap(pr, dtype=np.float32, mode="r", shape=r.shape)
    ms = np.memmap(ps, dtype=np.float32, mode="r", shape=s.shape)
    for a, b in ((mr, ms), (mr.T, ms.T), (r.astype(np.float16), s), (r.T.astype(np.float16), s.T)):
        m = compute_metrics(a, b, atol=1e-3, rtol=1e-3, chunk_elems=4096)
        check(m, np.asarray(a), np.asarray(b), 1e-3, 1e-3)



def test_compiled_and_numpy_chunk_arithmetic_agree(monkeypatch):
    from parity import fused

    rng = np.random.default_rng(21)
    r, s = _big_pair(rng, 300_000)
    s[rng.random(r.size) < 0.001] += 1e-4
    for dt in (np.float32, np.float64):
        rr, ss = r.astype(dt), s.astype(dt)
        monkeypatch.setattr(fused, "_compiled", None)  # whatever the autouse fixture chose: build it again
        compiled = compute_metrics(rr, ss, atol=1e-5, rtol=1e-5, chunk_elems=32768)
        monkeypatch.setattr(fused, "_compiled", False)
        plain = compute_metrics(rr, ss, atol=1e-5, rtol=1e-5, chunk_elems=32768)
        for k in ("n_compared", "max_abs", "max_rel", "rel_floor", "p99_abs", "n_outside", "min_passing_atol",
                  "argmax_abs", "ref_at_max", "sub_at_max"):
            assert getattr(compiled, k) == getattr(plain, k), k
        assert compiled.mean_abs == pytest.approx(plain.mean_abs, rel=1e-6)
        # sums of squares of float32 chunks: the compiled loop's vector width (AVX2 or AVX512) orders them
        assert compiled.rel_fro == pytest.approx(plain.rel_fro, rel=1e-5)
        assert (1 - compiled.cosine) == pytest.approx(1 - plain.cosine, rel=1e-4)


def test_chunk_sums_max_abs_ref_from_bits():
    from parity.fused import chunk_sums, chunk_sums_numpy

    for dt in (np.float32, np.float64):
        r = np.array([0.5, -7.25, 3.0, -0.0, 6.5], dt)
        s = r + dt(0.25)
        d1, d2, ones = np.empty_like(r), np.empty_like(r), np.ones_like(r)
        got, want = chunk_sums(r, s, d1, ones), chunk_sums_numpy(r, s, d2, ones)
        assert got[4] == want[4] == 7.25
        assert np.array_equal(d1, d2)
        assert got[:4] == pytest.approx(want[:4], rel=1e-7)
