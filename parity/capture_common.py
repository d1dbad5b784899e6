"""Framework-agnostic probe capture driven by ``parity.probemap.CaptureSpec`` (no model, no framework here).

``CaptureBase`` is the context manager behind ``parity.capture_torch.TorchCapture`` and
``parity.capture_ms.MsCapture``. On entry it checks that every spec's module path exists in the model
(``check_module_paths``), then installs, per call site (the specs sharing one are grouped):

* ``method`` unset: a forward pre-hook (``take: input``) or forward hook (``take: output``) on the module, both
  with kwargs, so an ``arg`` is resolved from positional and keyword arguments alike by binding them to the
  signature of the module's forward (``forward`` in torch, ``construct`` in MindSpore);
* ``method`` set, ``static`` false: a wrapper installed as an *instance* attribute over the bound method (the
  instance's own lookup ``self.<method>(...)`` finds it first);
* ``method`` set, ``static`` true: a replacement ``staticmethod`` on the class that defines it in the module's
  MRO, so calls written as ``Class.method(...)`` (looked up at call time) go through it.

Calls are filtered by ``where`` (bound argument values must equal the given ones) and the captured value is
narrowed by ``select`` (each step indexes a tuple/list or keys a dict). Each probe is recorded once per forward
of the root module: a module called several times reports its first matching call. Everything is removed on
exit, exceptions included. Hooks never modify a tensor: values are copied to numpy by the subclass and handed to
``on_probe(name, array, dtype_name)``, so a forward with capture on is bit-identical to one with it off.

``specs`` are ``parity.probemap.CaptureItem``s (a probe name and the capture rule on the side being run).
Subclasses supply the framework-specific pieces: the named submodules, tensor -> numpy conversion, the scalar value of a tensor (for ``where``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable

import numpy as np

from parity.errors import ParityError
from parity.probemap import CaptureItem, CaptureSpec, check_module_paths

OnProbe = Callable[[str, np.ndarray, str], None]

# "No value": the output in a dispatch before the call, an argument the call did not bind.
MISSING = object()


class _Group:
    """The specs attached to one call site (module hook, instance method or static method)."""

    def __init__(self, signature: inspect.Signature):
        self.signature = signature
        self.specs: list[CaptureItem] = []


def _add_to_group(groups: dict, key: Any, spec: CaptureItem, signature_of: Callable[[], inspect.Signature]) -> None:
    if key not in groups:
        groups[key] = _Group(signature_of())
    groups[key].specs.append(spec)


class CaptureBase:
    """Context manager capturing ``specs`` (a list of ``CaptureItem``) from ``model`` into ``on_probe``."""

    framework: str  # as named by check_module_paths: "torch" or "mindspore"
    forward_name: str  # the method a module call runs ("forward", "construct")
    module_word: str  # what error messages call a module ("module", "cell")

    def __init__(self, model: Any, specs: list[CaptureItem], on_probe: OnProbe,
                 dtype_name: Callable[[Any], str] | None = None):
        self.model = model
        self.dtype_name = dtype_name
        self.specs = list(specs)
        self.on_probe = on_probe
        self._handles: list[Any] = []
        self._restore: list[Callable[[], None]] = []
        self._seen: set[str] = set()
        self._active = False

    # --- framework hooks ---------------------------------------------------------------------------------
    def _named_submodules(self) -> dict[str, Any]:
        """Every submodule of the model by dotted path ("" = the root)."""
        raise NotImplementedError

    def _is_submodule(self, value: Any) -> bool:
        raise NotImplementedError

    def _to_numpy(self, value: Any) -> tuple[np.ndarray, str]:
        """A numpy copy of a captured tensor (or scalar) and its dtype name; TypeError if it is neither."""
        raise NotImplementedError

    def _scalar_value(self, value: Any) -> Any:
        """What ``where`` compares: a one-element tensor's Python value, MISSING for a larger tensor, else
        ``value`` itself."""
        raise NotImplementedError

    def _select_step(self, value: Any, step: Any) -> Any:
        return value[step]

    def _check_can_capture(self) -> None:
        """Raise if the framework cannot run hooks right now."""

    # torch.nn.Module and mindspore.nn.Cell share the hook registration API.
    def _hook_root_forward_start(self, hook: Callable) -> Any:
        return self.model.register_forward_pre_hook(hook)

    def _hook_module_call(self, module: Any, take: str, group: _Group) -> Any:
        if take == "input":
            def pre_hook(mod, args, kwargs):
                self._dispatch(group, args, kwargs, MISSING)
            return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def post_hook(mod, args, kwargs, output):
            self._dispatch(group, args, kwargs, output)
        return module.register_forward_hook(post_hook, with_kwargs=True)

    # --- context manager ---------------------------------------------------------------------------------
    def __enter__(self):
        if self._active:
            raise RuntimeError(f"{type(self).__name__} is already active")
        self._check_can_capture()
        modules = self._named_submodules()
        check_module_paths(self.specs, set(modules), self.framework)
        try:
            # Reset "recorded once" bookkeeping at the start of every root forward; registered first so it
            # runs before any other root pre-hook of ours.
            self._handles.append(self._hook_root_forward_start(self._reset_seen))
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

    def _reset_seen(self, module, args):
        self._seen.clear()

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        while self._restore:
            self._restore.pop()()

    # --- per call ------------------------------------------------------------------------------------------
    def _capture_of(self, spec: CaptureItem) -> CaptureSpec:
        return spec.capture

    def _call_site(self, cap: CaptureSpec) -> str:
        return f"{cap.module or '(root)'}.{cap.method or self.forward_name}"

    def _dispatch(self, group: _Group, args: tuple, kwargs: dict, output: Any) -> None:
        """Run the specs of ``group`` for one call (``output`` is MISSING before the call)."""
        bound = None
        for spec in group.specs:
            if spec.name in self._seen:
                continue
            cap = self._capture_of(spec)
            if (cap.take == "output") == (output is MISSING):
                continue  # input specs run before the call, output specs after it
            if cap.where or cap.take == "input":
                if bound is None:
                    bound = self._bind(group, args, kwargs, spec)
                if any(not self._matches(bound.get(k, MISSING), v) for k, v in cap.where.items()):
                    continue
            if cap.take == "input":
                if cap.arg not in bound:
                    raise ParityError(f"probe {spec.name}: argument {cap.arg!r} is not a parameter of "
                                      f"{self._call_site(cap)}; fix 'arg' in the probe map")
                self._emit(spec, bound[cap.arg])
            else:
                self._emit(spec, output)

    def _bind(self, group: _Group, args: tuple, kwargs: dict, spec: CaptureItem) -> dict:
        try:
            ba = group.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ParityError(f"probe {spec.name}: cannot match the call's arguments to the signature of "
                              f"{self._call_site(self._capture_of(spec))} ({exc})") from None
        ba.apply_defaults()
        out = dict(ba.arguments)
        # flatten **kwargs so 'arg'/'where' can name keyword-only extras too
        for name, param in group.signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and name in out:
                for k, v in out.pop(name).items():
                    out.setdefault(k, v)
        return out

    def _matches(self, value: Any, expected: Any) -> bool:
        value = self._scalar_value(value)
        if value is MISSING:
            return False
        try:
            return bool(value == expected)
        except Exception:  # noqa: BLE001 - an incomparable value simply does not match
            return False

    def _select(self, value: Any, select: Iterable, probe: str) -> Any:
        for step in select:
            try:
                value = self._select_step(value, step)
            except (KeyError, IndexError, TypeError) as exc:
                raise ParityError(f"probe {probe}: cannot select {step!r} from a {type(value).__name__} "
                                  f"({exc.__class__.__name__}); fix 'select' in the probe map") from None
        return value

    def _emit(self, spec: CaptureItem, value: Any) -> None:
        if spec.name in self._seen:
            return
        cap = self._capture_of(spec)
        value = self._select(value, cap.select, spec.name)
        if value is None:
            raise ParityError(f"probe {spec.name}: the captured value is None ({self.module_word} "
                              f"{cap.module!r}); pass that input or fix the probe map")
        try:
            arr, dtype = self._to_numpy(value)
        except TypeError as exc:
            raise ParityError(f"probe {spec.name}: captured a {type(value).__name__}, not a tensor ({exc}); "
                              f"fix 'select' in the probe map") from None
        self._seen.add(spec.name)
        self.on_probe(spec.name, arr, dtype)

    # --- installation ----------------------------------------------------------------------------------
    def _install(self, modules: dict[str, Any]) -> None:
        hook_groups: dict[tuple[str, str], _Group] = {}
        method_groups: dict[tuple[str, str], _Group] = {}
        static_groups: dict[tuple[type, str], _Group] = {}
        for spec in self.specs:
            cap = self._capture_of(spec)
            module = modules[cap.module]
            if cap.method is None:
                _add_to_group(hook_groups, (cap.module, cap.take), spec,
                              lambda: inspect.signature(getattr(module, self.forward_name)))
            elif cap.static:
                owner = self._static_owner(module, cap.method, spec)
                _add_to_group(static_groups, (owner, cap.method), spec,
                              lambda: inspect.signature(owner.__dict__[cap.method].__func__))
            else:
                method = self._instance_method(module, cap.method, spec)
                _add_to_group(method_groups, (cap.module, cap.method), spec, lambda: inspect.signature(method))

        for (path, take), group in hook_groups.items():
            self._handles.append(self._hook_module_call(modules[path], take, group))
        for (path, name), group in method_groups.items():
            self._wrap_instance_method(modules[path], name, group)
        for (owner, name), group in static_groups.items():
            self._wrap_static_method(owner, name, group)

    def _instance_method(self, module: Any, name: str, spec: CaptureItem) -> Callable:
        method = getattr(module, name, None)
        if not callable(method) or self._is_submodule(method):
            raise ParityError(f"probe {spec.name}: {self._capture_of(spec).module or '(root)'} has no method "
                              f"{name!r}; fix the probe map or the model")
        return method

    def _static_owner(self, module: Any, name: str, spec: CaptureItem) -> type:
        for klass in type(module).__mro__:
            if name in klass.__dict__:
                if not isinstance(klass.__dict__[name], staticmethod):
                    raise ParityError(f"probe {spec.name}: {klass.__name__}.{name} is not a staticmethod; "
                                      f"set 'static': false in the probe map")
                return klass
        raise ParityError(f"probe {spec.name}: {type(module).__name__} ({self.module_word} "
                          f"{self._capture_of(spec).module!r}) has no static method {name!r}; "
                          f"fix the probe map or the model")

    def _dispatching(self, group: _Group, func: Callable) -> Callable:
        """``func`` wrapped to dispatch ``group`` before and after each call."""
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            self._dispatch(group, args, kwargs, MISSING)
            out = func(*args, **kwargs)
            self._dispatch(group, args, kwargs, out)
            return out
        return wrapper

    def _wrap_instance_method(self, module: Any, name: str, group: _Group) -> None:
        had_instance_attr = name in module.__dict__
        previous = module.__dict__.get(name)
        object.__setattr__(module, name, self._dispatching(group, getattr(module, name)))

        def restore():
            if had_instance_attr:
                object.__setattr__(module, name, previous)
            else:
                module.__dict__.pop(name, None)
        self._restore.append(restore)

    def _wrap_static_method(self, owner: type, name: str, group: _Group) -> None:
        original = owner.__dict__[name]
        setattr(owner, name, staticmethod(self._dispatching(group, original.__func__)))
        self._restore.append(lambda: setattr(owner, name, original))
