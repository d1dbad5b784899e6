"""Fuzzing the dump loader: whatever happens to a dump on disk, loading it either works or raises
ParityError (one line) — never any other exception, never a huge allocation.

Example counts come from the Hypothesis profile (PARITY_HYPOTHESIS_PROFILE=ci|fuzz, default ci).
"""

import contextlib
import copy
import json
import os
import shutil
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity.errors import ParityError
from parity.store import DumpWriter, open_dump, sha256_file, verify_dump

try:
    from parity.tests import hypothesis_profiles  # noqa: F401
except ImportError:
    import hypothesis_profiles  # noqa: F401


@pytest.fixture(scope="module")
def base_dump(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fuzz_base") / "d")
    rng = np.random.default_rng(0)
    with DumpWriter(out, family="opensora_v13", precision="bf16", config={"num_layers": 1, "dims": [2, 3]},
                    seeds={"weights": 0}, case="fuzz") as w:
        w.add_input("x", rng.standard_normal((2, 3)).astype(np.float32))
        w.add_input("t", np.array([5], np.int64))
        w.add_input("mask", np.ones((1, 4), bool))
        for p in ("h.0", "h.1"):
            a = rng.standard_normal((3, 4)).astype(np.float32)
            w.add_state(p, a, dtype="bfloat16")
            w.add_state(p, a, role="state_fp32")
        w.write_weights({"w": rng.standard_normal((2, 2)).astype(np.float32)}, {"w": "bfloat16"})
    return out


@contextlib.contextmanager
def fresh(base):
    tmp = tempfile.mkdtemp(prefix="parity-fuzz-")
    try:
        dst = os.path.join(tmp, "d")
        shutil.copytree(base, dst)
        yield dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ok(err: ParityError):
    msg = str(err)
    assert msg and "\n" not in msg


def exercise(path: str, verify: bool) -> None:
    """Open and load everything; only ParityError may escape any step."""
    problems = verify_dump(path)
    assert isinstance(problems, list) and all(isinstance(p, str) and "\n" not in p for p in problems)
    try:
        d = open_dump(path, verify=verify)
    except ParityError as e:
        _ok(e)
        return
    steps = [lambda p=p, r=r: d.state(p, r) for p in d.probes for r in ("state", "state_fp32")]
    steps += [lambda n=n: d.input(n) for n in d.input_names]
    steps += [lambda rel=rel: d.raw(rel) for rel in d.manifest["files"]]
    steps += [d.load_weights, d.inputs]
    for step in steps:
        try:
            out = step()
        except ParityError as e:
            _ok(e)
            continue
        for a in out.values() if isinstance(out, dict) else [out]:
            np.asarray(a).reshape(-1)[:8].copy()  # touch the data


def _write_manifest(path, m):
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(m, f)


def _read_manifest(path):
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=6,
)
NASTY = st.sampled_from([
    "../x", "/etc/passwd", "states/../../x.npy", "", "a" * 300, ".hidden", "h.0", "x", "state", "input",
    "state_fp32", "bfloat16", "float64", "uint8", "bool", "fp16", "0" * 64, "f" * 64, -1, 0, 2**63, 2**40, 1.5,
    True, None, [], {}, [2**40, 2**40], [3, 4], [-1], [0], ["3"], {"path": "/dev/zero"},
]).map(copy.deepcopy)  # never share mutable examples between test cases


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(data, m):
    path = data.draw(st.sampled_from(list(_paths(m))))
    op = data.draw(st.sampled_from(["delete", "replace", "nasty", "rename"]))
    if not path:
        return data.draw(JSON) if op == "replace" else m
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if op == "delete":
        del parent[key]
    elif op == "replace":
        parent[key] = data.draw(JSON)
    elif op == "nasty":
        parent[key] = data.draw(NASTY)
    elif isinstance(parent, dict):
        new = data.draw(st.text(max_size=20) | NASTY.filter(lambda v: isinstance(v, str)))
        parent[new] = parent.pop(key)
    return m


@given(data=st.data())
def test_fuzz_manifest_structure(base_dump, data):
    with fresh(base_dump) as d:
        m = _read_manifest(d)
        for _ in range(data.draw(st.integers(1, 4))):
            m = _mutate(data, m)
        _write_manifest(d, m)
        exercise(d, verify=data.draw(st.booleans()))


@given(data=st.data())
def test_fuzz_manifest_bytes(base_dump, data):
    with fresh(base_dump) as d:
        p = os.path.join(d, "manifest.json")
        blob = bytearray(open(p, "rb").read())
        if data.draw(st.booleans()):
            for pos in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=6)):
                blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
        with open(p, "wb") as f:
            f.write(bytes(blob))
        exercise(d, verify=True)


DESCR = st.sampled_from(["<u2", "<f4", "|O", "O", "<f8", ">u2", "|b1", "V8", "<U5", "|u1", "<i8"]) | st.text(max_size=6)
SHAPE = st.one_of(
    st.tuples(st.integers(0, 5), st.integers(0, 5)),
    st.tuples(st.integers(-5, 2**62)),
    st.lists(st.integers(0, 2**40), max_size=4).map(tuple),
    st.just((3, 4)),
    JSON,
)


def _npy_header(data):
    if data.draw(st.integers(0, 9)) == 0:
        text = data.draw(st.text(max_size=80))
    else:
        text = "{'descr': %r, 'fortran_order': %r, 'shape': %r, }" % (
            data.draw(DESCR), data.draw(st.sampled_from([False, True, None, "no"])), data.draw(SHAPE))
    text = text.ljust(data.draw(st.sampled_from([117, len(text) + 1]))) + "\n"
    raw = text.encode("latin1", "replace")
    version = data.draw(st.sampled_from([1, 1, 2, 3, 9]))
    size = struct.pack("<H", len(raw)) if version == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes([version, 0]) + size + raw


def _refresh(d, rel, shape_from=None):
    m = _read_manifest(d)
    full = os.path.join(d, rel)
    e = m["files"][rel]
    e["sha256"], e["bytes"] = sha256_file(full), os.path.getsize(full)
    if shape_from is not None:
        e["shape"] = shape_from
    _write_manifest(d, m)


@given(data=st.data())
def test_fuzz_npy_files(base_dump, data):
    with fresh(base_dump) as d:
        files = sorted(_read_manifest(d)["files"])
        rel = data.draw(st.sampled_from(files))
        full = os.path.join(d, rel)
        blob = bytearray(open(full, "rb").read())
        op = data.draw(st.sampled_from(["flip", "flip_header", "truncate", "header", "append", "header_len"]))
        if op in ("flip", "flip_header"):
            hi = len(blob) - 1 if op == "flip" else 127
            for pos in data.draw(st.lists(st.integers(0, hi), min_size=1, max_size=6)):
                blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
        elif op == "header":
            blob = bytearray(_npy_header(data)) + blob[128:]
        elif op == "append":
            blob += data.draw(st.binary(min_size=1, max_size=64))
        else:
            blob[8:10] = struct.pack("<H", data.draw(st.integers(0, 65535)))
        with open(full, "wb") as f:
            f.write(bytes(blob))
        if data.draw(st.booleans()):  # make the manifest agree so the deeper checks are reached
            shape = data.draw(st.none() | st.lists(st.integers(0, 2**40), max_size=3))
            _refresh(d, rel, shape)
        exercise(d, verify=data.draw(st.booleans()))


@given(data=st.data())
def test_fuzz_weights_file(base_dump, data):
    with fresh(base_dump) as d:
        full = os.path.join(d, "weights.safetensors")
        blob = bytearray(open(full, "rb").read())
        if data.draw(st.booleans()):
            for pos in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=6)):
                blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
        with open(full, "wb") as f:
            f.write(bytes(blob))
        if data.draw(st.booleans()):
            m = _read_manifest(d)
            m["weights"].update(sha256=sha256_file(full), bytes=len(blob))
            _write_manifest(d, m)
        exercise(d, verify=True)
