"""Built-in pipeline cases: a tiny random-weight denoiser sampled for a few steps with recorded noise.

Noise comes from a numpy generator (``parity.pipeline.loop.make_noise``): the initial latents are
``randn · init_noise_sigma`` of the float64 schedule (σ_max = √(2²⁴−1) ≈ 4096 with zero SNR), then one standard
normal draw per step; prompt embeddings are random (B negative rows, then B positive rows, ragged masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.pipeline.loop import make_noise
from parity.pipeline.schedule import GUIDANCE_SCALE, SCHEDULER_CONFIG

_TINY_DIT = dict(num_layers=2, num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                 patch_size=2, patch_size_t=1, caption_channels=16, cross_attention_dim=24,
                 activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6,
                 only_cross_attention=False, double_self_attention=False, upcast_attention=False, dropout=0.0,
                 interpolation_scale_t=1.0, interpolation_scale_h=1.0, interpolation_scale_w=1.0,
                 sparse1d=False, sparse_n=1, _class_name="OpenSoraT2V_v1_3")


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    denoiser_family: str
    denoiser: dict
    steps: int
    batch: int
    latent_size: tuple          # (T, H, W)
    text_len: int
    text_valid: tuple           # valid tokens of the negative rows, then of the positive rows
    guidance_scale: float = GUIDANCE_SCALE
    weights_seed: int = 0
    inputs_seed: int = 1

    @property
    def config(self) -> dict:
        return {"pipeline": "euler_ancestral_cfg", "denoiser_family": self.denoiser_family,
                "denoiser": dict(self.denoiser), "num_inference_steps": self.steps,
                "guidance_scale": self.guidance_scale, "scheduler": dict(SCHEDULER_CONFIG)}

    def make_inputs(self) -> dict[str, np.ndarray]:
        from .config import PipelineConfig
        from .steps import schedule

        cfg = PipelineConfig.from_dict(self.config)
        shape = (self.batch, self.denoiser["in_channels"]) + tuple(self.latent_size)
        initial, noise = make_noise(self.inputs_seed, shape, self.steps, np.float32, schedule(cfg).init_noise_sigma)
        rng = np.random.default_rng(self.inputs_seed + 1)
        text = rng.standard_normal((2 * self.batch, self.text_len, self.denoiser["caption_channels"]),
                                   dtype=np.float32)
        mask = np.zeros((2 * self.batch, self.text_len), np.int64)
        for i, n in enumerate(self.text_valid):
            mask[i, :n] = 1
        return {"initial_latents": initial, "noise": np.stack(noise), "encoder_hidden_states": text,
                "encoder_attention_mask": mask}


CASES: dict[str, Case] = {c.name: c for c in (
    Case("tiny-pipeline", "opensora_v13 DiT (2 layers, D=24, dense) sampled 10 steps, guidance 7.5, zero-SNR "
         "v-prediction Euler-Ancestral (trailing), latents 1x4x1x4x4", "opensora_v13", _TINY_DIT, steps=10, batch=1,
         latent_size=(1, 4, 4), text_len=6, text_valid=(3, 5)),
)}
DEFAULT_CASE = "tiny-pipeline"


def fixture_dumps() -> list[tuple[str, str]]:
    """(case, precision) of the committed pipeline fixtures (upstream samples in fp16; bf16 pipelines are refused)."""
    return [(DEFAULT_CASE, "fp32"), (DEFAULT_CASE, "fp16")]
