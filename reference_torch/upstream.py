"""The ``upstream`` reference plug-in: upstream Open-Sora-Plan's own ``OpenSoraT2V_v1_3`` from a user's checkout.

::

    parity dump --case tiny-sparse --reference upstream --reference-path ~/src/Open-Sora-Plan --out dumps/x

The model class is imported from ``--reference-path`` (``opensora/models/diffusion/opensora_v1_3/``; v1.3.0, or
9fa322fb which has the same model code) and runs on CPU with no file of the checkout edited or copied. What it
takes is a few *runtime shims*, each labelled, listed in ``describe()`` (so in every dump's manifest), and active
only as long as it must be:

======================================  ==================  ===========================================================
shim                                    active              why
======================================  ==================  ===========================================================
``opensora.models`` = empty package     while importing     its ``__init__`` imports the VAE wrappers (torchvision, …)
``opensora.models.diffusion`` = empty   while importing     its ``__init__`` imports the inpainting model and registries
``opensora.utils.utils`` = ``to_2tuple``  while importing   the real module imports accelerate, wandb, tensorboard, …
only                                                        and the model needs only ``to_2tuple``
``torch.backends.cuda.sdp_kernel`` =    around a forward    upstream asks SDPA for the memory-efficient kernel only,
math backend only                                           which has no CPU implementation
======================================  ==================  ===========================================================

The empty packages keep the checkout's own directories as their search path, so ``opensora_v1_3`` and
``common`` are imported from the checkout unchanged; after the import the shimmed ``sys.modules`` entries are put
back as they were. Needs upstream's pins: ``diffusers==0.30.2`` (with ``huggingface_hub==0.24.6``) and ``einops``
— the ``upstream`` extra, installed in its own virtualenv by ``make upstream-venv`` (never in ``.venv``).

Every probe sits where the family's probe map says (the map describes upstream's layout), so there is no
overlay. Inputs are handed over as ``torch-reference`` hands them (only ``encoder_hidden_states`` cast to the
model dtype), so both references give byte-identical dumps.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import types

import numpy as np

from parity.errors import ParityError
from parity.plugins.base import TorchPlugin
from parity.plugins.contract import BuildRequest
from parity.weights import state_dict_problems

UPSTREAM_MODULE = "opensora.models.diffusion.opensora_v1_3.modeling_opensora"
UPSTREAM_CLASS = "OpenSoraT2V_v1_3"
UPSTREAM_FILE = os.path.join("opensora", "models", "diffusion", "opensora_v1_3", "modeling_opensora.py")
PINNED = {"diffusers": "0.30.2", "huggingface_hub": "0.24.6"}
SHIMS = (
    {"shim": "opensora.models: empty package (the checkout's directory as its path)", "active": "while importing",
     "why": "its __init__ imports the VAE wrappers (torchvision, ...)"},
    {"shim": "opensora.models.diffusion: empty package (the checkout's directory as its path)",
     "active": "while importing", "why": "its __init__ imports the inpainting model and the model registries"},
    {"shim": "opensora.utils.utils: only to_2tuple", "active": "while importing",
     "why": "the real module imports accelerate, wandb, tensorboard, ...; the model needs only to_2tuple"},
    {"shim": "torch.backends.cuda.sdp_kernel: SDPA math backend only", "active": "around each forward",
     "why": "upstream asks for the memory-efficient kernel only, which has no CPU implementation"},
)

_CLASSES: dict[str, type] = {}   # checkout (real path) -> upstream's class, imported once per process


# ---- runtime shims ---------------------------------------------------------------------------------------------
def _empty_package(name: str, directory: str) -> types.ModuleType:
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [directory]
    module = importlib.util.module_from_spec(spec)
    module.__doc__ = f"parity's runtime shim: {name} without its __init__ (upstream's files are untouched)"
    return module


def to_2tuple(x):
    """Upstream ``opensora.utils.utils.to_2tuple``: an iterable as it is, anything else doubled."""
    import collections.abc

    return x if isinstance(x, collections.abc.Iterable) else (x, x)


def _utils_stub() -> types.ModuleType:
    module = types.ModuleType("opensora.utils.utils",
                              "parity's runtime shim: upstream's opensora.utils.utils reduced to to_2tuple")
    module.to_2tuple = to_2tuple
    return module


@contextlib.contextmanager
def import_shims(root: str):
    """The three ``sys.modules`` shims of the table above, for the length of the ``with`` block only."""
    models = os.path.join(root, "opensora", "models")
    stubs = {"opensora.models": _empty_package("opensora.models", models),
             "opensora.models.diffusion": _empty_package("opensora.models.diffusion", os.path.join(models, "diffusion")),
             "opensora.utils.utils": _utils_stub()}
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


@contextlib.contextmanager
def math_sdpa_only():
    """``torch.backends.cuda.sdp_kernel(...)``, as upstream's attention processor calls it, selects SDPA's math
    backend whatever it asks for (the table above); restored on exit."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    @contextlib.contextmanager
    def sdp_kernel(enable_flash=True, enable_math=True, enable_mem_efficient=True, enable_cudnn=True):
        with sdpa_kernel([SDPBackend.MATH]):
            yield

    cuda_backends = torch.backends.cuda
    had = "sdp_kernel" in vars(cuda_backends)
    original = vars(cuda_backends).get("sdp_kernel")
    cuda_backends.sdp_kernel = sdp_kernel
    try:
        yield
    finally:
        if had:
            cuda_backends.sdp_kernel = original
        else:
            del cuda_backends.sdp_kernel


def _check_checkout(source: str | None) -> str:
    if not source:
        raise ParityError("--reference upstream needs --reference-path DIR: a checkout of Open-Sora-Plan (v1.3, e.g. "
                          "git clone https://github.com/PKU-YuanGroup/Open-Sora-Plan)")
    root = os.path.realpath(source)
    if not os.path.isfile(os.path.join(root, UPSTREAM_FILE)):
        raise ParityError(f"{source}: not an Open-Sora-Plan v1.3 checkout (no {UPSTREAM_FILE}); pass the repository's "
                          f"top directory with --reference-path")
    return root


def upstream_class(source: str | None) -> type:
    """Upstream's ``OpenSoraT2V_v1_3`` from the checkout at ``source`` (imported with the shims, once)."""
    root = _check_checkout(source)
    if root in _CLASSES:
        return _CLASSES[root]
    for name, version in PINNED.items():
        try:
            importlib.import_module(name)
        except ImportError:
            raise ParityError(f"--reference upstream needs {name}=={version} (upstream's pin) and einops; install the "
                              f"'upstream' extra in a virtualenv of its own (make upstream-venv)") from None
    loaded = sys.modules.get(UPSTREAM_MODULE)
    if loaded is not None and not os.path.realpath(loaded.__file__).startswith(root + os.sep):
        raise ParityError(f"{source}: upstream's model is already imported from {loaded.__file__} in this process; "
                          f"use one Open-Sora-Plan checkout per process")
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        with import_shims(root):
            module = importlib.import_module(UPSTREAM_MODULE)
    except ImportError as exc:
        raise ParityError(f"{source}: importing upstream's model failed ({exc}); install the 'upstream' extra "
                          f"(diffusers==0.30.2, huggingface_hub==0.24.6, einops) — make upstream-venv") from None
    _CLASSES[root] = getattr(module, UPSTREAM_CLASS)
    return _CLASSES[root]


def upstream_init_config(cls: type, config: dict) -> dict:
    """The family config restricted to the keys upstream's ``__init__`` takes (upstream config.json keys; the
    informational ones it does not take, e.g. ``sample_size``, ``_class_name``, are left out)."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in config.items() if k in accepted}


# ---- the plug-in -----------------------------------------------------------------------------------------------
class UpstreamReference(TorchPlugin):
    name = "upstream"
    families = ("opensora_v13",)

    def versions(self) -> dict:
        out = super().versions()
        for name in ("diffusers", "huggingface_hub", "einops"):
            try:
                out[name] = importlib.import_module(name).__version__
            except ImportError:
                out[name] = None
        return out

    def describe(self) -> dict:
        return {**super().describe(), "model": f"{UPSTREAM_MODULE}.{UPSTREAM_CLASS}", "shims": [dict(s) for s in SHIMS]}

    def _from_config(self, family: str, config: dict):
        self.check_family(family)
        cls = upstream_class(self.source)
        return cls.from_config(upstream_init_config(cls, config))

    def build(self, request: BuildRequest):
        import torch

        from reference_torch.dtypes import PRECISION_DTYPES

        if request.precision not in PRECISION_DTYPES:
            raise ParityError(f"unknown precision {request.precision!r}; use one of {', '.join(PRECISION_DTYPES)}")
        dtype = PRECISION_DTYPES[request.precision]
        with torch.device("meta"):
            model = self._from_config(request.family, request.config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        problems = state_dict_problems(request.weights, expected)
        if problems:
            raise ParityError(f"weights do not fit upstream's {UPSTREAM_CLASS} for this config: {'; '.join(problems)}; "
                              f"use the config.json that belongs to these weights")
        state = {k: torch.from_numpy(np.array(request.weights[k], dtype=np.float32, order="C")).to(dtype)
                 for k in expected}
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device="cpu", dtype=dtype).eval()

    def forward(self, model, family: str, inputs: dict):
        """As ``torch-reference`` calls its model (and upstream's pipeline the DiT): the family's normalised inputs,
        ``encoder_hidden_states`` in the model dtype, ``return_dict=False``."""
        import torch

        tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in inputs.items()}
        tensors["encoder_hidden_states"] = tensors["encoder_hidden_states"].to(next(model.parameters()).dtype)
        with torch.no_grad(), math_sdpa_only():
            return model(**tensors, return_dict=False)

    def random_weights(self, family: str, config: dict, seed: int) -> dict:
        """Upstream's own initialisation under ``torch.manual_seed(seed)`` (fp32, CPU), in state-dict order."""
        import torch

        torch.manual_seed(int(seed))
        with torch.device("cpu"):
            model = self._from_config(family, config)
        return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def make_plugin(source: str | None = None) -> UpstreamReference:
    return UpstreamReference(source)
