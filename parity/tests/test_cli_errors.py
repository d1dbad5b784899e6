"""Bad input fed to every ``parity`` command, end to end (issue 5: reliability and security).

Every row asserts the CLI contract for bad input:

* exit code 2 (1 only for a genuine parity failure of ``compare``);
* stderr is exactly one line, ``parity <command>: error: ...``, naming the offending file/probe and saying what
  to do, with no traceback;
* the working directory — the good dumps, the corrupted dump itself, every input file — is byte-identical
  afterwards and holds no new file (no half-written output, no lock, no temp directory, no file created by
  a hostile pickle or .npy header).

Each test works in a fresh copy of a template directory (``w/``) and runs with it as the current directory,
so every path in argv and in the messages is relative (``bad/states/...``). Most rows run in process through
``parity.cli.main``; the rows marked ``sub`` go through ``python -m parity`` to prove the same holds for a real
process (no traceback or library chatter reaches stderr). Disk-full is simulated in process, SIGKILL on a real
``parity dump``.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from parity import cli, store
from parity.safetensors_io import load_safetensors, save_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures", "reference")
PROBE = "hidden_states_1_block"
STATE = f"states/{PROBE}.npy"
TIMEOUT = 180
# "what to do": every message carries an imperative hint
ADVICE = ("re-create", "pass", "use ", "check", "delete", "convert", "fix", "free", "restore", "choose", "re-save",
          "re-run", "rerun", "regenerate", "remove", "drop", "wait", "compare", "upgrade", "re-export", "see '",
          "write", "point", "pick", "set ", "save ")


# ------------------------------------------------------------------------------------------------ helpers


class _Evil:
    """Unpickling this creates the file PWNED in the current directory: proof that a pickle was run."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree(root) -> dict:
    """{relative path: content hash | "dir" | "link:target" | "special"} of everything under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = f"{_sha(full)}:{stat.S_IMODE(st.st_mode):o}"
            else:
                out[rel] = "special"
    return out


def _man(d) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _put_man(d, m) -> None:
    (d / "manifest.json").write_text(json.dumps(m, indent=1))


def _refresh(d, rel, meta: bool = False) -> None:
    """Make the manifest entry of ``rel`` agree with the (edited) file: bytes and sha256, with ``meta`` also
    shape and dtype — a hand-patched dump whose manifest was "fixed up" too."""
    m = _man(d)
    e = m["files"][rel]
    e["bytes"], e["sha256"] = (d / rel).stat().st_size, _sha(d / rel)
    if meta:
        arr = np.load(d / rel, allow_pickle=False)
        e["shape"], e["dtype"] = list(arr.shape), arr.dtype.name
    _put_man(d, m)


def _resave(d, rel, arr, meta: bool = False) -> None:
    with open(d / rel, "wb") as f:
        np.save(f, arr, allow_pickle=arr.dtype == object)
    _refresh(d, rel, meta and arr.dtype != object)


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path, n: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(n)


def _npy_bytes(header: str, data: bytes = b"") -> bytes:
    """A hand-made version-1.0 .npy file with an arbitrary header text."""
    h = header.encode("latin1")
    h += b" " * (-(10 + len(h) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data


def _edit_weights(d, fn, name="weights.safetensors", manifest: bool = True) -> None:
    w = load_safetensors(d / name)
    fn(w)
    save_safetensors(d / name, w)
    if manifest:
        m = _man(d)
        m["weights"]["bytes"], m["weights"]["sha256"] = (d / name).stat().st_size, _sha(d / name)
        _put_man(d, m)


def _edit_config(d, **changes) -> None:
    """Change the config in both config.json and the manifest (a dump made from another config)."""
    m = _man(d)
    m["config"].update(changes)
    _put_man(d, m)
    (d / "config.json").write_text(json.dumps(m["config"]))


def _rename_probe(new: str):
    def corrupt(d):
        m = _man(d)
        m["probes"] = [new if p == PROBE else p for p in m["probes"]]
        entry = m["files"].pop(STATE)
        entry["name"] = new
        m["files"][f"states/{new}.npy"] = entry
        _put_man(d, m)
    return corrupt


def _set_manifest(**changes):
    def corrupt(d):
        m = _man(d)
        m.update(changes)
        _put_man(d, m)
    return corrupt


def _set_entry(rel, **changes):
    def corrupt(d):
        m = _man(d)
        m["files"][rel].update(changes)
        _put_man(d, m)
    return corrupt


def _drop_input(name):
    def corrupt(d):
        m = _man(d)
        del m["files"][f"inputs/{name}.npy"]
        _put_man(d, m)
        (d / "inputs" / f"{name}.npy").unlink()
    return corrupt


def _add_input(d):
    m = _man(d)
    m["files"]["inputs/foo.npy"] = dict(m["files"]["inputs/timestep.npy"], name="foo")
    _put_man(d, m)
    shutil.copy(d / "inputs" / "timestep.npy", d / "inputs" / "foo.npy")


def _with_nan(d, rel, value=np.nan):
    arr = np.array(np.load(d / rel))
    arr.flat[3] = value
    _resave(d, rel, arr)


def _weights_key(fn):
    return lambda d: _edit_weights(d, fn)


def _misshape(w):
    w["proj_out.weight"] = np.ascontiguousarray(w["proj_out.weight"].T)


def _nan_weight(w):
    w["proj_out.weight"][0, 0] = np.nan


def _evil_object_array():
    return np.array([_Evil(), 1.0], dtype=object)


def _several(*fns):
    def corrupt(d):
        for fn in fns:
            fn(d)
    return corrupt


# --------------------------------------------------------------------------------------- the world


TEMPLATE: list = []


@pytest.fixture(scope="session")
def template(tmp_path_factory):
    t = tmp_path_factory.mktemp("cli-errors-template")
    TEMPLATE[:] = [t]
    shutil.copytree(os.path.join(FIXTURES, "tiny-sparse-fp32"), t / "good")
    shutil.copytree(os.path.join(FIXTURES, "tiny-sparse-bf16"), t / "good16")
    shutil.copy(t / "good" / "config.json", t / "config.json")
    shutil.copy(t / "good" / "weights.safetensors", t / "weights.safetensors")
    np.savez(t / "inputs.npz", **{n[:-4]: np.load(t / "good" / "inputs" / n) for n in os.listdir(t / "good" / "inputs")})
    shutil.copytree(t / "good" / "states", t / "legacy")
    return t


OPTIONAL = ("good16", "legacy")  # copied into a world only for the rows that use them (copying costs time)


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    w = tmp_path / "w"
    shutil.copytree(template, w, ignore=lambda d, names: OPTIONAL if d == str(template) else ())
    monkeypatch.chdir(w)
    return w


def _need(w, *names) -> None:
    for name in names:
        if not (w / name).exists():
            shutil.copytree(TEMPLATE[0] / name, w / name)


def _inputs(w) -> dict:
    with np.load(w / "inputs.npz") as z:
        return {k: np.array(z[k]) for k in z.files}


def _write_inputs(name, fn):
    def setup(w):
        x = _inputs(w)
        fn(x)
        np.savez(w / name, **x)
    return setup


def _write_config(name, fn=None, text=None):
    def setup(w):
        if text is not None:
            (w / name).write_text(text)
            return
        cfg = json.loads((w / "config.json").read_text())
        fn(cfg)
        (w / name).write_text(json.dumps(cfg))
    return setup


def _write_weights(name, fn):
    def setup(w):
        shutil.copy(w / "weights.safetensors", w / name)
        _edit_weights(w, fn, name=name, manifest=False)
    return setup


def _write_bytes(name, data: bytes):
    def setup(w):
        (w / name).write_bytes(data)
    return setup


def _write_pickle(name):
    def setup(w):
        with open(w / name, "wb") as f:
            pickle.dump({"proj_out.weight": _Evil()}, f)
    return setup


def _truncated_copy(src, name, keep=1000):
    def setup(w):
        (w / name).write_bytes((w / src).read_bytes()[:keep])
    return setup


def _torch_zip(name):
    """The layout of a ``torch.save`` zip archive (a pickle plus raw storages), made without torch."""
    def setup(w):
        import zipfile
        with zipfile.ZipFile(w / name, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps({"proj_out.weight": _Evil()}))
            z.writestr("archive/data/0", b"\0" * 8)
            z.writestr("archive/version", b"3\n")
    return setup


def _bad_copy(corrupt, src="good", dst="bad"):
    def setup(w):
        shutil.copytree(w / src, w / dst)
        corrupt(w / dst)
    return setup


# ------------------------------------------------------------------------------------------------ runners


def run_inproc(capsys, argv):
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def run_sub(argv, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "parity", *argv], cwd=cwd, capture_output=True, text=True,
                       timeout=TIMEOUT, env=env)
    return p.returncode, p.stdout, p.stderr


def check_error(rc, err, argv, needles, expect_rc=2) -> str:
    assert rc == expect_rc, f"exit {rc}, expected {expect_rc}; stderr: {err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert re.match(r"parity( [a-z]+)?: error: ", line), line
    for needle in needles:
        assert needle in line, f"{needle!r} not named in: {line}"
    message = line.split(": error: ", 1)[1].lower()
    assert any(word in message for word in ADVICE), f"no advice in: {line}"
    return line


@dataclass
class Row:
    id: str
    argv: list
    setup: Callable | None = None
    needles: tuple = ()
    rc: int = 2
    sub: bool = False            # run through `python -m parity`
    stdout: tuple = ()           # substrings expected on stdout (verify's listing)
    needs: tuple = ()            # optional template parts (good16, legacy) beyond those named in argv
    torch: bool = False          # reaches the torch reference (deselected with PARITY_BLOCK_TORCH=1)


def _run_row(row: Row, world, capsys):
    _need(world, *row.needs, *(n for n in OPTIONAL if n in row.argv))
    if row.setup is not None:
        row.setup(world)
    before = tree(world)
    if row.sub:
        rc, out, err = run_sub(row.argv, world)
    else:
        rc, out, err = run_inproc(capsys, row.argv)
    check_error(rc, err, row.argv, row.needles, row.rc)
    for s in row.stdout:
        assert s in out, f"{s!r} not on stdout:\n{out}"
    after = tree(world)
    assert after == before, {"changed/new": sorted(k for k in after if before.get(k) != after[k]),
                             "removed": sorted(k for k in before if k not in after)}
    return out


# --------------------------------------------------------------------- dump corruptions x compare/verify

B = "bad/"
CORRUPTIONS = [
    # (id, corrupt(d), names the line must contain)
    ("missing-dir", lambda d: shutil.rmtree(d), ("bad",)),
    ("missing-manifest", lambda d: (d / "manifest.json").unlink(), (B + "manifest.json",)),
    ("missing-config-json", lambda d: (d / "config.json").unlink(), (B + "config.json",)),
    ("missing-state", lambda d: (d / STATE).unlink(), (B + STATE,)),
    ("missing-weights", lambda d: (d / "weights.safetensors").unlink(), (B + "weights.safetensors",)),
    ("truncated-npy", lambda d: _truncate(d / STATE, 100), (B + STATE,)),
    ("truncated-npy-manifest-patched", lambda d: (_truncate(d / STATE, 300), _refresh(d, STATE)), (B + STATE,)),
    ("garbage-npy", lambda d: ((d / STATE).write_bytes(os.urandom((d / STATE).stat().st_size)), _refresh(d, STATE)),
     (B + STATE,)),
    ("npy-header-code", lambda d: ((d / STATE).write_bytes(_npy_bytes(
        "{'descr': __import__('os').system('touch PWNED'), 'fortran_order': False, 'shape': (1,)}", b"\0" * 4)),
        _refresh(d, STATE)), (B + STATE,)),
    ("npy-huge-shape-header", lambda d: ((d / STATE).write_bytes(_npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1048576)}", b"\0" * 64)),
        _refresh(d, STATE)), (B + STATE,)),
    ("pickled-npy", lambda d: _resave(d, STATE, _evil_object_array()), (B + STATE, "pickle")),
    ("shape-in-manifest", _set_entry(STATE, shape=[1, 48, 192]), (B + STATE, "shape")),
    ("dtype-in-manifest", _set_entry(STATE, dtype="float16"), (B + STATE,)),
    ("huge-shape-in-manifest", _set_entry(STATE, shape=[2 ** 40, 2 ** 40]), (B + STATE,)),
    ("npy-reshaped", lambda d: _resave(d, STATE, np.load(d / STATE).reshape(-1)), (B + STATE, "shape")),
    ("npy-float64", lambda d: _resave(d, STATE, np.load(d / STATE).astype(np.float64)), (B + STATE,)),
    ("sha-mismatch", lambda d: _flip_last_byte(d / STATE), (B + STATE, "sha256")),
    ("weights-sha-mismatch", lambda d: _flip_last_byte(d / "weights.safetensors"), (B + "weights.safetensors",)),
    ("weights-truncated", lambda d: _truncate(d / "weights.safetensors", 5000), (B + "weights.safetensors",)),
    ("schema-version-99", _set_manifest(schema_version=99), (B + "manifest.json", "schema_version")),
    ("schema-version-string", _set_manifest(schema_version="1"), (B + "manifest.json", "schema_version")),
    ("schema-foreign", _set_manifest(schema="someone-else/dump"), (B + "manifest.json", "schema")),
    ("manifest-broken-json", lambda d: (d / "manifest.json").write_text('{"schema": "opensora-parity/dump", '),
     (B + "manifest.json", "JSON")),
    ("manifest-not-object", lambda d: (d / "manifest.json").write_text("[1, 2]"), (B + "manifest.json",)),
    ("manifest-deep-nesting", lambda d: (d / "manifest.json").write_text("[" * 100000), (B + "manifest.json",)),
    ("manifest-binary", lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe\x00garbage"), (B + "manifest.json",)),
    ("probe-dotdot-slash", _rename_probe("../../escape"), (B + "manifest.json", "escape")),
    ("probe-subdir", _rename_probe("sub/probe"), (B + "manifest.json", "sub/probe")),
    ("probe-dotdot", _rename_probe(".."), (B + "manifest.json", "invalid probe name")),
    ("probe-backslash", _rename_probe("..\\..\\escape"), (B + "manifest.json", "escape")),
    ("probe-absolute", _rename_probe("/etc/passwd"), (B + "manifest.json", "passwd")),
    ("probe-nul", _rename_probe("a\x00b"), (B + "manifest.json", "invalid probe name")),
    ("probe-newline", _rename_probe("a\nb"), (B + "manifest.json", "invalid probe name")),
    ("probe-hidden", _rename_probe(".hidden"), (B + "manifest.json", "hidden")),
    ("files-key-traversal", lambda d: _set_manifest(files=dict(_man(d)["files"], **{
        "../outside.npy": _man(d)["files"][STATE]}))(d), (B + "manifest.json", "outside")),
    ("weights-path-traversal", lambda d: _set_manifest(weights=dict(_man(d)["weights"],
                                                                   path="../good/weights.safetensors"))(d),
     (B + "manifest.json", "weights.path")),
    ("state-symlink-outside", lambda d: ((d / STATE).unlink(), os.symlink(os.path.abspath(d / ".." / "good" / STATE),
                                                                      d / STATE)), (B + STATE, "regular file")),
    ("state-fifo", lambda d: ((d / STATE).unlink(), os.mkfifo(d / STATE)), (B + STATE, "regular file")),
    ("config-json-disagrees", lambda d: (d / "config.json").write_text(json.dumps(dict(_man(d)["config"],
                                                                                       num_layers=3))),
     (B + "config.json", "differs")),
    ("config-sparse-n-2", lambda d: _edit_config(d, sparse_n=2), (B + "config.json", "sparse_n")),
    ("config-missing-key", lambda d: _edit_config(d, in_channels=None), (B + "config.json", "in_channels")),
    ("config-vs-weights", lambda d: _edit_config(d, attention_head_dim=12), (B + "weights.safetensors", "mismatch")),
    ("inputs-wrong-rank", lambda d: _resave(d, "inputs/hidden_states.npy",
                                            np.load(d / "inputs/hidden_states.npy").reshape(1, 8, 3, 64), meta=True),
     (B + "inputs", "hidden_states")),
    ("inputs-inconsistent-batch", lambda d: _resave(d, "inputs/timestep.npy", np.array([999.0, 5.0], np.float32),
                                                    meta=True), (B + "inputs", "batch")),
    ("inputs-missing", _drop_input("timestep"), (B + "inputs", "timestep")),
    ("inputs-unknown", _add_input, (B + "inputs", "foo")),
    ("inputs-nan", lambda d: _with_nan(d, "inputs/hidden_states.npy"), (B + "inputs", "NaN")),
    ("weights-missing-key", _weights_key(lambda w: w.pop("proj_out.bias")),
     (B + "weights.safetensors", "proj_out.bias")),
    ("weights-unexpected-key", _weights_key(lambda w: w.update(extra_head=np.zeros(3, np.float32))),
     (B + "weights.safetensors", "extra_head")),
    ("weights-misshaped", _weights_key(_misshape), (B + "weights.safetensors", "proj_out.weight")),
    ("weights-nan", _weights_key(_nan_weight), (B + "weights.safetensors", "proj_out.weight")),
    ("nan-reference", lambda d: _with_nan(d, "states/hidden_states_2_block.npy"),
     (B + "states/hidden_states_2_block.npy", "reference problem")),
    ("inf-reference-output", lambda d: _with_nan(d, "states/hidden_states_output.npy", np.inf),
     (B + "states/hidden_states_output.npy", "reference problem")),
]
SUB_COMPARE = {"truncated-npy", "nan-reference", "pickled-npy"}
SUB_VERIFY = {"sha-mismatch"}


@pytest.mark.parametrize("cid, corrupt, needles", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_compare_corrupted_dump(world, capsys, cid, corrupt, needles):
    _run_row(Row(cid, ["compare", "bad"], _bad_copy(corrupt), needles, sub=cid in SUB_COMPARE), world, capsys)


@pytest.mark.parametrize("cid, corrupt, needles", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_verify_corrupted_dump(world, capsys, cid, corrupt, needles):
    # verify lists every problem on stdout; its one stderr line is the first problem, naming the file
    _run_row(Row(cid, ["verify", "good", "bad"], _bad_copy(corrupt), needles + ("problem(s) in all",),
                 sub=cid in SUB_VERIFY, stdout=("good: OK",) + needles), world, capsys)


def test_verify_lists_every_problem(world, capsys):
    corrupt = _several(lambda d: _flip_last_byte(d / STATE), lambda d: (d / "states/hidden_states_3_block.npy").unlink(),
                       lambda d: _with_nan(d, "states/hidden_states_2_block.npy"),
                       lambda d: (d / "config.json").write_text("{}"),
                       lambda d: _flip_last_byte(d / "weights.safetensors"))
    out = _run_row(Row("multi", ["verify", "bad"], _bad_copy(corrupt), ("bad: 5 problem(s) in all",)), world, capsys)
    for needle in (STATE, "hidden_states_3_block.npy", "reference problem", "config.json", "weights.safetensors"):
        assert needle in out, out
    assert out.count("\n  - ") == 5, out


def test_verify_good_dumps_pass(world, capsys):
    _need(world, "good16")
    rc, out, err = run_inproc(capsys, ["verify", "good", "good16"])
    assert (rc, err) == (0, ""), err
    assert out.splitlines() == ["good: OK", "good16: OK"]


# --------------------------------------------------------------------------------------- other commands


def _dump(**over):
    args = {"--config": "config.json", "--weights": "weights.safetensors", "--inputs": "inputs.npz", "--out": "new"}
    args.update(over)
    argv = ["dump"]
    for k, v in args.items():
        if v is not None:
            argv += [k, v]
    return argv


def _ingest(legacy="legacy", **over):
    args = {"--config": "config.json", "--weights": "weights.safetensors", "--out": "new"}
    args.update(over)
    return ["ingest", legacy] + [x for k, v in args.items() if v is not None for x in (k, v)]


def _convert(*extra, src="weights.safetensors", dst="out.safetensors"):
    return ["convert", "--src", src, "--dst", dst, *extra]


def _zero_tolerances(w):
    with open(os.path.join(ROOT, "parity", "families", "opensora_v13", "tolerances.json")) as f:
        tol = json.load(f)
    for classes in tol["profiles"].values():
        for modes in classes.values():
            for t in modes.values():
                t["atol"] = t["rtol"] = 0
                t.pop("relative", None)
    (w / "zero.json").write_text(json.dumps(tol))


def _drop_legacy_inputs(w):
    for f in os.listdir(w / "legacy"):
        if f.endswith("_input.npy"):
            os.remove(w / "legacy" / f)


def _report_dir(files: dict):
    def setup(w):
        (w / "rep").mkdir()
        for name, text in files.items():
            (w / "rep" / name).write_text(text)
    return setup


MIN_REPORT = {"schema": "opensora-parity/report@1", "case": "x", "passed": True, "probes": [], "blocks": []}
MS_CKPT = b"\x0a\x0b\x0a\x05proj_\x12\x02\x08\x01" * 4
HUGE_HEADER = struct.pack("<Q", 2 ** 62) + b"{}"
CLAIMED_HEADER = struct.pack("<Q", 50_000_000) + b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
W = "weights.safetensors"


def _huge_npz_member(w):
    import zipfile
    with zipfile.ZipFile(w / "huge.npz", "w") as z:
        z.writestr("hidden_states.npy", _npy_bytes("{'descr': '<f4', 'fortran_order': False, "
                                                   "'shape': (1099511627776, 1024)}", b"\0" * 16))


ROWS = [
    # ---- dump: config
    Row("dump-config-broken-json", _dump(**{"--config": "cfg.json"}), _write_config("cfg.json", text='{"in_channels": 8,'),
        ("cfg.json", "JSON")),
    Row("dump-config-missing-keys", _dump(**{"--config": "cfg.json"}),
        _write_config("cfg.json", lambda c: [c.pop("in_channels"), c.pop("caption_channels")]),
        ("cfg.json", "in_channels", "caption_channels"), sub=True),
    Row("dump-config-sparse-n-2", _dump(**{"--config": "cfg.json"}), _write_config("cfg.json", lambda c: c.update(sparse_n=2)),
        ("cfg.json", "sparse_n")),
    Row("dump-config-string-size", _dump(**{"--config": "cfg.json"}),
        _write_config("cfg.json", lambda c: c.update(num_layers="4")), ("cfg.json", "num_layers")),
    Row("dump-config-not-object", _dump(**{"--config": "cfg.json"}), _write_config("cfg.json", text="[8, 2]"),
        ("cfg.json",)),
    Row("dump-config-missing-file", _dump(**{"--config": "nope.json"}), None, ("nope.json",)),
    Row("dump-config-fifo", _dump(**{"--config": "fifo.json"}), lambda w: os.mkfifo(w / "fifo.json"),
        ("fifo.json", "regular file"), sub=True),
    Row("dump-config-dev-zero", _dump(**{"--config": "/dev/zero"}), None, ("/dev/zero", "regular file")),
    Row("dump-config-vs-weights-width", _dump(**{"--config": "cfg.json"}),
        _write_config("cfg.json", lambda c: c.update(attention_head_dim=12)), (W, "shape mismatch")),
    Row("dump-config-vs-weights-depth", _dump(**{"--config": "cfg.json"}),
        _write_config("cfg.json", lambda c: c.update(num_layers=2)), (W, "unexpected", "transformer_blocks.2")),
    # ---- dump: weights
    Row("dump-weights-missing-key", _dump(**{"--weights": "w.safetensors"}),
        _write_weights("w.safetensors", lambda w: w.pop("scale_shift_table")), ("w.safetensors", "scale_shift_table")),
    Row("dump-weights-unexpected-key", _dump(**{"--weights": "w.safetensors"}),
        _write_weights("w.safetensors", lambda w: w.update(ema_decay=np.ones(1, np.float32))),
        ("w.safetensors", "ema_decay")),
    Row("dump-weights-misshaped", _dump(**{"--weights": "w.safetensors"}), _write_weights("w.safetensors", _misshape),
        ("w.safetensors", "proj_out.weight")),
    Row("dump-weights-nan", _dump(**{"--weights": "w.safetensors"}), _write_weights("w.safetensors", _nan_weight),
        ("w.safetensors", "NaN", "proj_out.weight")),
    Row("dump-weights-pt-pickle", _dump(**{"--weights": "w.pt"}), _write_pickle("w.pt"),
        ("w.pt", "weights_only=True"), sub=True),
    Row("dump-weights-bin-pickle", _dump(**{"--weights": "pytorch_model.bin"}), _write_pickle("pytorch_model.bin"),
        ("pytorch_model.bin", "weights_only=True")),
    Row("dump-weights-ckpt-pickle", _dump(**{"--weights": "last.ckpt"}), _write_pickle("last.ckpt"),
        ("last.ckpt", "weights_only=True")),
    Row("dump-weights-ckpt-mindspore", _dump(**{"--weights": "ms.ckpt"}), _write_bytes("ms.ckpt", MS_CKPT),
        ("ms.ckpt", "ckpt_to_safetensors")),
    Row("dump-weights-truncated", _dump(**{"--weights": "w.safetensors"}), _truncated_copy(W, "w.safetensors"),
        ("w.safetensors",)),
    Row("dump-weights-huge-header", _dump(**{"--weights": "w.safetensors"}), _write_bytes("w.safetensors", HUGE_HEADER),
        ("w.safetensors", "header")),
    Row("dump-weights-claimed-header", _dump(**{"--weights": "w.safetensors"}),
        _write_bytes("w.safetensors", CLAIMED_HEADER), ("w.safetensors", "header")),
    Row("dump-weights-pickle-named-safetensors", _dump(**{"--weights": "w.safetensors"}),
        lambda w: _write_pickle("w.safetensors")(w), ("w.safetensors",)),
    Row("dump-weights-missing-file", _dump(**{"--weights": "nope.safetensors"}), None, ("nope.safetensors",)),
    Row("dump-weights-directory", _dump(**{"--weights": "legacy"}), None, ("legacy",)),
    # ---- dump: inputs
    Row("dump-inputs-wrong-rank", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x.update(hidden_states=x["hidden_states"][0])), ("x.npz", "hidden_states")),
    Row("dump-inputs-inconsistent-batch", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x.update(timestep=np.array([999.0, 1.0], np.float32))), ("x.npz", "batch")),
    Row("dump-inputs-missing-key", _dump(**{"--inputs": "x.npz"}), _write_inputs("x.npz", lambda x: x.pop("attention_mask")),
        ("x.npz", "attention_mask")),
    Row("dump-inputs-unknown-key", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x.update(guidance=np.ones(1, np.float32))), ("x.npz", "guidance")),
    Row("dump-inputs-nan", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x["hidden_states"].__setitem__((0, 0, 0, 0, 0), np.nan)), ("x.npz", "NaN")),
    Row("dump-inputs-pickled-npz", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x.update(hidden_states=_evil_object_array())), ("x.npz", "pickle")),
    Row("dump-inputs-truncated-npz", _dump(**{"--inputs": "x.npz"}), _truncated_copy("inputs.npz", "x.npz", 3000),
        ("x.npz",)),
    Row("dump-inputs-huge-npz-member", _dump(**{"--inputs": "huge.npz"}), _huge_npz_member, ("huge.npz", "hidden_states")),
    Row("dump-inputs-torch-zip-as-npz", _dump(**{"--inputs": "x.npz"}), _torch_zip("x.npz"), ("x.npz", "weights_only=True")),
    Row("dump-inputs-pt", _dump(**{"--inputs": "in.pt"}), _write_pickle("in.pt"), ("in.pt", "weights_only=True")),
    Row("dump-inputs-unknown-format", _dump(**{"--inputs": "config.json"}), None, ("config.json", "format")),
    # ---- dump: output and arguments
    Row("dump-out-exists", _dump(**{"--out": "good"}), None, ("good", "--force"), torch=True),
    Row("dump-case-out-exists", ["dump", "--case", "tiny-sparse", "--out", "good"], None, ("good", "--force"), torch=True),
    Row("dump-out-under-a-file", _dump(**{"--out": "config.json/sub"}), None, ("config.json/sub", "not a directory")),
    Row("dump-out-is-a-file", ["dump", "--case", "tiny-sparse", "--out", "config.json", "--force"], None,
        ("config.json", "not a directory")),
    Row("dump-out-inside-a-dump", ["dump", "--case", "tiny-sparse", "--out", "good/more"], None,
        ("good/more", "inside the parity dump")),
    Row("dump-out-inside-a-dump-force", ["dump", "--case", "tiny-sparse", "--out", "good/states", "--force"], None,
        ("good/states", "inside the parity dump")),
    Row("dump-out-non-dump-dir-force", ["dump", "--case", "tiny-sparse", "--out", "legacy", "--force"], None,
        ("legacy", "not a parity dump"), torch=True),
    Row("dump-out-cwd-force", ["dump", "--case", "tiny-sparse", "--out", ".", "--force"], None, (".",), torch=True),
    Row("dump-unknown-case", ["dump", "--case", "huge-case", "--out", "new"], None, ("huge-case",)),
    Row("dump-case-and-config", ["dump", "--case", "tiny-sparse", "--config", "config.json", "--out", "new"], None,
        ("--case", "--config")),
    Row("dump-seed-and-weights", _dump(**{"--seed": "3"}), None, ("--seed",)),
    Row("dump-threads-0", ["dump", "--case", "tiny-sparse", "--out", "new", "--threads", "0"], None, ("--threads",)),
    Row("dump-no-out", ["dump", "--case", "tiny-sparse"], None, ("--out",), sub=True),
    Row("dump-seed-not-int", ["dump", "--case", "tiny-sparse", "--out", "new", "--seed", "abc"], None, ("abc",)),
    # ---- ingest
    Row("ingest-empty-dir", _ingest("empty"), lambda w: (w / "empty").mkdir(), ("empty", "no probe files")),
    Row("ingest-missing-input-files", _ingest(), _drop_legacy_inputs, ("legacy", "hidden_states_input.npy")),
    Row("ingest-pickled-npy", _ingest(), lambda w: np.save(w / "legacy" / f"{PROBE}.npy", _evil_object_array(),
                                                          allow_pickle=True),
        (f"legacy/{PROBE}.npy", "pickle"), sub=True),
    Row("ingest-truncated-npy", _ingest(), lambda w: _truncate(w / "legacy" / f"{PROBE}.npy", 200),
        (f"legacy/{PROBE}.npy", "truncated")),
    Row("ingest-npy-huge-shape", _ingest(), lambda w: (w / "legacy" / f"{PROBE}.npy").write_bytes(_npy_bytes(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,)}", b"\0" * 64)), (f"legacy/{PROBE}.npy",)),
    Row("ingest-mismatched-checkpoint", _ingest(**{"--weights": "w.safetensors"}),
        _write_weights("w.safetensors", _misshape), ("w.safetensors", "proj_out.weight")),
    Row("ingest-checkpoint-other-depth", _ingest(**{"--weights": "w.safetensors"}),
        _write_weights("w.safetensors", lambda w: [w.pop(k) for k in list(w) if k.startswith("transformer_blocks.3.")]),
        ("w.safetensors", "missing", "transformer_blocks.3.")),
    Row("ingest-weights-pt", _ingest(**{"--weights": "w.pt"}), _write_pickle("w.pt"), ("w.pt", "weights_only=True")),
    Row("ingest-legacy-missing", _ingest("nope"), None, ("nope",)),
    Row("ingest-legacy-is-file", _ingest("config.json"), None, ("config.json",)),
    Row("ingest-config-broken", _ingest(**{"--config": "cfg.json"}), _write_config("cfg.json", text="{"), ("cfg.json",)),
    Row("ingest-config-vs-legacy", _ingest(**{"--config": "cfg.json"}),
        _write_config("cfg.json", lambda c: c.update(in_channels=4)), ("legacy", "in_channels")),
    Row("ingest-out-exists", _ingest(**{"--out": "good"}), None, ("good", "--force")),
    Row("ingest-out-inside-a-dump", _ingest(**{"--out": "good/ingested"}), None, ("good/ingested", "inside")),
    # ---- convert
    Row("convert-missing-keys", _convert(src="w.safetensors"),
        _write_weights("w.safetensors", lambda w: [w.pop("proj_out.bias"), w.pop("transformer_blocks.1.ff.net.2.bias")]),
        ("w.safetensors", "missing", "proj_out.bias"), sub=True),
    Row("convert-unexpected-keys", _convert(src="w.safetensors"),
        _write_weights("w.safetensors", lambda w: w.update(pos_embed_extra=np.ones(2, np.float32))),
        ("w.safetensors", "unexpected", "pos_embed_extra")),
    Row("convert-misshaped-with-config", _convert("--config", "config.json", src="w.safetensors"),
        _write_weights("w.safetensors", _misshape), ("w.safetensors", "proj_out.weight")),
    Row("convert-config-disagrees", _convert("--config", "cfg.json"),
        _write_config("cfg.json", lambda c: c.update(caption_channels=16)), (W, "caption_projection")),
    Row("convert-not-opensora", _convert(src="w.safetensors"),
        _write_weights("w.safetensors", lambda w: [w.pop(k) for k in list(w) if k != "proj_out.bias"]),
        ("w.safetensors",)),
    Row("convert-dst-exists", _convert(dst="config.json"), None, ("config.json", "--force")),
    Row("convert-dst-inside-a-dump", _convert(dst="good/ms.safetensors"), None, ("good/ms.safetensors", "inside")),
    Row("convert-dst-overwrites-dump-weights", _convert("--force", dst="good/weights.safetensors"), None,
        ("good/weights.safetensors", "inside")),
    Row("convert-dst-under-a-file", _convert(dst="config.json/ms.safetensors"), None,
        ("config.json/ms.safetensors", "not a directory")),
    Row("convert-dst-is-a-dir", _convert("--force", dst="legacy"), None, ("legacy", "directory")),
    Row("convert-dst-is-src", _convert("--force", dst=W), None, (W, "--src")),
    Row("convert-src-pt", _convert(src="model.pt"), _write_pickle("model.pt"), ("model.pt", "weights_only=True")),
    Row("convert-src-bin", _convert(src="pytorch_model.bin"), _write_pickle("pytorch_model.bin"),
        ("pytorch_model.bin", "weights_only=True")),
    Row("convert-src-ckpt", _convert(src="model.ckpt"), _write_pickle("model.ckpt"), ("model.ckpt", "weights_only")),
    Row("convert-src-missing", _convert(src="nope.safetensors"), None, ("nope.safetensors",)),
    Row("convert-src-truncated", _convert(src="w.safetensors"), _truncated_copy(W, "w.safetensors", 20000),
        ("w.safetensors",)),
    Row("convert-src-huge-header", _convert(src="w.safetensors"), _write_bytes("w.safetensors", HUGE_HEADER),
        ("w.safetensors",)),
    Row("convert-src-pickled-npz", _convert(src="w.npz"),
        _write_inputs("w.npz", lambda x: x.update(hidden_states=_evil_object_array())), ("w.npz", "pickle")),
    Row("convert-src-h5", _convert(src="model.h5"), _write_bytes("model.h5", b"\x89HDF\r\n\x1a\n"), ("model.h5",)),
    Row("convert-bad-to", _convert("--to", "onnx"), None, ("onnx",)),
    # ---- compare: options
    Row("compare-unknown-probes-glob", ["compare", "good", "--probes", "nope_*"], None, ("good", "nope_*")),
    Row("compare-bf16-as-fp32", ["compare", "good16", "--precision", "fp32"], None, ("good16", "bf16", "fp32")),
    Row("compare-nan-fp32-shadow", ["compare", "bad"],
        _bad_copy(lambda d: _with_nan(d, "states_fp32/hidden_states_2_block.npy", np.inf), src="good16"),
        ("bad/states_fp32/hidden_states_2_block.npy", "reference problem"), needs=("good16",)),
    Row("compare-tolerances-missing", ["compare", "good", "--tolerances", "nope.json"], None, ("nope.json",)),
    Row("compare-tolerances-broken", ["compare", "good", "--tolerances", "config.json"], None, ("config.json",)),
    Row("compare-baseline-missing", ["compare", "good", "--baseline", "nope.json"], None, ("nope.json",)),
    Row("compare-baseline-fifo", ["compare", "good", "--baseline", "fifo.json"], lambda w: os.mkfifo(w / "fifo.json"),
        ("fifo.json", "regular file"), sub=True),
    Row("compare-tolerances-fifo", ["compare", "good", "--tolerances", "fifo.json"],
        lambda w: os.mkfifo(w / "fifo.json"), ("fifo.json", "regular file"), sub=True),
    Row("compare-baseline-broken", ["compare", "good", "--baseline", "cfg.json"], _write_config("cfg.json", text="{]"),
        ("cfg.json",)),
    Row("compare-report-under-a-file", ["compare", "good", "--report", "config.json/rep"], None,
        ("config.json/rep", "not a directory")),
    Row("compare-report-is-a-file", ["compare", "good", "--report", "config.json"], None, ("config.json",)),
    Row("compare-report-into-a-dump", ["compare", "good", "--report", "good"], None, ("good", "inside")),
    Row("compare-report-inside-a-dump", ["compare", "good", "--report", "good/report"], None, ("good/report", "inside")),
    Row("compare-report-name-clash", ["compare", "good", "other/good", "--report", "rep"],
        lambda w: shutil.copytree(w / "good", w / "other" / "good"), ("rep", "good")),
    Row("compare-good-then-bad", ["compare", "good", "bad", "--mode", "isolated"],
        _bad_copy(lambda d: _truncate(d / STATE, 100)), (B + STATE,)),
    Row("compare-no-dump", ["compare"], None, ("DUMP",)),
    Row("compare-bad-mode", ["compare", "good", "--mode", "fast"], None, ("fast",)),
    # ---- report
    Row("report-empty-dir", ["report", "rep"], _report_dir({}), ("rep", "parity.json")),
    Row("report-missing-dir", ["report", "nope"], None, ("nope",)),
    Row("report-on-a-dump", ["report", "good"], None, ("good",)),
    Row("report-on-a-file", ["report", "config.json"], None, ("config.json",)),
    Row("report-broken-json", ["report", "rep"], _report_dir({"parity.json": '{"schema": '}), ("rep/parity.json", "JSON"),
        sub=True),
    Row("report-not-object", ["report", "rep"], _report_dir({"parity.json": "[]"}), ("rep/parity.json",)),
    Row("report-wrong-schema", ["report", "rep"], _report_dir({"parity.json": json.dumps(dict(MIN_REPORT, schema="x"))}),
        ("rep/parity.json", "schema")),
    Row("report-bad-probes", ["report", "rep"],
        _report_dir({"parity.json": json.dumps(dict(MIN_REPORT, probes=[{"name": 1}]))}), ("rep/parity.json", "probes")),
    Row("report-summary-links-outside", ["report", "rep"],
        lambda w: (_report_dir({"summary.md": "- x — [report](../victim/parity.md)\n"})(w), (w / "victim").mkdir(),
                   (w / "victim" / "parity.json").write_text(json.dumps(MIN_REPORT))), ("rep", "parity.json")),
    # ---- cases and the parser
    Row("cases-unknown-family", ["--family", "nope", "cases"], None, ("nope",), sub=True),
    Row("cases-extra-argument", ["cases", "extra"], None, ("extra",)),
    Row("no-command", [], None, ("command",)),
    Row("unknown-command", ["frobnicate"], None, ("frobnicate",)),
]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=[pytest.mark.torch] if r.torch else [])
                                 for r in ROWS])
def test_bad_input(world, capsys, row):
    _run_row(row, world, capsys)


@pytest.mark.parametrize("device, lib", [("GPU", "cuda"), ("Ascend", "ascendcl")])
def test_compare_on_a_missing_accelerator(world, capsys, device, lib):
    import ctypes.util
    if ctypes.util.find_library(lib) or (device == "Ascend" and (os.environ.get("ASCEND_HOME_PATH")
                                                                 or os.path.isdir("/usr/local/Ascend"))):
        pytest.skip(f"this machine has {device} libraries")
    _run_row(Row(device, ["compare", "good", "--device", device], None, (f"--device {device}", "--device CPU"),
                 sub=device == "GPU"), world, capsys)


# ------------------------------------------------------------------ genuine failures, --debug, good runs


def test_compare_genuine_failure_is_exit_1_without_stderr(world, capsys):
    _zero_tolerances(world)
    before = tree(world)
    rc, out, err = run_inproc(capsys, ["compare", "good", "--mode", "isolated", "--tolerances", "zero.json"])
    assert rc == 1, err
    assert err == "", err
    assert out.startswith("FAIL tiny-sparse fp32") and "first divergence:" in out
    assert tree(world) == before


def test_debug_shows_the_traceback(world):
    _bad_copy(lambda d: _truncate(d / STATE, 100))(world)
    rc, _, err = run_sub(["--debug", "compare", "bad"], world)
    assert rc == 2 and "Traceback" in err and err.splitlines()[-1].startswith("parity compare: error: bad/states")


def test_convert_refusal_hint_is_a_weights_only_recipe(world, capsys):
    _write_pickle("model.pt")(world)
    rc, _, err = run_inproc(capsys, _convert(src="model.pt"))
    line = check_error(rc, err, ["convert"], ("model.pt",))
    recipe = line.split("convert it once with: ", 1)[1]
    assert "torch.load('model.pt', map_location='cpu', weights_only=True)" in recipe
    assert "save_file(" in recipe and "'model.safetensors'" in recipe


def test_npz_reader_round_trips_without_pickle(tmp_path):
    from parity.inputs_io import load_npz
    arrays = {"f": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)), "b": np.array([True, False]),
              "empty": np.zeros((0, 3), np.int64), "scalar": np.float64(3.5), "big_endian": np.arange(4, dtype=">f4")}
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "a.npz", **arrays)
        out = load_npz(str(tmp_path / "a.npz"))
        assert sorted(out) == sorted(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(out[k], v, err_msg=k)
            assert out[k].shape == np.shape(v) and out[k].flags.c_contiguous and out[k].dtype.isnative, k


def test_convert_accepts_npz(world, capsys):
    np.savez(world / "w.npz", **load_safetensors(world / W))
    rc, out, err = run_inproc(capsys, _convert(src="w.npz"))
    assert (rc, err) == (0, ""), err
    assert set(load_safetensors(world / "out.safetensors")) == set(load_safetensors(world / W))


# ------------------------------------------------------------------------------------------- disk full


def _full_disk(monkeypatch, budget: int) -> None:
    """Every ``os.write`` (how the tool writes its files) accepts ``budget`` bytes in total, then ENOSPC."""
    real, left = os.write, [budget]

    def write(fd, data):
        n = memoryview(data).nbytes
        if n > left[0]:
            if left[0]:
                real(fd, memoryview(data).cast("B")[: left[0]])
            left[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        left[0] -= n
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def _fsync_fails_from(monkeypatch, call: int):
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= call:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.torch
@pytest.mark.parametrize("how", ["write-in-inputs", "write-in-weights", "write-in-states", "fsync-in-states"])
def test_disk_full_while_dumping_keeps_the_old_dump(world, capsys, monkeypatch, how):
    before = tree(world)
    if how.startswith("write"):
        budget = {"write-in-inputs": 3_000, "write-in-weights": 100_000, "write-in-states": 800_000}[how]
        _full_disk(monkeypatch, budget)
    else:
        _fsync_fails_from(monkeypatch, 12)
    argv = ["dump", "--case", "tiny-sparse", "--out", "good", "--force"]
    rc, _, err = run_inproc(capsys, argv)
    monkeypatch.undo()
    check_error(rc, err, argv, ("good", "no space left on device", "free disk space"))
    assert tree(world) == before


def test_disk_full_while_ingesting(world, capsys, monkeypatch):
    _need(world, "legacy")
    before = tree(world)
    _fsync_fails_from(monkeypatch, 4)
    argv = _ingest()
    rc, _, err = run_inproc(capsys, argv)
    monkeypatch.undo()
    check_error(rc, err, argv, ("new", "no space left on device"))
    assert tree(world) == before


def test_disk_full_while_converting(world, capsys, monkeypatch):
    before = tree(world)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    argv = _convert()
    rc, _, err = run_inproc(capsys, argv)
    monkeypatch.undo()
    check_error(rc, err, argv, ("out.safetensors", "no space left on device"))
    assert tree(world) == before


def test_disk_full_while_writing_a_report(world, capsys, monkeypatch):
    before = tree(world)

    _full_disk(monkeypatch, 0)
    argv = ["compare", "good", "--mode", "isolated", "--report", "rep"]
    rc, _, err = run_inproc(capsys, argv)
    monkeypatch.undo()
    check_error(rc, err, argv, ("rep/", "no space left on device"))
    after = tree(world)
    assert {k: v for k, v in after.items() if not k.startswith("rep")} == before  # only the report dir is touched


# ---------------------------------------------------------------------------------------------- SIGKILL


def _kill_dump_mid_write(world, target: str) -> str:
    """Start ``parity dump`` into ``target``, SIGKILL it once its temp dir holds a state; return the temp dir."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "parity", "dump", "--case", "tiny-sparse", "--out", target, "--force"],
                         cwd=world, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = None
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and p.poll() is None:
            tmps = [n for n in os.listdir(world) if n.startswith(f".{target}.tmp-")]
            if tmps and os.path.isdir(world / tmps[0] / "states") and os.listdir(world / tmps[0] / "states"):
                tmp = tmps[0]
                break
            time.sleep(0.002)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=TIMEOUT)
        if p.stderr:
            p.stderr.close()
    assert tmp is not None and p.returncode == -signal.SIGKILL, f"did not catch the dump mid-write (rc {p.returncode})"
    return tmp


@pytest.mark.torch
def test_sigkill_mid_dump_keeps_the_old_dump(world, capsys):
    _need(world, "good16")
    shutil.copytree(world / "good16", world / "target")  # an old dump the new (fp32) one would replace
    old = tree(world / "target")
    tmp = _kill_dump_mid_write(world, "target")
    assert tree(world / "target") == old
    rc, out, err = run_inproc(capsys, ["verify", "target"])
    assert (rc, out.strip()) == (0, "target: OK"), err
    before = tree(world)
    for cmd in (["compare", tmp], ["verify", tmp]):
        rc, out, err = run_inproc(capsys, cmd)
        check_error(rc, err, cmd, (tmp,))
        assert "incomplete temporary dump" in err + out
    assert tree(world) == before
    # the stale lock of the killed writer does not block the next one, which also clears the leftovers
    argv = ["dump", "--case", "tiny-sparse", "--out", "target"]
    rc, _, err = run_inproc(capsys, argv)
    check_error(rc, err, argv, ("target", "exists; pass --force"))
    assert tree(world / "target") == old
    assert sorted(n for n in os.listdir(world) if n.startswith(".target")) == []


@pytest.mark.torch
def test_sigkill_mid_first_dump_leaves_nothing_loadable(world, capsys):
    tmp = _kill_dump_mid_write(world, "fresh")
    assert not os.path.exists(world / "fresh")
    before = tree(world)
    for cmd in (["compare", "fresh"], ["verify", "fresh"], ["compare", tmp]):
        rc, _, err = run_inproc(capsys, cmd)
        check_error(rc, err, cmd, (cmd[1],))
    assert tree(world) == before


@pytest.mark.parametrize("flag, value, needle", [("--guidance", "nan", "--guidance must be a number in [-100, 100]"),
                                                 ("--guidance", "1e300", "--guidance must be a number"),
                                                 ("--steps", "0", "--steps must be an integer in [1, 1000]"),
                                                 ("--steps", "1000000000", "--steps must be an integer")])
def test_pipeline_flags_out_of_range_are_named_by_flag(tmp_path, capsys, flag, value, needle):
    from parity.families.pipeline.cases import CASES, DEFAULT_CASE

    case = CASES[DEFAULT_CASE]
    (tmp_path / "dit.json").write_text(json.dumps(case.denoiser))
    d = case.denoiser["caption_channels"]
    np.savez(tmp_path / "prompts.npz", prompt_embeds=np.zeros((1, 4, d), np.float32),
             negative_prompt_embeds=np.zeros((1, 4, d), np.float32),
             prompt_attention_mask=np.ones((1, 4), np.int64), negative_prompt_attention_mask=np.ones((1, 4), np.int64))
    argv = ["dump", "--pipeline", "--config", str(tmp_path / "dit.json"), "--seed", "0", "--prompts",
            str(tmp_path / "prompts.npz"), "--latent-size", "1", "4", "4", "--steps", "2", f"{flag}={value}",
            "--out", str(tmp_path / "out")]
    rc, out, err = run_inproc(capsys, argv)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--text-encoder-seed", "0", "--input-ids", "IDS"], "needs --text-encoder-config MT5.json"),
    (["--text-encoder-config", "MT5", "--input-ids", "IDS"], "exactly one of --text-encoder-weights W"),
    (["--text-encoder-config", "MT5", "--text-encoder-seed", "0", "--input-ids", "IDS", "--prompts", "IDS"],
     "not --prompts"),
    (["--text-encoder-config", "MT5", "--text-encoder-seed", "0", "--input-ids", "BADIDS"],
     "missing negative_prompt_input_ids"),
    (["--text-encoder-config", "WIDE", "--text-encoder-seed", "0", "--input-ids", "IDS"],
     "is not the denoiser's caption_channels 16"),
])
def test_pipeline_text_encoder_flags_are_checked(tmp_path, capsys, extra, needle):
    from parity.families.mt5_encoder.cases import CASES as MT5_CASES
    from parity.families.pipeline.cases import CASES, DEFAULT_CASE

    (tmp_path / "dit.json").write_text(json.dumps(CASES[DEFAULT_CASE].denoiser))   # caption_channels 16
    (tmp_path / "mt5.json").write_text(json.dumps(dict(MT5_CASES["tiny-mt5"].config, d_model=16)))
    (tmp_path / "wide.json").write_text(json.dumps(MT5_CASES["tiny-mt5"].config))   # d_model 32
    ids = np.ones((1, 4), np.int64)
    np.savez(tmp_path / "ids.npz", prompt_input_ids=ids, prompt_attention_mask=ids, negative_prompt_input_ids=ids,
             negative_prompt_attention_mask=ids)
    np.savez(tmp_path / "bad.npz", prompt_input_ids=ids, prompt_attention_mask=ids)
    paths = {"MT5": "mt5.json", "WIDE": "wide.json", "IDS": "ids.npz", "BADIDS": "bad.npz"}
    argv = ["dump", "--pipeline", "--config", str(tmp_path / "dit.json"), "--seed", "0", "--latent-size", "1", "4",
            "4", "--steps", "2", "--out", str(tmp_path / "out")] + [
        str(tmp_path / paths[a]) if a in paths else a for a in extra]
    rc, out, err = run_inproc(capsys, argv)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
