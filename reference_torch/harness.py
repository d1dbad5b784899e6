"""Reference side of the ``opensora_v13`` family harness (imported by name from the family's probe map).

Everything the parity CLI needs from PyTorch: random weights, expected state-dict shapes (on the meta device),
a strictly loaded model at a precision, input normalisation, a forward pass and probe capture. Inputs and
outputs are numpy; bfloat16 tensors leave this module as exact float32 with the dtype name "bfloat16"
(float16 stays float16).

Inputs (numpy), as upstream's pipeline hands them to the DiT:
    hidden_states          (B, C, T, H, W) float
    timestep               (B,) float
    encoder_hidden_states  (B, 1, L, Dc) float   — (B, L, Dc) is accepted and unsqueezed
    attention_mask         (B, T, H, W) 0/1      — 1 = valid latent pixel
    encoder_attention_mask (B, 1, L) 0/1         — (B, L) is accepted and unsqueezed
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import contextlib

import numpy as np
import torch

from parity.capture_torch import TorchCapture, module_paths as _module_paths, to_numpy
from parity.errors import ParityError
from parity.families.opensora_v13.config import OpenSoraConfig
from parity.families.opensora_v13.probes import INPUT_NAMES
from reference_torch.modeling_opensora import OpenSoraT2V_v1_3

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# expected rank(s) of each input; the first of two ranks is the one the model takes
_INPUT_RANKS = {
    "hidden_states": (5,),
    "timestep": (1,),
    "encoder_hidden_states": (4, 3),
    "attention_mask": (4,),
    "encoder_attention_mask": (3, 2),
}
_INPUT_LAYOUTS = {
    "hidden_states": "(B, C, T, H, W)",
    "timestep": "(B,)",
    "encoder_hidden_states": "(B, 1, L, Dc) or (B, L, Dc)",
    "attention_mask": "(B, T, H, W)",
    "encoder_attention_mask": "(B, 1, L) or (B, L)",
}
_LIST_CAP = 5


def _config(config: "Mapping[str, Any] | OpenSoraConfig") -> OpenSoraConfig:
    if isinstance(config, OpenSoraConfig):
        return config
    return OpenSoraConfig.from_dict(config)


def _precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISION_DTYPES[precision]
    except (KeyError, TypeError):
        raise ParityError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_DTYPES)}") from None


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_CAP])
    more = f" … (+{len(items) - _LIST_CAP} more)" if len(items) > _LIST_CAP else ""
    return f"[{shown}{more}]"


# ---------------------------------------------------------------------------------------------------------
# weights and model
# ---------------------------------------------------------------------------------------------------------


def random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random fp32 weights: ``torch.manual_seed(seed)``, then the model's own (upstream) init
    on CPU. Same seed and config -> same weights, in state-dict order."""
    cfg = _config(config)
    torch.manual_seed(int(seed))
    with torch.device("cpu"):
        model = OpenSoraT2V_v1_3.from_config(cfg)
    # the arrays take over the parameters' storage (no second copy: the 2.7B model is 11 GB in fp32)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def expected_state_dict_shapes(config: dict) -> dict[str, tuple]:
    """Parameter names and shapes of the model for ``config``, built on the meta device (nothing allocated)."""
    cfg = _config(config)
    with torch.device("meta"):
        model = OpenSoraT2V_v1_3.from_config(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_model(config: dict, weights: dict[str, np.ndarray], precision: str) -> torch.nn.Module:
    """The model for ``config`` with exactly ``weights`` loaded (strict), cast to ``precision``, eval, CPU.

    Missing, unexpected and shape-mismatched keys are all reported, by name, in one ParityError.
    At fp32 the parameters share memory with the (writable, C-contiguous) arrays of ``weights``.
    """
    cfg = _config(config)
    dtype = _precision_dtype(precision)
    if not isinstance(weights, Mapping):
        raise ParityError(f"weights: expected a mapping of parameter name -> array, got {type(weights).__name__}")
    expected = expected_state_dict_shapes(cfg)
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = []
    for k, shape in expected.items():
        if k in weights:
            got = tuple(np.shape(weights[k]))
            if got != shape:
                mismatched.append(f"{k} (weights {got}, config {shape})")
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es) {_listing(mismatched)}")
        raise ParityError(
            f"weights do not match the config (hidden size {cfg.hidden_size}, {cfg.num_layers} layers, "
            f"in_channels {cfg.in_channels}, caption_channels {cfg.caption_channels}): {'; '.join(parts)}; "
            f"use the config.json that belongs to these weights, or regenerate the weights for this config")
    state = {}
    for k in expected:
        arr = weights[k]
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
        if arr.dtype.kind != "f":
            raise ParityError(f"weights: {k} has dtype {arr.dtype}, expected a float array; "
                              f"convert the checkpoint to float32")
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, copy=True, order="C")
        state[k] = torch.from_numpy(arr).to(dtype)
    with torch.device("meta"):
        model = OpenSoraT2V_v1_3.from_config(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:  # pragma: no cover - strict loading above makes this impossible
            raise ParityError(f"weights: {name} was not loaded; the checkpoint is incomplete")
    return model.to(device="cpu", dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------------------
# inputs and forward
# ---------------------------------------------------------------------------------------------------------


def normalize_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check and canonicalise the five forward inputs (numpy in, numpy out; arrays are not copied).

    * all five of ``INPUT_NAMES`` must be present and nothing else;
    * ``encoder_hidden_states`` (B, L, Dc) becomes (B, 1, L, Dc) and ``encoder_attention_mask`` (B, L) becomes
      (B, 1, L) — the singleton dim upstream's forward requires (the pipeline adds it the same way);
    * ranks are checked, the batch size must agree across inputs, ``attention_mask`` must be (B, T, H, W) of
      ``hidden_states`` and the text mask length must equal the number of text tokens.
    Any violation is a ParityError naming the input and its shape.
    """
    if not isinstance(inputs, Mapping):
        raise ParityError(f"inputs: expected a mapping of input name -> array, got {type(inputs).__name__}")
    missing = [n for n in INPUT_NAMES if n not in inputs]
    unknown = [n for n in inputs if n not in INPUT_NAMES]
    if missing or unknown:
        raise ParityError(f"inputs: {'missing ' + ', '.join(missing) if missing else ''}"
                          f"{'; ' if missing and unknown else ''}{'unknown ' + ', '.join(unknown) if unknown else ''}; "
                          f"the model takes exactly {', '.join(INPUT_NAMES)}")
    out: dict[str, np.ndarray] = {}
    for name in INPUT_NAMES:
        arr = np.asarray(inputs[name])
        if arr.ndim not in _INPUT_RANKS[name]:
            raise ParityError(f"input {name} has shape {arr.shape}; expected {_INPUT_LAYOUTS[name]}")
        if arr.dtype.kind not in "fiub":
            raise ParityError(f"input {name} has dtype {arr.dtype}; expected a numeric array")
        out[name] = arr
    if out["encoder_hidden_states"].ndim == 3:
        out["encoder_hidden_states"] = out["encoder_hidden_states"][:, None]
    if out["encoder_attention_mask"].ndim == 2:
        out["encoder_attention_mask"] = out["encoder_attention_mask"][:, None]
    if out["encoder_hidden_states"].shape[1] != 1:
        raise ParityError(f"input encoder_hidden_states has shape {out['encoder_hidden_states'].shape}; "
                          f"expected (B, 1, L, Dc) with a singleton dim 1")
    if out["encoder_attention_mask"].shape[1] != 1:
        raise ParityError(f"input encoder_attention_mask has shape {out['encoder_attention_mask'].shape}; "
                          f"expected (B, 1, L) with a singleton dim 1")
    for name in ("hidden_states", "timestep", "encoder_hidden_states"):
        if out[name].dtype.kind != "f":
            raise ParityError(f"input {name} has dtype {out[name].dtype}; expected a float array")
    batch = out["hidden_states"].shape[0]
    for name in INPUT_NAMES[1:]:
        if out[name].shape[0] != batch:
            raise ParityError(f"input {name} has shape {out[name].shape}, batch {out[name].shape[0]}; "
                              f"hidden_states {out['hidden_states'].shape} has batch {batch}")
    b, _, t, h, w = out["hidden_states"].shape
    if out["attention_mask"].shape != (b, t, h, w):
        raise ParityError(f"input attention_mask has shape {out['attention_mask'].shape}; expected (B, T, H, W) = "
                          f"{(b, t, h, w)} from hidden_states {out['hidden_states'].shape}")
    length = out["encoder_hidden_states"].shape[2]
    if out["encoder_attention_mask"].shape[2] != length:
        raise ParityError(f"input encoder_attention_mask has shape {out['encoder_attention_mask'].shape}; expected "
                          f"(B, 1, {length}) to match encoder_hidden_states {out['encoder_hidden_states'].shape}")
    return out


def to_torch_inputs(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``normalize_inputs``, then CPU tensors with the arrays' own dtypes (no casting here)."""
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in normalize_inputs(inputs).items()}


def _model_inputs(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors for ``model(**tensors)``, cast only where upstream's forward needs it.

    ``encoder_hidden_states`` goes straight into the caption Linear, so it must already be in the model dtype
    (upstream's pipeline passes prompt embeddings in the DiT dtype): it is cast. Everything else is passed as
    given: the model itself casts ``hidden_states`` at the patch embedding and converts the masks to biases in
    its dtype, and ``timestep`` stays float32 — the sinusoid is computed in fp32 from it anyway. (A bf16
    pipeline would round t=999 to 1000 before the call; we deliberately don't, so low-precision runs differ
    from fp32 only by the model's own arithmetic and the subject can replay the dumped inputs as they are.)
    """
    tensors = to_torch_inputs(inputs)
    dtype = next(model.parameters()).dtype
    tensors["encoder_hidden_states"] = tensors["encoder_hidden_states"].to(dtype)
    return tensors


def _output_numpy(output: torch.Tensor) -> np.ndarray:
    arr, _ = to_numpy(output)
    return arr


def forward(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One forward pass (no_grad, ``return_dict=False``); the output (B, C, T, H, W) as numpy in the model's
    precision (float32, float16; bfloat16 as exact float32)."""
    tensors = _model_inputs(model, inputs)
    with torch.no_grad():
        (output,) = model(**tensors, return_dict=False)
    return _output_numpy(output)


def capture(model: torch.nn.Module, inputs: dict[str, np.ndarray], specs: list,
            on_probe: Callable[[str, np.ndarray, str], None]) -> np.ndarray:
    """``forward`` with every probe of ``specs`` (``load_probe_map().probes(num_layers)``) reported to
    ``on_probe(name, array, dtype_name)``; returns the output."""
    tensors = _model_inputs(model, inputs)
    with TorchCapture(model, specs, on_probe), torch.no_grad():
        (output,) = model(**tensors, return_dict=False)
    return _output_numpy(output)


def module_paths(model: torch.nn.Module) -> set[str]:
    """Dotted names of all submodules of ``model`` ("" = the root)."""
    return _module_paths(model)


def versions() -> dict:
    """Library versions of the reference side, recorded in dumps."""
    return {"torch": torch.__version__}


@contextlib.contextmanager
def fixed_threads(threads: int):
    """Run with ``threads`` intra-op threads: some CPU matmuls split their reductions by thread count, so a
    dump is bit-reproducible only at a fixed count (recorded in the manifest)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
