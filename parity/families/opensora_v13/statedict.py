"""The ``OpenSoraT2V_v1_3`` state dict, as names and shapes in ``state_dict()`` order (fact sheet §4).

7 tensors before the blocks, 21 per block, 8 after. No norm weights (no affine) and no RoPE buffers.
"""

from __future__ import annotations

import re
from typing import Mapping

from parity.errors import ParityError
from .config import OpenSoraConfig


def expected_shapes(cfg: OpenSoraConfig) -> dict[str, tuple]:
    d, dc, c, p = cfg.hidden_size, cfg.caption_channels, cfg.in_channels, cfg.patch_size
    f, kv = cfg.ff_inner_dim, cfg.kv_dim
    shapes: dict[str, tuple] = {
        "scale_shift_table": (2, d),
        "caption_projection.linear_1.weight": (d, dc), "caption_projection.linear_1.bias": (d,),
        "caption_projection.linear_2.weight": (d, d), "caption_projection.linear_2.bias": (d,),
        "pos_embed.proj.weight": (d, c, p, p), "pos_embed.proj.bias": (d,),
    }
    for i in range(cfg.num_layers):
        pre = f"transformer_blocks.{i}."
        shapes[pre + "scale_shift_table"] = (6, d)
        for attn, in_dim in (("attn1", d), ("attn2", kv)):
            for proj, fan_in in (("to_q", d), ("to_k", in_dim), ("to_v", in_dim), ("to_out.0", d)):
                shapes[f"{pre}{attn}.{proj}.weight"] = (d, fan_in)
                shapes[f"{pre}{attn}.{proj}.bias"] = (d,)
        shapes[pre + "ff.net.0.proj.weight"] = (f, d)
        shapes[pre + "ff.net.0.proj.bias"] = (f,)
        shapes[pre + "ff.net.2.weight"] = (d, f)
        shapes[pre + "ff.net.2.bias"] = (d,)
    shapes.update({
        "proj_out.weight": (cfg.patch_out_features, d), "proj_out.bias": (cfg.patch_out_features,),
        "adaln_single.emb.timestep_embedder.linear_1.weight": (d, 256),
        "adaln_single.emb.timestep_embedder.linear_1.bias": (d,),
        "adaln_single.emb.timestep_embedder.linear_2.weight": (d, d),
        "adaln_single.emb.timestep_embedder.linear_2.bias": (d,),
        "adaln_single.linear.weight": (6 * d, d), "adaln_single.linear.bias": (6 * d,),
    })
    return shapes


def infer_config(shapes: Mapping[str, tuple], source: str = "checkpoint") -> dict:
    """A config dict consistent with a checkpoint's shapes (heads are not recoverable: head_dim = D/heads is
    taken as the largest divisor that RoPE3D accepts). Used when converting without ``--config``."""
    try:
        d = shapes["scale_shift_table"][1]
        dc = shapes["caption_projection.linear_1.weight"][1]
        _, c, p, _ = shapes["pos_embed.proj.weight"]
        out_features = shapes["proj_out.weight"][0]
        kv = shapes["transformer_blocks.0.attn2.to_k.weight"][1] if "transformer_blocks.0.attn2.to_k.weight" in shapes else d
    except (KeyError, IndexError, TypeError, ValueError):
        raise ParityError(f"{source}: not an OpenSoraT2V v1.3 state dict (scale_shift_table, pos_embed.proj.weight, "
                          f"caption_projection, proj_out expected); pass --config") from None
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.", k))}
    head_dim = next((h for h in range(d, 0, -1) if d % h == 0 and h % 6 == 0), None)
    if head_dim is None:
        raise ParityError(f"{source}: hidden size {d} has no head_dim divisible by 6; pass --config")
    pt = max(out_features // (p * p * c), 1)
    return dict(num_layers=max(layers) + 1 if layers else 0, num_attention_heads=d // head_dim,
                attention_head_dim=head_dim, in_channels=c, out_channels=out_features // (pt * p * p),
                patch_size=p, patch_size_t=pt, caption_channels=dc, cross_attention_dim=kv,
                activation_fn="gelu-approximate", sparse1d=True, sparse_n=4)
