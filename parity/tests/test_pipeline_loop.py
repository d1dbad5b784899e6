"""The sampling loop without any framework: the hand-checked zero-SNR schedule, recorded noise, determinism,
per-step teacher forcing and the wrong-sampler variants, on the float64 numpy Euler-Ancestral."""

from __future__ import annotations

import numpy as np
import pytest

from parity.pipeline import loop as L, schedule as S, tolerances as T
from parity.pipeline.noise import NoiseReplay
from parity.pipeline.numpy_scheduler import NumpyEulerAncestral
from parity.pipeline.toy import ToyDenoiser
from parity.pipeline.variants import VARIANTS

SHAPE = (1, 4, 2, 4, 4)


def test_hand_checked_schedule():
    ts = S.trailing_timesteps(100)
    np.testing.assert_array_equal(ts, np.arange(999, 0, -10))          # 999, 989, ..., 19, 9
    assert ts[0] == 999 and ts[-1] == 9 and len(ts) == 100
    ac = S.zero_snr_alphas_cumprod()
    assert ac[-1] == 2.0 ** -24 and ac[0] == pytest.approx(1 - 1e-4, rel=1e-12)  # the first alpha_bar is kept
    sig = S.sigmas(100)
    assert sig[0] == pytest.approx(np.sqrt(2.0 ** 24 - 1), rel=1e-15) and abs(sig[0] - 4096) < 1.3e-4
    assert sig[-1] == 0 and np.all(np.diff(sig) < 0)
    up, down = S.ancestral_sigmas(sig[0], sig[1])
    assert up ** 2 + down ** 2 == pytest.approx(sig[1] ** 2)
    assert up == pytest.approx(sig[1] * np.sqrt(1 - (sig[1] / sig[0]) ** 2))


def test_scale_model_input_divides_by_sqrt_sigma_squared_plus_one():
    sched = NumpyEulerAncestral(100)
    x = np.full(SHAPE, 4096.0, np.float32)
    np.testing.assert_allclose(sched.scale_model_input(x, 0), 4096.0 / np.sqrt(2.0 ** 24), rtol=1e-7)


def test_noise_replay_refuses_wrong_shape_and_overdraw():
    replay = NoiseReplay([np.zeros((2, 3))])
    with pytest.raises(ValueError, match="shape"):
        replay.next((3, 2))
    assert replay.standard_normal((2, 3)).shape == (2, 3) and replay.used == 1
    with pytest.raises(ValueError, match="only 1 were recorded"):
        replay.next((2, 3))


def _run(steps=10, dtype=np.float32, seed=0, variant=None, **kw):
    config, options = VARIANTS[variant].apply(S.SCHEDULER_CONFIG) if variant else (S.SCHEDULER_CONFIG, L.LoopOptions())
    sched = NumpyEulerAncestral(steps, config)
    init, noise = L.make_noise(seed, SHAPE, steps, dtype, NumpyEulerAncestral(steps).init_noise_sigma)
    embeds = np.random.default_rng(7).standard_normal((2, 5, 8)).astype(dtype)
    return L.run_cfg_loop(ToyDenoiser(4, 8), sched, init, noise, options=options,
                          model_kwargs={"prompt_embeds": embeds}, **kw), sched


def test_shared_noise_is_deterministic_and_consumed():
    (a, _), (b, _), (c, _) = _run(), _run(), _run(seed=1)
    for ra, rb in zip(a, b):
        for key in L.STEP_RECORDS:
            np.testing.assert_array_equal(ra[key], rb[key])
    assert not np.array_equal(a[-1]["latents_out"], c[-1]["latents_out"])
    assert list(a[0]) == list(L.STEP_RECORDS) and a[0]["timestep"].tolist() == [999.0, 999.0]
    init, noise = L.make_noise(0, SHAPE, 3, np.float16, 4096.0)
    assert init.dtype == np.float16 and len(noise) == 3 and noise[0].dtype == np.float16
    with pytest.raises(ValueError, match="only 3 were recorded"):
        L.run_cfg_loop(ToyDenoiser(4, 8), NumpyEulerAncestral(4), init, noise,
                       model_kwargs={"prompt_embeds": np.zeros((2, 5, 8), np.float16)})


def test_guidance_is_uncond_plus_scale_times_difference_in_batch_order():
    recs, _ = _run(steps=2)
    r = recs[0]
    np.testing.assert_array_equal(r["noise_pred"], r["noise_pred_uncond"] + 7.5 * (r["noise_pred_text"] - r["noise_pred_uncond"]))
    assert not np.array_equal(r["noise_pred_uncond"], r["noise_pred_text"])  # the halves see different prompts


@pytest.mark.parametrize("teacher_predictions", [False, True])
def test_per_step_mode_starts_each_step_from_the_reference(teacher_predictions):
    ref, sched = _run()
    sub, _ = _run(teacher=ref, teacher_predictions=teacher_predictions)
    assert T.first_divergence(ref, sub, sched.sigmas, "fp32", "per_step", 7.5) is None
    # a perturbed reference latent at step 4 is where the subject's step 4 starts
    moved = [dict(r) for r in ref]
    moved[4]["latents_in"] = ref[4]["latents_in"] + np.float32(0.5)
    sub2, _ = _run(teacher=moved)
    np.testing.assert_array_equal(sub2[4]["latents_in"], moved[4]["latents_in"])
    for k in range(4):
        np.testing.assert_array_equal(sub2[k]["latents_out"], ref[k]["latents_out"])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_wrong_sampler_is_caught_at_its_step(name):
    ref, sched = _run()
    sub, _ = _run(variant=name, teacher=ref)
    assert T.first_divergence(ref, sub, sched.sigmas, "fp32", "per_step", 7.5) == VARIANTS[name].caught_at
    free, _ = _run(variant=name)
    assert T.first_divergence(ref, free, sched.sigmas, "fp32", "free_running", 7.5)[0] == VARIANTS[name].caught_at[0]


def test_latents_are_compared_in_model_input_units():
    sig = S.sigmas(10)
    assert T.latent_scale("latents_in", 0, sig) == pytest.approx(np.sqrt(sig[0] ** 2 + 1))
    assert T.latent_scale("latents_out", 9, sig) == 1.0 and T.latent_scale("model_input", 0, sig) == 1.0
    atol, rtol = T.allowed("noise_pred", "fp32", "per_step", 7.5)
    assert atol == pytest.approx(14 * T.allowed("noise_pred_text", "fp32", "per_step", 7.5)[0])


def test_family_plan_feeds_each_record_of_a_step_the_reference_latents_and_its_draw():
    from parity.families.pipeline import parse_config, probe_names, teacher_plan
    from parity.families.pipeline.cases import CASES

    cfg = parse_config(dict(CASES["tiny-pipeline"].config, num_inference_steps=3))
    names = probe_names(cfg)
    assert names[:4] == ["initial_latents", "encoder_hidden_states", "encoder_attention_mask", "step_0_latents_in"]
    assert names[-2:] == ["step_2_noise", "step_2_latents_out"] and len(names) == 3 + 8 * 3
    plan = teacher_plan(cfg)
    assert [s.probe for s in plan] == names[3:]
    assert {s.inputs["latents"] for s in plan if s.index == 1} == {"step_1_latents_in"}
    assert {s.inputs["noise"] for s in plan if s.index == 2} == {"step_2_noise"}
