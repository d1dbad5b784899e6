import errno
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity import safetensors_io as S
from parity.dtypes import round_to_bf16
from parity.errors import ParityError

try:
    from parity.tests import hypothesis_profiles  # noqa: F401
except ImportError:
    import hypothesis_profiles  # noqa: F401

NP_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
             np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]


def sample_tensors():
    rng = np.random.default_rng(1)
    out = {}
    for i, dt in enumerate(NP_DTYPES):
        name = f"t{(7 * i) % len(NP_DTYPES):02d}.{np.dtype(dt).name}"  # name order != dtype order
        if np.dtype(dt).kind == "f":
            out[name] = rng.standard_normal((2, 3)).astype(dt)
        elif dt is np.bool_:
            out[name] = rng.integers(0, 2, (5,)).astype(bool)
        else:
            out[name] = rng.integers(0, 100, (3, 1, 2)).astype(dt)
    out["empty"] = np.zeros((2, 0, 3), np.float32)
    out["scalar"] = np.array(3.5, np.float32)
    out["ünï\"cod\\e\n"] = np.arange(3, dtype=np.int64)
    return out


def raw_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, f.read(n)


def test_round_trip_all_dtypes(tmp_path):
    t = sample_tensors()
    p = tmp_path / "a.safetensors"
    S.save_safetensors(p, t)
    back = S.load_safetensors(p)
    assert list(back) != [] and set(back) == set(t)
    for k, v in t.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert np.array_equal(back[k], v)
    hdr = S.read_safetensors_header(p)
    assert hdr["empty"] == ("float32", (2, 0, 3)) and hdr["scalar"] == ("float32", ())
    assert S.load_safetensors_dtypes(p)["t00.float64"] == "float64"
    assert os.listdir(tmp_path) == ["a.safetensors"]  # no temp file left


def test_bf16_round_trip_and_rounding(tmp_path):
    x = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    p = tmp_path / "w.safetensors"
    S.save_safetensors(p, {"x": x, "y": x}, dtypes={"x": "bfloat16", "y": "float16"})
    assert S.load_safetensors_dtypes(p) == {"x": "bfloat16", "y": "float16"}
    back = S.load_safetensors(p)
    assert back["x"].dtype == np.float32
    assert np.array_equal(back["x"], round_to_bf16(x))
    assert np.array_equal(back["y"], x.astype(np.float16))
    # bf16-valued float32 survives exactly
    S.save_safetensors(p, {"x": back["x"]}, dtypes={"x": "bfloat16"})
    assert np.array_equal(S.load_safetensors(p)["x"], back["x"])


def test_names_subset_and_mmap(tmp_path):
    p = tmp_path / "w.safetensors"
    S.save_safetensors(p, {"a": np.ones(3, np.float32), "b": np.zeros(2, np.int64)})
    assert list(S.load_safetensors(p, ["b"])) == ["b"]
    assert list(S.load_safetensors(p, "a")) == ["a"]
    m = S.load_safetensors(p, mmap=True)
    assert isinstance(m["a"], np.memmap) and not m["a"].flags.writeable and m["a"].sum() == 3
    with pytest.raises(ParityError, match="w.safetensors.*has no tensor"):
        S.load_safetensors(p, ["nope"])


def test_metadata(tmp_path):
    p = tmp_path / "m.safetensors"
    S.save_safetensors(p, {"a": np.ones(1, np.float32)}, metadata={"format": "pt"})
    assert S.read_safetensors_metadata(p) == {"format": "pt"}
    with pytest.raises(ParityError, match="metadata"):
        S.save_safetensors(p, {"a": np.ones(1)}, metadata={"k": 1})


@pytest.mark.parametrize("metadata", [None, {"format": "np"}])
def test_byte_identical_to_safetensors_numpy(tmp_path, metadata):
    sn = pytest.importorskip("safetensors.numpy")
    t = sample_tensors()
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    S.save_safetensors(ours, t, metadata=metadata)
    sn.save_file(t, str(theirs), metadata=metadata)
    assert ours.read_bytes() == theirs.read_bytes()
    loaded = sn.load_file(str(ours))
    assert all(np.array_equal(loaded[k], t[k]) for k in t)


@pytest.mark.torch
def test_bf16_byte_identical_to_safetensors_torch(tmp_path):
    torch = pytest.importorskip("torch")
    stt = pytest.importorskip("safetensors.torch")
    x = np.random.default_rng(3).standard_normal((3, 7)).astype(np.float32)
    x[0, :3] = [np.inf, -np.inf, 0.0]
    tensors = {"z.bf": torch.from_numpy(x).to(torch.bfloat16), "a.f16": torch.from_numpy(x).half(),
               "m.f32": torch.from_numpy(x), "i": torch.arange(4)}
    theirs, ours = tmp_path / "t.safetensors", tmp_path / "o.safetensors"
    stt.save_file(tensors, str(theirs))
    S.save_safetensors(ours, {"z.bf": x, "a.f16": x, "m.f32": x, "i": np.arange(4)},
                       dtypes={"z.bf": "bfloat16", "a.f16": "float16"})
    assert ours.read_bytes() == theirs.read_bytes()
    back = S.load_safetensors(theirs)
    assert np.array_equal(back["z.bf"], tensors["z.bf"].float().numpy())


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "w.safetensors"
    S.save_safetensors(p, {"a": np.ones(3, np.float32)})
    before = p.read_bytes()
    with pytest.raises(ParityError, match="unsupported dtype"):
        S.save_safetensors(p, {"a": np.ones(3, np.float32), "b": np.array([object()])})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(S.os, "fsync", no_space)
    with pytest.raises(ParityError, match="w.safetensors: no space left on device.*free disk space"):
        S.save_safetensors(p, {"a": np.zeros(3, np.float32)})
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_write_errors(tmp_path):
    with pytest.raises(ParityError, match="__metadata__"):
        S.save_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.ones(1)})
    with pytest.raises(ParityError, match="unknown tensor"):
        S.save_safetensors(tmp_path / "x.safetensors", {"a": np.ones(1)}, dtypes={"b": "float16"})
    with pytest.raises(ParityError, match="cannot write"):
        S.save_safetensors(tmp_path / "missing_dir" / "x.safetensors", {"a": np.ones(1)})


def _good_file(tmp_path):
    p = tmp_path / "g.safetensors"
    S.save_safetensors(p, {"a": np.arange(4, dtype=np.float32), "b": np.arange(2, dtype=np.int16)})
    return p


def _with_header(tmp_path, header: dict, data: bytes, name="bad.safetensors"):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    p = tmp_path / name
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return p


CORRUPT_HEADERS = {
    "not a JSON object": ([1, 2], b""),
    "unsupported dtype": ({"a": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
    "invalid shape": ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "invalid data_offsets": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4),
    "outside": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4),
    "do not match shape": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
    "overlap or leave a gap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "trailing bytes": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8),
    "__metadata__": ({"__metadata__": {"a": 1}}, b""),
    "header entry": ({"a": 3}, b""),
}


@pytest.mark.parametrize("what", sorted(CORRUPT_HEADERS))
def test_corrupt_headers(tmp_path, what):
    header, data = CORRUPT_HEADERS[what]
    p = _with_header(tmp_path, header, data)
    with pytest.raises(ParityError, match="bad.safetensors") as e:
        S.load_safetensors(p)
    assert what in str(e.value)


def test_corrupt_files(tmp_path):
    good = _good_file(tmp_path).read_bytes()
    cases = {
        "short": good[:5],
        "huge header length": struct.pack("<Q", 1 << 62) + good[8:],
        "header beyond file": struct.pack("<Q", len(good)) + good[8:],
        "truncated data": good[:-3],
        "bad json": good[:8] + b"{" * 8 + good[16:],
        "bad utf8": good[:8] + b"\xff" + good[9:],
        "duplicate key": None,
    }
    for label, blob in cases.items():
        p = tmp_path / f"{label.replace(' ', '_')}.safetensors"
        if blob is None:
            entry = b'{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
            raw = b'{"a":' + entry + b',"a":' + entry + b"}"
            blob = struct.pack("<Q", len(raw)) + raw + b"\0"
        p.write_bytes(blob)
        with pytest.raises(ParityError, match=str(p.name)):
            S.load_safetensors(p)
    with pytest.raises(ParityError, match="not found"):
        S.load_safetensors(tmp_path / "does_not_exist.safetensors")
    with pytest.raises(ParityError, match="not a regular file"):
        S.read_safetensors_header(tmp_path)


@given(data=st.data())
def test_fuzz_bytes(tmp_path_factory, data):
    base = tmp_path_factory.getbasetemp() / "fuzz_st"
    base.mkdir(exist_ok=True)
    good = bytearray(_good_file(base).read_bytes())
    n = len(good)
    op = data.draw(st.sampled_from(["flip", "truncate", "header"]))
    if op == "flip":
        for pos in data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)):
            good[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "truncate":
        good = good[: data.draw(st.integers(0, n - 1))]
    else:
        text = data.draw(st.text(max_size=200)).encode()
        good = bytearray(struct.pack("<Q", len(text)) + text + bytes(good[8 + struct.unpack("<Q", good[:8])[0]:]))
    p = base / "f.safetensors"
    p.write_bytes(bytes(good))
    try:
        S.load_safetensors(p)
    except ParityError as e:
        assert "f.safetensors" in str(e) and "\n" not in str(e)
