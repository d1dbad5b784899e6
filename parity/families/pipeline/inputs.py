"""Pipeline inputs: the recorded noise and the CFG text conditioning, checked against the denoiser's config.

``initial_latents`` (B, *latent) and ``noise`` (steps, B, *latent): float draws recorded by the dump (each side
casts them to the latents' dtype: the values the loop uses); ``encoder_hidden_states`` / ``encoder_attention_mask``:
2B rows in the CFG batch order [negative, positive], in any layout the denoiser family accepts. With a text
encoder in the config, ``text_input_ids`` / ``text_attention_mask`` (2B, L) replace the two text entries (the
embeddings are the encoder's output, ``parity.families.pipeline.text_encoder``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.errors import ParityError

from .text_encoder import INPUT_NAMES as TEXT_ENCODER_INPUTS, encoder_inputs

INPUT_NAMES = ("initial_latents", "noise", "encoder_hidden_states", "encoder_attention_mask")


def input_names(config) -> tuple:
    return INPUT_NAMES[:2] + (INPUT_NAMES[2:] if config.text_encoder is None else TEXT_ENCODER_INPUTS)


def normalize_inputs(inputs: Mapping[str, np.ndarray], config, source: str = "inputs") -> dict[str, np.ndarray]:
    names = input_names(config)
    missing = [n for n in names if n not in inputs]
    extra = sorted(set(inputs) - set(names))
    if missing or extra:
        raise ParityError(f"{source}: a pipeline takes exactly {', '.join(names)} (missing: "
                          f"{', '.join(missing) or 'none'}; unknown: {', '.join(extra[:5]) or 'none'}); make them with "
                          "'parity dump --pipeline'")
    latents, noise = np.asarray(inputs["initial_latents"]), np.asarray(inputs["noise"])
    for name, arr in (("initial_latents", latents), ("noise", noise)):
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
            raise ParityError(f"{source}: {name} must be finite floats, got {arr.dtype}")
    if noise.shape != (config.num_inference_steps,) + latents.shape:
        raise ParityError(f"{source}: noise has shape {noise.shape}, expected (steps, *initial_latents.shape) = "
                          f"{(config.num_inference_steps,) + latents.shape}; one ancestral draw per step")
    fam = config.denoiser_module()
    b = latents.shape[0]
    te = None
    if config.text_encoder is not None:   # the embeddings' shape, for the checks below
        te = config.text_encoder_module().normalize_inputs(encoder_inputs(inputs), config.text_encoder,
                                                           source=f"{source} (as the text encoder's inputs)")
        mask = te["attention_mask"]
        ehs = np.zeros(mask.shape + (config.text_encoder.hidden_size,), np.float32)
    else:
        ehs, mask = np.asarray(inputs["encoder_hidden_states"]), np.asarray(inputs["encoder_attention_mask"])
    if ehs.shape[:1] != (2 * b,) or mask.shape[:1] != (2 * b,):
        raise ParityError(f"{source}: encoder_hidden_states and encoder_attention_mask need 2B = {2 * b} rows "
                          f"([negative, positive]), got {ehs.shape[:1]} and {mask.shape[:1]}")
    model_input = np.concatenate([latents, latents]).astype(np.float32)
    denoiser = fam.normalize_inputs(
        fam.pipeline_inputs(model_input, np.zeros(2 * b, np.float32), ehs, mask), config.denoiser,
        source=f"{source} (as the denoiser's inputs)")
    if fam.pipeline_prediction_shape(config.denoiser, model_input.shape) != model_input.shape:
        raise ParityError(f"{source}: the denoiser's prediction would not have the latents' shape "
                          f"{model_input.shape}; check the denoiser config's out_channels")
    if te is not None:
        return {"initial_latents": latents, "noise": noise, "text_input_ids": te["input_ids"],
                "text_attention_mask": te["attention_mask"]}
    text = fam.pipeline_text(denoiser)
    return {"initial_latents": latents, "noise": noise, **text}
