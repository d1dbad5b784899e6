"""The ``ms_impl`` plug-in: this repository's MindSpore ports, the default subject.

Registered under the entry point group ``parity.subjects``. One glue module per family (``FAMILY_GLUE``) builds
and runs that family's port: ``build_model(config, weights, precision, device, attention_backend)``,
``model_inputs(model, inputs)`` (the forward's keyword tensors), ``run_step(model, step, teacher)`` (isolated mode:
upstream's own pieces, e.g. ``transformer_blocks[i]``), ``dtype_namer(model)``, ``machinery_notes(model)`` (what the build switched on: memory machinery, the kernel
policy; reported in ``describe()["notes"]``), and optionally ``convert_weights``. A port's overlay, where it keeps a probe differently from the reference, is
``overlays/<family>.json`` (none: every probe where the family map says). Option ``attention`` picks the attention
seam's backend: ``portable`` on CPU/GPU, ``ascend`` with ``flash_attention_score``, ``ascend-emulated`` = the
Ascend branch on CPU with the kernel emulated.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from parity.plugins.base import MindSporePlugin
from parity.plugins.contract import BuildRequest, OptionSpec
from parity.teacher import TeacherStep

OVERLAY_DIR = os.path.join(os.path.dirname(__file__), "overlays")
ATTENTION_BACKENDS = ("portable", "ascend", "ascend-emulated")  # = ms_impl.attention.BACKENDS
FAMILY_GLUE = {"opensora_v13": "ms_impl.harness", "mt5_encoder": "ms_impl.mindone_mt5", "stdit3": "ms_impl.glue_stdit3",
               "stdit": "ms_impl.glue_stdit"}
MODEL_FAMILY = {"OpenSoraT2V_v1_3": "opensora_v13",   # model class -> family (run_step gets only the model)
                "MT5EncoderModel": "mt5_encoder", "STDiT3": "stdit3", "STDiT": "stdit"}
# mt5_encoder is mindone.transformers' MT5EncoderModel as is; these labelled runtime substitutions
# (ms_impl.mindone_patches, docs/pipeline.md) are opt-in
MT5_SUBSTITUTIONS = {"none": (), "buckets": ("host_relative_position_buckets",),
                     "all": ("host_relative_position_buckets", "sigmoid_gelu_new")}


class MsImpl(MindSporePlugin):
    name = "ms_impl"
    families = tuple(FAMILY_GLUE)
    options = {"attention": OptionSpec("attention backend: portable (math path, CPU/GPU), ascend (flash_attention_"
                                       "score), ascend-emulated (the Ascend branch on CPU, kernel emulated)",
                                       choices=ATTENTION_BACKENDS),
               "mt5-substitutions": OptionSpec("mt5_encoder: labelled CPU substitutions in mindone's mT5 (default none; buckets: host "
                                               "relative-position buckets; all: also gelu_new's tanh via sigmoid)",
                                               choices=tuple(MT5_SUBSTITUTIONS))}

    def _glue(self, family: str):
        self.check_family(family)
        return importlib.import_module(FAMILY_GLUE[family])

    def _glue_of(self, model):
        return self._glue(MODEL_FAMILY[type(model).__name__])

    def overlay(self, family: str, config: dict):
        self.check_family(family)
        path = os.path.join(OVERLAY_DIR, f"{family}.json")
        return path if os.path.isfile(path) else None

    def precision_label(self, precision: str, device: str) -> str:
        from ms_impl.precision import precision_label
        return precision_label(precision, device)

    def build(self, request: BuildRequest):
        glue = self._glue(request.family)
        if request.family == "mt5_encoder":
            chosen = MT5_SUBSTITUTIONS[request.options.get("mt5-substitutions") or "none"]
            model = glue.build_model(request.config, request.weights, request.precision, substitutions=chosen,
                                     device=request.device)
        else:
            model = glue.build_model(request.config, request.weights, request.precision, device=request.device,
                                     attention_backend=request.options.get("attention"))
        self.notes = getattr(glue, "machinery_notes", lambda _model: [])(model)
        return model

    def forward(self, model, family: str, inputs: dict):
        tensors, _ = self._glue(family).model_inputs(model, inputs)
        return model(**tensors)

    def make_scheduler(self, num_steps: int, config: dict):
        """The pipeline family's scheduler on this side: mindone.diffusers' EulerAncestralDiscreteScheduler."""
        from ms_impl.mindone_euler_ancestral import MindoneEulerAncestral
        return MindoneEulerAncestral(num_steps, config)

    def dtype_namer(self, model):
        return self._glue_of(model).dtype_namer(model)

    def run_step(self, model, step: TeacherStep, teacher: dict) -> np.ndarray:
        return self._glue_of(model).run_step(model, step, teacher)

    def convert_weights(self, tensors: dict, family: str, config: dict, to: str) -> dict:
        glue = self._glue(family)
        return glue.convert_ms_to_torch(tensors, config) if to == "reference" else \
            glue.convert_torch_to_ms(tensors, config)


def make_plugin(source: str | None = None) -> MsImpl:
    return MsImpl(source)
