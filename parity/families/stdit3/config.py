"""``STDiT3`` configuration, read from upstream's ``config.json`` as-is (e.g. the HF config of
``hpcai-tech/OpenSora-STDiT-v3``).

Field names and defaults are upstream's ``STDiT3Config``. The keys that fix the parameter shapes must be present
(the released config.json has all of them); informational keys (``architectures``, ``model_type``,
``torch_dtype``, ``transformers_version``, ``_name_or_path``, ...) are kept and written back. Runtime flags that
change no parameter are accepted: ``enable_flash_attn`` (kept: flash semantics for self-attention over N > B
tokens), ``enable_layernorm_kernel`` (apex FusedLayerNorm: the same normalisation), ``drop_path``,
``class_dropout_prob``, ``only_train_temporal``, ``freeze_y_embedder`` (training only). Sequence parallelism and
``skip_y_embedder`` change the forward's contract and are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from parity.errors import ParityError
from parity.dtypes import is_int, is_number

FAMILY = "stdit3"
MODEL_TYPE = "STDiT3"
REQUIRED_KEYS = ("depth", "hidden_size", "num_heads", "patch_size", "in_channels", "caption_channels",
                 "model_max_length")
# sanity bounds (refuse absurd configs before anything is allocated)
MAX_WIDTH = 16384
MAX_DEPTH = 512
MAX_CHANNELS = 65536
MAX_PATCH = 64
RELEASED = dict(  # hpcai-tech/OpenSora-STDiT-v3 config.json (upload commit 31db6d8)
    architectures=["STDiT3"], caption_channels=4096, class_dropout_prob=0.1, depth=28, drop_path=0.0,
    enable_flash_attn=True, enable_layernorm_kernel=True, enable_sequence_parallelism=False,
    freeze_y_embedder=True, hidden_size=1152, in_channels=4, input_size=[None, None, None], input_sq_size=512,
    mlp_ratio=4.0, model_max_length=300, model_type="STDiT3", num_heads=16, only_train_temporal=False,
    patch_size=[1, 2, 2], pred_sigma=True, qk_norm=True, skip_y_embedder=False, torch_dtype="float32",
    transformers_version="4.36.2")


@dataclass(frozen=True)
class STDiT3Config:
    input_size: tuple = (None, None, None)
    input_sq_size: float = 512
    in_channels: int = 4
    patch_size: tuple = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    pred_sigma: bool = True
    drop_path: float = 0.0
    caption_channels: int = 4096
    model_max_length: int = 300
    qk_norm: bool = True
    enable_flash_attn: bool = False
    enable_layernorm_kernel: bool = False
    enable_sequence_parallelism: bool = False
    only_train_temporal: bool = False
    freeze_y_embedder: bool = False
    skip_y_embedder: bool = False
    extra: dict = field(default_factory=dict, compare=False)  # informational keys, written back by to_dict()

    # ---- derived sizes ---------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Block index range of the probe names (one spatial and one temporal block each): ``depth``."""
        return self.depth

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    # ---- (de)serialisation -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "STDiT3Config":
        if not isinstance(data, Mapping):
            raise ParityError(f"{source}: expected a JSON object with the model config, got {type(data).__name__}; "
                              "pass the model's config.json")
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ParityError(f"{source}: model_type {model_type!r} is not {MODEL_TYPE!r}; this is not an STDiT3 "
                              f"config (use the config.json of hpcai-tech/OpenSora-STDiT-v3 or pick its family)")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ParityError(f"{source}: missing required config key(s) {', '.join(missing)}; use the model's "
                              f"config.json (released: depth 28, hidden_size 1152, num_heads 16, patch_size "
                              f"[1, 2, 2], in_channels 4, caption_channels 4096, model_max_length 300)")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: data[k] for k in names if k in data}
        for key in ("patch_size", "input_size"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        extra = {k: v for k, v in data.items() if k not in names}
        cfg = cls(**kwargs, extra=extra)
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["patch_size"] = list(self.patch_size)
        out["input_size"] = list(self.input_size) if isinstance(self.input_size, tuple) else self.input_size
        out.update(self.extra)
        return out

    def validate(self, source: str = "config") -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ParityError(f"{source}: {what}" + ("" if ";" in what else "; fix this value in the config"))

        bounds = dict(in_channels=MAX_CHANNELS, hidden_size=MAX_WIDTH, depth=MAX_DEPTH, num_heads=MAX_WIDTH,
                      caption_channels=MAX_CHANNELS, model_max_length=MAX_CHANNELS)
        for key, hi in bounds.items():
            val = getattr(self, key)
            need(is_int(val) and 0 < val <= hi, f"'{key}' must be an integer in 1..{hi}, got {val!r}")
        need(isinstance(self.patch_size, tuple) and len(self.patch_size) == 3
             and all(is_int(p) and 0 < p <= MAX_PATCH for p in self.patch_size),
             f"'patch_size' must be three integers in 1..{MAX_PATCH} (t, h, w), got {self.patch_size!r}")
        need(self.hidden_size % self.num_heads == 0,
             f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        need(self.head_dim % 2 == 0 and self.head_dim >= 4,
             f"head_dim = hidden_size / num_heads = {self.head_dim} must be even and >= 4 (rotary pairs; "
             f"rotary_embedding_torch divides by head_dim - 2)")
        need(self.hidden_size % 4 == 0,
             f"hidden_size {self.hidden_size} must be divisible by 4 (PositionEmbedding2D: sin/cos of two axes)")
        need(is_number(self.mlp_ratio) and 0 < self.mlp_ratio <= 64 and self.mlp_hidden >= 1,
             f"'mlp_ratio' must be a number in (0, 64] giving at least one hidden unit, got {self.mlp_ratio!r}")
        need(is_number(self.input_sq_size) and 0 < self.input_sq_size <= 1e6,
             f"'input_sq_size' must be a positive number, got {self.input_sq_size!r}")
        need(isinstance(self.input_size, (tuple, type(None))) and (
            self.input_size is None or (len(self.input_size) == 3 and all(
                v is None or (is_int(v) and v > 0) for v in self.input_size))),
            f"'input_size' must be three positive integers or nulls, got {self.input_size!r}")
        for key in ("pred_sigma", "qk_norm", "enable_flash_attn", "enable_layernorm_kernel",
                    "enable_sequence_parallelism", "only_train_temporal", "freeze_y_embedder", "skip_y_embedder"):
            val = getattr(self, key)
            need(isinstance(val, bool), f"'{key}' must be true or false, got {val!r}")
        need(is_number(self.class_dropout_prob) and 0 <= self.class_dropout_prob <= 1,
             f"'class_dropout_prob' must be in [0, 1], got {self.class_dropout_prob!r}")
        need(is_number(self.drop_path) and 0 <= self.drop_path < 1,
             f"'drop_path' must be in [0, 1), got {self.drop_path!r}")
        need(not self.enable_sequence_parallelism,
             "enable_sequence_parallelism=true is not supported (a multi-device run); set it to false — it "
             "changes no parameter")
        need(not self.skip_y_embedder,
             "skip_y_embedder=true (pre-embedded, packed text and lengths as the mask) is not supported; the "
             "released model uses false")

    def replace(self, **changes) -> "STDiT3Config":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg


def load_config(path: str | os.PathLike) -> STDiT3Config:
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ParityError(f"{path}: config file not found; pass the model's config.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParityError(f"{path}: cannot read config ({exc.__class__.__name__}); check the file") from None
    except json.JSONDecodeError as exc:
        raise ParityError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix or regenerate the config") from None
    return STDiT3Config.from_dict(data, source=path)


def released_config() -> STDiT3Config:
    """``STDiT3-XL/2`` as released (1,207,643,972 parameters)."""
    return STDiT3Config.from_dict(RELEASED, source="released config")


def is_stdit3_config(data: Any) -> bool:
    """Whether a config.json names this family (``model_type`` or ``architectures``)."""
    if not isinstance(data, Mapping):
        return False
    archs = data.get("architectures")
    return data.get("model_type") == MODEL_TYPE or (isinstance(archs, list) and MODEL_TYPE in archs)
