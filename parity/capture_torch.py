"""Generic probe capture on a PyTorch model, driven by ``parity.probemap.CaptureSpec`` (no model knowledge here).

``TorchCapture(model, specs, on_probe)`` is a context manager. On entry it checks that every spec's module path
exists in the model, then installs, per spec:

* ``method`` unset: a forward pre-hook (``take: input``) or forward hook (``take: output``) on the module,
  both with kwargs, so an ``arg`` is resolved from positional and keyword arguments alike through
  ``inspect.signature(module.forward).bind``;
* ``method`` set, ``static`` false: a wrapper installed as an *instance* attribute over the bound method
  (the instance's own lookup ``self.<method>(...)`` finds it first);
* ``method`` set, ``static`` true: a replacement ``staticmethod`` on the class that defines it in the
  module's MRO, so calls written as ``Class.method(...)`` (looked up at call time) go through it.

Calls are filtered by ``where`` (bound argument values must equal the given ones) and the captured value is
narrowed by ``select`` (each step indexes a tuple/list or keys a dict; ``0`` on an output object with a
``.sample`` attribute, like diffusers' model outputs, takes ``.sample``). Each probe is recorded once per
forward of the root module: a module called several times reports its first matching call.

Everything is removed on exit, exceptions included. Hooks never modify a tensor: values are detached, copied to
CPU numpy (bfloat16 as exact float32 with dtype name ``"bfloat16"``) and handed to
``on_probe(name, array, dtype_name)``, so a forward with capture on is bit-identical to one with it off.

torch is imported here and only here: the rest of ``parity`` stays importable without it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable

import numpy as np
import torch

from parity.errors import ParityError
from parity.probemap import ProbeSpec, check_module_paths

OnProbe = Callable[[str, np.ndarray, str], None]

_MISSING = object()


def module_paths(model: torch.nn.Module) -> set[str]:
    """Dotted names of all submodules ("" = the root), as in ``named_modules()``."""
    return {name for name, _ in model.named_modules()}


def dtype_name(dtype: torch.dtype) -> str:
    """Project dtype name of a torch dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return str(dtype).replace("torch.", "")


def to_numpy(value: Any) -> tuple[np.ndarray, str]:
    """A detached CPU numpy copy of a tensor (or scalar) and its dtype name; bfloat16 becomes exact float32."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        name = dtype_name(t.dtype)
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        arr = t.to("cpu").numpy().copy()
        return arr, name
    arr = np.array(value)
    if arr.dtype == object:
        raise TypeError(f"cannot convert a {type(value).__name__} to an array")
    return arr, str(arr.dtype)


def _matches(value: Any, expected: Any) -> bool:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return False
        value = value.item()
    try:
        return bool(value == expected)
    except Exception:  # noqa: BLE001 - an incomparable value simply does not match
        return False


def _select(value: Any, select: Iterable, probe: str) -> Any:
    for step in select:
        try:
            if hasattr(value, "sample") and not isinstance(value, (tuple, list, dict, torch.Tensor)) and step == 0:
                value = value.sample
            elif isinstance(value, dict):
                value = value[step]
            else:
                value = value[step]
        except (KeyError, IndexError, TypeError) as exc:
            raise ParityError(f"probe {probe}: cannot select {step!r} from a {type(value).__name__} "
                              f"({exc.__class__.__name__}); fix 'select' in the probe map") from None
    return value


class _Group:
    """The specs attached to one call site (module hook, instance method or static method)."""

    def __init__(self, signature: inspect.Signature | None):
        self.signature = signature
        self.specs: list[ProbeSpec] = []


class TorchCapture:
    """Context manager capturing ``specs`` (a list of ``ProbeSpec``) from ``model`` into ``on_probe``."""

    def __init__(self, model: torch.nn.Module, specs: list[ProbeSpec], on_probe: OnProbe):
        self.model = model
        self.specs = list(specs)
        self.on_probe = on_probe
        self._handles: list[Any] = []
        self._restore: list[Callable[[], None]] = []
        self._seen: set[str] = set()
        self._active = False

    # ------------------------------------------------------------------------------------------------------
    def __enter__(self) -> "TorchCapture":
        if self._active:
            raise RuntimeError("TorchCapture is already active")
        check_module_paths(self.specs, module_paths(self.model), "torch")
        modules = dict(self.model.named_modules())
        try:
            # Reset "recorded once" bookkeeping at the start of every root forward; registered first so it
            # runs before any other root pre-hook of ours.
            self._handles.append(self.model.register_forward_pre_hook(self._reset_seen))
            self._install(modules)
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._remove()
        self._active = False

    def reset(self) -> None:
        """Forget which probes were recorded (they are recorded again on the next matching call)."""
        self._seen.clear()

    # ------------------------------------------------------------------------------------------------------
    def _reset_seen(self, module, args):
        self._seen.clear()

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        while self._restore:
            self._restore.pop()()

    def _emit(self, spec: ProbeSpec, value: Any) -> None:
        if spec.name in self._seen:
            return
        value = _select(value, spec.capture.select, spec.name)
        if value is None:
            raise ParityError(f"probe {spec.name}: the captured value is None (module "
                              f"{spec.capture.module!r}); pass that input or fix the probe map")
        try:
            arr, name = to_numpy(value)
        except TypeError as exc:
            raise ParityError(f"probe {spec.name}: captured a {type(value).__name__}, not a tensor ({exc}); "
                              f"fix 'select' in the probe map") from None
        self._seen.add(spec.name)
        self.on_probe(spec.name, arr, name)

    def _dispatch(self, group: _Group, args: tuple, kwargs: dict, output: Any) -> None:
        """Run the specs of ``group`` for one call (``output`` is _MISSING for pre-hooks)."""
        bound = None
        for spec in group.specs:
            if spec.name in self._seen:
                continue
            cap = spec.capture
            if cap.take == "output" and output is _MISSING:
                continue
            if cap.take == "input" and output is not _MISSING:
                continue
            if cap.where or cap.take == "input":
                if bound is None:
                    bound = self._bind(group, args, kwargs, spec)
                if any(not _matches(bound.get(k, _MISSING), v) for k, v in cap.where.items()):
                    continue
            if cap.take == "input":
                if cap.arg not in bound:
                    raise ParityError(f"probe {spec.name}: argument {cap.arg!r} is not a parameter of "
                                      f"{cap.module or '(root)'}.{cap.method or 'forward'}; fix 'arg' in the probe map")
                self._emit(spec, bound[cap.arg])
            else:
                self._emit(spec, output)

    @staticmethod
    def _bind(group: _Group, args: tuple, kwargs: dict, spec: ProbeSpec) -> dict:
        try:
            ba = group.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ParityError(f"probe {spec.name}: cannot match the call's arguments to the signature of "
                              f"{spec.capture.module or '(root)'}.{spec.capture.method or 'forward'} ({exc})") from None
        ba.apply_defaults()
        out = dict(ba.arguments)
        # flatten **kwargs so 'arg'/'where' can name keyword-only extras too
        for name, param in group.signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and name in out:
                extra = out.pop(name)
                for k, v in extra.items():
                    out.setdefault(k, v)
        return out

    # ------------------------------------------------------------------------------------------------------
    def _install(self, modules: dict[str, torch.nn.Module]) -> None:
        hook_groups: dict[tuple[str, str], _Group] = {}
        method_groups: dict[tuple[str, str], _Group] = {}
        static_groups: dict[tuple[type, str], _Group] = {}
        for spec in self.specs:
            cap = spec.capture
            module = modules[cap.module]
            if cap.method is None:
                key = (cap.module, cap.take)
                if key not in hook_groups:
                    hook_groups[key] = _Group(inspect.signature(module.forward))
                hook_groups[key].specs.append(spec)
            elif cap.static:
                owner = self._static_owner(module, cap.method, spec)
                key = (owner, cap.method)
                if key not in static_groups:
                    static_groups[key] = _Group(inspect.signature(owner.__dict__[cap.method].__func__))
                static_groups[key].specs.append(spec)
            else:
                bound_method = getattr(module, cap.method, None)
                if not callable(bound_method) or isinstance(bound_method, torch.nn.Module):
                    raise ParityError(f"probe {spec.name}: {cap.module or '(root)'} has no method {cap.method!r}; "
                                      f"fix the probe map or the model")
                key = (cap.module, cap.method)
                if key not in method_groups:
                    method_groups[key] = _Group(inspect.signature(bound_method))
                method_groups[key].specs.append(spec)

        for (path, take), group in hook_groups.items():
            module = modules[path]
            if take == "input":
                def pre_hook(mod, args, kwargs, _g=group):
                    self._dispatch(_g, args, kwargs, _MISSING)
                self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                def post_hook(mod, args, kwargs, output, _g=group):
                    self._dispatch(_g, args, kwargs, output)
                self._handles.append(module.register_forward_hook(post_hook, with_kwargs=True))

        for (path, name), group in method_groups.items():
            self._wrap_instance_method(modules[path], name, group)

        for (owner, name), group in static_groups.items():
            self._wrap_static_method(owner, name, group)

    @staticmethod
    def _static_owner(module: torch.nn.Module, name: str, spec: ProbeSpec) -> type:
        for klass in type(module).__mro__:
            if name in klass.__dict__:
                if not isinstance(klass.__dict__[name], staticmethod):
                    raise ParityError(f"probe {spec.name}: {klass.__name__}.{name} is not a staticmethod; "
                                      f"set 'static': false in the probe map")
                return klass
        raise ParityError(f"probe {spec.name}: {type(module).__name__} (module {spec.capture.module!r}) has no "
                          f"static method {name!r}; fix the probe map or the model")

    def _wrap_instance_method(self, module: torch.nn.Module, name: str, group: _Group) -> None:
        original = getattr(module, name)
        had_instance_attr = name in module.__dict__
        previous = module.__dict__.get(name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            self._dispatch(group, args, kwargs, _MISSING)
            out = original(*args, **kwargs)
            self._dispatch(group, args, kwargs, out)
            return out

        object.__setattr__(module, name, wrapper)

        def restore():
            if had_instance_attr:
                object.__setattr__(module, name, previous)
            else:
                module.__dict__.pop(name, None)
        self._restore.append(restore)

    def _wrap_static_method(self, owner: type, name: str, group: _Group) -> None:
        original_sm = owner.__dict__[name]
        func = original_sm.__func__

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            self._dispatch(group, args, kwargs, _MISSING)
            out = func(*args, **kwargs)
            self._dispatch(group, args, kwargs, out)
            return out

        setattr(owner, name, staticmethod(wrapper))

        def restore():
            setattr(owner, name, original_sm)
        self._restore.append(restore)
