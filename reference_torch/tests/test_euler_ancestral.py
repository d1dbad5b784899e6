"""diffusers' EulerAncestralDiscreteScheduler as Open-Sora-Plan v1.3 builds it, through the reference adapter:
hand-checked schedule, scale_model_input, recorded-noise replay, and the loop's numpy guidance against torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.pipeline import loop as L, schedule as S
from parity.pipeline.numpy_scheduler import NumpyEulerAncestral
pytestmark = [pytest.mark.torch, pytest.mark.xdist_group("mindone")]


def DiffusersEulerAncestral(*args):  # diffusers is imported on use, by the worker that runs this group only
    from reference_torch.euler_ancestral import DiffusersEulerAncestral as cls
    return cls(*args)


def test_hand_checked_values():
    sched = DiffusersEulerAncestral(100)
    np.testing.assert_array_equal(sched.timesteps, np.arange(999, 0, -10, dtype=np.float32))
    assert sched.timesteps.dtype == np.float32
    assert sched.alphas_cumprod[-1] == np.float32(2.0 ** -24)
    # sqrt(2^24 - 1) = 4095.99988 lies between two float32 values; which one torch's CPU kernels round to
    # differs between machines (4096.0 or 4095.99976 seen), so either is accepted
    assert sched.init_noise_sigma in (np.float32(4096.0), np.nextafter(np.float32(4096.0), np.float32(0)))
    # float32 betas/cumprod: 7.8e-6 measured on one machine, 3.4e-5 on another (torch CPU kernel set)
    np.testing.assert_allclose(sched.sigmas, S.sigmas(100), rtol=5e-5)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32) * 4096
    np.testing.assert_allclose(sched.scale_model_input(x, 0), x / np.sqrt(4096.0 ** 2 + 1), rtol=1e-6)


def test_step_consumes_the_recorded_draw():
    rng = np.random.default_rng(1)
    sample = (rng.standard_normal((1, 2, 3)) * 4096).astype(np.float32)
    out = rng.standard_normal((1, 2, 3)).astype(np.float32)
    n1, n2 = (rng.standard_normal((1, 2, 3)).astype(np.float32) for _ in range(2))
    results = []
    for noise in (n1, n1, n2):
        sched = DiffusersEulerAncestral(10)
        sched.scale_model_input(sample, 0)
        results.append(sched.step(out, 0, sample, noise))
    np.testing.assert_array_equal(results[0], results[1])
    up, _ = S.ancestral_sigmas(float(sched.sigmas[0]), float(sched.sigmas[1]))
    np.testing.assert_allclose(results[2] - results[0], (n2 - n1) * up, rtol=1e-4, atol=1e-2)
    # and it agrees with the float64 formulas
    ref = NumpyEulerAncestral(10)
    np.testing.assert_allclose(results[0], ref.step(out, 0, sample, n1), rtol=1e-5, atol=2e-3)


def test_noise_replay_checks_the_shape():
    sched = DiffusersEulerAncestral(10)
    x = np.zeros((1, 2, 3), np.float32)
    sched.scale_model_input(x, 0)
    with pytest.raises(ValueError, match="recorded draw"):
        sched.step(x, 0, x, np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_numpy_guidance_equals_torch_bit_for_bit(dtype):
    rng = np.random.default_rng(2)
    u, t = (rng.standard_normal((64, 64)).astype(dtype) * 3 for _ in range(2))
    want = (lambda a, b: a + 7.5 * (b - a))(torch.from_numpy(u), torch.from_numpy(t)).numpy()
    np.testing.assert_array_equal(L.guide(u, t, 7.5), want)
