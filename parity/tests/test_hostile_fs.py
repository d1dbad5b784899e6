"""Hostile inputs of issue 16 ("every path the tool touches is hostile"), end to end through the CLI.

Same contract as ``test_cli_errors``: exit 2, one stderr line naming the file with a fix, and the working tree
byte-identical afterwards (contents, modes, and here also inodes and mtimes of everything that existed). Plus
the cases where the right answer is success: a planted symlink on a temp name is simply not used, a concurrent
``--force`` replacement leaves a reader on the generation it verified.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from parity.compare import CompareOptions, compare_dump
from parity.errors import ParityError, printable
from parity.store import DumpWriter, open_dump
from parity.tests.test_cli_errors import (FIXTURES, PROBE, ROOT, TIMEOUT, Row, _dump, _ingest, _inputs, _need,  # noqa: F401
                                          _npy_bytes, _write_config, _write_inputs, check_error, run_inproc, run_sub,
                                          template, tree, world)  # template, world: the fixtures of that module


def snapshot(root) -> dict:
    """``tree`` plus inode and mtime of every entry: nothing may even be rewritten with the same bytes."""
    out = tree(root)
    for rel in list(out):
        st = os.lstat(os.path.join(root, rel))
        out[rel] = (out[rel], st.st_ino, st.st_mtime_ns)
    return out


def _run(world, capsys, argv, setup=None, needles=(), sub=False):
    if setup is not None:
        setup(world)
    before = snapshot(world)
    rc, out, err = run_sub(argv, world) if sub else run_inproc(capsys, argv)
    line = check_error(rc, err, argv, needles)
    after = snapshot(world)
    assert after == before, {"changed/new": sorted(k for k in after if before.get(k) != after[k]),
                             "removed": sorted(k for k in before if k not in after)}
    return line


# ------------------------------------------------------------------------------- finding 4: one generation


def _redump(src, dst):
    """What a concurrent ``parity dump --force`` does to ``dst``: a different dump published over it."""
    s = open_dump(src)
    m = s.manifest
    with DumpWriter(dst, family=m["family"], precision=m["precision"], config=m["config"], seeds=m["seeds"],
                    case=m["case"], force=True) as w:
        for n in s.input_names:
            w.add_input(n, s.input(n))
        for p in s.probes:
            w.add_state(p, s.state(p))
        w.write_weights(s.load_weights())


def test_compare_reads_one_generation_while_force_replaces_the_dump(tmp_path):
    """Finding 4: before, this gave a false FAIL (31/50 probes, max abs 1e4: states of two dumps mixed)."""
    d = tmp_path / "d"
    shutil.copytree(os.path.join(FIXTURES, "tiny-sparse-fp32"), d)

    def replace_mid_run(model):  # runs after the reference was verified, before any probe is compared
        _redump(os.path.join(FIXTURES, "tiny-dense-fp32"), d)
        return contextlib.nullcontext()

    result = compare_dump(str(d), CompareOptions(subject_patch=replace_mid_run, progress=False))
    assert result["passed"], [p["name"] for p in result["probes"] if not p["passed"]]
    assert open_dump(str(d)).case == "tiny-dense"  # the replacement itself was published whole
    assert sorted(os.listdir(tmp_path)) == ["d"]   # and the old generation is gone from disk


def test_force_deletes_only_a_recognised_dump(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "app"}')
    (app / "main.py").write_text("print('hi')")
    for target in (app, tmp_path / "dump"):
        if target.name == "dump":
            shutil.copytree(os.path.join(FIXTURES, "tiny-sparse-fp32"), target)
            (target / "states" / "notes.txt").write_text("mine")
        before = snapshot(tmp_path)
        with pytest.raises(ParityError, match="not a parity dump.*refusing to overwrite it even with --force"):
            _redump(os.path.join(FIXTURES, "tiny-dense-fp32"), target)
        assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- reports


def _compare_report(*extra):
    return ["compare", "good", "--mode", "isolated", "--probes", "hidden_states_0_block", "--report", "rep", *extra]


def test_report_never_writes_through_a_symlink_or_over_user_files(world, capsys):
    victim = world / "good" / "weights.safetensors"
    (world / "rep").mkdir()
    os.symlink(os.path.abspath(victim), world / "rep" / "parity.png")
    _run(world, capsys, _compare_report(), needles=("rep/parity.png", "not written by this tool", "move it"))
    os.unlink(world / "rep" / "parity.png")
    (world / "rep" / "parity.md").write_text("my notes\n")
    _run(world, capsys, _compare_report(), needles=("rep/parity.md", "not written by this tool"))
    os.unlink(world / "rep" / "parity.md")
    os.link(world / "config.json", world / "rep" / "parity.md")  # a hard link to a file of the user's
    _run(world, capsys, _compare_report(), needles=("rep/parity.md",))


def test_report_rerun_replaces_its_own_files_and_ignores_planted_temp_names(world, capsys):
    rc, _, err = run_inproc(capsys, _compare_report())
    assert rc == 0, err
    first = {n: (world / "rep" / n).stat().st_ino for n in ("parity.json", "parity.md", "parity.png")}
    victim = world / "victim.txt"
    victim.write_text("precious")
    for name in ("parity.json.tmp", ".parity.json.tmp", "parity.md.tmp"):
        os.symlink(victim, world / "rep" / name)
    rc, _, err = run_inproc(capsys, _compare_report())
    assert rc == 0, err
    assert victim.read_text() == "precious"
    assert all((world / "rep" / n).stat().st_ino != ino for n, ino in first.items())  # replaced, not rewritten
    rc, _, err = run_inproc(capsys, ["report", "rep"])
    assert rc == 0, err
    os.unlink(world / "rep" / "parity.md")
    os.symlink(os.path.abspath(world / "good" / "manifest.json"), world / "rep" / "parity.md")
    _run(world, capsys, ["report", "rep"], needles=("rep/parity.md", "not written by this tool"))


def test_report_dir_that_is_a_symlink_is_refused(world, capsys):
    os.symlink(os.path.abspath(world / "good"), world / "rep")
    _run(world, capsys, _compare_report(), needles=("rep",))


# ------------------------------------------------------------------------------------- hostile inputs


def _bomb(w):
    """Finding 6: a ~0.5 MB npz whose hidden_states member declares 512 MiB."""
    header = _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 8, 64, 512, 512)}")
    x = _inputs(w)
    with zipfile.ZipFile(w / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("hidden_states.npy", "w", force_zip64=True) as f:
            f.write(header)
            zeros = bytes(2**24)
            for _ in range(32):
                f.write(zeros)
        for k, v in x.items():
            if k != "hidden_states":
                z.writestr(f"{k}.npy", _npy_bytes(np.lib.format.header_data_from_array_1_0(v).__repr__(),
                                                  v.tobytes()))


def _cfg(**changes):
    return _write_config("cfg.json", lambda c: c.update(changes))


def _legacy_state(arr):
    return lambda w: np.save(w / "legacy" / f"{PROBE}.npy", arr)


def _manifest_edit(fn):
    def setup(w):
        shutil.copytree(w / "good", w / "bad")
        m = json.loads((w / "bad" / "manifest.json").read_text())
        text = fn(m)
        (w / "bad" / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(m))
    return setup


def _deep(n):
    return "[" * n + "]" * n


C = {"--config": "cfg.json"}
ROWS = [
    # finding 5: config types, ranges, sizes and memory
    Row("cfg-bool-as-string", _dump(**C), _cfg(sparse1d="false"), ("cfg.json", "sparse1d", "true or false")),
    Row("cfg-attention-bias-no", _dump(**C), _cfg(attention_bias="no"), ("cfg.json", "attention_bias")),
    Row("cfg-upcast-yes", _dump(**C), _cfg(upcast_attention="yes"), ("cfg.json", "upcast_attention")),
    Row("cfg-dropout-5", _dump(**C), _cfg(dropout=5.0), ("cfg.json", "dropout", "[0, 1)")),
    Row("cfg-dropout-abc", _dump(**C), _cfg(dropout="abc"), ("cfg.json", "dropout")),
    Row("cfg-layers-1e9", _dump(**C), _cfg(num_layers=10**9), ("cfg.json", "num_layers"), sub=True),
    Row("cfg-heads-1e6", _dump(**C), _cfg(num_attention_heads=10**6), ("cfg.json", "num_attention_heads")),
    Row("cfg-head-dim-6e6", _dump(**C), _cfg(attention_head_dim=6 * 10**6), ("cfg.json", "attention_head_dim")),
    Row("cfg-cross-dim-1e9", _dump(**C), _cfg(cross_attention_dim=10**9), ("cfg.json", "cross_attention_dim")),
    Row("cfg-float-layers", _dump(**C), _cfg(num_layers=4.0), ("cfg.json", "num_layers")),
    Row("cfg-memory", _dump(**C), _cfg(num_layers=1024, num_attention_heads=1024, attention_head_dim=60,
                                       cross_attention_dim=None), ("cfg.json", "memory")),
    Row("cfg-duplicate-key", _dump(**C), _write_config("cfg.json", text='{"in_channels": 8, "in_channels": 4}'),
        ("cfg.json", "duplicate key")),
    Row("cfg-nan", _dump(**C), _write_config("cfg.json", text='{"in_channels": NaN}'), ("cfg.json", "NaN")),
    Row("cfg-socket", _dump(**{"--config": "sock"}),
        lambda w: socket.socket(socket.AF_UNIX).bind(str(w / "sock")), ("sock", "regular file")),
    # finding 6 and other file kinds for inputs and weights
    Row("inputs-npz-bomb", _dump(**{"--inputs": "bomb.npz"}), _bomb, ("bomb.npz", "hidden_states", "not decompressed"),
        sub=True),
    Row("inputs-fifo", _dump(**{"--inputs": "fifo.npz"}), lambda w: os.mkfifo(w / "fifo.npz"),
        ("fifo.npz", "regular file"), sub=True),
    Row("weights-dev-zero", _dump(**{"--weights": "zero.safetensors"}),
        lambda w: os.symlink("/dev/zero", w / "zero.safetensors"), ("zero.safetensors", "regular file")),
    # finding 7: inputs and states that do not fit
    Row("inputs-zero-batch", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x.update({k: v[:0] for k, v in x.items()})), ("x.npz", "zero-size")),
    Row("inputs-zero-frames", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x.update(hidden_states=x["hidden_states"][:, :, :0],
                                                  attention_mask=x["attention_mask"][:, :0])), ("x.npz", "zero-size")),
    Row("inputs-zero-text", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x.update(encoder_hidden_states=x["encoder_hidden_states"][:, :, :0],
                                                  encoder_attention_mask=x["encoder_attention_mask"][:, :, :0])),
        ("x.npz", "zero-size")),
    Row("inputs-uint64-timestep", _dump(**{"--inputs": "x.npz"}),
        _write_inputs("x.npz", lambda x: x.update(timestep=np.array([2**63 + 5], np.uint64))),
        ("x.npz", "timestep", "9223372036854775813")),
    Row("ingest-state-0d", _ingest(), _legacy_state(np.float32(1.0)), (f"legacy/{PROBE}.npy", "shape")),
    Row("ingest-state-flat", _ingest(), lambda w: np.save(w / "legacy" / f"{PROBE}.npy",
                                                           np.load(w / "legacy" / f"{PROBE}.npy").reshape(-1)),
        (f"legacy/{PROBE}.npy", "shape")),
    Row("ingest-state-zero-size", _ingest(), _legacy_state(np.zeros((0, 1, 48), np.float32)),
        (f"legacy/{PROBE}.npy", "shape")),
    Row("ingest-state-float64-values", _ingest(),
        lambda w: np.save(w / "legacy" / f"{PROBE}.npy",
                          np.load(w / "legacy" / f"{PROBE}.npy").astype(np.float64) + 1e-12),
        (f"legacy/{PROBE}.npy", "float64", "not float32")),
    Row("verify-state-flat", ["verify", "bad"], None, ("bad/manifest.json", "shapes")),
    Row("compare-state-flat", ["compare", "bad"], None, ("bad/states/", "shape")),
    # finding 8: messages stay one clean line
    Row("threads-2-40", ["dump", "--case", "tiny-sparse", "--out", "new", "--threads", str(2**40)], None,
        ("--threads",), sub=True),
    Row("tolerances-nested", ["compare", "good", "--tolerances", "tol.json"],
        _write_config("tol.json", text=_deep(100_000)), ("tol.json", "nested")),
    Row("baseline-nested", ["compare", "good", "--baseline", "base.json"],
        _write_config("base.json", text=_deep(50)), ("base.json",)),
    Row("manifest-case-escape", ["compare", "bad"], _manifest_edit(lambda m: m.update(case="\x1b[31mred\ud800")),
        ("bad/manifest.json", "case")),
    Row("manifest-huge-dtype", ["verify", "bad"],
        _manifest_edit(lambda m: m["files"][f"states/{PROBE}.npy"].update(dtype="x" * 1_000_000)),
        ("bad/manifest.json", "dtype")),
    # finding 9: one family check, one JSON reader
    Row("verify-family-evil", ["verify", "bad"], _manifest_edit(lambda m: m.update(family="../../evil")),
        ("bad/manifest.json", "family")),
    Row("compare-family-evil", ["compare", "bad"], _manifest_edit(lambda m: m.update(family="../../evil")),
        ("bad/manifest.json", "family")),
    Row("manifest-duplicate-key", ["verify", "bad"],
        _manifest_edit(lambda m: json.dumps(m)[:-1] + ', "case": "again"}'), ("bad/manifest.json", "duplicate key")),
    # --force on something that is not a dump (finding 2), without torch
    Row("ingest-force-non-dump", _ingest(**{"--out": "app"}) + ["--force"],
        lambda w: ((w / "app").mkdir(), (w / "app" / "manifest.json").write_text('{"name": "app"}'),
                   (w / "app" / "main.py").write_text("x")), ("app", "not a parity dump")),
]


def _flat_dump(w):
    shutil.copytree(w / "good", w / "bad")
    rel = "states/hidden_states_before_block.npy"
    arr = np.load(w / "bad" / rel).reshape(-1)
    np.save(w / "bad" / rel, arr)
    m = json.loads((w / "bad" / "manifest.json").read_text())
    import hashlib
    data = (w / "bad" / rel).read_bytes()
    m["files"][rel].update(shape=list(arr.shape), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (w / "bad" / "manifest.json").write_text(json.dumps(m))


for _row in ROWS:
    if _row.id in ("verify-state-flat", "compare-state-flat"):
        _row.setup = _flat_dump


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in ROWS])
def test_hostile(world, capsys, row):
    _need(world, *row.needs, *(n for n in ("legacy",) if any(n in str(a) for a in row.argv)))
    line = _run(world, capsys, row.argv, row.setup, row.needles, row.sub)
    assert len(line) < 2200 and line.isprintable(), line


def test_ingest_stores_exact_float64_states_at_the_dump_precision(world, capsys):
    _need(world, "legacy")
    p = world / "legacy" / f"{PROBE}.npy"
    np.save(p, np.load(p).astype(np.float64))
    rc, _, err = run_inproc(capsys, _ingest())
    assert rc == 0, err
    assert open_dump(str(world / "new")).state_dtype(PROBE) == "float32"


@pytest.mark.torch
def test_file_size_limit_mid_dump_is_one_line_and_publishes_nothing(world):
    before = snapshot(world)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # noqa: E731
    p = subprocess.run([sys.executable, "-m", "parity", "dump", "--case", "tiny-sparse", "--out", "new"], cwd=world,
                       env=env, capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=limit)
    check_error(p.returncode, p.stderr, [], ("new", "file too large"))
    assert snapshot(world) == before


def test_printable_escapes_and_truncates():
    assert printable("a\x1b[31mb\nc\ud800\u202e") == "a\\x1b[31mb c\\ud800\\u202e"
    long = printable("x" * 1_000_000 + " fix it")
    assert len(long) < 2100 and long.endswith("fix it") and "characters cut" in long
    assert str(ParityError("bad \x00 name")) == "bad \\x00 name"


def test_npz_header_is_checked_before_any_member_is_read(tmp_path):
    from parity.inputs_io import load_npz
    seen = []
    np.savez(tmp_path / "a.npz", x=np.ones((4, 4), np.float32))

    def refuse(header):
        seen.append(header)
        raise ParityError("refused on the header")

    with pytest.raises(ParityError, match="refused on the header"):
        load_npz(str(tmp_path / "a.npz"), check=refuse)
    assert seen == [{"x": ("float32", (4, 4))}]


def test_writer_keeps_writing_where_it_started_when_the_parent_becomes_a_symlink(tmp_path):
    parent, victim = tmp_path / "p", tmp_path / "victim"
    parent.mkdir()
    victim.mkdir()
    with DumpWriter(str(parent / "d"), family="f", precision="fp32", config={}) as w:
        w.add_state("a", np.ones(2, np.float32))
        os.rename(parent, tmp_path / "moved")
        os.symlink(victim, parent)
        w.add_state("b", np.ones(3, np.float32))
    assert os.listdir(victim) == []
    assert open_dump(str(tmp_path / "moved" / "d")).probes == ["a", "b"]


def test_a_file_that_grows_or_is_rewritten_while_read_is_refused(tmp_path):
    from parity.store import fsio
    p = tmp_path / "f.json"
    p.write_text("{}")
    fd, st = fsio.open_regular(str(p))
    try:
        with open(p, "a") as f:
            f.write(" " * 10)
        with pytest.raises(ParityError, match="changed while being read"):
            fsio.check_unchanged(fd, st, str(p))
    finally:
        os.close(fd)
    with pytest.raises(ParityError, match="larger than"):
        fsio.read_file(str(p), limit=4, what="config")
