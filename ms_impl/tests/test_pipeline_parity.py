"""Pipeline parity end to end on the committed 10-step DiT fixture (torch DiT + diffusers vs the MindSpore DiT +
mindone.diffusers): wrong samplers are caught by per-step teacher forcing at the right step and record; the
recorded noise makes two runs identical; the report names the first step out of tolerance."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("mindspore")
pytest.importorskip("mindone")

from parity.compare import CompareOptions, compare_dump  # noqa: E402
from parity.pipeline.loop import LoopOptions  # noqa: E402
from parity.pipeline.plugin import PipelinePlugin  # noqa: E402
from parity.pipeline.variants import VARIANTS  # noqa: E402
from parity.plugins import load_plugin  # noqa: E402

pytestmark = pytest.mark.xdist_group("mindone")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "fixtures", "reference", "tiny-pipeline-fp32")
STEPS = 3   # the first steps are enough to see every variant; keeps the test cheap


def _compare(subject, modes=("isolated",), steps=STEPS):
    probes = ["initial_latents", "encoder_*"] + [f"step_{k}_*" for k in range(steps)]
    return compare_dump(FIXTURE, CompareOptions(modes=modes, progress=False, subject=subject, probes=probes))


def _variant(name):
    v = VARIANTS[name]
    return PipelinePlugin(load_plugin("ms_impl", "subject"), scheduler_overrides=v.scheduler_overrides,
                          loop_options=LoopOptions(**v.loop_overrides), variant=name)


@pytest.mark.parametrize("name, step, record", [
    ("epsilon", 0, "latents_out"),              # x0 = x - sigma*eps: the step's output, model input untouched
    ("leading", 0, "model_input"),              # t = 900 and sigma 35 instead of 999 / 4096 at step 0
    ("cfg-swapped", 0, "noise_pred_uncond"),    # the positive half read as the unconditional one
])
def test_wrong_sampler_is_caught_at_its_step_and_record(name, step, record):
    result = _compare(_variant(name))
    assert not result["passed"]
    first = result["steps"]["first_failing"]["isolated"]
    assert (first["step"], first["record"]) == (step, record)
    assert result["first_divergence"]["probe"] == f"step_{step}_{record}"


def test_a_scheduler_bug_late_in_the_loop_is_caught_at_that_step():
    """Per-step mode localises: guidance 7.5 -> 7.4 would fail every step, but a wrong sigma only from step 2 on
    fails at step 2, steps 0 and 1 stay within tolerance."""
    class LateBug(PipelinePlugin):
        def run_step(self, model, step, teacher):
            out = super().run_step(model, step, teacher)
            return out * np.float32(1.001) if step.index >= 2 and step.params["record"] == "latents_out" else out
    result = _compare(LateBug(load_plugin("ms_impl", "subject")))
    first = result["steps"]["first_failing"]["isolated"]
    assert (first["step"], first["record"]) == (2, "latents_out")
    rows = result["steps"]["rows"]
    assert rows[0]["isolated"]["first_failing"] is None and rows[1]["isolated"]["first_failing"] is None


def test_correct_subject_passes_both_modes_and_noise_is_shared():
    result = _compare(None, modes=("isolated", "accumulated"))
    assert result["passed"], result["first_divergence"]
    noise = [p for p in result["probes"] if p["name"].endswith("_noise") or p["name"] == "initial_latents"]
    assert noise and all(p["max_abs"] == 0 for p in noise)   # both sides consumed the recorded draws
    steps = result["steps"]["rows"]
    assert [r["timestep"] for r in steps[:STEPS]] == [999.0, 899.0, 799.0]
    assert steps[0]["sigma"] == pytest.approx(4095.99988, rel=1e-7)


def test_free_running_is_deterministic_with_recorded_noise():
    from parity.families import get_family
    from parity.plugins.contract import BuildRequest
    from parity.store import open_dump

    dump = open_dump(FIXTURE)
    plugin = PipelinePlugin(load_plugin("ms_impl", "subject"))
    model = plugin.build(BuildRequest("pipeline", dump.config, dump.load_weights(), "fp32"))
    inputs = get_family("pipeline").normalize_inputs(dump.inputs(), get_family("pipeline").parse_config(dump.config))
    runs = []
    for _ in range(2):
        got = {}
        plugin.capture(model, "pipeline", inputs, None, lambda n, a, _dt: got.__setitem__(n, a))
        runs.append(got)
    assert set(runs[0]) == set(runs[1]) and len(runs[0]) == 3 + 8 * 10
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])


# ---- the text encoder inside a pipeline dump ---------------------------------------------------------------------
def _te_dump(tmp_path, buckets: int, distance: int) -> str:
    """A 2-step pipeline dump whose embeddings come from a tiny random mT5 (positive prompt of 30 tokens)."""
    import json

    from parity.cli.parser import main
    from parity.families.mt5_encoder.cases import CASES as MT5_CASES
    from parity.families.pipeline.cases import _TINY_DIT
    from safetensors.numpy import save_file

    (tmp_path / "dit.json").write_text(json.dumps(dict(_TINY_DIT, caption_channels=32)))
    (tmp_path / "mt5.json").write_text(json.dumps(dict(MT5_CASES["tiny-mt5"].config,
                                                       relative_attention_num_buckets=buckets,
                                                       relative_attention_max_distance=distance)))
    ids, mask = np.zeros((2, 40), np.int64), np.zeros((2, 40), np.int64)
    for row, n in enumerate((5, 30)):
        ids[row, :n] = np.random.default_rng(row).integers(2, 96, n)
        ids[row, n], mask[row, :n + 1] = 1, 1
    save_file({"negative_prompt_input_ids": ids[:1], "negative_prompt_attention_mask": mask[:1],
               "prompt_input_ids": ids[1:], "prompt_attention_mask": mask[1:]}, str(tmp_path / "ids.safetensors"))
    out = str(tmp_path / "dump")
    assert main(["dump", "--pipeline", "--config", str(tmp_path / "dit.json"), "--seed", "0",
                 "--text-encoder-config", str(tmp_path / "mt5.json"), "--text-encoder-seed", "0",
                 "--input-ids", str(tmp_path / "ids.safetensors"), "--latent-size", "1", "4", "4",
                 "--steps", "2", "--out", out]) == 0
    return out


def test_text_encoder_probes_are_recorded_once_and_pass(tmp_path):
    out = _te_dump(tmp_path, buckets=8, distance=16)
    res = compare_dump(out, CompareOptions(modes=("isolated", "accumulated"), progress=False))
    names = [p["name"] for p in res["probes"] if p["mode"] == "isolated"]
    assert names[0] == "text_encoder.input_ids_input" and names.index("text_encoder.prompt_embeds") < \
        names.index("step_0_latents_in")
    assert sum(n.startswith("text_encoder.hidden_states_") for n in names) == 3   # once, not per step
    assert all(p["passed"] for p in res["probes"]), [p["name"] for p in res["probes"] if not p["passed"]]


def test_a_wrong_text_encoder_is_the_first_divergence(tmp_path):
    # 32 buckets / distance 128 and a 31-token prompt: mindone's CPU log puts distance 16 one bucket low
    out = _te_dump(tmp_path, buckets=32, distance=128)
    res = compare_dump(out, CompareOptions(modes=("isolated", "accumulated"), progress=False))
    failing = [p["name"] for p in res["probes"] if not p["passed"]]
    assert failing[0] == "text_encoder.relative_position_bias"
    assert res["first_divergence"]["probe"] == "text_encoder.relative_position_bias"
    # per step the loop runs on the reference's embeddings: no step record fails
    assert not any(p["name"].startswith("step_") and not p["passed"] for p in res["probes"] if p["mode"] == "isolated")
    # free-running, the subject samples with its own embeddings: the encoder's error reaches the denoiser
    assert any(p["name"].startswith("step_0_noise_pred") and not p["passed"]
               for p in res["probes"] if p["mode"] == "accumulated")
    fixed = compare_dump(out, CompareOptions(modes=("isolated", "accumulated"), progress=False,
                                             subject_options=["mt5-substitutions=buckets"]))
    assert all(p["passed"] for p in fixed["probes"])
