"""mindone.diffusers' EulerAncestralDiscreteScheduler (the subject) against diffusers' (the reference): the same
hand-checked values, recorded noise consumed through a numpy-Generator stand-in, 10-step loops per step and
free-running within the pipeline tolerances in fp32 and fp16, and every wrong-sampler variant caught at its step."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", exc_type=ImportError)

from parity.pipeline import loop as L, schedule as S, tolerances as T  # noqa: E402
from parity.pipeline.toy import ToyDenoiser  # noqa: E402
from parity.pipeline.variants import VARIANTS  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.xdist_group("mindone")]
SHAPE = (2, 4, 2, 4, 4)


def MindoneEulerAncestral(*args):  # imported on use: only the worker running this group pays the imports
    from ms_impl.mindone_euler_ancestral import MindoneEulerAncestral as cls
    return cls(*args)


def DiffusersEulerAncestral(*args):
    from reference_torch.euler_ancestral import DiffusersEulerAncestral as cls
    return cls(*args)
STEPS = 10


def test_hand_checked_values():
    sched, ref = MindoneEulerAncestral(100), DiffusersEulerAncestral(100)
    np.testing.assert_array_equal(sched.timesteps, ref.timesteps)
    assert sched.alphas_cumprod[-1] == np.float32(2.0 ** -24)
    # float64 truth 4095.99988; diffusers rounds to 4096.0, mindone's MindSpore sqrt to the float32 below
    assert sched.init_noise_sigma == pytest.approx(4096.0, abs=2.5e-4)
    np.testing.assert_allclose(sched.sigmas, S.sigmas(100), rtol=2e-5)     # 1.8e-5 measured (float64 linspace)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32) * 4096
    np.testing.assert_allclose(sched.scale_model_input(x, 0), x / np.sqrt(4096.0 ** 2 + 1), rtol=1e-6)


def _loops(dtype, variant=None, seed=0):
    config, options = VARIANTS[variant].apply(S.SCHEDULER_CONFIG) if variant else (S.SCHEDULER_CONFIG, L.LoopOptions())
    ref_sched = DiffusersEulerAncestral(STEPS)
    init, noise = L.make_noise(seed, SHAPE, STEPS, dtype, ref_sched.init_noise_sigma)
    kwargs = dict(model_kwargs={"prompt_embeds": np.random.default_rng(5).standard_normal((4, 6, 8)).astype(dtype)})
    model = ToyDenoiser(4, 8, seed)
    ref = L.run_cfg_loop(model, ref_sched, init, noise, **kwargs)
    per_step = L.run_cfg_loop(model, MindoneEulerAncestral(STEPS, config), init, noise, options=options, teacher=ref,
                              **kwargs)
    free = L.run_cfg_loop(model, MindoneEulerAncestral(STEPS, config), init, noise, options=options, **kwargs)
    return ref_sched.sigmas, ref, per_step, free


@pytest.mark.parametrize("precision,dtype", [("fp32", np.float32), ("fp16", np.float16)])
def test_loop_parity_per_step_and_free_running(precision, dtype):
    sigmas, ref, per_step, free = _loops(dtype)
    assert T.first_divergence(ref, per_step, sigmas, precision, "per_step", 7.5) is None
    assert T.first_divergence(ref, free, sigmas, precision, "free_running", 7.5) is None
    assert all(r["latents_out"].dtype == dtype for r in free)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_wrong_sampler_is_caught_at_its_step(name):
    sigmas, ref, per_step, free = _loops(np.float32, variant=name)
    assert T.first_divergence(ref, per_step, sigmas, "fp32", "per_step", 7.5) == VARIANTS[name].caught_at
    assert T.first_divergence(ref, free, sigmas, "fp32", "free_running", 7.5)[0] == VARIANTS[name].caught_at[0]
