"""The ``torch-reference`` plug-in: this repository's PyTorch ``OpenSoraT2V_v1_3`` as the reference.

Registered under the entry point group ``parity.references``; the default of ``parity dump``. It holds every
probe where the family's probe map says (the map describes upstream's layout, which this model keeps), so it
has no overlay.
"""

from __future__ import annotations

from parity.plugins.base import TorchPlugin
from parity.plugins.contract import BuildRequest


class TorchReference(TorchPlugin):
    name = "torch-reference"
    families = ("opensora_v13",)

    def build(self, request: BuildRequest):
        from reference_torch import harness

        self.check_family(request.family)
        return harness.build_model(request.config, request.weights, request.precision)

    def forward(self, model, family: str, inputs: dict):
        import torch

        from reference_torch import harness

        tensors = harness.model_inputs(model, inputs)
        with torch.no_grad():
            return model(**tensors, return_dict=False)

    def random_weights(self, family: str, config: dict, seed: int) -> dict:
        from reference_torch import harness

        self.check_family(family)
        return harness.random_weights(config, seed)


def make_plugin(source: str | None = None) -> TorchReference:
    return TorchReference(source)
