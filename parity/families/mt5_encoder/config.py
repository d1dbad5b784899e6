"""mT5 encoder configuration, read from a transformers ``MT5Config`` ``config.json`` as-is.

Defaults are ``MT5Config``'s ``__init__`` defaults (transformers 4.57). The decoder-only and informational
keys of a released ``config.json`` (``num_decoder_layers``, ``is_encoder_decoder``, ``tokenizer_class``,
``architectures``, ``_name_or_path``, ``output_past``, ...) are kept in ``extra`` and written back, never used.
``feed_forward_proj`` is ``"[gated-]ACT"`` as in ``MT5Config``: ``gated-gelu`` (mT5; the activation becomes
``gelu_new``, the tanh approximation) or ``relu`` (the original T5 feed-forward).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from parity.errors import ParityError

FAMILY = "mt5_encoder"
SUPPORTED_FEED_FORWARD = ("gated-gelu", "relu")

# Bounds that keep a hostile config from allocating absurd models (the released mT5-XXL is well inside them).
MAX_VOCAB = 1 << 20
MAX_WIDTH = 1 << 16
MAX_LAYERS = 256
MAX_HEADS = 1024
MAX_BUCKETS = 1024
MAX_DISTANCE = 1 << 20

_INT_BOUNDS = {
    "vocab_size": MAX_VOCAB, "d_model": MAX_WIDTH, "d_kv": MAX_WIDTH, "d_ff": 4 * MAX_WIDTH,
    "num_layers": MAX_LAYERS, "num_heads": MAX_HEADS, "relative_attention_num_buckets": MAX_BUCKETS,
    "relative_attention_max_distance": MAX_DISTANCE,
}
_TOKEN_IDS = ("pad_token_id", "eos_token_id", "decoder_start_token_id")


@dataclass(frozen=True)
class MT5EncoderConfig:
    vocab_size: int = 250112
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    # informational keys of the released config, kept so a round trip writes them back
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def inner_dim(self) -> int:
        """Width of the attention projections (``num_heads * d_kv``; not necessarily ``d_model``)."""
        return self.num_heads * self.d_kv

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "MT5EncoderConfig":
        if not isinstance(data, Mapping):
            raise ParityError(f"{source}: expected a JSON object with the MT5Config keys, got {type(data).__name__}; "
                              f"pass the text encoder's config.json")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: data[k] for k in names if k in data}
        extra = {k: v for k, v in data.items() if k not in names}
        cfg = cls(**kwargs, extra=extra)
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out

    def validate(self, source: str = "config") -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ParityError(f"{source}: {what}; fix this value in the config")

        for key, bound in _INT_BOUNDS.items():
            val = getattr(self, key)
            need(type(val) is int and 0 < val <= bound, f"'{key}' must be an integer in 1..{bound}, got {val!r}")
        for key in _TOKEN_IDS:
            val = getattr(self, key)
            need(type(val) is int and 0 <= val < self.vocab_size,
                 f"'{key}' must be an integer token id below vocab_size {self.vocab_size}, got {val!r}")
        need(self.relative_attention_num_buckets >= 4 and self.relative_attention_num_buckets % 2 == 0,
             f"'relative_attention_num_buckets' must be even and >= 4 (the encoder splits the buckets between "
             f"both directions, half of each exact), got {self.relative_attention_num_buckets}")
        need(self.relative_attention_max_distance > self.relative_attention_num_buckets // 4,
             f"'relative_attention_max_distance' must exceed num_buckets/4 = {self.relative_attention_num_buckets // 4} "
             f"(the logarithmic buckets start there), got {self.relative_attention_max_distance}")
        for key in ("dropout_rate", "initializer_factor", "layer_norm_epsilon"):
            val = getattr(self, key)
            need(type(val) in (int, float), f"'{key}' must be a number, got {val!r}")
        need(0 <= self.dropout_rate < 1, f"'dropout_rate' must be in [0, 1), got {self.dropout_rate!r}")
        need(0 < self.layer_norm_epsilon < 1, f"'layer_norm_epsilon' must be in (0, 1), got {self.layer_norm_epsilon!r}")
        need(type(self.tie_word_embeddings) is bool,
             f"'tie_word_embeddings' must be true or false, got {self.tie_word_embeddings!r}")
        need(self.feed_forward_proj in SUPPORTED_FEED_FORWARD,
             f"feed_forward_proj {self.feed_forward_proj!r} is not supported; use one of "
             f"{', '.join(SUPPORTED_FEED_FORWARD)} (mT5 uses gated-gelu)")

    def replace(self, **changes) -> "MT5EncoderConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg


def released_xxl_config() -> MT5EncoderConfig:
    """google/mt5-xxl's ``config.json`` (the text encoder of Open-Sora-Plan v1.3)."""
    return MT5EncoderConfig.from_dict(dict(
        vocab_size=250112, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
        layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="gated-gelu", is_encoder_decoder=True,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        tokenizer_class="T5Tokenizer", model_type="mt5"), source="released mt5-xxl config")
