import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import parity
from parity import store
from parity.dtypes import round_to_bf16
from parity.errors import ParityError
from parity.safetensors_io import save_safetensors
from parity.store import DumpWriter, load_npy_checked, open_dump, sha256_file, verify_dump

REPO = os.path.dirname(os.path.dirname(os.path.abspath(parity.__file__)))
CONFIG = {"num_layers": 2, "sample_size": [8, 8], "norm_type": "ada_norm_single"}


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "t": np.array([3, 999], np.int64),
        "mask": rng.integers(0, 2, (2, 5)).astype(bool),
        "h.0": rng.standard_normal((2, 7)).astype(np.float32),
        "h.1": (rng.standard_normal((3,)) * 1e3).astype(np.float32),
        "w": rng.standard_normal((4, 4)).astype(np.float32),
    }


def make_dump(out, precision="fp32", force=False, seed=0, **kw):
    a = arrays(seed)
    sdt = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}[precision]
    with DumpWriter(out, family="opensora_v13", precision=precision, config=CONFIG, seeds={"weights": seed},
                    versions={"torch": "x"}, case="tiny", force=force, **kw) as w:
        w.add_input("x", a["x"])
        w.add_input("t", a["t"])
        w.add_input("mask", a["mask"])
        for p in ("h.0", "h.1"):
            w.add_state(p, a[p], dtype=sdt)
            if precision != "fp32":
                w.add_state(p, a[p], role="state_fp32")
        w.write_weights({"w": a["w"]}, {"w": sdt} if sdt else None)
    return a


def tree(d):
    """{relative path: sha256} of every file under d."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, d)] = sha256_file(full)
    return out


def siblings(path):
    return sorted(os.listdir(os.path.dirname(path)))


def manifest(d):
    with open(os.path.join(d, "manifest.json")) as f:
        return json.load(f)


def rewrite_manifest(d, fn):
    m = manifest(d)
    fn(m)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(m, f)


def refresh_entry(d, rel):
    """Make the manifest's bytes/sha256 for rel match the file again (to reach deeper checks)."""
    full = os.path.join(d, rel)

    def fn(m):
        m["files"][rel]["sha256"] = sha256_file(full)
        m["files"][rel]["bytes"] = os.path.getsize(full)
    rewrite_manifest(d, fn)


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_round_trip(tmp_path, precision):
    out = str(tmp_path / "dump")
    a = make_dump(out, precision)
    assert siblings(out) == ["dump"]  # no lock, temp or old dirs left
    d = open_dump(out)
    assert (d.precision, d.family, d.case, d.config) == (precision, "opensora_v13", "tiny", CONFIG)
    assert d.probes == ["h.0", "h.1"] and d.input_names == ["x", "t", "mask"]
    assert d.has_fp32_states == (precision != "fp32")
    conv = {"fp32": lambda x: x, "fp16": lambda x: x.astype(np.float16), "bf16": round_to_bf16}[precision]
    for p in d.probes:
        s = d.state(p)
        assert np.array_equal(s, conv(a[p])) and s.dtype == conv(a[p]).dtype
        assert d.state_dtype(p) == {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
        assert d.state_shape(p) == a[p].shape
        if precision != "fp32":
            assert np.array_equal(d.state(p, role="state_fp32"), a[p])
    assert isinstance(d.state("h.0", "state_fp32" if precision != "fp32" else "state"), np.memmap)
    if precision == "bf16":
        raw = d.raw("states/h.0.npy")
        assert raw.dtype == np.uint16 and not raw.flags.writeable
    for k, v in d.inputs().items():
        assert np.array_equal(v, a[k]) and v.dtype == a[k].dtype
    assert np.array_equal(d.load_weights()["w"], conv(a["w"]).astype(np.float32))
    assert d.weights_path() == os.path.join(out, "weights.safetensors")
    assert verify_dump(out) == []


def test_manifest_contents(tmp_path):
    out = str(tmp_path / "d")
    make_dump(out, "bf16", extra={"note": "hi"})
    m = manifest(out)
    assert m["schema"] == "opensora-parity/dump" and m["schema_version"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created"])
    assert m["versions"]["torch"] == "x" and "numpy" in m["versions"] and "python" in m["versions"]
    assert m["producer"] == "parity dump" and m["extra"] == {"note": "hi"} and m["seeds"] == {"weights": 0}
    assert m["weights"]["path"] == "weights.safetensors" and m["weights"]["external"] is False
    e = m["files"]["states/h.0.npy"]
    assert e["role"] == "state" and e["dtype"] == "bfloat16" and e["shape"] == [2, 7]
    assert e["sha256"] == sha256_file(os.path.join(out, "states/h.0.npy"))
    assert e["bytes"] == os.path.getsize(os.path.join(out, "states/h.0.npy"))
    assert m["files"]["states_fp32/h.0.npy"]["role"] == "state_fp32"
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f) == CONFIG


def test_scalar_empty_and_extra_attribute(tmp_path):
    out = str(tmp_path / "d")
    with DumpWriter(out, family="f", precision="fp32", config={}) as w:
        w.add_state("s", np.float32(2.5))
        w.add_state("e", np.zeros((0, 3), np.float32))
        w.add_state("f", np.arange(6, dtype=np.float32).reshape(2, 3).T)  # non-contiguous
        w.extra["nonfinite_states"] = []
    d = open_dump(out)
    assert d.state("s").shape == () and d.state("s") == 2.5
    assert d.state("e").shape == (0, 3)
    assert np.array_equal(d.state("f"), np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert d.manifest["extra"] == {"nonfinite_states": []} and d.manifest["weights"] is None
    with pytest.raises(ParityError, match="has no weights"):
        d.load_weights()


def test_weights_file_copy_and_external(tmp_path):
    src = str(tmp_path / "ckpt.safetensors")
    save_safetensors(src, {"a": np.ones((2, 2), np.float32)})
    for copy in (True, False):
        out = str(tmp_path / f"d{copy}")
        with DumpWriter(out, family="f", precision="fp32", config={}) as w:
            w.set_weights_file(src, copy=copy)
            w.add_state("s", np.ones(2, np.float32))
        d = open_dump(out)
        assert d.manifest["weights"]["external"] is (not copy)
        assert d.weights_path() == (os.path.join(out, "weights.safetensors") if copy else src)
        assert np.array_equal(d.load_weights()["a"], np.ones((2, 2)))
    save_safetensors(src, {"a": np.zeros((2, 2), np.float32)})  # external file changed (same size)
    d = open_dump(str(tmp_path / "dFalse"))
    with pytest.raises(ParityError, match="ckpt.safetensors: sha256 mismatch"):
        d.load_weights()
    assert any("ckpt.safetensors: sha256 mismatch" in p for p in verify_dump(str(tmp_path / "dFalse")))
    os.unlink(src)
    with pytest.raises(ParityError, match="ckpt.safetensors: weights file missing"):
        open_dump(str(tmp_path / "dFalse"))


# ---------------------------------------------------------------------------------- atomicity and force


def test_exists_without_force(tmp_path):
    out = str(tmp_path / "d")
    make_dump(out)
    before = tree(out)
    with pytest.raises(ParityError, match=r"d: exists; pass --force to overwrite"):
        make_dump(out, seed=1)
    assert tree(out) == before and siblings(out) == ["d"]


def test_force_replaces(tmp_path):
    out = str(tmp_path / "d")
    make_dump(out, seed=0)
    a = make_dump(out, seed=1, force=True)
    assert np.array_equal(open_dump(out).state("h.0"), a["h.0"])
    assert siblings(out) == ["d"]


def test_force_refuses_non_dump_dir(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    with pytest.raises(ParityError, match="not a parity dump.*refusing"):
        make_dump(str(out), force=True)
    assert (out / "thesis.tex").read_text() == "x"


def test_failing_write_leaves_existing_dump_byte_identical(tmp_path):
    out = str(tmp_path / "d")
    make_dump(out)
    before = tree(out)
    with pytest.raises(RuntimeError, match="boom"):
        with DumpWriter(out, family="f", precision="fp32", config={}, force=True) as w:
            w.add_state("h.0", np.zeros(3, np.float32))
            raise RuntimeError("boom")
    with pytest.raises(ParityError, match="added twice"):
        with DumpWriter(out, family="f", precision="fp32", config={}, force=True) as w:
            w.add_state("h.0", np.zeros(3, np.float32))
            w.add_state("h.0", np.zeros(3, np.float32))
    assert tree(out) == before and siblings(out) == ["d"]
    assert open_dump(out).probes == ["h.0", "h.1"]


# fsync calls of make_dump: 1 lock, 2-4 inputs, 5-6 states, 7 weights, 8 config, 9 manifest
@pytest.mark.parametrize("full_from_call", [1, 2, 5, 7, 9])
def test_disk_full(tmp_path, monkeypatch, full_from_call):
    out = str(tmp_path / "d")
    make_dump(out)
    before = tree(out)
    real_fsync, calls = os.fsync, []

    def filling_disk(fd):
        calls.append(fd)
        if len(calls) >= full_from_call:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(store.os, "fsync", filling_disk)
    with pytest.raises(ParityError, match=r"d: no space left on device.*free disk space"):
        make_dump(out, seed=1, force=True)
    monkeypatch.undo()
    assert tree(out) == before and siblings(out) == ["d"]


def test_publish_failure_rolls_back(tmp_path, monkeypatch):
    out = str(tmp_path / "d")
    make_dump(out)
    before = tree(out)
    real = os.rename
    calls = []

    def flaky(src, dst, **kw):
        calls.append(src)
        if len(calls) == 2:  # moving the new dump into place
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst, **kw)

    monkeypatch.setattr(store.os, "rename", flaky)
    with pytest.raises(ParityError, match="cannot write the final directory"):
        make_dump(out, seed=1, force=True)
    monkeypatch.undo()
    assert tree(out) == before and siblings(out) == ["d"]


CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from parity.store import DumpWriter
    out, stage = sys.argv[1], sys.argv[2]
    real_rename = os.rename
    calls = []
    def pausing_rename(src, dst, **kw):
        calls.append(src)
        if (stage == "publish" and len(calls) == 1) or (stage == "swap" and len(calls) == 2):
            print("READY", flush=True)
            time.sleep(60)
        return real_rename(src, dst, **kw)
    with DumpWriter(out, family="f", precision="fp32", config={}, force=True) as w:
        w.add_state("new0", np.ones(1000, np.float32))
        if stage == "write":
            print("READY", flush=True)
            time.sleep(60)
        w.add_state("new1", np.ones(10, np.float32))
        os.rename = pausing_rename
""")


def _kill_child_at(out, stage):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", CHILD, out, stage], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        lock = os.path.join(os.path.dirname(out), ".d.lock")
        with pytest.raises(ParityError, match=rf"being written by another process \(pid {p.pid}\).*\.d\.lock"):
            make_dump(out, seed=2, force=True)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert os.path.exists(lock)  # stale lock of the dead writer
    return p.pid


@pytest.mark.parametrize("stage", ["write", "publish", "swap"])
def test_sigkill_mid_write(tmp_path, stage):
    out = str(tmp_path / "d")
    make_dump(out)
    before = tree(out) if os.path.exists(out) else None
    pid = _kill_child_at(out, stage)
    tmps = [n for n in siblings(out) if ".tmp-" in n]
    if stage in ("write", "publish"):
        assert tree(out) == before
        assert open_dump(out).probes == ["h.0", "h.1"]
        assert tmps == [f for f in tmps if f.startswith(f".d.tmp-{pid}-")] and len(tmps) == 1
        tmp = os.path.join(os.path.dirname(out), tmps[0])
        with pytest.raises(ParityError, match="incomplete temporary dump"):
            open_dump(tmp)
        assert "incomplete temporary dump" in verify_dump(tmp)[0]
    else:
        # killed between moving the old dump aside and moving the new one in
        with pytest.raises(ParityError, match=r"does not exist.*previous dump"):
            open_dump(out)
    # the next writer takes over the stale lock, restores/cleans leftovers and works normally
    with pytest.raises(ParityError, match="exists; pass --force"):
        make_dump(out, seed=3)
    assert tree(out) == before
    assert siblings(out) == ["d"]
    make_dump(out, seed=3, force=True)
    assert siblings(out) == ["d"] and verify_dump(out) == []


def test_lock_contention_in_process(tmp_path):
    out = str(tmp_path / "d")
    with DumpWriter(out, family="f", precision="fp32", config={}) as w:
        w.add_state("a", np.ones(2, np.float32))
        with pytest.raises(ParityError, match=rf"d: is being written by another process \(pid {os.getpid()}\); "
                                              r"wait or remove the stale lock .*\.d\.lock"):
            with DumpWriter(out, family="f", precision="fp32", config={}):
                pass
    assert siblings(out) == ["d"]


def test_stale_lock_is_taken_over(tmp_path):
    out = str(tmp_path / "d")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".d.lock").write_text(f"{dead.pid}\n")
    make_dump(out)
    assert siblings(out) == ["d"]


def test_writer_validation(tmp_path):
    out = str(tmp_path / "d")
    kw = dict(family="f", config={})
    with pytest.raises(ParityError, match="unknown precision"):
        DumpWriter(out, precision="fp8", **kw)
    with pytest.raises(ParityError, match="config is not JSON-serializable"):
        DumpWriter(out, precision="fp32", family="f", config={"a": object()})
    with pytest.raises(ParityError, match="config must be a dict"):
        DumpWriter(out, precision="fp32", family="f", config=None)
    w = DumpWriter(out, precision="fp32", **kw)
    with pytest.raises(ParityError, match="outside its 'with' block"):
        w.add_state("a", np.ones(1))
    with DumpWriter(out, precision="fp32", **kw) as w:
        with pytest.raises(ParityError, match="fp32 shadow states"):
            w.add_state("a", np.ones(1), role="state_fp32")
        with pytest.raises(ParityError, match="unknown state role"):
            w.add_state("a", np.ones(1), role="weights")
        with pytest.raises(ParityError, match="unsupported dtype"):
            w.add_state("a", np.array([object()]))
        with pytest.raises(ParityError, match="unknown dtype"):
            w.add_input("a", np.ones(1), dtype="float8")
        for bad in ("../x", "a/b", ".hidden", "", "x" * 201, "a b", "..", None, "a\n"):
            with pytest.raises(ParityError, match="invalid (probe|input) name"):
                w.add_state(bad, np.ones(1))
        w.add_state("ok", np.ones(1))
    assert siblings(out) == ["d"] and not os.path.exists(os.path.join(tmp_path, "x"))


# --------------------------------------------------------------------------------------------- corruption


@pytest.fixture()
def dump(tmp_path):
    out = str(tmp_path / "d")
    make_dump(out, "bf16")
    return out


def _expect(path, match):
    with pytest.raises(ParityError, match=match) as e:
        d = open_dump(path)
        for role in ("state", "state_fp32"):
            for p in d.probes:
                d.state(p, role)
        d.inputs()
        d.load_weights()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_manifest(dump):
    os.unlink(os.path.join(dump, "manifest.json"))
    _expect(dump, r"d/manifest.json: missing, so .* is not a complete dump")


def test_missing_state(dump):
    os.unlink(os.path.join(dump, "states/h.1.npy"))
    _expect(dump, r"d/states/h.1.npy: missing")


def test_truncated_npy(dump):
    rel = "states/h.0.npy"
    with open(os.path.join(dump, rel), "r+b") as f:
        f.truncate(100)
    _expect(dump, r"states/h.0.npy: 100 bytes but the manifest says")
    refresh_entry(dump, rel)
    _expect(dump, r"states/h.0.npy: is truncated inside the .npy header")


def test_truncated_data_with_consistent_manifest(dump):
    rel = "states_fp32/h.0.npy"
    full = os.path.join(dump, rel)
    with open(full, "r+b") as f:
        f.truncate(os.path.getsize(full) - 4)
    refresh_entry(dump, rel)
    _expect(dump, r"states_fp32/h.0.npy: is truncated \(")


def test_object_dtype_npy(dump):
    rel = "inputs/x.npy"
    np.save(os.path.join(dump, rel), np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    refresh_entry(dump, rel)
    _expect(dump, r"inputs/x.npy: contains Python objects \(pickled\); refusing")


def test_shape_and_dtype_mismatch(dump):
    rewrite_manifest(dump, lambda m: m["files"]["states/h.0.npy"].update(shape=[7, 2]))
    _expect(dump, r"states/h.0.npy: is stored as <u2 \[2, 7\] but the manifest says bfloat16 \[7, 2\]")
    rewrite_manifest(dump, lambda m: m["files"]["states/h.0.npy"].update(shape=[2, 7], dtype="float16"))
    _expect(dump, r"states/h.0.npy: is stored as <u2 \[2, 7\] but the manifest says float16")


def test_sha_mismatch(dump):
    full = os.path.join(dump, "states/h.1.npy")
    with open(full, "r+b") as f:
        f.seek(-1, 2)
        b = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([b[0] ^ 1]))
    _expect(dump, r"states/h.1.npy: sha256 mismatch with manifest \(file changed or corrupt\); "
                  r"re-create the dump with 'parity dump'")
    open_dump(dump, verify=False)  # checksums skipped, geometry still fine


def test_weights_sha_mismatch(dump):
    full = os.path.join(dump, "weights.safetensors")
    with open(full, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    _expect(dump, r"d/weights.safetensors: sha256 mismatch")


def test_unknown_schema_version(dump):
    for v in (2, "1", True, None):
        rewrite_manifest(dump, lambda m: m.update(schema_version=v))
        msg = _expect(dump, r"manifest.json: unsupported schema_version")
        assert "reads version(s) 1" in msg
    rewrite_manifest(dump, lambda m: m.update(schema="other"))
    _expect(dump, r"manifest.json: schema is 'other'")


def test_broken_json(dump):
    with open(os.path.join(dump, "manifest.json"), "a") as f:
        f.write("{,")
    _expect(dump, r"d/manifest.json: not valid JSON")
    with open(os.path.join(dump, "manifest.json"), "w") as f:
        f.write("[1]")
    _expect(dump, r"d/manifest.json: not a JSON object")


def test_config_json_problems(dump):
    with open(os.path.join(dump, "config.json"), "w") as f:
        json.dump({"num_layers": 3}, f)
    _expect(dump, r"d/config.json: differs from the config in manifest.json")
    os.unlink(os.path.join(dump, "config.json"))
    _expect(dump, r"d/config.json: missing")


@pytest.mark.parametrize("mutate, match", [
    (lambda m: m["files"].update({"../evil.npy": m["files"]["states/h.0.npy"]}), r"files\['../evil.npy'\] does not"),
    (lambda m: m["files"]["states/h.0.npy"].update(name="../../etc/passwd"), r"invalid probe name '../../etc/passwd'"),
    (lambda m: m["files"]["inputs/x.npy"].update(name="/abs"), r"invalid input name '/abs'"),
    (lambda m: m.update(probes=["../h.0", "h.1"]), r"probes: invalid probe name '../h.0'"),
    (lambda m: m["files"]["states/h.0.npy"].update(role="weights"), r"role must be one of"),
    (lambda m: m["weights"].update(path="../elsewhere.safetensors"), r"weights.path of a non-external"),
    (lambda m: m.update(precision="fp64"), r"unknown precision 'fp64'"),
    (lambda m: m.update(files=[]), r"'files' must be an object"),
    (lambda m: m.update(family=3), r"'family' must be a string, got int"),
    (lambda m: m.pop("probes"), r"missing key 'probes'"),
    (lambda m: m["files"]["states/h.0.npy"].update(shape=[2, "7"]), r"shape must be a list of non-negative"),
    (lambda m: m["files"]["states/h.0.npy"].update(bytes=-1), r"bytes must be a non-negative integer"),
    (lambda m: m.update(probes=["h.0"]), r"states/h.1.npy is in 'files' but probe 'h.1' is missing"),
])
def test_hostile_manifest(dump, mutate, match):
    rewrite_manifest(dump, mutate)
    _expect(dump, r"d/manifest.json: .*" + match)


def test_huge_shape_header_does_not_allocate(dump):
    rel = "states/h.0.npy"
    full = os.path.join(dump, rel)
    with open(full, "rb") as f:
        data = f.read()
    header = "{'descr': '<u2', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }"
    header = header.ljust(117) + "\n"
    with open(full, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data[128:])
    rewrite_manifest(dump, lambda m: m["files"][rel].update(shape=[2**40, 2**40]))
    refresh_entry(dump, rel)
    _expect(dump, r"states/h.0.npy: is truncated \(\d+ bytes, its header implies 2417851639229258349412480\)")


def test_path_is_file_temp_or_missing(tmp_path, dump):
    _expect(str(tmp_path / "nope"), r"nope: dump directory does not exist")
    _expect(os.path.join(dump, "config.json"), r"config.json: not a directory")
    os.mkdir(tmp_path / ".d.tmp-123-abcd")
    _expect(str(tmp_path / ".d.tmp-123-abcd"), r"incomplete temporary dump")


def test_state_access_errors(dump):
    d = open_dump(dump)
    for bad in ("../states/h.0", "states/h.0", ".h", "", "a" * 201):
        with pytest.raises(ParityError, match="invalid probe name"):
            d.state(bad)
    with pytest.raises(ParityError, match=r"states/nope.npy: state 'nope' is not in this dump \(available: h.0, h.1\)"):
        d.state("nope")
    with pytest.raises(ParityError, match="unknown role"):
        d.state("h.0", role="bogus")
    with pytest.raises(ParityError, match="not a file of this dump"):
        d.raw("../manifest.json")
    with pytest.raises(ParityError, match="invalid input name"):
        d.input("../../x")
    # a state replaced by a new file (a new inode) is not seen at all: the dump stays the verified generation
    before = np.array(d.state("h.1"))
    os.unlink(os.path.join(dump, "states/h.1.npy"))
    np.save(os.path.join(dump, "states/h.1.npy"), np.zeros((3,), np.uint16))
    assert np.array_equal(d.state("h.1"), before)
    # a state rewritten in place after open_dump is caught on load
    np.save(os.path.join(dump, "states/h.0.npy"), np.zeros((3, 3), np.uint16))
    with pytest.raises(ParityError, match=r"states/h.0.npy: changed in place since the dump was verified"):
        d.state("h.0")


def test_fp32_dump_has_no_shadow_states(tmp_path):
    out = str(tmp_path / "d")
    make_dump(out)
    with pytest.raises(ParityError, match="fp32 dump has no fp32 shadow states"):
        open_dump(out).state("h.0", role="state_fp32")


# ---------------------------------------------------------------------------------------------- verify


def test_verify_lists_every_problem(dump):
    os.unlink(os.path.join(dump, "states/h.1.npy"))
    with open(os.path.join(dump, "inputs/x.npy"), "ab") as f:
        f.write(b"\0")
    full = os.path.join(dump, "states_fp32/h.0.npy")
    with open(full, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x7f")
    rewrite_manifest(dump, lambda m: m.update(family=None))
    problems = verify_dump(dump)
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    for needle in ("manifest.json: 'family' must be a string", "states/h.1.npy: missing",
                   "inputs/x.npy: ", "states_fp32/h.0.npy: sha256 mismatch"):
        assert needle in text
    assert all("\n" not in p for p in problems)
    with pytest.raises(ParityError, match=r"\[3 more problem\(s\): run 'parity verify"):
        open_dump(dump)


def test_verify_flags_nonfinite_reference(tmp_path):
    out = str(tmp_path / "d")
    x = np.array([1.0, np.nan, np.inf, 2.0], np.float32)
    with DumpWriter(out, family="f", precision="bf16", config={}) as w:
        w.add_state("bad", x, dtype="bfloat16")
        w.add_state("bad", x, role="state_fp32")
        w.add_state("good", np.ones(2, np.float32), dtype="bfloat16")
        w.add_input("nan_input_is_not_a_reference_state", x)
    problems = verify_dump(out)
    assert len(problems) == 2
    assert all(p.startswith("reference problem: ") and "1 NaN and 1 Inf" in p for p in problems)
    d = open_dump(out)  # still loadable; the comparison decides what to do with it
    assert d.nonfinite_counts("bad") == (1, 1) and d.nonfinite_counts("good") == (0, 0)
    assert verify_dump(str(tmp_path / "nothing")) and "does not exist" in verify_dump(str(tmp_path / "nothing"))[0]


def test_sha256_file_chunked(tmp_path):
    p = tmp_path / "f"
    data = os.urandom(3 * 1024 + 5)
    p.write_bytes(data)
    assert sha256_file(p, chunk=1024) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ParityError, match="cannot read"):
        sha256_file(tmp_path / "missing")


def test_load_npy_checked(tmp_path):
    p = str(tmp_path / "a.npy")
    np.save(p, np.arange(6, dtype=np.float16).reshape(2, 3))
    assert np.array_equal(load_npy_checked(p), np.arange(6).reshape(2, 3))
    np.save(p, np.array([None]), allow_pickle=True)
    with pytest.raises(ParityError, match="a.npy: contains Python objects"):
        load_npy_checked(p)
    np.save(p, np.ones(10))
    with open(p, "r+b") as f:
        f.truncate(140)
    with pytest.raises(ParityError, match="a.npy: is truncated"):
        load_npy_checked(p)
    with open(p, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(ParityError, match="a.npy: is not a .npy file"):
        load_npy_checked(p)
