"""The parity plug-in of the third-party-style port (``modeling.VideoDiT``): all it takes to check a port written
from scratch against an Open-Sora-Plan v1.3 reference dump, with no change to ``parity/``::

    parity compare fixtures/reference/padded-batch-fp32 \\
        --subject third_party_port.plugin:make_plugin --subject-path ms_impl/tests

What it supplies (``parity.plugins.contract``):

* ``overlay``: ``overlay.json`` (where each probe lives in ``VideoDiT``, how it is captured, which adapter maps its
  layout, masks compared by meaning as keep masks), plus, when Skiparse is off, the ratio-4 masks marked not
  applicable (the port builds no masks it does not use);
* ``adapters``: the port's own layouts — frame-major token states and the (B, 6, D) modulation;
* ``build``: upstream checkpoint names mapped strictly onto the port's parameter names;
* ``run_step``: isolated mode calls the port's own ``layers[i]`` and ``head``. Masks compared by meaning reach it
  in the reference's convention (additive biases, repeated per head): it turns them into its keep masks.
"""

from __future__ import annotations

import os
import re

import numpy as np

from parity.adapters import Adapter
from parity.errors import ParityError
from parity.plugins.base import MindSporePlugin
from parity.plugins.contract import BuildRequest
from parity.teacher import TeacherStep

OVERLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "overlay.json")
SKIPARSE_RATIO = 4   # the ratio upstream prepares Skiparse masks for (besides 1 = dense)


# ---- layouts -------------------------------------------------------------------------------------------------
def _frames_to_tokens(x, **_):
    b, t, hw, d = x.shape
    return x.reshape(b, t * hw, d)


def _tokens_to_frames(x, *, frame, height, width, **_):
    return x.reshape(x.shape[0], frame, height * width, x.shape[-1])


def _frames_to_seq_first(x, **_):
    return np.swapaxes(_frames_to_tokens(x), 0, 1)


def _seq_first_to_frames(x, **ctx):
    return _tokens_to_frames(np.swapaxes(x, 0, 1), **ctx)


def _rows_to_flat(x, **_):
    return x.reshape(x.shape[0], -1)


def _flat_to_rows(x, **_):
    return x.reshape(x.shape[0], 6, -1)


ADAPTERS = {a.name: a for a in (
    Adapter("frame_major", "the port keeps tokens frame-major (B, T', H'W', D); the reference (B, T'H'W', D)",
            _frames_to_tokens, _tokens_to_frames),
    Adapter("frame_major_seq_first", "the port keeps block states frame-major (B, T', H'W', D); the reference "
            "sequence-first (T'H'W', B, D)", _frames_to_seq_first, _seq_first_to_frames),
    Adapter("modulation_rows", "the port keeps the timestep modulation as (B, 6, D); the reference (B, 6D)",
            _rows_to_flat, _flat_to_rows),
)}


# ---- parameter names -----------------------------------------------------------------------------------------
_RENAMES = (   # upstream (reference) name pattern -> the port's name
    (r"pos_embed\.proj\.(weight|bias)", r"patchify.\1"),
    (r"adaln_single\.emb\.timestep_embedder\.linear_1\.", "time_embed.mlp_in."),
    (r"adaln_single\.emb\.timestep_embedder\.linear_2\.", "time_embed.mlp_out."),
    (r"adaln_single\.linear\.", "time_embed.to_modulation."),
    (r"caption_projection\.linear_1\.", "text_proj.fc_in."),
    (r"caption_projection\.linear_2\.", "text_proj.fc_out."),
    (r"scale_shift_table", "head.shift_scale"),
    (r"proj_out\.", "head.linear."),
    (r"transformer_blocks\.(\d+)\.scale_shift_table", r"layers.\1.ada_table"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_(q|k|v)\.", r"layers.\1.self_attn.w\2."),
    (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.", r"layers.\1.self_attn.wo."),
    (r"transformer_blocks\.(\d+)\.attn2\.to_(q|k|v)\.", r"layers.\1.cross_attn.w\2."),
    (r"transformer_blocks\.(\d+)\.attn2\.to_out\.0\.", r"layers.\1.cross_attn.wo."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"layers.\1.mlp.fc1."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.", r"layers.\1.mlp.fc2."),
)


def port_name(reference_name: str) -> str | None:
    for pattern, replacement in _RENAMES:
        new, n = re.subn("^" + pattern, replacement, reference_name)
        if n:
            return new
    return None


def load_weights(model, weights) -> None:
    """Every reference tensor onto exactly one port parameter of the same shape, or one error listing all
    problems."""
    import mindspore as ms

    params = dict(model.parameters_and_names())
    problems, loaded = [], set()
    for name, arr in weights.items():
        target = port_name(name)
        if target is None or target not in params:
            problems.append(f"unexpected {name}")
            continue
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(params[target].shape):
            problems.append(f"{name}: shape {tuple(arr.shape)}, the port's {target} is {tuple(params[target].shape)}")
            continue
        params[target].set_data(ms.Tensor(np.array(arr, dtype=np.float32)))
        loaded.add(target)
    problems += [f"missing (port {p})" for p in params if p not in loaded]
    if problems:
        raise ParityError(f"weights do not fit third_party_port.VideoDiT: {'; '.join(problems[:8])}"
                          f"{' …' if len(problems) > 8 else ''}; use the config that belongs to these weights")


def keep_from_reference_bias(bias: np.ndarray) -> np.ndarray:
    """The reference's Skiparse bias (n·B, heads, 1, len) — 0 attend, −10000 masked, −9980 padding — as this
    port's keep mask (n·B, 1, 1, len)."""
    return np.ascontiguousarray(bias[:, :1] == 0)


def _setup_mindspore(device: str) -> None:
    """PyNative (MindSpore runs cell hooks there only), synchronous kernel launches on CPU (a model of many small
    ops runs several times faster on a loaded machine than with the asynchronous pipeline)."""
    import mindspore as ms

    if device != "CPU":
        raise ParityError(f"--device {device}: the third-party port runs on CPU only; use --device CPU")
    if ms.get_context("mode") != ms.PYNATIVE_MODE:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.runtime.launch_blocking()


class ThirdPartyPort(MindSporePlugin):
    name = "third-party-port"
    families = ("opensora_v13",)
    adapters = ADAPTERS

    def overlay(self, family: str, config: dict):
        from parity.jsonio import load_json

        self.check_family(family)
        data = load_json(OVERLAY, "overlay", "fix the port's overlay.json")
        if not config.get("sparse1d"):
            why = "the port builds Skiparse masks only when sparse1d is on (its layers all run dense attention)"
            for stem in ("attention_mask", "encoder_attention_mask"):
                for group in (False, True):
                    data["probes"][f"{stem}_sparse_{SKIPARSE_RATIO}_{group}"] = {"not_applicable": why}
        return data

    def build(self, request: BuildRequest):
        from .modeling import DiTConfig, VideoDiT

        self.check_family(request.family)
        if request.precision != "fp32":
            raise ParityError(f"the third-party port runs fp32 only, not {request.precision}; compare an fp32 dump")
        _setup_mindspore(request.device)
        try:
            model = VideoDiT(DiTConfig.from_upstream(request.config))
        except ValueError as exc:
            raise ParityError(f"config: {exc}") from None
        load_weights(model, request.weights)
        model.set_train(False)
        return model

    def forward(self, model, family: str, inputs: dict):
        """``inputs`` come in the family's normalised form: (B, C, T, H, W), (B,), (B, 1, L, Dc), (B, T, H, W),
        (B, 1, L)."""
        import mindspore as ms

        x = inputs
        return model(latents=ms.Tensor(x["hidden_states"]), timesteps=ms.Tensor(x["timestep"]),
                     context=ms.Tensor(x["encoder_hidden_states"].astype(np.float32)),
                     video_mask=ms.Tensor(x["attention_mask"]), context_mask=ms.Tensor(x["encoder_attention_mask"]))

    def run_step(self, model, step: TeacherStep, teacher: dict) -> np.ndarray:
        import mindspore as ms

        grid = (step.params["frame"], step.params["height"], step.params["width"])
        if step.kind == "block":
            out = model.layers[step.index](
                ms.Tensor(teacher["hidden_states"]), ms.Tensor(teacher["encoder_hidden_states"]),
                ms.Tensor(teacher["timestep"]), ms.Tensor(keep_from_reference_bias(teacher["attention_mask"])),
                ms.Tensor(keep_from_reference_bias(teacher["encoder_attention_mask"])), grid)
        elif step.kind == "output":
            out = model.head(ms.Tensor(teacher["hidden_states"]), ms.Tensor(teacher["embedded_timestep"]), grid)
        else:
            raise ValueError(f"third-party port: unknown teacher step kind {step.kind!r}")
        return out.asnumpy()


def make_plugin(source: str | None = None) -> ThirdPartyPort:
    return ThirdPartyPort(source)
