"""``STDiT`` (Open-Sora 1.0) configuration: upstream's model keywords, as a config.json holds them.

Upstream builds the model from an mmengine config, ``model = dict(type="STDiT-XL/2", space_scale=0.5, ...)``, plus
what the inference script adds (``input_size`` = the latent size, ``in_channels``, ``caption_channels``,
``model_max_length``, ``dtype``). Those keys are accepted as-is: ``type`` "STDiT-XL/2" fixes depth 28, hidden
size 1152, patch (1, 2, 2) and 16 heads like upstream's factory (giving one of them with another value is
refused); "STDiT" or no type uses the constructor defaults. ``from_pretrained`` and ``dtype`` are informational
(the weights and the precision come from the command line) and kept for round trips; other unknown keys are
ignored.

Kernel switches that do not change the math are accepted: ``enable_layernorm_kernel`` (apex FusedLayerNorm = a
LayerNorm) and ``enable_flashattn`` (self-attention through flash-attn: float32 inside, one rounding, instead of
upstream's own path that rounds the scores and probabilities in half/bf16 — the same values in fp32).
``enable_sequence_parallelism`` needs a process group and is refused. ``no_temporal_pos_emb`` is accepted and,
as upstream, never read (the temporal table is always added in block 0).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from parity.errors import ParityError

FAMILY = "stdit"
XL_2_NAME = "STDiT-XL/2"
MODEL_TYPES = ("STDiT", XL_2_NAME)
# what upstream's registered STDiT_XL_2 factory passes to STDiT(...)
XL_2_SIZES = {"depth": 28, "hidden_size": 1152, "patch_size": (1, 2, 2), "num_heads": 16}
FREEZE_CHOICES = (None, "not_temporal", "text")
INFORMATIONAL_KEYS = ("from_pretrained", "dtype")

# sanity bounds (a config beyond them is a typo, not a model)
MAX_WIDTH = 1 << 16          # hidden_size, caption_channels, in_channels
MAX_DEPTH = 1024
MAX_GRID = 1 << 14           # each latent axis of input_size
MAX_TEXT_TOKENS = 1 << 16    # model_max_length


@dataclass(frozen=True)
class STDiTConfig:
    input_size: tuple = (1, 32, 32)       # latent (T, H, W) the model is built for
    in_channels: int = 4
    patch_size: tuple = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    pred_sigma: bool = True
    drop_path: float = 0.0
    no_temporal_pos_emb: bool = False
    caption_channels: int = 4096
    model_max_length: int = 120
    space_scale: float = 1.0
    time_scale: float = 1.0
    freeze: str | None = None
    enable_flashattn: bool = False
    enable_layernorm_kernel: bool = False
    enable_sequence_parallelism: bool = False
    model_type: str = "STDiT"             # config key "type"
    extra: dict = field(default_factory=dict, compare=False)  # informational keys, written back by to_dict()

    # ---- derived sizes ---------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.depth

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') = input_size // patch_size per axis."""
        return tuple(n // p for n, p in zip(self.input_size, self.patch_size))

    @property
    def num_temporal(self) -> int:
        return self.grid[0]

    @property
    def num_spatial(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def num_patches(self) -> int:
        return self.num_temporal * self.num_spatial

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def patch_out_features(self) -> int:
        return math.prod(self.patch_size) * self.out_channels

    def model_kwargs(self) -> dict:
        """Keywords for upstream's ``STDiT(...)`` constructor (explicit sizes, no ``type``; add ``dtype``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("model_type", "extra")}

    # ---- (de)serialisation -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "STDiTConfig":
        if not isinstance(data, Mapping):
            raise ParityError(f"{source}: expected a JSON object with the STDiT model keywords, got "
                              f"{type(data).__name__}; pass the model config (e.g. {{\"type\": \"{XL_2_NAME}\", "
                              f"\"input_size\": [16, 32, 32], \"space_scale\": 0.5}})")
        kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name not in ("model_type", "extra")
                  and f.name in data}
        model_type = data.get("type", "STDiT")
        if model_type not in MODEL_TYPES:
            raise ParityError(f"{source}: model type {model_type!r} is not an Open-Sora 1.0 STDiT; use "
                              f"{' or '.join(repr(t) for t in MODEL_TYPES)}")
        if model_type == XL_2_NAME:
            for key, fixed in XL_2_SIZES.items():
                given = kwargs.get(key, fixed)
                if _as_tuple(given) != _as_tuple(fixed):
                    raise ParityError(f"{source}: type {XL_2_NAME} fixes {key}={_as_tuple(fixed)!r} but the config "
                                      f"says {given!r}; drop '{key}' or use type 'STDiT'")
                kwargs[key] = fixed
        for key in ("input_size", "patch_size"):
            if key in kwargs and isinstance(kwargs[key], list):
                kwargs[key] = tuple(kwargs[key])
        extra = {k: data[k] for k in INFORMATIONAL_KEYS if k in data}
        cfg = cls(**kwargs, model_type=model_type, extra=extra)
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict:
        out = {"type": self.model_type}
        for f in dataclasses.fields(self):
            if f.name in ("model_type", "extra"):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out.update(self.extra)
        return out

    def replace(self, **changes) -> "STDiTConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self, source: str = "config") -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ParityError(f"{source}: {what}" + ("" if ";" in what else "; fix this value in the config"))

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key in ("input_size", "patch_size"):
            val = getattr(self, key)
            need(isinstance(val, tuple) and len(val) == 3 and all(is_int(n) and 0 < n <= MAX_GRID for n in val),
                 f"'{key}' must be three positive integers (T, H, W), got {val!r}")
        for key, bound in (("in_channels", MAX_WIDTH), ("hidden_size", MAX_WIDTH), ("depth", MAX_DEPTH),
                           ("num_heads", MAX_WIDTH), ("caption_channels", MAX_WIDTH),
                           ("model_max_length", MAX_TEXT_TOKENS)):
            val = getattr(self, key)
            need(is_int(val) and 0 < val <= bound, f"'{key}' must be an integer in 1..{bound}, got {val!r}")
        for key in ("pred_sigma", "no_temporal_pos_emb", "enable_flashattn", "enable_layernorm_kernel",
                    "enable_sequence_parallelism"):
            val = getattr(self, key)
            need(isinstance(val, bool), f"'{key}' must be true or false, got {val!r}")
        need(not self.enable_sequence_parallelism,
             "enable_sequence_parallelism=true needs a colossalai process group (the math is the same in one "
             "process); set it to false")
        for key, lo, hi in (("class_dropout_prob", 0.0, 1.0), ("drop_path", 0.0, 1.0)):
            val = getattr(self, key)
            need(is_real(val) and lo <= val <= hi, f"'{key}' must be a number in [{lo}, {hi}], got {val!r}")
        for key in ("mlp_ratio", "space_scale", "time_scale"):
            val = getattr(self, key)
            need(is_real(val) and 0 < val <= 1e4, f"'{key}' must be a positive number, got {val!r}")
        need(self.freeze in FREEZE_CHOICES, f"'freeze' must be null, 'not_temporal' or 'text', got {self.freeze!r}")
        need(self.hidden_size % self.num_heads == 0,
             f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        need(self.hidden_size % 4 == 0,
             f"hidden_size {self.hidden_size} must be a multiple of 4 (the 2D sincos table splits it into two "
             f"halves of sin/cos pairs)")
        need(0 < self.mlp_hidden <= 16 * MAX_WIDTH, f"mlp_ratio {self.mlp_ratio} gives an MLP width of "
             f"{self.mlp_hidden}; it must be at least 1")
        bad = [f"{n} % {p}" for n, p in zip(self.input_size, self.patch_size) if n % p]
        need(not bad, f"input_size {self.input_size} is not divisible by patch_size {self.patch_size} "
             f"({', '.join(bad)} != 0): upstream pads the latent to whole patches but sizes its positional tables "
             f"and token grid by floor division, so forward() fails; use a latent size that is a multiple of the patch")


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def released_xl2_config() -> STDiTConfig:
    """The released STDiT-XL/2 16x256x256 model as upstream's inference config and script build it
    (configs/opensora/inference/16x256x256.py; latent 16x32x32 from the SD VAE, T5 with 120 tokens)."""
    return STDiTConfig.from_dict(dict(type=XL_2_NAME, space_scale=0.5, time_scale=1.0, enable_flashattn=True,
                                      enable_layernorm_kernel=True, input_size=[16, 32, 32], in_channels=4,
                                      caption_channels=4096, model_max_length=120, dtype="fp16"),
                                 source="released STDiT-XL/2 16x256x256 config")
