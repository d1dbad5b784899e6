"""Built-in cases: small random-weight ``STDiT3`` configs and deterministic inputs, each runnable in any precision.

Weights: ``testing.random_weights(config, weights_seed)``; inputs from a numpy generator seeded with
``inputs_seed``. Timesteps are fractional on purpose where noted: the model casts them to its dtype before the
sinusoid (bf16 rounds 250.5 to 250), which both implementations must reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from parity.errors import ParityError
from .config import STDiT3Config
from .shapes import dynamic_size

TINY = dict(model_type="STDiT3", depth=2, hidden_size=32, num_heads=2, patch_size=[1, 2, 2], in_channels=4,
            caption_channels=32, model_max_length=8, mlp_ratio=4.0, qk_norm=True, pred_sigma=True,
            input_sq_size=512, class_dropout_prob=0.1, drop_path=0.0, enable_flash_attn=False,
            enable_layernorm_kernel=False, enable_sequence_parallelism=False, only_train_temporal=False,
            freeze_y_embedder=False, skip_y_embedder=False)


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    config: dict
    batch: int
    frames: int                      # latent frames, height, width (x is (B, C, T, H, W))
    height: int
    width: int
    timesteps: tuple
    text_valid: tuple                # valid tokens per row of the text mask (rows may be fewer than B: tiled)
    pixel_size: tuple                # (height, width) in pixels: the pos-emb scale
    fps: tuple = (24.0,)
    cond_frames: tuple = ()          # token frames with x_mask False (conditioning frames), every sample
    text_holes: bool = False         # row 0 of the text mask has a hole (not a prefix mask)
    weights_seed: int = 0
    inputs_seed: int = 1
    tags: tuple = field(default=())

    def make_inputs(self) -> dict[str, np.ndarray]:
        cfg = STDiT3Config.from_dict(self.config, source=f"case {self.name}")
        rng = np.random.default_rng(self.inputs_seed)
        b, length = self.batch, cfg.model_max_length
        x = rng.standard_normal((b, cfg.in_channels, self.frames, self.height, self.width), dtype=np.float32)
        y = rng.standard_normal((b, 1, length, cfg.caption_channels), dtype=np.float32)
        mask = np.zeros((len(self.text_valid), length), np.int64)
        for i, n in enumerate(self.text_valid):
            mask[i, :n] = 1
        if self.text_holes:
            mask[0, 1] = 0
        t_tok = dynamic_size(self.frames, self.height, self.width, cfg.patch_size)[0]
        x_mask = np.ones((b, t_tok), bool)
        x_mask[:, list(self.cond_frames)] = False
        return {
            "x": x,
            "timestep": np.asarray(self.timesteps, np.float32),
            "y": y,
            "mask": mask,
            "x_mask": x_mask,
            "fps": np.asarray(self.fps, np.float32),
            "height": np.full((b,), self.pixel_size[0], np.float32),
            "width": np.full((b,), self.pixel_size[1], np.float32),
        }


CASES: dict[str, Case] = {c.name: c for c in (
    Case("stdit3-tiny-padded", "2 blocks of each kind, C=32 (2 heads x 16); B=2 with padded text (5 and 8 of 8 "
         "tokens), a non-square 3x6x10 latent (48x80 px), fractional timestep", TINY, batch=2, frames=3, height=6,
         width=10, timesteps=(900.0, 250.5), text_valid=(5, 8), pixel_size=(48, 80)),
    Case("stdit3-tiny-xmask", "x_mask with frame 0 conditioned (modulated with t=0), B=2, odd latent 4x5x7 padded to "
         "the patch, a text mask with a hole", TINY, batch=2, frames=4, height=5, width=7,
         timesteps=(896.0, 248.0), text_valid=(6, 3), pixel_size=(56, 72), cond_frames=(0,), text_holes=True,
         inputs_seed=2),
    Case("stdit3-tiny-cfg", "the sampler's call: batch [z; z] (B=2) with one text-mask row and one fps value tiled by "
         "forward, 240x426 px (pos-emb scale 0.62), 4 blocks of each kind at C=32 (2 heads x 16)",
         dict(TINY, depth=4, hidden_size=32, num_heads=2, caption_channels=16), batch=2, frames=4, height=6,
         width=10, timesteps=(512.0, 512.0), text_valid=(6,), pixel_size=(240, 426), fps=(30.0,),
         inputs_seed=3, weights_seed=3),
)}

DEFAULT_CASE = "stdit3-tiny-padded"


def get_case(name: str) -> Case:
    try:
        return CASES[name]
    except KeyError:
        raise ParityError(f"unknown case {name!r}; built-in cases: {', '.join(CASES)} (see 'parity cases')") from None


# committed fixtures (make dump-reference): padded text with a non-square latent, and x_mask with frame 0
# conditioned, each in fp32 and bf16 (stdit3-tiny-cfg stays out: the fixtures are kept under 2 MB)
FIXTURE_CASES = ("stdit3-tiny-padded", "stdit3-tiny-xmask")


def fixture_dumps() -> list[tuple[str, str]]:
    """(case, precision) of every committed reference fixture of this family."""
    return [(c, p) for c in FIXTURE_CASES for p in ("fp32", "bf16")]
