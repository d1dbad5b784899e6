"""The ``ms_impl`` plug-in: this repository's MindSpore port of ``OpenSoraT2V_v1_3``, the default subject.

Registered under the entry point group ``parity.subjects``. Its overlay (``overlays/opensora_v13.json``) says
where the port keeps probes differently from the reference: batch-first hidden states and one Skiparse bias per
sub-batch broadcast over heads. Option ``attention`` picks the attention seam's backend (``portable`` on
CPU/GPU, ``ascend`` with ``flash_attention_score``, ``ascend-emulated`` = the Ascend branch on CPU with the
kernel emulated); isolated mode calls upstream's own pieces, ``transformer_blocks[i]`` and
``_get_output_for_patched_inputs``.
"""

from __future__ import annotations

import os

import numpy as np

from parity.plugins.base import MindSporePlugin
from parity.plugins.contract import BuildRequest, OptionSpec
from parity.teacher import TeacherStep

OVERLAY_DIR = os.path.join(os.path.dirname(__file__), "overlays")
ATTENTION_BACKENDS = ("portable", "ascend", "ascend-emulated")  # = ms_impl.attention.BACKENDS


class MsImpl(MindSporePlugin):
    name = "ms_impl"
    families = ("opensora_v13",)
    options = {"attention": OptionSpec("attention backend: portable (math path, CPU/GPU), ascend (flash_attention_"
                                       "score), ascend-emulated (the Ascend branch on CPU, kernel emulated)",
                                       choices=ATTENTION_BACKENDS)}

    def overlay(self, family: str, config: dict):
        self.check_family(family)
        return os.path.join(OVERLAY_DIR, f"{family}.json")

    def precision_label(self, precision: str, device: str) -> str:
        from ms_impl.precision import precision_label
        return precision_label(precision, device)

    def build(self, request: BuildRequest):
        from ms_impl import harness

        self.check_family(request.family)
        return harness.build_model(request.config, request.weights, request.precision, device=request.device,
                                   attention_backend=request.options.get("attention"))

    def forward(self, model, family: str, inputs: dict):
        from ms_impl import harness

        tensors, _ = harness.model_inputs(model, inputs)
        return model(**tensors)

    def dtype_namer(self, model):
        from ms_impl import harness
        return harness.dtype_namer(model)

    def run_step(self, model, step: TeacherStep, teacher: dict) -> np.ndarray:
        import mindspore as ms

        from parity.capture_ms import to_numpy

        nx = model.numerics
        t = {role: nx(ms.Tensor(arr).astype(nx.dtype)) for role, arr in teacher.items()}
        grid = step.params
        if step.kind == "block":
            out = model.transformer_blocks[step.index](
                t["hidden_states"], attention_mask=t["attention_mask"],
                encoder_hidden_states=t["encoder_hidden_states"], encoder_attention_mask=t["encoder_attention_mask"],
                timestep=t["timestep"], frame=grid["frame"], height=grid["height"], width=grid["width"])
        elif step.kind == "output":
            out = model._get_output_for_patched_inputs(t["hidden_states"], None, t["embedded_timestep"],
                                                       grid["frame"], grid["height"], grid["width"])
        else:
            raise ValueError(f"ms_impl: unknown teacher step kind {step.kind!r}")
        return to_numpy(out)

    def convert_weights(self, tensors: dict, family: str, config: dict, to: str) -> dict:
        from ms_impl.convert import convert_ms_to_torch, convert_torch_to_ms

        self.check_family(family)
        return convert_ms_to_torch(tensors, config) if to == "reference" else convert_torch_to_ms(tensors, config)


def make_plugin(source: str | None = None) -> MsImpl:
    return MsImpl(source)
