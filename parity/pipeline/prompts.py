"""A pipeline dump's config and inputs from what a user has: a denoiser config, prompt embeddings (or a text
encoder config and token ids), a latent size and a noise seed (``parity dump --pipeline``)."""

from __future__ import annotations

import numpy as np

from parity.errors import ParityError

from .loop import make_noise
from .schedule import GUIDANCE_SCALE, SCHEDULER_CONFIG

DEFAULT_STEPS = 10
PROMPT_NAMES = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
TOKEN_NAMES = ("prompt_input_ids", "prompt_attention_mask", "negative_prompt_input_ids",
               "negative_prompt_attention_mask")
MAX_LATENT_ELEMENTS = 1 << 28


def pipeline_config(denoiser_family: str, denoiser: dict, steps: int | None = None, guidance: float | None = None,
                    source: str = "config", text_encoder_family: str | None = None,
                    text_encoder: dict | None = None) -> dict:
    out = {"pipeline": "euler_ancestral_cfg", "denoiser_family": denoiser_family, "denoiser": denoiser,
           "num_inference_steps": DEFAULT_STEPS if steps is None else steps,
           "guidance_scale": GUIDANCE_SCALE if guidance is None else guidance, "scheduler": dict(SCHEDULER_CONFIG)}
    if text_encoder is not None:
        out.update(text_encoder_family=text_encoder_family, text_encoder=text_encoder)
    return out


def _rows(arr: np.ndarray) -> np.ndarray:
    """(B, L, D) / (B, 1, L, D) embeddings and (B, L) / (B, 1, L) masks, as given."""
    return np.asarray(arr)


def pipeline_inputs(config, prompts: dict, latent_size, noise_seed: int, source: str = "prompts") -> dict:
    """The dump's inputs: the text rows in the CFG order [negative, positive] and the recorded noise (float32
    draws of ``noise_seed``: ``randn · init_noise_sigma`` of the float64 schedule, then one draw per step)."""
    from parity.families.pipeline.steps import schedule

    tokens = config.text_encoder is not None
    names = TOKEN_NAMES if tokens else PROMPT_NAMES
    missing = [n for n in names if n not in prompts]
    if missing:
        what = "the tokenizer's ids and masks" if tokens else "the text encoder's last_hidden_state and the tokenizer masks"
        raise ParityError(f"{source}: missing {', '.join(missing)}; a {'token ids' if tokens else 'prompts'} file "
                          f"holds {', '.join(names)} ({what})")
    pos, pos_m, neg, neg_m = (_rows(prompts[n]) for n in names)
    if pos.shape != neg.shape or pos_m.shape != neg_m.shape:
        raise ParityError(f"{source}: {names[0]} {pos.shape} / {names[2]} {neg.shape} (and their masks "
                          f"{pos_m.shape} / {neg_m.shape}) must have the same shapes; pad both to the same length")
    t, h, w = (int(v) for v in latent_size)
    channels = config.denoiser.in_channels
    shape = (pos.shape[0], channels, t, h, w)
    if min(shape) < 1 or int(np.prod(shape, dtype=np.int64)) * (config.num_inference_steps + 1) > MAX_LATENT_ELEMENTS:
        raise ParityError(f"--latent-size {t} {h} {w}: latents {shape} x {config.num_inference_steps + 1} draws is "
                          "empty or too large to record; pass a smaller size")
    initial, noise = make_noise(int(noise_seed), shape, config.num_inference_steps, np.float32,
                                schedule(config).init_noise_sigma)
    if tokens:
        return {"initial_latents": initial, "noise": np.stack(noise), "text_input_ids": np.concatenate([neg, pos]),
                "text_attention_mask": np.concatenate([neg_m, pos_m])}
    return {"initial_latents": initial, "noise": np.stack(noise),
            "encoder_hidden_states": np.concatenate([neg, pos]).astype(np.float32),
            "encoder_attention_mask": np.concatenate([neg_m, pos_m])}


def text_encoder_weights(reference, config, path: str | None, seed: int | None) -> dict:
    """The text encoder's state dict from ``path`` (its own names) or ``seed`` (the reference plug-in's random
    init), under the pipeline's ``text_encoder.`` prefix."""
    from parity.families.pipeline.text_encoder import prefixed
    from parity.inputs_io import load_tensor_file
    from parity.weights import check_state_dict

    fam = config.text_encoder_module()
    if path is not None:
        weights = load_tensor_file(path, "text encoder weights")
        check_state_dict(weights, fam.expected_state_dict_shapes(config.text_encoder), source=path)
    else:
        weights = reference.inner.random_weights(config.text_encoder_family, config.text_encoder.to_dict(), seed)
    return {prefixed(k): v for k, v in weights.items()}
