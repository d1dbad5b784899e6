"""The harness's own error type, exit codes, and the one escaping rule for text echoed from files.

Every problem with user input (files, configs, checkpoints, dumps) is raised as a ``ParityError`` whose
message is one line naming the file or probe and what to do about it. The CLI prints that line and exits
with ``EXIT_BAD_INPUT``; it never shows a traceback unless ``--debug`` is given.

Anything a message echoes from a file or the command line (names, dtype strings, JSON values, paths) may be
hostile. ``printable`` is the one rule applied to every message (``ParityError`` applies it itself, the CLI to
every line it prints): whitespace runs become one space, control characters (C0, DEL, C1 — so ANSI escape
sequences), line/paragraph separators, bidirectional overrides and lone surrogates are shown as ``\\xNN`` /
``\\uNNNN`` escapes, and a message longer than ``MAX_MESSAGE`` characters keeps its head and its tail (where
the fix is) around a ``…[N characters cut]…`` marker.
"""

EXIT_OK = 0
EXIT_PARITY_FAILURE = 1
EXIT_BAD_INPUT = 2

MAX_MESSAGE = 2000
_HEAD, _TAIL = 1400, 500
# bidirectional embedding/override/isolate controls ("Trojan Source"), zero-width and BOM characters
_INVISIBLE = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A)) | {0x200B, 0x200E, 0x200F, 0xFEFF}


def _escape(ch: str) -> str:
    o = ord(ch)
    if o < 0x20 or 0x7F <= o <= 0x9F:
        return f"\\x{o:02x}"
    if 0xD800 <= o <= 0xDFFF or o in (0x2028, 0x2029) or o in _INVISIBLE:
        return f"\\u{o:04x}"
    return ch


def printable(text, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one safe line for a terminal or log (see the module docstring)."""
    s = " ".join(str(text).split())
    if not s.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        s = "".join(_escape(c) for c in s)
    if len(s) > limit:
        cut = len(s) - _HEAD - _TAIL
        s = f"{s[:_HEAD]} …[{cut} characters cut]… {s[-_TAIL:]}"
    return s


def shown(value, n: int = 80) -> str:
    """``repr(value)`` cut to ``n`` characters: how a value read from a file is quoted in a message."""
    try:
        r = repr(value)
    except Exception:  # a hostile object's __repr__
        r = f"<{type(value).__name__}>"
    return r if len(r) <= n else r[: n - 3] + "..."


class ParityError(Exception):
    """Bad input: a one-line, user-facing message naming the file/probe and the fix."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str):
        super().__init__(printable(message))


class ReferenceProblem(ParityError):
    """The reference itself is unusable (e.g. NaN/Inf in a reference state): not a subject failure."""


class MissingProbe(ParityError, KeyError):
    """A probe the comparison needs is not in the reference dump (e.g. a partial hand-made dump)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""
