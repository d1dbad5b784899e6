"""``OpenSoraT2V_v1_3`` configuration, read from an upstream diffusers-style ``config.json`` as-is.

Defaults are upstream's ``__init__`` defaults; keys upstream leaves at ``None`` and cannot run without
(``in_channels``, ``patch_size``, ``patch_size_t``, ``caption_channels``) are required. Unknown keys
(``_class_name``, ``_diffusers_version``, the EMA leftovers ``decay``/``power``/...) are ignored.

Every known key is checked against ``FIELDS`` (``parity.families.schema``) before the dataclass is built:
types (JSON bools are bools, ints are ints), ranges (dropout in [0, 1), positive sizes) and size bounds
well above the released model's, so that shapes, probe names and parameter counts stay small numbers; the
memory a run needs is checked separately (``parity.families.opensora_v13.resources``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from parity.errors import ParityError, shown
from parity.families.schema import Bool, Float, Int, Opaque, Text, check_fields

FAMILY = "opensora_v13"

# Upstream builds masks only for these Skiparse ratios (`for sparse_n in [1, 4]` in forward()).
SUPPORTED_SPARSE_N = (1, 4)
SUPPORTED_ACTIVATIONS = ("gelu-approximate",)
REQUIRED_KEYS = ("in_channels", "patch_size", "patch_size_t", "caption_channels")
# Blocks 0, 1 and >= 30 always run dense attention (hard-coded indices upstream, not relative to num_layers).
FIRST_SPARSE_BLOCK = 2
FIRST_DENSE_TAIL_BLOCK = 30
MAX_HIDDEN = 65_536  # heads x head_dim; the released model has 2,304

FIELDS = {
    "in_channels": Int(lo=1, hi=4096), "patch_size": Int(lo=1, hi=64), "patch_size_t": Int(lo=1, hi=64),
    "caption_channels": Int(lo=1, hi=65_536), "num_attention_heads": Int(lo=1, hi=1024),
    "attention_head_dim": Int(lo=1, hi=8192), "out_channels": Int(lo=1, hi=4096, nullable=True),
    "num_layers": Int(lo=1, hi=1024), "dropout": Float(lo=0.0, hi=1.0, hi_open=True),
    "cross_attention_dim": Int(lo=1, hi=65_536, nullable=True), "attention_bias": Bool(),
    "sample_size": Opaque(nullable=True), "sample_size_t": Opaque(nullable=True), "activation_fn": Text(),
    "only_cross_attention": Bool(), "double_self_attention": Bool(), "upcast_attention": Bool(),
    "norm_elementwise_affine": Bool(), "norm_eps": Float(lo=0.0, hi=1.0, lo_open=True),
    "interpolation_scale_h": Float(lo=0.0, hi=1e6, lo_open=True),
    "interpolation_scale_w": Float(lo=0.0, hi=1e6, lo_open=True),
    "interpolation_scale_t": Float(lo=0.0, hi=1e6, lo_open=True), "sparse1d": Bool(), "sparse_n": Int(lo=1, hi=64),
}


@dataclass(frozen=True)
class OpenSoraConfig:
    in_channels: int
    patch_size: int
    patch_size_t: int
    caption_channels: int
    num_attention_heads: int = 16
    attention_head_dim: int = 88
    out_channels: int | None = None
    num_layers: int = 1
    dropout: float = 0.0
    cross_attention_dim: int | None = None
    attention_bias: bool = True
    sample_size: Any = None
    sample_size_t: Any = None
    activation_fn: str = "geglu"
    only_cross_attention: bool = False
    double_self_attention: bool = False
    upcast_attention: bool = False
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale_h: float = 1.0
    interpolation_scale_w: float = 1.0
    interpolation_scale_t: float = 1.0
    sparse1d: bool = False
    sparse_n: int = 2
    # informational keys of the released config, kept so a round trip writes them back
    extra: dict = field(default_factory=dict, compare=False)

    # ---- derived sizes ---------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def kv_dim(self) -> int:
        """In-features of ``attn2.to_k``/``to_v`` (diffusers: ``cross_attention_dim or query_dim``)."""
        return self.cross_attention_dim if self.cross_attention_dim is not None else self.hidden_size

    @property
    def ff_inner_dim(self) -> int:
        return 4 * self.hidden_size

    @property
    def patch_out_features(self) -> int:
        return self.patch_size_t * self.patch_size * self.patch_size * self.output_channels

    def block_is_sparse(self, i: int) -> bool:
        return bool(self.sparse1d) and FIRST_SPARSE_BLOCK <= i < FIRST_DENSE_TAIL_BLOCK

    def block_sparse_group(self, i: int) -> bool:
        return i % 2 == 1

    def block_mask_key(self, i: int) -> tuple[int, bool]:
        """Which prepared mask block ``i`` takes: ``(sparse_n, group)`` as in upstream's block loop."""
        n = self.sparse_n if FIRST_SPARSE_BLOCK <= i < FIRST_DENSE_TAIL_BLOCK else 1
        return n, self.block_sparse_group(i)

    # ---- (de)serialisation -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "OpenSoraConfig":
        if not isinstance(data, Mapping):
            raise ParityError(f"{source}: expected a JSON object with the model config, got {type(data).__name__}; "
                              "pass the model's config.json")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in REQUIRED_KEYS if data.get(k) is None]
        if missing:
            raise ParityError(f"{source}: missing required config key(s) {', '.join(missing)}; "
                              f"use the model's config.json (e.g. in_channels 8, patch_size 2, patch_size_t 1, caption_channels 4096)")
        kwargs = {k: data[k] for k in names if k in data}
        extra = {k: data[k] for k in ("sample_size_h", "sample_size_w", "_class_name", "_diffusers_version") if k in data}
        try:
            cfg = cls(**kwargs, extra=extra)
        except TypeError as exc:  # pragma: no cover - dataclass rejects nothing we pass
            raise ParityError(f"{source}: {exc}") from None
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out

    def validate(self, source: str = "config") -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ParityError(f"{source}: {what}" + ("" if ";" in what else "; fix this value in the config"))

        check_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, FIELDS, source)
        need(self.hidden_size <= MAX_HIDDEN,
             f"num_attention_heads x attention_head_dim = {self.hidden_size} exceeds {MAX_HIDDEN} (the released "
             "model has 24 x 96 = 2304)")
        need(self.activation_fn in SUPPORTED_ACTIVATIONS,
             f"activation_fn {shown(self.activation_fn, 60)} is not supported; OpenSoraT2V v1.3 uses 'gelu-approximate'")
        need(not self.norm_elementwise_affine,
             "norm_elementwise_affine=true is not supported; v1.3 LayerNorms have no weight/bias")
        need(not self.only_cross_attention and not self.double_self_attention,
             "only_cross_attention/double_self_attention must be false for OpenSoraT2V v1.3")
        d3, rem = divmod(self.attention_head_dim, 3)
        need(rem == 0 and d3 % 2 == 0,
             f"attention_head_dim {self.attention_head_dim} must be divisible by 3 with an even third (3D RoPE splits it t|h|w)")
        if self.num_layers > FIRST_SPARSE_BLOCK:
            need(self.sparse_n in SUPPORTED_SPARSE_N,
                 f"sparse_n={shown(self.sparse_n, 40)} is not supported: upstream prepares Skiparse masks only for "
                 f"sparse_n in (1, 4) and blocks 2..29 index them by sparse_n even when sparse1d is false; "
                 f"set sparse_n to 4 (released model) or 1")
            need(self.sparse1d or self.sparse_n == 1,
                 f"sparse1d=false with sparse_n={self.sparse_n} cannot run: upstream hands blocks 2..29 the "
                 f"sparse_n={self.sparse_n} Skiparse masks even when sparse1d is off (shape mismatch in attention); "
                 f"use sparse_n 1 with sparse1d false")

    def replace(self, **changes) -> "OpenSoraConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg


def load_config(path: str | os.PathLike) -> OpenSoraConfig:
    from parity.jsonio import load_json

    path = os.fspath(path)
    return OpenSoraConfig.from_dict(load_json(path, "config", "fix it or pass the model's own config.json"),
                                    source=path)


def released_2b_config() -> OpenSoraConfig:
    """The released ``any93x640x640`` config (2.77 B parameters)."""
    return OpenSoraConfig.from_dict(dict(
        num_layers=32, num_attention_heads=24, attention_head_dim=96, in_channels=8, out_channels=8,
        patch_size=2, patch_size_t=1, caption_channels=4096, cross_attention_dim=2304,
        activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6,
        interpolation_scale_t=1.0, interpolation_scale_h=1.0, interpolation_scale_w=1.0, sparse1d=True,
        sparse_n=4, sample_size_h=[44, 80], sample_size_w=[44, 80], sample_size_t=24), source="released config")
