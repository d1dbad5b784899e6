"""The ``MT5EncoderModel`` state dict as names and shapes, in transformers' ``state_dict()`` order.

``shared.weight`` and ``encoder.embed_tokens.weight`` are the same tensor (the encoder's embedding is the
model's ``shared`` module) and both appear in ``state_dict()``. Per block: the self-attention ``q, k, v, o``
(no biases), its RMS norm weight, the feed-forward (``wi_0, wi_1, wo`` gated, ``wi, wo`` otherwise) and its norm
weight; block 0 alone owns ``relative_attention_bias`` (num_buckets, num_heads). One final norm weight.
"""

from __future__ import annotations

from .config import MT5EncoderConfig

# A released mT5 checkpoint is the whole encoder-decoder (MT5ForConditionalGeneration): its decoder and LM head
# are not the encoder's, and loaders of the encoder drop them (mindone's Open-Sora-Plan loader does too).
SEQ2SEQ_ONLY_PREFIXES = ("decoder.", "lm_head.")


def expected_shapes(cfg: MT5EncoderConfig) -> dict[str, tuple]:
    d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
    shapes: dict[str, tuple] = {"shared.weight": (cfg.vocab_size, d), "encoder.embed_tokens.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        attn = f"encoder.block.{i}.layer.0.SelfAttention."
        for proj in ("q", "k", "v"):
            shapes[f"{attn}{proj}.weight"] = (inner, d)
        shapes[f"{attn}o.weight"] = (d, inner)
        if i == 0:
            shapes[f"{attn}relative_attention_bias.weight"] = (cfg.relative_attention_num_buckets, cfg.num_heads)
        shapes[f"encoder.block.{i}.layer.0.layer_norm.weight"] = (d,)
        ffn = f"encoder.block.{i}.layer.1.DenseReluDense."
        for proj in (("wi_0", "wi_1") if cfg.is_gated_act else ("wi",)):
            shapes[f"{ffn}{proj}.weight"] = (ff, d)
        shapes[f"{ffn}wo.weight"] = (d, ff)
        shapes[f"encoder.block.{i}.layer.1.layer_norm.weight"] = (d,)
    shapes["encoder.final_layer_norm.weight"] = (d,)
    return shapes


def parameter_count(cfg: MT5EncoderConfig) -> int:
    """Distinct parameters (the tied embedding counted once)."""
    total = 0
    for name, shape in expected_shapes(cfg).items():
        if name == "encoder.embed_tokens.weight":
            continue
        n = 1
        for s in shape:
            n *= s
        total += n
    return total
