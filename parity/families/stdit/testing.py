"""Small configs and deterministic inputs for the tests of both frameworks (plain numpy)."""

from __future__ import annotations

import numpy as np


def tiny_config(depth: int = 2, hidden_size: int = 64, num_heads: int = 4, input_size=(3, 8, 12),
                caption_channels: int = 32, model_max_length: int = 8, **overrides) -> dict:
    cfg = dict(type="STDiT", input_size=list(input_size), in_channels=4, patch_size=[1, 2, 2],
               hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=4.0, pred_sigma=True,
               caption_channels=caption_channels, model_max_length=model_max_length, space_scale=0.5,
               time_scale=1.0)
    cfg.update(overrides)
    return cfg


def make_inputs(config: dict, seed: int = 0, batch: int = 2, text_len: int = 6, text_lens=None,
                timesteps=None) -> dict:
    """Random latent of the config's input_size and text; ragged text masks (sample b keeps text_len - 2b tokens,
    at least 1) unless ``text_lens`` says otherwise."""
    rng = np.random.default_rng(seed)
    t, h, w = config["input_size"]
    lens = list(text_lens) if text_lens is not None else [max(1, text_len - 2 * b) for b in range(batch)]
    mask = np.zeros((len(lens), text_len), np.int64)
    for i, n in enumerate(lens):
        mask[i, :n] = 1
    if timesteps is None:
        timesteps = [999.0, 10.0, 500.0, 1.0][:batch] + [250.0] * max(0, batch - 4)
    return {
        "x": rng.standard_normal((batch, config["in_channels"], t, h, w)).astype(np.float32),
        "timestep": np.asarray(timesteps, np.float32),
        "y": rng.standard_normal((batch, 1, text_len, config["caption_channels"])).astype(np.float32),
        "mask": mask,
    }


def probe_specs(depth: int) -> list:
    """The probe map's probes for ``depth`` blocks in data-flow order, each with ``name``, ``probe_class``,
    ``block`` and the reference's ``capture`` (the MindSpore port keeps upstream's module paths: the same rule on
    both sides)."""
    from types import SimpleNamespace

    from parity.probemap import load_probe_map

    return [SimpleNamespace(name=p.name, probe_class=p.probe_class, block=p.block, capture=p.reference.capture)
            for p in load_probe_map("stdit").resolve(depth)]
