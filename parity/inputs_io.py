"""Reading user-supplied tensor files (inputs, weights): safetensors or npz, never pickle."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from parity.errors import ParityError
from parity.safetensors_io import load_safetensors

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load_tensor_file(path: str, what: str) -> dict[str, np.ndarray]:
    """Load a ``.safetensors`` or ``.npz`` file of named arrays (``what`` names it in messages)."""
    if not os.path.exists(path):
        raise ParityError(f"{path}: {what} file not found")
    lower = path.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise ParityError(f"{path}: pickled {what} ({os.path.splitext(path)[1]}) are refused because loading them can "
                          f"run code; convert once with: python -c \"import torch; from safetensors.torch import "
                          f"save_file; save_file(torch.load('{os.path.basename(path)}', weights_only=True), "
                          f"'{os.path.splitext(os.path.basename(path))[0]}.safetensors')\"")
    if lower.endswith(".safetensors"):
        return load_safetensors(path)
    if lower.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: np.array(npz[k]) for k in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise ParityError(f"{path}: cannot read {what} npz ({exc.__class__.__name__}: "
                              f"{' '.join(str(exc).split())[:120]}); re-save it with numpy.savez") from None
    raise ParityError(f"{path}: unsupported {what} format; use .safetensors or .npz")
