"""Strict JSON text: duplicate keys, ``NaN``/``Infinity`` and nesting deeper than ``MAX_DEPTH`` refused (one
``ParityError`` line naming where the text came from and ending with the caller's fix), and the harness's output
form. Files are read by ``parity.jsonio.load_json``."""

from __future__ import annotations

import json

from parity.errors import ParityError, shown

MAX_DEPTH = 64


class _Bad(ValueError):
    pass


def _pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"duplicate key {shown(k, 60)}")
        out[k] = v
    return out


def _constant(name: str):
    raise _Bad(f"{name} is not valid JSON")


def _depth_ok(obj) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > MAX_DEPTH:
                return False
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def parse_json(raw: bytes, where: str, fix: str):
    """Parse ``raw`` strictly; ``where`` names the file in the message, ``fix`` ends it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParityError(f"{where}: not valid JSON (not UTF-8 text at byte {e.start}); {fix}") from None
    try:
        data = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except _Bad as e:
        raise ParityError(f"{where}: not valid JSON ({e}); {fix}") from None
    except RecursionError:
        raise ParityError(f"{where}: not valid JSON (nested deeper than {MAX_DEPTH} levels); {fix}") from None
    except ValueError as e:
        raise ParityError(f"{where}: not valid JSON ({str(e)[:120]}); {fix}") from None
    if not _depth_ok(data):
        raise ParityError(f"{where}: not valid JSON (nested deeper than {MAX_DEPTH} levels); {fix}")
    return data


def dumps_bytes(obj) -> bytes:
    """The harness's JSON output form (indent 2, strict, newline at the end)."""
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8")
