"""Finding plug-ins: by registered name (package entry points) or as ``module:attr``.

Names are registered through entry points, groups ``parity.references`` and ``parity.subjects``, so a third
party's package adds its own without touching this repository::

    [project.entry-points."parity.subjects"]
    my-port = "my_port.parity_plugin:make_plugin"

The target (and an ``module:attr`` given on the command line) is either a plug-in object or a factory called as
``factory(source=DIR_OR_NONE)``; ``source`` is the ``--subject-path`` / ``--reference-path`` directory (a user's
checkout), which is also put at the front of ``sys.path`` so a plug-in module kept there imports.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from importlib.metadata import entry_points

from parity.errors import ParityError
from parity.plugins.contract import FRAMEWORKS, SIDES

GROUPS = {"reference": "parity.references", "subject": "parity.subjects"}
DEFAULTS = {"reference": "torch-reference", "subject": "ms_impl"}
_FLAG = {"reference": "--reference", "subject": "--subject"}
_REQUIRED = ("name", "framework", "families", "build", "forward", "describe", "overlay", "capture_root",
             "precision_label")
_SIDE_REQUIRED = {"reference": ("random_weights", "session"), "subject": ()}
_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def registered(side: str) -> dict:
    """Registered plug-ins of ``side``: name -> entry point."""
    return {ep.name: ep for ep in entry_points(group=GROUPS[side])}


def _import_target(spec: str, side: str):
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ParityError(f"{_FLAG[side]} {spec}: cannot import {module_name!r} ({exc}); install it, or pass the "
                          f"directory that holds it with {_FLAG[side]}-path") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ParityError(f"{_FLAG[side]} {spec}: module {module_name!r} has no attribute {attr!r}") from None


def _add_source_to_path(source: str | None, side: str) -> str | None:
    if source is None:
        return None
    if not os.path.isdir(source):
        raise ParityError(f"{source}: {_FLAG[side]}-path is not a directory; pass the checkout that holds the model")
    full = os.path.realpath(source)
    if full not in sys.path:
        sys.path.insert(0, full)
    return full


def load_plugin(spec: str | None, side: str, source: str | None = None):
    """The plug-in named ``spec`` (default: the built-in one of ``side``), checked against the contract."""
    if side not in SIDES:
        raise ValueError(side)
    spec = spec or DEFAULTS[side]
    source = _add_source_to_path(source, side)
    if _MODULE_ATTR.match(spec):
        target = _import_target(spec, side)
    else:
        eps = registered(side)
        if spec not in eps:
            known = ", ".join(sorted(eps)) or "none registered"
            raise ParityError(f"{_FLAG[side]} {spec}: no such {side} plug-in (registered: {known}); pass a registered "
                              f"name or module:attr (see docs/plugins.md)")
        try:
            target = eps[spec].load()
        except ImportError as exc:
            raise ParityError(f"{_FLAG[side]} {spec}: the plug-in cannot be imported ({exc}); install what it needs "
                              f"(its docs say which extra)") from None
    plugin = target if _looks_like_plugin(target) else _make(target, spec, side, source)
    check_plugin(plugin, side, spec)
    return plugin


def _looks_like_plugin(obj) -> bool:
    return not isinstance(obj, type) and hasattr(obj, "build") and hasattr(obj, "forward")


def _make(factory, spec: str, side: str, source: str | None):
    if not callable(factory):
        raise ParityError(f"{_FLAG[side]} {spec}: is neither a plug-in object nor a factory (callable)")
    return factory(source=source)


def check_plugin(plugin, side: str, spec: str) -> None:
    missing = [a for a in _REQUIRED + _SIDE_REQUIRED[side] if not hasattr(plugin, a)]
    if missing:
        raise ParityError(f"{_FLAG[side]} {spec}: not a {side} plug-in — it lacks {', '.join(missing)} (see "
                          f"parity.plugins.contract and docs/plugins.md)")
    if plugin.framework not in FRAMEWORKS:
        raise ParityError(f"{_FLAG[side]} {spec}: framework {plugin.framework!r} is not one of {', '.join(FRAMEWORKS)}")


def parse_options(pairs: list[str] | None, plugin, flag: str) -> dict:
    """``KEY=VALUE`` pairs checked against the plug-in's declared options (defaults filled in)."""
    specs = dict(getattr(plugin, "options", {}) or {})
    out = {k: s.default for k, s in specs.items() if s.default is not None}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParityError(f"{flag} {pair}: expected KEY=VALUE")
        if key not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise ParityError(f"{flag} {pair}: plug-in {plugin.name} has no option {key!r} (its options: {known})")
        if specs[key].choices is not None and value not in specs[key].choices:
            raise ParityError(f"{flag} {pair}: {key} must be one of {', '.join(specs[key].choices)}")
        out[key] = value
    return out
