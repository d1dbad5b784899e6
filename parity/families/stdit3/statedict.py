"""The ``STDiT3`` state dict, as names and shapes in ``state_dict()`` order (fact sheet §6).

2 + 4 + 4 + 2 + 1 + 4 entries before the blocks (``rope.freqs`` is a Parameter, ``y_embedder.y_embedding`` a
persistent buffer), 17 per block (15 without qk_norm), 3 after. No LayerNorm weights (no affine); the
non-persistent buffers ``pos_embed.inv_freq`` and ``rope``'s caches are not in it.
"""

from __future__ import annotations

from .config import STDiT3Config

BUFFERS = ("y_embedder.y_embedding",)   # state_dict entries that are buffers, not parameters
TIMESTEP_CHANNELS = 256


def block_shapes(cfg: STDiT3Config, prefix: str) -> dict[str, tuple]:
    c, f = cfg.hidden_size, cfg.mlp_hidden
    shapes = {prefix + "scale_shift_table": (6, c),
              prefix + "attn.qkv.weight": (3 * c, c), prefix + "attn.qkv.bias": (3 * c,)}
    if cfg.qk_norm:
        shapes[prefix + "attn.q_norm.weight"] = (cfg.head_dim,)
        shapes[prefix + "attn.k_norm.weight"] = (cfg.head_dim,)
    shapes.update({
        prefix + "attn.proj.weight": (c, c), prefix + "attn.proj.bias": (c,),
        prefix + "cross_attn.q_linear.weight": (c, c), prefix + "cross_attn.q_linear.bias": (c,),
        prefix + "cross_attn.kv_linear.weight": (2 * c, c), prefix + "cross_attn.kv_linear.bias": (2 * c,),
        prefix + "cross_attn.proj.weight": (c, c), prefix + "cross_attn.proj.bias": (c,),
        prefix + "mlp.fc1.weight": (f, c), prefix + "mlp.fc1.bias": (f,),
        prefix + "mlp.fc2.weight": (c, f), prefix + "mlp.fc2.bias": (c,),
    })
    return shapes


def expected_shapes(cfg: STDiT3Config) -> dict[str, tuple]:
    c, dc = cfg.hidden_size, cfg.caption_channels
    shapes: dict[str, tuple] = {
        "rope.freqs": (cfg.head_dim // 2,),
        "x_embedder.proj.weight": (c, cfg.in_channels, *cfg.patch_size), "x_embedder.proj.bias": (c,),
    }
    for emb in ("t_embedder", "fps_embedder"):
        shapes.update({f"{emb}.mlp.0.weight": (c, TIMESTEP_CHANNELS), f"{emb}.mlp.0.bias": (c,),
                       f"{emb}.mlp.2.weight": (c, c), f"{emb}.mlp.2.bias": (c,)})
    shapes.update({
        "t_block.1.weight": (6 * c, c), "t_block.1.bias": (6 * c,),
        "y_embedder.y_embedding": (cfg.model_max_length, dc),
        "y_embedder.y_proj.fc1.weight": (c, dc), "y_embedder.y_proj.fc1.bias": (c,),
        "y_embedder.y_proj.fc2.weight": (c, c), "y_embedder.y_proj.fc2.bias": (c,),
    })
    for kind in ("spatial_blocks", "temporal_blocks"):
        for i in range(cfg.depth):
            shapes.update(block_shapes(cfg, f"{kind}.{i}."))
    shapes.update({
        "final_layer.scale_shift_table": (2, c),
        "final_layer.linear.weight": (cfg.patch_volume * cfg.out_channels, c),
        "final_layer.linear.bias": (cfg.patch_volume * cfg.out_channels,),
    })
    return shapes


def parameter_count(cfg: STDiT3Config) -> int:
    """Parameters (``model.parameters()``; the ``y_embedding`` buffer excluded)."""
    total = 0
    for name, shape in expected_shapes(cfg).items():
        if name not in BUFFERS:
            n = 1
            for s in shape:
                n *= s
            total += n
    return total
