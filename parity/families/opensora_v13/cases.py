"""Built-in cases: small random-weight configs and deterministic inputs, each runnable in any precision.

Weights come from the reference harness (PyTorch default init under ``torch.manual_seed(weights_seed)``);
inputs from a numpy generator seeded with ``inputs_seed``, so a case is fully reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from parity.errors import ParityError

_TINY = dict(num_attention_heads=2, attention_head_dim=24, in_channels=8, out_channels=8, patch_size=2,
             patch_size_t=1, caption_channels=32, cross_attention_dim=48, activation_fn="gelu-approximate",
             attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6, only_cross_attention=False,
             double_self_attention=False, upcast_attention=False, dropout=0.0, interpolation_scale_t=1.0,
             interpolation_scale_h=1.0, interpolation_scale_w=1.0, _class_name="OpenSoraT2V_v1_3")


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    config: dict
    batch: int
    frames: int
    height: int
    width: int
    text_len: int
    timesteps: tuple
    text_valid: tuple                      # valid (unpadded) text tokens per sample
    masked_video: bool = False             # sample 1 (or 0 if B == 1): last frame and a ragged region masked
    weights_seed: int = 0
    inputs_seed: int = 1
    tags: tuple = field(default=())

    def make_inputs(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.inputs_seed)
        b, c = self.batch, self.config["in_channels"]
        hidden = rng.standard_normal((b, c, self.frames, self.height, self.width), dtype=np.float32)
        text = rng.standard_normal((b, 1, self.text_len, self.config["caption_channels"]), dtype=np.float32)
        text_mask = np.zeros((b, 1, self.text_len), dtype=np.int64)
        for i, n in enumerate(self.text_valid):
            text_mask[i, 0, :n] = 1
        video_mask = np.ones((b, self.frames, self.height, self.width), dtype=np.float32)
        if self.masked_video:
            j = b - 1
            video_mask[j, -1] = 0.0                     # a padded last frame
            video_mask[j, 0, : self.height // 2, 1::2] = 0.0  # half of each 2x2 patch: still valid after max-pool
            video_mask[j, 0, self.height // 2 :, :2] = 0.0    # whole patches masked
        return {
            "hidden_states": hidden,
            "timestep": np.asarray(self.timesteps, dtype=np.float32),
            "encoder_hidden_states": text,
            "attention_mask": video_mask,
            "encoder_attention_mask": text_mask,
        }


CASES: dict[str, Case] = {c.name: c for c in (
    Case("tiny-dense", "4 layers, D=48 (2 heads x 24), Skiparse off (sparse_n 1): every block dense",
         dict(_TINY, num_layers=4, sparse1d=False, sparse_n=1), batch=1, frames=3, height=8, width=8,
         text_len=8, timesteps=(999.0,), text_valid=(6,)),
    Case("tiny-sparse", "4 layers, D=48, Skiparse 4: blocks 0,1 dense, 2 single skip, 3 group skip",
         dict(_TINY, num_layers=4, sparse1d=True, sparse_n=4), batch=1, frames=3, height=8, width=8,
         text_len=8, timesteps=(999.0,), text_valid=(5,)),
    Case("tiny-32", "32 layers at D=24 (2 heads x 12), Skiparse 4: dense 0,1,30,31, even T",
         dict(_TINY, num_layers=32, num_attention_heads=2, attention_head_dim=12, caption_channels=16,
              cross_attention_dim=24, sparse1d=True, sparse_n=4), batch=1, frames=2, height=8, width=12,
         text_len=6, timesteps=(500.0,), text_valid=(4,)),
    Case("padded-batch", "B=2, 45 tokens padded to 48 by Skiparse 4, ragged text masks, partly masked video, "
         "two timesteps", dict(_TINY, num_layers=4, sparse1d=True, sparse_n=4), batch=2, frames=3, height=10,
         width=6, text_len=12, timesteps=(999.0, 321.0), text_valid=(7, 12), masked_video=True),
    Case("long-axes", "4 layers at D=24 (2 heads x 12), Skiparse 4, a 2x2x57 token grid (57 RoPE positions on W), "
         "B=2, 228 tokens padded to 240, ragged text, partly masked video, dropout 0.1 (ignored in eval mode)",
         dict(_TINY, num_layers=4, num_attention_heads=2, attention_head_dim=12, caption_channels=16,
              cross_attention_dim=24, sparse1d=True, sparse_n=4, dropout=0.1), batch=2, frames=2, height=4,
         width=114, text_len=7, timesteps=(640.0, 17.0), text_valid=(3, 7), masked_video=True, weights_seed=3,
         inputs_seed=4),
)}

DEFAULT_CASE = "tiny-sparse"
# committed fixtures: every case in fp32 and bf16, these also in fp16 (Makefile FP16_CASES)
FP16_FIXTURE_CASES = ("tiny-sparse", "padded-batch")


def get_case(name: str) -> Case:
    try:
        return CASES[name]
    except KeyError:
        raise ParityError(f"unknown case {name!r}; built-in cases: {', '.join(CASES)} (see 'parity cases')") from None
