"""What every family's MindSpore glue does after building its port (harness side: may import ``parity``)."""

from __future__ import annotations

from ms_impl import attention as attention_seam
from ms_impl.precision import normalize_device, precision_label


def finish_build(model, cfg, precision: str, device: str, attention_backend, set_precision, set_attention_backend):
    """The family's precision policy, the attention seam's backend (the one asked for, else the one set globally,
    else the device's default), the config kept on the model for the glue, and eval mode."""
    set_precision(model, precision_label(precision, device), device)
    backend = (attention_backend or attention_seam.get_backend()
               or attention_seam.default_backend(normalize_device(device), precision))
    set_attention_backend(model, backend)
    model.attention_backend = backend
    model.parity_config = cfg
    model.set_train(False)
    return model
