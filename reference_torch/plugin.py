"""The ``torch-reference`` plug-in: this repository's PyTorch models as the reference (the default of ``parity dump``).

Registered under the entry point group ``parity.references``. One glue module per family builds and runs that
family's model (``FAMILY_GLUE``): ``build_model(config, weights, precision)``, ``model_inputs(model, inputs)`` (the
forward's keyword tensors), ``random_weights(config, seed)``, ``FORWARD_OPTIONS`` (extra forward keywords, e.g.
``return_dict``), optionally ``machinery_notes(model)`` (what the build switched on, reported in
``describe()["notes"]``). Every model keeps upstream's module paths and
layouts, which is what the family probe maps describe, so there is no overlay.
"""

from __future__ import annotations

import importlib

from parity.plugins.base import TorchPlugin
from parity.plugins.contract import BuildRequest

FAMILY_GLUE = {"opensora_v13": "reference_torch.harness", "mt5_encoder": "reference_torch.mt5",
               "stdit3": "reference_torch.glue_stdit3", "stdit": "reference_torch.glue_stdit"}


class TorchReference(TorchPlugin):
    name = "torch-reference"
    families = tuple(FAMILY_GLUE)

    def _glue(self, family: str):
        self.check_family(family)
        return importlib.import_module(FAMILY_GLUE[family])

    def build(self, request: BuildRequest):
        glue = self._glue(request.family)
        model = glue.build_model(request.config, request.weights, request.precision)
        self.notes = getattr(glue, "machinery_notes", lambda _model: [])(model)
        return model

    def forward(self, model, family: str, inputs: dict):
        import torch

        glue = self._glue(family)
        tensors = glue.model_inputs(model, inputs)
        with torch.no_grad():
            return model(**tensors, **glue.FORWARD_OPTIONS)

    def make_scheduler(self, num_steps: int, config: dict):
        """The pipeline family's scheduler on this side: diffusers' EulerAncestralDiscreteScheduler."""
        from reference_torch.euler_ancestral import DiffusersEulerAncestral
        return DiffusersEulerAncestral(num_steps, config)

    def random_weights(self, family: str, config: dict, seed: int) -> dict:
        return self._glue(family).random_weights(config, seed)


def make_plugin(source: str | None = None) -> TorchReference:
    return TorchReference(source)
