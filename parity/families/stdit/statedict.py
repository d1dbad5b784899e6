"""The ``STDiT`` state dict, as names and shapes in ``state_dict()`` order (upstream v1.0.0, checked on the meta
device against the unmodified upstream model).

Three entries are persistent **buffers**, not parameters: ``pos_embed`` (1, S, C) and ``pos_embed_temporal``
(1, T', C), the fixed sincos tables (DERIVED_BUFFERS: functions of the config; upstream's ``find_model`` deletes
them from a checkpoint before a non-strict load, so the model always uses its own), and
``y_embedder.y_embedding`` (model_max_length, caption_channels), the learned null caption (in every checkpoint).
Per block 18 tensors (no norm weights: every LayerNorm is non-affine; no q/k norms). STDiT-XL/2 16x256x256:
550 entries, 759,620,768 parameters, 760,425,632 numbers with the buffers.

Differences of mindone's MindSpore port (examples/opensora_hpcai, ``opensora/models/stdit/stdit.py``) that a strict
conversion map must handle: ``y_embedder.y_embedding`` is a non-trainable ``Parameter`` there (a buffer here);
``pos_embed``/``pos_embed_temporal`` are plain tensors, absent from its checkpoints; with
``patchify_conv3d_replace`` "linear" / "conv2d" ``x_embedder.proj.weight`` is stored reshaped to
(C, in·1·2·2) / (C, in, 2, 2); its loader strips ``network.`` / ``._backbone`` prefixes. The names of all other
entries are the same.
"""

from __future__ import annotations

import math

import numpy as np

from .config import STDiTConfig

DERIVED_BUFFERS = ("pos_embed", "pos_embed_temporal")
BUFFERS = DERIVED_BUFFERS + ("y_embedder.y_embedding",)


def expected_shapes(cfg: STDiTConfig) -> dict[str, tuple]:
    d, dc, c = cfg.hidden_size, cfg.caption_channels, cfg.in_channels
    mlp = cfg.mlp_hidden
    shapes: dict[str, tuple] = {
        "pos_embed": (1, cfg.num_spatial, d),
        "pos_embed_temporal": (1, cfg.num_temporal, d),
        "x_embedder.proj.weight": (d, c, *cfg.patch_size), "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
        "t_block.1.weight": (6 * d, d), "t_block.1.bias": (6 * d,),
        "y_embedder.y_embedding": (cfg.model_max_length, dc),
        "y_embedder.y_proj.fc1.weight": (d, dc), "y_embedder.y_proj.fc1.bias": (d,),
        "y_embedder.y_proj.fc2.weight": (d, d), "y_embedder.y_proj.fc2.bias": (d,),
    }
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        shapes[pre + "scale_shift_table"] = (6, d)
        shapes[pre + "attn.qkv.weight"] = (3 * d, d)
        shapes[pre + "attn.qkv.bias"] = (3 * d,)
        shapes[pre + "attn.proj.weight"] = (d, d)
        shapes[pre + "attn.proj.bias"] = (d,)
        shapes[pre + "cross_attn.q_linear.weight"] = (d, d)
        shapes[pre + "cross_attn.q_linear.bias"] = (d,)
        shapes[pre + "cross_attn.kv_linear.weight"] = (2 * d, d)
        shapes[pre + "cross_attn.kv_linear.bias"] = (2 * d,)
        shapes[pre + "cross_attn.proj.weight"] = (d, d)
        shapes[pre + "cross_attn.proj.bias"] = (d,)
        shapes[pre + "mlp.fc1.weight"] = (mlp, d)
        shapes[pre + "mlp.fc1.bias"] = (mlp,)
        shapes[pre + "mlp.fc2.weight"] = (d, mlp)
        shapes[pre + "mlp.fc2.bias"] = (d,)
        shapes[pre + "attn_temp.qkv.weight"] = (3 * d, d)
        shapes[pre + "attn_temp.qkv.bias"] = (3 * d,)
        shapes[pre + "attn_temp.proj.weight"] = (d, d)
        shapes[pre + "attn_temp.proj.bias"] = (d,)
    shapes["final_layer.scale_shift_table"] = (2, d)
    shapes["final_layer.linear.weight"] = (cfg.patch_out_features, d)
    shapes["final_layer.linear.bias"] = (cfg.patch_out_features,)
    return shapes


def parameter_count(cfg: STDiTConfig) -> int:
    """Numbers in the model's parameters (``sum(p.numel() for p in model.parameters())``: buffers excluded)."""
    return sum(math.prod(s) for k, s in expected_shapes(cfg).items() if k not in BUFFERS)


def state_dict_numel(cfg: STDiTConfig) -> int:
    """Numbers in the whole state dict (parameters and the three persistent buffers)."""
    return sum(math.prod(s) for s in expected_shapes(cfg).values())


def random_weights(cfg: STDiTConfig, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random float32 values for every state-dict entry except the DERIVED_BUFFERS (the model
    computes those), in state-dict order: N(0, 1/fan_in) with fan_in = the product of all but the first dim
    (1-D entries: their length), so activations stay O(1). Upstream's own init zeroes the cross-attention, temporal
    attention and final projections, which would hide those paths."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        if name in DERIVED_BUFFERS:
            continue
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        out[name] = (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)
    return out
