"""A pipeline dump's config and inputs from what a user has: a denoiser config, prompt embeddings, a latent size
and a noise seed (``parity dump --pipeline``)."""

from __future__ import annotations

import numpy as np

from parity.errors import ParityError

from .loop import make_noise
from .schedule import GUIDANCE_SCALE, SCHEDULER_CONFIG

DEFAULT_STEPS = 10
PROMPT_NAMES = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
MAX_LATENT_ELEMENTS = 1 << 28


def pipeline_config(denoiser_family: str, denoiser: dict, steps: int | None = None, guidance: float | None = None,
                    source: str = "config") -> dict:
    return {"pipeline": "euler_ancestral_cfg", "denoiser_family": denoiser_family, "denoiser": denoiser,
            "num_inference_steps": DEFAULT_STEPS if steps is None else steps,
            "guidance_scale": GUIDANCE_SCALE if guidance is None else guidance, "scheduler": dict(SCHEDULER_CONFIG)}


def _rows(arr: np.ndarray) -> np.ndarray:
    """(B, L, D) / (B, 1, L, D) embeddings and (B, L) / (B, 1, L) masks, as given."""
    return np.asarray(arr)


def pipeline_inputs(config, prompts: dict, latent_size, noise_seed: int, source: str = "prompts") -> dict:
    """The dump's inputs: the text rows in the CFG order [negative, positive] and the recorded noise (float32
    draws of ``noise_seed``: ``randn · init_noise_sigma`` of the float64 schedule, then one draw per step)."""
    from parity.families.pipeline.steps import schedule

    missing = [n for n in PROMPT_NAMES if n not in prompts]
    if missing:
        raise ParityError(f"{source}: missing {', '.join(missing)}; a prompts file holds {', '.join(PROMPT_NAMES)} "
                          "(the text encoder's last_hidden_state and the tokenizer masks)")
    pos, neg = _rows(prompts["prompt_embeds"]), _rows(prompts["negative_prompt_embeds"])
    pos_m, neg_m = _rows(prompts["prompt_attention_mask"]), _rows(prompts["negative_prompt_attention_mask"])
    if pos.shape != neg.shape or pos_m.shape != neg_m.shape:
        raise ParityError(f"{source}: prompt_embeds {pos.shape} / negative_prompt_embeds {neg.shape} (and their masks "
                          f"{pos_m.shape} / {neg_m.shape}) must have the same shapes; pad both to the same length")
    t, h, w = (int(v) for v in latent_size)
    channels = config.denoiser.in_channels
    shape = (pos.shape[0], channels, t, h, w)
    if min(shape) < 1 or int(np.prod(shape, dtype=np.int64)) * (config.num_inference_steps + 1) > MAX_LATENT_ELEMENTS:
        raise ParityError(f"--latent-size {t} {h} {w}: latents {shape} x {config.num_inference_steps + 1} draws is "
                          "empty or too large to record; pass a smaller size")
    initial, noise = make_noise(int(noise_seed), shape, config.num_inference_steps, np.float32,
                                schedule(config).init_noise_sigma)
    return {"initial_latents": initial, "noise": np.stack(noise),
            "encoder_hidden_states": np.concatenate([neg, pos]).astype(np.float32),
            "encoder_attention_mask": np.concatenate([neg_m, pos_m])}
