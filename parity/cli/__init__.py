"""``parity`` command line (``parity.cli.main``): parse and dispatch in ``parser``, the commands by stage in
``reference``, ``compare`` and ``verify``, what they share in ``common``."""

from parity.cli.parser import build_parser, main  # noqa: F401

__all__ = ["main", "build_parser"]
