import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity import dtypes as D
from parity.errors import ParityError

try:
    from parity.tests import hypothesis_profiles  # noqa: F401  (registers + loads the profile)
except ImportError:  # tests dir on sys.path instead of the repo root
    import hypothesis_profiles  # noqa: F401


def f32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def test_precisions():
    assert D.PRECISIONS == ("fp32", "bf16", "fp16")
    assert [D.precision_dtype(p) for p in D.PRECISIONS] == ["float32", "bfloat16", "float16"]
    with pytest.raises(ParityError, match="unknown precision"):
        D.precision_dtype("fp8")


def test_bits_to_float32_exact_for_every_pattern():
    bits = np.arange(1 << 16, dtype=np.uint16)
    out = D.bf16_bits_to_float32(bits)
    assert out.dtype == np.float32
    assert np.array_equal(out.view(np.uint32), bits.astype(np.uint32) << 16)


def test_every_bf16_value_round_trips():
    bits = np.arange(1 << 16, dtype=np.uint16)
    back = D.float32_to_bf16_bits(D.bf16_bits_to_float32(bits))
    vals = D.bf16_bits_to_float32(bits)
    finite = ~np.isnan(vals)
    assert np.array_equal(back[finite], bits[finite])
    assert np.all(np.isnan(D.bf16_bits_to_float32(back[~finite])))


def test_ties_round_to_even():
    kept = np.array([0x3F80, 0x3F81, 0x4000, 0x4001, 0xBF80, 0xBF81, 0x0001, 0x7F7E], dtype=np.uint32)
    halfway = f32((kept << 16) | 0x8000)
    expect = np.where(kept % 2 == 0, kept, kept + 1).astype(np.uint16)
    assert np.array_equal(D.float32_to_bf16_bits(halfway), expect)
    above = f32((kept << 16) | 0x8001)
    below = f32((kept << 16) | 0x7FFF)
    assert np.array_equal(D.float32_to_bf16_bits(above), (kept + 1).astype(np.uint16))
    assert np.array_equal(D.float32_to_bf16_bits(below), kept.astype(np.uint16))


def test_specials():
    x = np.array([np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                  1e-45, np.finfo(np.float32).tiny], dtype=np.float32)
    bits = D.float32_to_bf16_bits(x)
    assert list(bits[:4]) == [0x7F80, 0xFF80, 0x0000, 0x8000]
    assert list(bits[4:6]) == [0x7F80, 0xFF80]  # RNE overflow to inf, like torch
    assert bits[6] == 0 and bits[7] == 0x0080
    # NaNs stay NaN, even those whose payload lives only in the low 16 bits (truncation would give inf)
    nans = f32([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFC00000])
    out = D.bf16_bits_to_float32(D.float32_to_bf16_bits(nans))
    assert np.all(np.isnan(out))
    assert list(np.signbit(out)) == [False, False, True, False, True]


def test_shapes_scalars_and_inputs():
    assert D.round_to_bf16(np.float32(1.0)).shape == ()
    assert D.round_to_bf16(np.float32(1.0)) == 1.0
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)[:, ::2] / 7
    r = D.round_to_bf16(x)
    assert r.dtype == np.float32 and r.shape == (2, 2, 4)
    assert np.array_equal(D.round_to_bf16(r), r)
    assert np.all(r.view(np.uint32) & 0xFFFF == 0)
    assert D.float32_to_bf16_bits([]).shape == (0,)
    with pytest.raises(ParityError):
        D.bf16_bits_to_float32(np.zeros(2, np.float32))


@given(st.floats(width=32, min_value=float(np.float32(-3e38)), max_value=float(np.float32(3e38))))
def test_nearest_bf16(x):
    b = int(D.float32_to_bf16_bits(np.float32(x)))
    val = float(D.bf16_bits_to_float32(np.uint16(b)))
    err = abs(float(np.float32(x)) - val)
    for nb in (b - 1, b + 1):
        if 0 <= nb < 1 << 16 and (nb & 0x7F80) != 0x7F80 and (nb ^ b) & 0x8000 == 0:
            other = abs(float(np.float32(x)) - float(D.bf16_bits_to_float32(np.uint16(nb))))
            assert err < other or (err == other and b % 2 == 0)


@pytest.mark.torch
def test_matches_torch_on_random_bit_patterns():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    ref = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    ours = D.float32_to_bf16_bits(x)
    nan = np.isnan(x)
    assert np.array_equal(ours[~nan], ref[~nan])
    assert np.all(np.isnan(D.bf16_bits_to_float32(ours[nan])))


def test_dtype_names_and_storage():
    assert D.storage_dtype("bfloat16") == np.dtype("<u2")
    assert D.itemsize("float64") == 8 and D.itemsize("bool") == 1
    assert D.dtype_name(np.float16) == "float16"
    assert D.dtype_name(np.dtype(">f4")) == "float32"
    assert D.dtype_name(np.uint16) == "uint16"
    assert D.dtype_name(object) is None and D.dtype_name(np.complex64) is None
    assert D.dtype_name("U5") is None and D.dtype_name("not a dtype") is None
    assert not D.is_dtype_name("float8") and not D.is_dtype_name(None)
    with pytest.raises(ParityError, match="unknown dtype"):
        D.storage_dtype("float8")


def test_to_storage():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    name, data = D.to_storage(a)
    assert name == "float32" and data is a  # no copy
    name, data = D.to_storage(a, "bfloat16")
    assert name == "bfloat16" and data.dtype == np.dtype("<u2")
    bits = data
    assert D.to_storage(bits, "bfloat16")[1] is bits  # uint16 taken as raw bits
    assert D.to_storage(a, "float16")[1].dtype == np.float16
    assert D.to_storage(a.T)[1].flags.c_contiguous
    assert D.to_storage(a.astype(">f4"))[1].dtype == np.dtype("<f4")
    for bad, dt in ((np.array([object()]), None), (a, "int32"), (np.arange(3), "bfloat16"), (a, "float8")):
        with pytest.raises(ParityError, match="where"):
            D.to_storage(bad, dt, where="where")


def test_nonfinite_counts():
    x = np.array([1, np.nan, np.inf, -np.inf, 0], np.float32)
    assert D.nonfinite_counts(x, "float32") == (1, 2)
    assert D.nonfinite_counts(D.float32_to_bf16_bits(x), "bfloat16") == (1, 2)
    assert D.nonfinite_counts(np.arange(3), "int64") == (0, 0)
