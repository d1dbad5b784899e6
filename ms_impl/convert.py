"""Weight conversion between the torch reference's ``state_dict`` and the MindSpore port, strict both ways.

The MindSpore model was written so that its ``parameters_and_names()`` are torch's ``state_dict()`` keys with the
same shapes and layouts (``nn.Linear`` weight (out, in), ``Conv2d`` weight (D, C, p, p)), so a conversion is a
checked identity: every expected name must be present with the expected shape and a float dtype, nothing
unexpected may be there, and all problems are listed, by name, in one ``ParityError`` line. The expected names
and shapes come from the MindSpore model itself, built under ``no_init_parameters`` (no weight memory is
allocated, so this works for the 2.77 B-parameter config too). A round trip is exact (arrays pass untouched).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from parity.errors import ParityError
from parity.safetensors_io import release_pages
from parity.weights import state_dict_problems
from parity.families.opensora_v13.config import OpenSoraConfig



def _config(config) -> OpenSoraConfig:
    return config if isinstance(config, OpenSoraConfig) else OpenSoraConfig.from_dict(config)


def expected_parameter_shapes(config) -> dict[str, tuple]:
    """Names and shapes of the MindSpore model's parameters for ``config``, in order, without allocating them."""
    from mindspore.nn.utils import no_init_parameters

    from ms_impl.modeling_opensora import OpenSoraT2V_v1_3

    with no_init_parameters():
        model = OpenSoraT2V_v1_3.from_config(_config(config).to_dict())
    return {name: tuple(p.shape) for name, p in model.parameters_and_names()}


def check_tensors(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple], what: str) -> None:
    """One ParityError naming every missing, unexpected, shape-mismatched or non-float entry."""
    if not isinstance(tensors, Mapping):
        raise ParityError(f"{what}: expected a mapping of parameter name -> array, got {type(tensors).__name__}")
    parts = state_dict_problems(tensors, expected)
    bad_dtype = [f"{k} ({np.asarray(v).dtype})" for k, v in tensors.items()
                 if k in expected and np.asarray(v).dtype.kind != "f"]
    if bad_dtype:
        parts.append(f"{len(bad_dtype)} non-float tensor(s) {', '.join(bad_dtype[:6])}")
    if parts:
        raise ParityError(f"{what}: {'; '.join(parts)}; refusing to convert — use the config.json that belongs "
                          f"to these weights")


def convert_torch_to_ms(tensors: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """torch ``state_dict`` arrays -> MindSpore parameter arrays (names/layouts coincide; strictly checked)."""
    expected = expected_parameter_shapes(config)
    check_tensors(tensors, expected, "torch -> mindspore weight conversion")
    return {name: tensors[name] for name in expected}


def convert_ms_to_torch(tensors: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """MindSpore parameter arrays -> torch ``state_dict`` arrays (inverse of ``convert_torch_to_ms``)."""
    expected = expected_parameter_shapes(config)
    check_tensors(tensors, expected, "mindspore -> torch weight conversion")
    return {name: tensors[name] for name in expected}


def load_into(model, tensors: Mapping[str, np.ndarray]) -> None:
    """Copy MindSpore-named float arrays into ``model``'s parameters (float32; ``set_precision`` casts after)."""
    import mindspore as ms

    expected = {name: tuple(p.shape) for name, p in model.parameters_and_names()}
    check_tensors(tensors, expected, "loading weights into the MindSpore model")
    for name, param in model.parameters_and_names():
        arr = np.ascontiguousarray(tensors[name], dtype=np.float32)
        if param.dtype != ms.float32:
            param.set_dtype(ms.float32)
        param.set_data(ms.Tensor(arr))
        release_pages(tensors[name])
