"""The ``mindone-opensora-pku`` plug-in: mindone's MindSpore ``OpenSoraT2V_v1_3`` as a parity subject.

The model is mindone's port of Open-Sora-Plan v1.3 (``examples/opensora_pku/opensora/models/diffusion/opensora/
modeling_opensora.py`` with ``modules.py``, on the ``mindone`` package of the same checkout). It is loaded at run
time from the checkout named by ``--subject-path`` (the checkout root); nothing of it is copied or edited, and
the checkout's git commit goes into the report. Facts it relies on (mindone v0.5.0, MindSpore 2.10):

- parameter names and shapes equal the reference's, so the reference's weights load with ``strict_load=True``;
- its config takes ``sample_size_h/_w/_t``, ``FA_dtype``, ``use_recompute``, ``num_no_recompute`` and rejects
  ``sample_size`` / ``_class_name`` (``CONFIG_MAPPING`` below);
- it returns the output tensor, and block hidden states are (S, B, D) like the reference's;
- attention goes through ``npu_config.run_attention`` -> ``ms_flash_attention``: q (B', Sq, N*d), k/v
  (B', Sk, N*d) batch-first with heads packed (B' = sparse_n*B in Skiparse blocks), a 0/1 keep mask
  (B', 1, Sq, Sk) in Skiparse-prepared blocks and (B, N, 1, L) in dense ones; on Ascend the kernel flips the
  mask, pads head_dim and casts q/k/v to ``FA_dtype`` (bf16 by default, even in an fp32 model);
- its masks are 0/1 keep masks (Skiparse padding 0, not told apart from masked keys) and it builds the Skiparse
  masks only with ``sparse1d=True``, for ``sparse_n`` in (1, config sparse_n).

On CPU it cannot run as shipped; ``PATCHES`` lists every runtime substitution, why, and when it applies. They
are installed only inside the plug-in's own calls (import, build, forward, isolated step) and taken out again;
on Ascend only the import-time ones apply and mindone's flash path runs as it is.

Size: one plug-in file (the contract's worked example): config mapping, labelled runtime patches, overlay and
teacher-forced steps in mindone's conventions belong together and to nothing else.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
import types
from dataclasses import dataclass

import numpy as np

from parity.errors import ParityError
from parity.plugins.base import MindSporePlugin
from parity.plugins.contract import BuildRequest, OptionSpec
from parity.teacher import TeacherStep

PLUGIN_NAME = "mindone-opensora-pku"
EXAMPLE_DIR = os.path.join("examples", "opensora_pku")       # holds mindone's ``opensora`` package
MODEL_MODULE = "opensora.models.diffusion.opensora.modeling_opensora"
MODEL_FILE = os.path.join(EXAMPLE_DIR, *MODEL_MODULE.split(".")) + ".py"
MODEL_CLASS = "OpenSoraT2V_v1_3"
# packages whose __init__ would import far more than the DiT (the VAE, the model registry): bound to the
# checkout's directories without running their __init__ (see PATCHES)
BARE_PACKAGES = ("opensora", "opensora.models", "opensora.models.diffusion")

# ---- config: the reference's config.json keys -> mindone's constructor keywords ---------------------------
# Same name, same meaning:
SAME_KEYS = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "dropout",
             "cross_attention_dim", "attention_bias", "patch_size", "patch_size_t", "activation_fn",
             "only_cross_attention", "double_self_attention", "upcast_attention", "norm_elementwise_affine",
             "norm_eps", "caption_channels", "interpolation_scale_h", "interpolation_scale_w", "interpolation_scale_t",
             "sparse1d", "sparse_n", "sample_size_t")
# Informational keys mindone's __init__ rejects (upstream's config.json carries them; neither model reads them):
DROPPED_KEYS = ("_class_name", "_diffusers_version")
# ``sample_size`` (informational, unused in forward) becomes mindone's ``sample_size_h`` / ``sample_size_w``;
# a config that carries those already (the released config.json does) keeps them.
SAMPLE_SIZE_KEYS = ("sample_size", "sample_size_h", "sample_size_w")
# mindone-only keywords, fixed for inference: no recomputation (a training memory trade), FA_dtype from the
# ``fa_dtype`` option (only Ascend's flash kernel reads it).
FIXED_KWARGS = {"use_recompute": False, "num_no_recompute": 0}
FA_DTYPES = ("bf16", "fp16")


def mindone_kwargs(config: dict, fa_dtype) -> dict:
    """mindone's ``OpenSoraT2V_v1_3(**kwargs)`` for the reference's ``config`` (``OpenSoraConfig.to_dict()``
    form). Strict: a key with no counterpart is a ParityError, never dropped silently."""
    unknown = sorted(set(config) - set(SAME_KEYS) - set(DROPPED_KEYS) - set(SAMPLE_SIZE_KEYS))
    if unknown:
        raise ParityError(f"{PLUGIN_NAME}: config key(s) {', '.join(unknown)} have no counterpart in mindone's "
                          f"{MODEL_CLASS}; extend CONFIG mapping in ms_impl/mindone_pku.py if mindone gained them")
    kwargs = {k: config[k] for k in SAME_KEYS if k in config}
    h, w = _sample_size_hw(config)
    kwargs.update(sample_size_h=h, sample_size_w=w, FA_dtype=fa_dtype, **FIXED_KWARGS)
    return kwargs


def _sample_size_hw(config: dict):
    if "sample_size_h" in config or "sample_size_w" in config:
        return config.get("sample_size_h"), config.get("sample_size_w")
    size = config.get("sample_size")
    if size is None or isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return size[0], size[1]
    raise ParityError(f"{PLUGIN_NAME}: config sample_size {size!r} is neither an int nor [h, w]; fix the config")


# ---- runtime patches ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuntimePatch:
    name: str
    target: str        # what is replaced
    replacement: str   # what stands in for it
    why: str
    applies: str       # when (phase and device)

    def describe(self) -> dict:
        return {"name": self.name, "target": self.target, "replacement": self.replacement, "why": self.why,
                "applies": self.applies}

    def note(self) -> str:
        return f"runtime patch {self.name}: {self.target} -> {self.replacement} ({self.applies})"


PATCHES = {p.name: p for p in (
    RuntimePatch("bare-packages", "packages opensora, opensora.models, opensora.models.diffusion",
                 "package objects bound to the checkout's directories, their __init__ not run",
                 "their __init__ import the VAE and the model registry, which the DiT does not need",
                 "import, every device"),
    RuntimePatch("pandas-stub", "module pandas", "a stub in sys.modules while opensora.npu_config is imported",
                 "npu_config imports pandas for print_ops_dtype_info alone (any use of the stub raises)",
                 "import, when pandas is not installed"),
    RuntimePatch("flash-check", "Attention.set_use_memory_efficient_attention_xformers", "skipped",
                 "Attention.__init__ calls it and it raises off Ascend; it only checks the device and sets head-dim "
                 "padding fields that OpenSoraAttnProcessor2_0 never reads", "build, off Ascend"),
    RuntimePatch("math-attention", "npu_config.ms_flash_attention",
                 "math attention in mindone's convention (math_attention)",
                 "FlashAttentionScore runs on Ascend only, and mindone's own non-flash fallback is wrong for this "
                 "caller (it does not split the packed heads and masks the keys it should keep); the substitute "
                 "takes packed heads and a 1 = keep mask, uses mindone's scale 1/sqrt(head_dim) and adds "
                 "npu_config.inf_float (-10000, mindone's value) to masked scores",
                 "forward and isolated steps; attention=math|math-fa-dtype, the default off Ascend"),
    RuntimePatch("arange", "mindspore.mint.arange", "ops.arange",
                 "no CPU kernel (Arange) in MindSpore 2.10; Range gives the same values (RoPE positions, timestep "
                 "sinusoid)", "build, forward, isolated steps on CPU"),
    RuntimePatch("gelu", "mindspore.mint.nn.functional.gelu (also behind mint.nn.GELU)", "ops.gelu",
                 "no CPU kernel (GeluExt) in MindSpore 2.10; the GeLU kernel computes the same tanh formula (within "
                 "2.4e-7 of torch's) for the FFN and the caption projection", "forward, isolated steps on CPU"),
    RuntimePatch("pad", "mindspore.mint.nn.functional.pad", "ops.pad (constant mode)",
                 "no CPU kernel (ConstantPadND) in MindSpore 2.10; for the Skiparse padding of masks and tokens",
                 "forward, isolated steps on CPU"),
)}
OP_PATCHES = ("arange", "gelu", "pad")   # CPU only
ATTENTION_CHOICES = ("math", "math-fa-dtype", "flash")


def _cpu_arange(start=0, end=None, step=1, *, dtype=None):
    from mindspore import ops
    return ops.arange(start, end, step, dtype=dtype)


def _cpu_gelu(input, approximate="none"):  # noqa: A002  (mint's argument name)
    from mindspore import ops
    return ops.gelu(input, approximate=approximate)


def _cpu_pad(input, pad, mode="constant", value=None):  # noqa: A002
    from mindspore import ops
    if mode != "constant":
        raise NotImplementedError(f"{PLUGIN_NAME}: the CPU pad substitute covers mode 'constant' only, not {mode!r}")
    return ops.pad(input, tuple(pad), mode="constant", value=0 if value is None else value)


def keep_from_mask(mask):
    """mindone's mask sense for its flash call: 1 (or True) = attend. Mirrors the kernel's flip
    ``discard = ~mask if bool else 1 - mask`` (anything but exactly 1 is discarded)."""
    import mindspore as ms
    return mask if mask.dtype == ms.bool_ else mask == 1


def math_attention(query, key, value, attention_mask, head_num, scale, input_layout="BSH", attention_dropout=0.0,
                   *, fill: float, round_to=None):
    """``npu_config.ms_flash_attention`` as plain math on MindSpore ops with CPU kernels.

    query (B', Sq, N*d), key/value (B', Sk, N*d), heads packed; ``attention_mask`` 1 = keep, broadcastable to
    (B', N, Sq, Sk); masked scores get ``fill`` added. ``round_to`` (a MindSpore dtype) rounds q/k/v and the
    result to it, as the Ascend kernel's casts to ``FA_dtype`` do (its internal roundings are not modelled)."""
    import mindspore as ms
    from mindspore import ops

    if input_layout not in ("BSH", "BNSD"):
        raise ValueError(f"input_layout must be in ['BSH', 'BNSD'], but get {input_layout}.")
    if attention_dropout:
        raise ValueError("the math attention substitute runs inference only (attention_dropout must be 0)")
    out_dtype = query.dtype
    b, sq, inner = query.shape
    sk = key.shape[1]
    d = inner // head_num

    def heads(x, length):
        if round_to is not None:
            x = x.astype(round_to).astype(out_dtype)
        return x.reshape(b, length, head_num, d).swapaxes(1, 2)   # (B', N, S, d)

    q, k, v = heads(query, sq), heads(key, sk), heads(value, sk)
    scores = ops.matmul(q, k.swapaxes(-1, -2)) * scale
    if attention_mask is not None:
        discard = ops.logical_not(keep_from_mask(attention_mask))
        scores = scores + discard.astype(scores.dtype) * fill
    probs = ops.softmax(scores, axis=-1)
    out = ops.matmul(probs, v).swapaxes(1, 2).reshape(b, sq, inner)
    if round_to is not None:
        out = out.astype(round_to)
    return out.astype(out_dtype)


@contextlib.contextmanager
def _swapped(obj, attr: str, value):
    """``obj.attr = value`` for the duration; restored (or deleted again, if it was inherited) afterwards."""
    had_own = attr in getattr(obj, "__dict__", {})
    before = getattr(obj, attr) if had_own else None
    setattr(obj, attr, value)
    try:
        yield
    finally:
        if had_own:
            setattr(obj, attr, before)
        else:
            delattr(obj, attr)


def _skip_flash_check(self, use_memory_efficient_attention_xformers, attention_op=None):
    """Stands in for Attention.set_use_memory_efficient_attention_xformers off Ascend (PATCHES['flash-check'])."""


class _PandasStub(types.ModuleType):
    def __getattr__(self, name):
        raise ImportError(f"pandas is stubbed by the {PLUGIN_NAME} parity plug-in (only opensora.npu_config's "
                          f"print_ops_dtype_info uses it); install pandas to use pandas.{name}")


# ---- loading mindone from the checkout ------------------------------------------------------------------
def check_checkout(source: str | None) -> str:
    """The checkout root, validated; ParityError (one line) otherwise."""
    if not source:
        raise ParityError(f"--subject {PLUGIN_NAME} needs --subject-path DIR: the root of a mindone checkout "
                          f"(holding mindone/ and {MODEL_FILE})")
    root = os.path.realpath(source)
    if not os.path.isfile(os.path.join(root, MODEL_FILE)) or not os.path.isfile(os.path.join(root, "mindone",
                                                                                               "__init__.py")):
        raise ParityError(f"{source}: not a mindone checkout (no {MODEL_FILE} or mindone/__init__.py); pass the "
                          f"checkout root with --subject-path")
    return root


def _module_dir(module) -> str | None:
    paths = list(getattr(module, "__path__", []) or [])
    if paths:
        return os.path.realpath(paths[0])
    f = getattr(module, "__file__", None)
    return os.path.realpath(os.path.dirname(f)) if f else None


def _refuse_foreign(name: str, expected_dir: str) -> None:
    module = sys.modules.get(name)
    if module is None:
        return
    where = _module_dir(module)
    if where != os.path.realpath(expected_dir):
        raise ParityError(f"{PLUGIN_NAME}: a different {name!r} package is already imported in this process "
                          f"({where or 'unknown location'}), not the checkout's {expected_dir}; run the mindone "
                          f"comparison in its own process")


def import_mindone(root: str) -> types.ModuleType:
    """mindone's ``modeling_opensora`` module from the checkout at ``root``: ``mindone`` from ``root`` (put on
    sys.path), ``opensora`` bound to ``root/examples/opensora_pku/opensora`` (never via sys.path, so it cannot
    shadow another ``opensora``). Refuses if either name is already taken by something else."""
    example = os.path.join(root, EXAMPLE_DIR)
    _refuse_foreign("mindone", os.path.join(root, "mindone"))
    _refuse_foreign("opensora", os.path.join(example, "opensora"))
    if MODEL_MODULE in sys.modules:
        return sys.modules[MODEL_MODULE]
    if root not in sys.path:
        sys.path.insert(0, root)
    for name in BARE_PACKAGES:
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [os.path.join(example, *name.split("."))]
            package.__package__ = name
            sys.modules[name] = package
    stub = importlib.util.find_spec("pandas") is None
    if stub:
        sys.modules["pandas"] = _PandasStub("pandas")
    try:
        return importlib.import_module(MODEL_MODULE)
    except ImportError as exc:
        for name in [n for n in sys.modules if n == "opensora" or n.startswith("opensora.")]:
            del sys.modules[name]   # ours (a foreign one was refused above): a later attempt starts clean
        raise ParityError(f"{root}: mindone's {MODEL_MODULE} cannot be imported ({exc}); install the plug-in's "
                          f"extra: pip install 'opensora-parity[mindone]'") from None
    finally:
        if stub and isinstance(sys.modules.get("pandas"), _PandasStub):
            del sys.modules["pandas"]


# ---- overlay --------------------------------------------------------------------------------------------
def mindone_overlay(config: dict) -> dict:
    """Where mindone's model holds each probe of ``opensora_v13`` for ``config`` (see docs/plugins.md)."""
    sparse1d, sparse_n = bool(config.get("sparse1d")), config.get("sparse_n")
    built_n = {1, sparse_n} if sparse1d else set()
    keep = {"compare": "meaning", "convention": "keep"}
    probes: dict = {}
    if sparse1d:
        # prepare_sparse_mask takes the max-pooled 0/1 masks, exactly where the reference takes its biases
        probes["attention_mask_converted"] = dict(keep)
        probes["encoder_attention_mask_converted"] = dict(keep)
    else:
        # without Skiparse, mindone hands its blocks the 0/1 masks as they are: block 0's inputs
        for name in ("attention_mask", "encoder_attention_mask"):
            probes[f"{name}_converted"] = {
                **keep, "path": f"transformer_blocks.0 ({name} input)",
                "capture": {"module": "transformer_blocks.0", "take": "input", "arg": name}}
    for n in (1, 4):
        for group in ("False", "True"):
            for name in ("attention_mask", "encoder_attention_mask"):
                probe = f"{name}_sparse_{n}_{group}"
                if n in built_n:
                    # (n*B, 1, S, S) / (n*B, 1, S, L) 0/1, repeated per query by npu_config.get_attention_mask
                    probes[probe] = dict(keep)
                elif not sparse1d:
                    probes[probe] = {"not_applicable": "mindone builds Skiparse masks only with sparse1d=True "
                                                       "(this config has sparse1d=False)"}
                else:
                    probes[probe] = {"not_applicable": f"mindone builds Skiparse masks for sparse_n in (1, "
                                                       f"{sparse_n}) only; the reference always builds 1 and 4"}
    probes["hidden_states_output"] = {"capture": {"module": "", "take": "output"}}   # a tensor, not a tuple
    return {"family": "opensora_v13", "version": 1,
            "description": f"mindone's {MODEL_CLASS} (examples/opensora_pku): the reference's module paths and "
                           f"layouts; 0/1 keep masks compared by meaning; Skiparse masks only with sparse1d; "
                           f"the output is a tensor",
            "probes": probes}


# ---- conditioning for isolated steps --------------------------------------------------------------------
def keep_from_bias(bias: np.ndarray, what: str) -> np.ndarray:
    """The reference's additive bias (n*B, heads, 1, len) (0 attend, -10000 masked, -9980 padding) as one 0/1
    keep mask per sub-batch (n*B, 1, 1, len); padding becomes 0, as in mindone."""
    bias = np.asarray(bias)
    if bias.ndim != 4 or bias.shape[2] != 1:
        raise ParityError(f"{PLUGIN_NAME}: reference {what} has shape {bias.shape}; expected (n*B, heads, 1, len)")
    if not np.array_equal(bias, np.broadcast_to(bias[:, :1], bias.shape)):
        raise ParityError(f"{PLUGIN_NAME}: reference {what} differs between heads; mindone keeps one mask per "
                          f"sub-batch and cannot be fed it")
    return (bias[:, :1] == 0).astype(np.float32)


# ---- the plug-in ----------------------------------------------------------------------------------------
class MindonePku(MindSporePlugin):
    name = PLUGIN_NAME
    families = ("opensora_v13",)
    options = {
        "attention": OptionSpec("math: the math-attention substitute in the model's dtype (default off Ascend); "
                                "math-fa-dtype: the same, with q/k/v and the result rounded to fa_dtype as mindone's "
                                "Ascend kernel casts them; flash: mindone's own FlashAttentionScore path (Ascend "
                                "only, the default there)", choices=ATTENTION_CHOICES),
        "fa_dtype": OptionSpec("mindone's FA_dtype (its default bf16): what its flash kernel computes in, and what "
                               "attention=math-fa-dtype rounds to", choices=FA_DTYPES, default="bf16"),
    }
    # the attention substitute (tests swap in a broken one to prove the comparison catches it)
    attention_fn = staticmethod(math_attention)

    def __init__(self, source: str | None = None):
        super().__init__(source)
        if source is not None:
            check_checkout(source)
        self._module = None
        self._device = None
        self._attention = None
        self._fa_dtype = None
        self._fa_option = None
        self._applied: list[str] = []

    # -- identity ------------------------------------------------------------------------------------------
    def versions(self) -> dict:
        out = super().versions()
        out["mindone"] = installed_version(self.source) or "not installed (the checkout at git_commit)"
        return out

    def describe(self) -> dict:
        out = super().describe()
        out["model"] = f"{MODEL_FILE}:{MODEL_CLASS}"
        out["attention"] = self._attention
        out["patches"] = [PATCHES[n].describe() for n in self._applied]
        out["notes"] = [PATCHES[n].note() for n in self._applied]
        if self._attention is not None:
            out["notes"].append(f"attention={self._attention}, FA_dtype={self._fa_option} (why each patch: "
                                f"subject.patches in parity.json)")
        return out

    def check_device(self, device: str) -> None:
        check_checkout(self.source)
        super().check_device(device)

    def overlay(self, family: str, config: dict):
        self.check_family(family)
        return mindone_overlay(config)

    # -- patches -------------------------------------------------------------------------------------------
    def _note(self, *names: str) -> None:
        for n in names:
            if n not in self._applied:
                self._applied.append(n)

    @contextlib.contextmanager
    def _ops_patched(self):
        """The CPU op substitutes and the attention substitute, for one build / forward / step."""
        import mindspore.mint as mint
        import mindspore.mint.nn.functional as mint_f

        with contextlib.ExitStack() as stack:
            if self._device == "CPU":
                stack.enter_context(_swapped(mint, "arange", _cpu_arange))
                stack.enter_context(_swapped(mint_f, "gelu", _cpu_gelu))
                stack.enter_context(_swapped(mint_f, "pad", _cpu_pad))
                self._note(*OP_PATCHES)
            if self._attention != "flash" and self._module is not None:
                npu_config = sys.modules["opensora.npu_config"].npu_config
                fill = float(npu_config.inf_float)
                round_to = self._fa_dtype if self._attention == "math-fa-dtype" else None
                attention_fn = self.attention_fn

                def substitute(query, key, value, attention_mask, head_num, scale, input_layout="BSH",
                               attention_dropout=0.0):
                    return attention_fn(query, key, value, attention_mask, head_num, scale, input_layout,
                                        attention_dropout, fill=fill, round_to=round_to)

                stack.enter_context(_swapped(npu_config, "ms_flash_attention", substitute))
                self._note("math-attention")
            yield

    # -- build ---------------------------------------------------------------------------------------------
    def build(self, request: BuildRequest):
        import mindspore as ms

        from ms_impl.harness import setup_context

        self.check_family(request.family)
        root = check_checkout(self.source)
        device = request.device
        self._attention = request.options.get("attention") or ("flash" if device == "Ascend" else "math")
        if self._attention == "flash" and device != "Ascend":
            raise ParityError(f"--subject-option attention=flash: mindone's flash path (FlashAttentionScore) runs on "
                              f"Ascend only; use attention=math (the default) on {device}")
        if request.precision not in ("fp32", "fp16", "bf16"):
            raise ParityError(f"{PLUGIN_NAME}: unknown precision {request.precision!r}")
        if request.precision == "bf16" and device != "Ascend":
            raise ParityError(f"{PLUGIN_NAME}: a bf16 dump needs --device Ascend: mindone runs bf16 natively (its "
                              f"model cast to bfloat16) and MindSpore 2.10 has no bf16 matmul/softmax kernels on "
                              f"{device}; compare the fp32 dump here")
        setup_context(device)
        self._device = device
        self._fa_option = request.options.get("fa_dtype") or "bf16"
        self._fa_dtype = {"bf16": ms.bfloat16, "fp16": ms.float16}[self._fa_option]
        self._module = import_mindone(root)
        self._note("bare-packages")
        if isinstance(getattr(sys.modules["opensora.npu_config"], "pd", None), _PandasStub):
            self._note("pandas-stub")
        cls = getattr(self._module, MODEL_CLASS, None)
        if cls is None:
            raise ParityError(f"{root}: {MODEL_FILE} defines no {MODEL_CLASS}; this checkout's model differs from "
                              f"mindone v0.5.0's")
        kwargs = mindone_kwargs(request.config, self._fa_dtype)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        missing = sorted(set(kwargs) - accepted)
        if missing:
            raise ParityError(f"{root}: mindone's {MODEL_CLASS} takes no {', '.join(missing)}; this checkout's model "
                              f"differs from mindone v0.5.0's (the plug-in's config mapping)")
        dtype = {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}[request.precision]
        with contextlib.ExitStack() as stack:
            if device != "Ascend":
                stack.enter_context(_swapped(self._module.Attention, "set_use_memory_efficient_attention_xformers",
                                             _skip_flash_check))
                self._note("flash-check")
            stack.enter_context(self._ops_patched())
            model = cls(**kwargs)
        load_strict(model, request.weights, dtype, root)
        model.set_train(False)
        return model

    # -- running -------------------------------------------------------------------------------------------
    def forward(self, model, family: str, inputs: dict):
        import mindspore as ms

        tensors = {}
        for name, arr in inputs.items():
            t = ms.Tensor(np.ascontiguousarray(arr))
            if name in ("hidden_states", "encoder_hidden_states"):
                t = t.astype(model.dtype)
            tensors[name] = t
        with self._ops_patched():
            return model(**tensors)

    def run_step(self, model, step: TeacherStep, teacher: dict) -> np.ndarray:
        import mindspore as ms

        from parity.capture_ms import to_numpy

        dtype = model.dtype
        grid = step.params

        def tensor(arr):
            return ms.Tensor(np.ascontiguousarray(arr)).astype(dtype)

        with self._ops_patched():
            if step.kind == "block":
                hidden = teacher["hidden_states"]                                   # (S, B, D) as mindone
                batch = hidden.shape[1]
                text = np.swapaxes(teacher["encoder_hidden_states"], 0, 1)         # (B, L, D) -> (L, B, D)
                t6 = teacher["timestep"]                                            # (B, 6D) -> (6, B, D)
                t6 = np.swapaxes(t6.reshape(batch, 6, -1), 0, 1)
                mask, text_mask = self._block_masks(model, teacher, dtype)
                out = model.transformer_blocks[step.index](
                    tensor(hidden), attention_mask=mask, encoder_hidden_states=tensor(text),
                    encoder_attention_mask=text_mask, timestep=tensor(t6),
                    frame=grid["frame"], height=grid["height"], width=grid["width"])
            elif step.kind == "output":
                hidden = np.swapaxes(teacher["hidden_states"], 0, 1)                # (S, B, D) -> (B, S, D)
                out = model._get_output_for_patched_inputs(
                    hidden_states=tensor(hidden), timestep=None, embedded_timestep=tensor(teacher["embedded_timestep"]),
                    num_frames=grid["frame"], height=grid["height"], width=grid["width"])
            else:
                raise ValueError(f"{PLUGIN_NAME}: unknown teacher step kind {step.kind!r}")
        return to_numpy(out)

    def _block_masks(self, model, teacher: dict, dtype):
        """The reference's Skiparse biases as the masks mindone's forward hands this block: with sparse1d, the
        output of its prepare_sparse_mask (keep masks repeated per query by npu_config.get_attention_mask);
        without, the pooled (B, 1, S) / (B, 1, L) keep masks as they are."""
        import mindspore as ms

        video = keep_from_bias(teacher["attention_mask"], "attention mask")           # (n*B, 1, 1, S)
        text = keep_from_bias(teacher["encoder_attention_mask"], "encoder attention mask")
        if not model.sparse1d:
            return ms.Tensor(video[:, 0]).astype(dtype), ms.Tensor(text[:, 0]).astype(dtype)
        npu_config = sys.modules["opensora.npu_config"].npu_config
        length = video.shape[-1]
        return (npu_config.get_attention_mask(ms.Tensor(video).astype(dtype), length),
                npu_config.get_attention_mask(ms.Tensor(text).astype(dtype), length))


def installed_version(source: str | None) -> str | None:
    """The version of an installed ``mindone`` distribution, if it is this checkout (an editable install of it, or
    files that resolve into it); None otherwise (a wheel of another mindone says nothing about the checkout)."""
    from importlib.metadata import PackageNotFoundError, distribution

    if not source:
        return None
    root = os.path.realpath(source)
    try:
        dist = distribution("mindone")
    except PackageNotFoundError:
        return None
    direct_url = dist.read_text("direct_url.json") or ""
    located = os.path.realpath(str(dist.locate_file(os.path.join("mindone", "__init__.py"))))
    if f"file://{root}" in direct_url or located.startswith(root + os.sep):
        return dist.version
    return None


def load_strict(model, weights, dtype, root: str) -> None:
    """Every reference weight into the parameter of the same name, every parameter filled, shapes equal; one
    ParityError line otherwise."""
    import mindspore as ms

    params = model.parameters_dict()
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    shapes = sorted(k for k in set(params) & set(weights) if tuple(params[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for v, what in
                 ((missing, "parameters without a weight"), (unexpected, "weights without a parameter"),
                  (shapes, "of other shape")) if v]
        raise ParityError(f"{root}: the reference's weights do not fit mindone's {MODEL_CLASS}: {'; '.join(parts)}; "
                          f"the checkout's model differs from the family's state dict")
    loaded = {k: ms.Parameter(ms.Tensor(np.asarray(weights[k], dtype=np.float32)).astype(dtype), name=k)
              for k in params}
    not_loaded, unused = ms.load_param_into_net(model, loaded, strict_load=True)
    if not_loaded or unused:  # pragma: no cover - the name check above rules this out
        raise ParityError(f"{root}: load_param_into_net left {len(not_loaded)} parameters unloaded and "
                          f"{len(unused)} weights unused (e.g. {(list(not_loaded) + list(unused))[:3]})")
    if dtype != ms.float32:
        model.to(dtype)


def make_plugin(source: str | None = None) -> MindonePku:
    return MindonePku(source)
