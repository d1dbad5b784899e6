"""Generic probe capture on a MindSpore model, driven by ``parity.probemap.CaptureSpec`` (``spec.ms_capture``).

``MsCapture(model, specs, on_probe)`` is a context manager (PyNative mode only: MindSpore runs Cell hooks there).
On entry it checks that every spec's module path exists (``check_module_paths(..., "mindspore")``), then
installs, per spec:

* ``method`` unset: a forward pre-hook (``take: input``) or forward hook (``take: output``) on the cell, both
  registered ``with_kwargs=True``, so an ``arg`` is found among positional and keyword arguments alike by
  binding them to ``inspect.signature(cell.construct)``;
* ``method`` set, ``static`` false: a wrapper installed as an *instance* attribute over the bound method (the
  model's own ``self.<method>(...)`` lookup finds it first);
* ``method`` set, ``static`` true: a temporary ``staticmethod`` replacement on the class of the cell's MRO that
  defines it, so calls written ``Class.method(...)`` (looked up at call time) go through it.

Calls are filtered by ``where`` (bound argument values equal the given ones), values narrowed by ``select``
(tuple/list index or dict key per step). Each probe is reported once per forward of the root cell (its first
matching call). Everything is removed on exit, exceptions included. Hooks never change a tensor: values are
copied to numpy — floating point as float32 (float16/bfloat16 convert exactly), other dtypes as they are — and
handed to ``on_probe(name, array, dtype_name)``; ``dtype_name`` comes from the ``dtype_name`` callable given to
``MsCapture`` (default: the tensor's own dtype), which lets a harness report emulated-bf16 values as
``"bfloat16"``.

mindspore is imported here and only here within ``parity``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable

import numpy as np

import mindspore as ms
from mindspore import nn

from parity.errors import ParityError
from parity.probemap import ProbeSpec, check_module_paths

OnProbe = Callable[[str, np.ndarray, str], None]
_MISSING = object()

_DTYPE_NAMES = {
    ms.float64: "float64", ms.float32: "float32", ms.float16: "float16", ms.bfloat16: "bfloat16",
    ms.int64: "int64", ms.int32: "int32", ms.int16: "int16", ms.int8: "int8", ms.uint8: "uint8",
    ms.bool_: "bool",
}


def module_paths(model: nn.Cell) -> set[str]:
    """Dotted names of all cells ("" = the root), as in ``cells_and_names()``."""
    return {name for name, _ in model.cells_and_names()}


def dtype_name(dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).lower())


def tensor_dtype_name(value: Any) -> str:
    return dtype_name(value.dtype) if isinstance(value, ms.Tensor) else str(np.asarray(value).dtype)


def to_numpy(value: Any) -> np.ndarray:
    """Numpy copy of a tensor (floating -> float32, exact for float16/bfloat16) or scalar."""
    if isinstance(value, ms.Tensor):
        if value.dtype in (ms.bfloat16, ms.float16):
            value = value.astype(ms.float32)
        arr = np.array(value.asnumpy(), copy=True)
        return arr.astype(np.float32) if arr.dtype.kind == "f" and arr.dtype != np.float32 else arr
    arr = np.array(value)
    if arr.dtype == object:
        raise TypeError(f"cannot convert a {type(value).__name__} to an array")
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr


def _matches(value: Any, expected: Any) -> bool:
    if isinstance(value, ms.Tensor):
        if value.size != 1:
            return False
        value = value.asnumpy().item()
    try:
        return bool(value == expected)
    except Exception:  # noqa: BLE001 - an incomparable value does not match
        return False


def _select(value: Any, select: Iterable, probe: str) -> Any:
    for step in select:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError) as exc:
            raise ParityError(f"probe {probe}: cannot select {step!r} from a {type(value).__name__} "
                              f"({exc.__class__.__name__}); fix 'select' in the probe map") from None
    return value


class _Group:
    """The specs attached to one call site (cell hook, instance method or static method)."""

    def __init__(self, signature: inspect.Signature):
        self.signature = signature
        self.specs: list[ProbeSpec] = []


class MsCapture:
    """Context manager capturing ``specs`` from ``model`` into ``on_probe(name, array, dtype_name)``."""

    def __init__(self, model: nn.Cell, specs: list[ProbeSpec], on_probe: OnProbe,
                 dtype_name: Callable[[Any], str] | None = None):
        self.model = model
        self.specs = list(specs)
        self.on_probe = on_probe
        self.dtype_name = dtype_name or tensor_dtype_name
        self._handles: list[Any] = []
        self._restore: list[Callable[[], None]] = []
        self._seen: set[str] = set()
        self._active = False

    def __enter__(self) -> "MsCapture":
        if self._active:
            raise RuntimeError("MsCapture is already active")
        if ms.get_context("mode") != ms.PYNATIVE_MODE:
            raise ParityError("MsCapture needs PyNative mode (MindSpore runs Cell hooks only there); "
                              "call ms.set_context(mode=ms.PYNATIVE_MODE)")
        check_module_paths(self.specs, module_paths(self.model), "mindspore")
        cells = dict(self.model.cells_and_names())
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._reset_seen))
            self._install(cells)
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._remove()
        self._active = False

    def reset(self) -> None:
        self._seen.clear()

    # ------------------------------------------------------------------------------------------------------
    def _reset_seen(self, cell, args):
        self._seen.clear()

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        while self._restore:
            self._restore.pop()()

    def _emit(self, spec: ProbeSpec, value: Any) -> None:
        if spec.name in self._seen:
            return
        value = _select(value, spec.ms_capture.select, spec.name)
        if value is None:
            raise ParityError(f"probe {spec.name}: the captured value is None (cell {spec.ms_capture.module!r}); "
                              f"pass that input or fix the probe map")
        try:
            arr = to_numpy(value)
        except TypeError as exc:
            raise ParityError(f"probe {spec.name}: captured a {type(value).__name__}, not a tensor ({exc}); "
                              f"fix 'select' in the probe map") from None
        self._seen.add(spec.name)
        self.on_probe(spec.name, arr, self.dtype_name(value))

    def _dispatch(self, group: _Group, args: tuple, kwargs: dict, output: Any) -> None:
        bound = None
        for spec in group.specs:
            if spec.name in self._seen:
                continue
            cap = spec.ms_capture
            if (cap.take == "output") == (output is _MISSING):
                continue
            if cap.where or cap.take == "input":
                if bound is None:
                    bound = self._bind(group, args, kwargs, spec)
                if any(not _matches(bound.get(k, _MISSING), v) for k, v in cap.where.items()):
                    continue
            if cap.take == "input":
                if cap.arg not in bound:
                    raise ParityError(f"probe {spec.name}: argument {cap.arg!r} is not a parameter of "
                                      f"{cap.module or '(root)'}.{cap.method or 'construct'}; "
                                      f"fix 'arg' in the probe map")
                self._emit(spec, bound[cap.arg])
            else:
                self._emit(spec, output)

    @staticmethod
    def _bind(group: _Group, args: tuple, kwargs: dict, spec: ProbeSpec) -> dict:
        try:
            ba = group.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ParityError(f"probe {spec.name}: cannot match the call's arguments to the signature of "
                              f"{spec.ms_capture.module or '(root)'}.{spec.ms_capture.method or 'construct'} "
                              f"({exc})") from None
        ba.apply_defaults()
        out = dict(ba.arguments)
        for name, param in group.signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and name in out:
                for k, v in out.pop(name).items():
                    out.setdefault(k, v)
        return out

    # ------------------------------------------------------------------------------------------------------
    def _install(self, cells: dict[str, nn.Cell]) -> None:
        hook_groups: dict[tuple[str, str], _Group] = {}
        method_groups: dict[tuple[str, str], _Group] = {}
        static_groups: dict[tuple[type, str], _Group] = {}
        for spec in self.specs:
            cap = spec.ms_capture
            cell = cells[cap.module]
            if cap.method is None:
                key = (cap.module, cap.take)
                if key not in hook_groups:
                    hook_groups[key] = _Group(inspect.signature(cell.construct))
                hook_groups[key].specs.append(spec)
            elif cap.static:
                owner = self._static_owner(cell, cap.method, spec)
                key = (owner, cap.method)
                if key not in static_groups:
                    static_groups[key] = _Group(inspect.signature(owner.__dict__[cap.method].__func__))
                static_groups[key].specs.append(spec)
            else:
                bound_method = getattr(cell, cap.method, None)
                if not callable(bound_method) or isinstance(bound_method, nn.Cell):
                    raise ParityError(f"probe {spec.name}: {cap.module or '(root)'} has no method {cap.method!r}; "
                                      f"fix the probe map or the model")
                key = (cap.module, cap.method)
                if key not in method_groups:
                    method_groups[key] = _Group(inspect.signature(bound_method))
                method_groups[key].specs.append(spec)

        for (path, take), group in hook_groups.items():
            cell = cells[path]
            if take == "input":
                def pre_hook(c, args, kwargs, _g=group):
                    self._dispatch(_g, args, kwargs, _MISSING)
                self._handles.append(cell.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                def post_hook(c, args, kwargs, output, _g=group):
                    self._dispatch(_g, args, kwargs, output)
                self._handles.append(cell.register_forward_hook(post_hook, with_kwargs=True))
        for (path, name), group in method_groups.items():
            self._wrap_instance_method(cells[path], name, group)
        for (owner, name), group in static_groups.items():
            self._wrap_static_method(owner, name, group)

    @staticmethod
    def _static_owner(cell: nn.Cell, name: str, spec: ProbeSpec) -> type:
        for klass in type(cell).__mro__:
            if name in klass.__dict__:
                if not isinstance(klass.__dict__[name], staticmethod):
                    raise ParityError(f"probe {spec.name}: {klass.__name__}.{name} is not a staticmethod; "
                                      f"set 'static': false in the probe map")
                return klass
        raise ParityError(f"probe {spec.name}: {type(cell).__name__} (cell {spec.ms_capture.module!r}) has no "
                          f"static method {name!r}; fix the probe map or the model")

    def _wrap_instance_method(self, cell: nn.Cell, name: str, group: _Group) -> None:
        original = getattr(cell, name)
        had_instance_attr = name in cell.__dict__
        previous = cell.__dict__.get(name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            self._dispatch(group, args, kwargs, _MISSING)
            out = original(*args, **kwargs)
            self._dispatch(group, args, kwargs, out)
            return out

        object.__setattr__(cell, name, wrapper)

        def restore():
            if had_instance_attr:
                object.__setattr__(cell, name, previous)
            else:
                cell.__dict__.pop(name, None)
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
        self._restore.append(lambda: setattr(owner, name, original_sm))
