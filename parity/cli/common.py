"""What every command shares: one-line messages, input and output path checks, the progress line."""

from __future__ import annotations

import argparse
import os
import stat
import sys

from parity.errors import ParityError, printable

MODE_CHOICES = ("isolated", "accumulated", "both")
MAX_THREADS = 1024


def require_file(path: str, what: str, dir_ok: bool = False) -> None:
    """A FIFO or device given as an input file would block or never end: refuse it up front."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # the reader reports missing/unreadable files itself
    if not (stat.S_ISREG(mode) or (dir_ok and stat.S_ISDIR(mode))):
        raise ParityError(f"{path}: {what} is not a regular file; pass the {what} itself")


def load_json_arg(path: str, what: str) -> dict:
    from parity.jsonio import load_json

    return load_json(path, what, f"fix it or pass the model's own {what}.json")


def parse_threads(text: str) -> int:
    """argparse type of --threads: an integer in [1, MAX_THREADS] (torch overflows on 2**40)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text[:40]!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_THREADS}], got {text[:40]}")
    return n


def say(msg: str) -> None:
    print(printable(msg), file=sys.stderr, flush=True)


def stderr_is_tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_line(msg: str) -> None:
    """Progress chatter goes to stderr only on a terminal, so a failed run's stderr is its one error line."""
    if stderr_is_tty():
        say(msg)


def hinted(fn, hint: str, *args):
    """``fn(*args)``; a ParityError without advice (no ';') gets ``hint`` appended."""
    try:
        return fn(*args)
    except ParityError as exc:
        if ";" in str(exc):
            raise
        raise ParityError(f"{exc}; {hint}") from None


def dump_root(start: str) -> str | None:
    """The parity dump directory that ``start`` (which need not exist) is, or lies in, if any."""
    from parity.store import CONFIG, MANIFEST, SCHEMA

    cur = os.path.realpath(start)
    while True:
        mpath = os.path.join(cur, MANIFEST)
        if os.path.isfile(mpath):
            try:
                with open(mpath, "rb") as fh:
                    head = fh.read(4096)
            except OSError:
                head = b""
            if SCHEMA.encode() in head or (os.path.isfile(os.path.join(cur, CONFIG))
                                           and os.path.isdir(os.path.join(cur, "states"))):
                return cur
        parent = os.path.dirname(cur)
        if parent == cur:
            return None
        cur = parent


def check_output(path: str, flag: str, kind: str) -> None:
    """Refuse, before any work, an output that cannot be created or that lies inside a parity dump (dumps are
    never modified in place). ``kind``: "dump" (the path may be an existing dump to replace), "dir" or "file"."""
    full = os.path.abspath(path)
    existing = full
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if existing == full:
        if kind == "file" and os.path.isdir(full):
            raise ParityError(f"{path}: is a directory; pass a file path as {flag}")
        if kind != "file" and not os.path.isdir(full):
            raise ParityError(f"{path}: exists and is not a directory; pass a new directory as {flag}")
    elif not os.path.isdir(existing):
        raise ParityError(f"{path}: cannot be created because {existing} is not a directory; choose another {flag}")
    root = dump_root(full if kind == "dir" else os.path.dirname(full))
    if root is not None:
        raise ParityError(f"{path}: lies inside the parity dump {root}, and dumps are never modified; choose a "
                          f"{flag} outside it")


def reference_args(args) -> dict:
    return {"reference": args.reference, "reference_path": args.reference_path,
            "reference_options": args.reference_option}
