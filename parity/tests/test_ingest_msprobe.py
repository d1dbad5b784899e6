"""``parity ingest --from msprobe``: the committed msprobe dumps (made by msprobe 26.2.0, fixtures/msprobe/README.md)
mapped to probes, the missing-probe reasons and fixes, the .pt path with and without torch, hostile inputs."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from parity.cli import main as cli_main
from parity.errors import ParityError
from parity.families import get_family
from parity.ingest import msprobe_dump as MD
from parity.ingest.msprobe import (map_probes, read_probe_rules, unfed_steps,
                                   ingest_msprobe)
from parity.store import open_dump

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "fixtures", "msprobe")
REF = os.path.join(ROOT, "fixtures", "reference")
TORCH_FP32 = os.path.join(FIX, "torch-L0-tiny-sparse-fp32")
TORCH_BF16 = os.path.join(FIX, "torch-L0-tiny-sparse-bf16-block0")
MS_FP32 = os.path.join(FIX, "mindspore-L0-tiny-sparse-fp32")
L0_PROBES = ["hidden_states_input", "timestep_input", "encoder_hidden_states_input", "attention_mask_input",
             "encoder_attention_mask_input", "hidden_states_before_block", "hidden_states_0_block",
             "hidden_states_1_block", "hidden_states_2_block", "hidden_states_3_block", "hidden_states_output"]
FAM = get_family("opensora_v13")


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _config(case: str) -> dict:
    with open(os.path.join(REF, case, "config.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _ingest(src: str, out: str, case: str = "tiny-sparse-fp32", **kw) -> dict:
    return ingest_msprobe(src, out=out, config=_config(case), weights_path=os.path.join(REF, case,
                                                                                        "weights.safetensors"), **kw)


def _ms_overlay():
    from ms_impl.plugin import make_plugin
    from parity.runner import plugin_overlay

    return plugin_overlay(make_plugin(), "opensora_v13", FAM.builtin_cases()["tiny-sparse"].config)


def _mapping(src: str, side: str = "reference", overlay=None):
    dump = MD.open_msprobe_dump(src)
    rules = read_probe_rules("opensora_v13", 4, side, overlay)
    return map_probes(dump, rules, FAM.forward_signatures(), side)


def _copy(src: str, tmp_path) -> tuple[str, str, dict]:
    """A writable copy of a fixture: (dump root, rank dir, parsed dump.json)."""
    dst = str(tmp_path / "msprobe")
    shutil.copytree(src, dst)
    (rank,) = glob.glob(os.path.join(dst, "step*", "*"))
    with open(os.path.join(rank, "dump.json"), encoding="utf-8") as fh:
        return dst, rank, json.load(fh)


def _save(rank: str, data: dict) -> None:
    with open(os.path.join(rank, "dump.json"), "w", encoding="utf-8") as fh:
        json.dump(data, fh)


# ---- mapping: no tensor is read, so no torch is needed -------------------------------------------------------
def test_l0_dump_maps_eleven_of_twentyfive_probes_with_reasons():
    m = _mapping(TORCH_FP32)
    assert m.prefix == "model."  # the wrapper's attribute
    assert [n for n in m.order if n in m.found] == L0_PROBES
    missing = {x.name: x for x in m.missing}
    assert len(m.order) == 25 and len(missing) == 14
    for name in ("attention_mask_sparse_4_True", "attention_mask_converted"):
        assert "static function prepare_sparse_mask" in missing[name].reason
        assert "never other methods" in missing[name].reason and "parity dump" in missing[name].fix
    for name in ("hidden_states_operate_on_patched_inputs", "embedded_timestep_operate_on_patched_inputs"):
        assert "method _operate_on_patched_inputs of the root model" in missing[name].reason


def test_block_input_given_positionally_is_found_through_the_family_signature():
    m = _mapping(TORCH_FP32)
    ref, _ = m.found["hidden_states_before_block"]
    assert ref.file == "Module.model.transformer_blocks.0.BasicTransformerBlock.forward.0.input.0.pt"
    dump = MD.open_msprobe_dump(TORCH_FP32)
    without = map_probes(dump, read_probe_rules("opensora_v13", 4), {}, "reference")
    miss = {x.name: x for x in without.missing}["hidden_states_before_block"]
    assert "named by index only" in miss.reason and "BasicTransformerBlock" in miss.reason


def test_partial_list_reports_each_missing_block_with_the_list_entry_to_add():
    m = _mapping(TORCH_BF16)
    assert [n for n in m.order if n in m.found] == L0_PROBES[:7] + ["hidden_states_output"]
    missing = {x.name: x for x in m.missing}
    for i in (1, 2, 3):
        assert missing[f"hidden_states_{i}_block"].fix.startswith(
            f'add "Module.model.transformer_blocks.{i}.BasicTransformerBlock.forward" to the "list"')


def test_unwrapped_model_loses_its_inputs_and_output_and_says_to_wrap(tmp_path):
    root, rank, data = _copy(TORCH_FP32, tmp_path)
    data["data"] = {k.replace("Module.model.", "Module.", 1): v for k, v in data["data"].items()
                    if "OpenSoraT2V_v1_3" not in k}  # what start(model) itself records
    _save(rank, data)
    m = _mapping(root)
    assert m.prefix == ""
    missing = {x.name: x for x in m.missing}
    assert "wrapper module" in missing["hidden_states_input"].fix
    assert "hidden_states_0_block" in m.found and "hidden_states_output" not in m.found
    with pytest.raises(ParityError, match="model inputs are needed.*wrapper module"):
        _ingest(root, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_isolated_steps_whose_teacher_inputs_the_dump_lacks():
    m = _mapping(TORCH_FP32)
    step = lambda probe, *inputs: SimpleNamespace(probe=probe, inputs={f"r{k}": p for k, p in enumerate(inputs)})
    plan = [step("hidden_states_0_block", "hidden_states_before_block", "timestep_operate_on_patched_inputs"),
            step("hidden_states_1_block", "hidden_states_0_block"),
            step("hidden_states_output", "hidden_states_3_block", "embedded_timestep_operate_on_patched_inputs")]
    unfed = unfed_steps(plan, set(m.found))
    assert [(u.probe, u.needs) for u in unfed] == [
        ("hidden_states_0_block", ("timestep_operate_on_patched_inputs",)),
        ("hidden_states_output", ("embedded_timestep_operate_on_patched_inputs",))]


def test_family_teacher_plan_cannot_feed_any_block_from_an_l0_dump():
    m = _mapping(TORCH_FP32)
    cfg = FAM.parse_config(_config("tiny-sparse-fp32"))
    dump = open_dump(os.path.join(REF, "tiny-sparse-fp32"))
    unfed = unfed_steps(FAM.teacher_plan(cfg, dump.inputs()), set(m.found))
    assert [u.probe for u in unfed] == [f"hidden_states_{i}_block" for i in range(4)] + ["hidden_states_output"]


# ---- writing dumps ---------------------------------------------------------------------------------------------
@pytest.mark.torch
def test_torch_dump_ingests_bit_identical_to_parity_dump(tmp_path):
    out = str(tmp_path / "dump")
    s = _ingest(TORCH_FP32, out)
    assert s["found"] == L0_PROBES and s["precision"] == "fp32" and s["side"] == "reference"
    got, ref = open_dump(out), open_dump(os.path.join(REF, "tiny-sparse-fp32"))
    # the msprobe fixture and the reference fixture may have been made on machines whose torch CPU kernels differ
    # (AVX2/AVX512 round fp32 differently, ~1e-7); a mapping mistake (wrong probe, layout, dtype) is O(1)
    for name in L0_PROBES:
        r = ref.state(name)
        assert got.state_dtype(name) == ref.state_dtype(name), name
        np.testing.assert_allclose(got.state(name), r, rtol=0, atol=1e-5 * max(1.0, float(np.abs(r).max())),
                                   err_msg=name)
    for name, arr in ref.inputs().items():
        np.testing.assert_array_equal(got.input(name), arr, err_msg=name)
    extra = got.manifest["extra"]
    assert extra["ingested_from"]["format"] == "msprobe" and extra["ingested_from"]["framework"] == "pytorch"
    assert len(extra["missing_probes"]) == 14 and all(r["fix"] for r in extra["missing_reasons"])
    assert got.manifest["producer"] == "parity ingest --from msprobe"


@pytest.mark.torch
def test_bf16_states_are_stored_as_bf16_bits_like_parity_dumps(tmp_path):
    out = str(tmp_path / "dump")
    s = _ingest(TORCH_BF16, out, case="tiny-sparse-bf16")
    assert s["precision"] == "bf16"
    got, ref = open_dump(out), open_dump(os.path.join(REF, "tiny-sparse-bf16"))
    for name in ("hidden_states_before_block", "hidden_states_0_block", "hidden_states_output"):
        assert got.state_dtype(name) == "bfloat16"
        np.testing.assert_array_equal(got.raw(f"states/{name}.npy"), ref.raw(f"states/{name}.npy"), err_msg=name)
    assert got.state_dtype("hidden_states_input") == "float32"  # as the model received it
    with pytest.raises(ParityError, match="holds bf16 states"):
        _ingest(TORCH_BF16, str(tmp_path / "other"), case="tiny-sparse-bf16", precision="fp32")


def test_mindspore_dump_is_adapted_to_the_reference_layout(tmp_path):
    out = str(tmp_path / "dump")
    s = _ingest(MS_FP32, out)  # .npy files: no torch involved
    assert s["found"] == L0_PROBES and s["side"] == "subject" and s["unfed"] is None
    got, ref = open_dump(out), open_dump(os.path.join(REF, "tiny-sparse-fp32"))
    for name in L0_PROBES:
        a, b = got.state(name), ref.state(name)
        assert a.shape == b.shape, name  # (S, B, D) after seq_first, the port keeps (B, S, D)
        np.testing.assert_allclose(a, b, atol=5e-6, rtol=0, err_msg=name)
    assert got.manifest["extra"]["side"] == "subject"


def test_the_subject_overlay_gives_the_ports_adapters():
    probes = {p.name: p.subject for p in read_probe_rules("opensora_v13", 4, "subject", _ms_overlay())}
    assert probes["hidden_states_2_block"].adapter == "seq_first"
    assert probes["hidden_states_before_block"].adapter == "seq_first"


def test_pt_files_are_refused_clearly_without_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError, as PARITY_BLOCK_TORCH=1
    with pytest.raises(ParityError, match=r"\.pt files.*torch\.load\(weights_only=True\); install torch"):
        _ingest(TORCH_FP32, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


# ---- hostile inputs --------------------------------------------------------------------------------------------
def _block_output(data: dict, i: int = 2, kind: str = "Module") -> dict:
    return data["data"][f"{kind}.model.transformer_blocks.{i}.BasicTransformerBlock.forward.0"]["output"][0]


@pytest.mark.parametrize("name", ["../../../etc/passwd.npy", "sub/dir.npy", "/abs.npy", ".hidden.npy",
                                  "x.pt", "a\x00b.npy"])
def test_data_names_outside_the_tensor_folder_are_refused(tmp_path, name):
    root, rank, data = _copy(MS_FP32, tmp_path)
    _block_output(data, kind="Cell")["data_name"] = name
    _save(rank, data)
    with pytest.raises(ParityError, match="not a plain .npy file name"):
        _ingest(root, str(tmp_path / "out"))


def test_shape_that_disagrees_with_the_npy_file_is_refused(tmp_path):
    root, rank, data = _copy(MS_FP32, tmp_path)
    _block_output(data, kind="Cell")["shape"] = [1, 480, 48]
    _save(rank, data)
    with pytest.raises(ParityError, match=r"holds float32 \[1, 48, 48\] but dump.json says float32 \[1, 480, 48\]"):
        _ingest(root, str(tmp_path / "out"))


def test_absurd_shape_is_refused_before_any_read(tmp_path):
    root, rank, data = _copy(MS_FP32, tmp_path)
    _block_output(data, kind="Cell")["shape"] = [2**40, 2**20]
    _save(rank, data)
    with pytest.raises(ParityError, match="above the 64 GiB limit"):
        _ingest(root, str(tmp_path / "out"))


def test_a_file_swapped_for_another_of_the_same_shape_is_caught(tmp_path):
    root, rank, data = _copy(MS_FP32, tmp_path)
    files = os.path.join(rank, "dump_tensor_data")
    two = _block_output(data, 2, "Cell")["data_name"]
    shutil.copyfile(os.path.join(files, _block_output(data, 1, "Cell")["data_name"]), os.path.join(files, two))
    with pytest.raises(ParityError, match="dump.json recorded .* the file was replaced or corrupted"):
        _ingest(root, str(tmp_path / "out"))


def test_symlinked_tensor_file_is_refused(tmp_path):
    root, rank, data = _copy(MS_FP32, tmp_path)
    full = os.path.join(rank, "dump_tensor_data", _block_output(data, 2, "Cell")["data_name"])
    os.replace(full, str(tmp_path / "elsewhere.npy"))
    os.symlink(str(tmp_path / "elsewhere.npy"), full)
    with pytest.raises(ParityError, match="not a regular file"):
        _ingest(root, str(tmp_path / "out"))


def test_huge_dump_json_is_refused_without_reading_it(tmp_path):
    root, rank, _ = _copy(MS_FP32, tmp_path)
    with open(os.path.join(rank, "dump.json"), "r+b") as fh:
        fh.truncate(MD.MAX_DUMP_JSON_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ParityError, match="above the 256 MiB limit for a dump.json"):
        _ingest(root, str(tmp_path / "out"))


@pytest.mark.parametrize("text,match", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON|not an msprobe dump.json"),
    ('{"data": {}, "framework": "tensorflow", "task": "tensor", "level": "L0"}', "framework 'tensorflow'"),
    ('{"data": {}, "framework": "pytorch", "task": "statistics", "level": "L0"}', '"task": "tensor"'),
    ("\xff\xfe", "not valid JSON"),
])
def test_malformed_dump_json_is_one_clear_error(tmp_path, text, match):
    root, rank, _ = _copy(MS_FP32, tmp_path)
    with open(os.path.join(rank, "dump.json"), "w", encoding="latin-1") as fh:
        fh.write(text)
    with pytest.raises(ParityError, match=match):
        _ingest(root, str(tmp_path / "out"))


def test_level_l1_dump_says_to_dump_at_l0(tmp_path):
    root, rank, data = _copy(MS_FP32, tmp_path)
    data["level"] = "L1"
    _save(rank, data)
    with pytest.raises(ParityError, match='"level": "L0"'):
        _ingest(root, str(tmp_path / "out"))


def test_several_ranks_need_one_chosen(tmp_path):
    root, rank, _ = _copy(MS_FP32, tmp_path)
    shutil.copytree(rank, os.path.join(os.path.dirname(rank), "rank1"))
    with pytest.raises(ParityError, match="holds 2 msprobe dumps.*pass the step\\*/rank\\* directory"):
        _ingest(root, str(tmp_path / "out"))
    s = _ingest(rank, str(tmp_path / "out"))  # the rank directory itself is accepted
    assert len(s["found"]) == 11


@pytest.mark.torch
def test_pickle_that_is_not_weights_only_safe_is_refused_and_never_run(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root, rank, data = _copy(TORCH_FP32, tmp_path)
    target = os.path.join(rank, "dump_tensor_data", _block_output(data)["data_name"])
    torch.save((torch.zeros(48, 1, 48), Evil()), target)  # the right storage size: only torch.load can tell
    with pytest.raises(ParityError, match="refused — its pickle is not weights_only-safe"):
        _ingest(root, str(tmp_path / "out"))
    assert not marker.exists() and not os.path.exists(tmp_path / "out")
    torch.save({"t": torch.zeros(48, 1, 48)}, target)  # weights_only-safe, but not a tensor
    with pytest.raises(ParityError, match="holds a dict, not a tensor"):
        _ingest(root, str(tmp_path / "out"))


@pytest.mark.torch
def test_pt_archive_checks(tmp_path):
    """Storage bytes must equal the tensor's; a legacy (non-zip) pickle is refused before torch.load."""
    import torch

    root, rank, data = _copy(TORCH_FP32, tmp_path)
    target = os.path.join(rank, "dump_tensor_data", _block_output(data)["data_name"])
    torch.save(torch.zeros(48, 1, 47), target)  # 188 bytes short of the dump.json shape
    with pytest.raises(ParityError, match="bytes of tensor storage but dump.json"):
        _ingest(root, str(tmp_path / "a"))
    torch.save(torch.zeros(48, 1, 48), target, _use_new_zipfile_serialization=False)
    with pytest.raises(ParityError, match="not a torch.save zip archive"):
        _ingest(root, str(tmp_path / "b"))


# ---- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_ingest_from_msprobe(tmp_path, capsys):
    src = MS_FP32 if not _torch_available() else TORCH_FP32
    cfg = os.path.join(REF, "tiny-sparse-fp32")
    out = str(tmp_path / "dump")
    rc = cli_main(["ingest", "--from", "msprobe", src, "--config", f"{cfg}/config.json", "--weights",
                   f"{cfg}/weights.safetensors", "--out", out])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "found 11 probes" in text and "missing 14 probes" in text and "fix: dump this probe with" in text
    assert cli_main(["verify", out]) == 0


def test_cli_hostile_msprobe_dump_is_one_line_exit_2(tmp_path, capsys):
    root, rank, data = _copy(MS_FP32, tmp_path)
    _block_output(data, kind="Cell")["data_name"] = "../../x.npy"
    _save(rank, data)
    cfg = os.path.join(REF, "tiny-sparse-fp32")
    rc = cli_main(["ingest", "--from", "msprobe", root, "--config", f"{cfg}/config.json", "--weights",
                   f"{cfg}/weights.safetensors", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and "path traversal" in err
    assert not os.path.exists(tmp_path / "out")


# ---- the family's signatures are the models' own -------------------------------------------------------------
@pytest.mark.torch
def test_signatures_match_the_torch_reference():
    import inspect

    import reference_torch.modeling_opensora as M

    for cls, names in FAM.forward_signatures().items():
        params = list(inspect.signature(getattr(M, cls).forward).parameters)[1:]
        assert tuple(params[: len(names)]) == names, cls


def test_signatures_match_the_mindspore_port():
    import inspect

    pytest.importorskip("mindspore", reason="the MindSpore port needs mindspore (make setup installs it)")
    import ms_impl.modeling_opensora as M

    for cls, names in FAM.forward_signatures().items():
        params = list(inspect.signature(getattr(M, cls).construct).parameters)[1:]
        assert tuple(params[: len(names)]) == names, cls
