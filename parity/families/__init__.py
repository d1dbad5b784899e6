"""Model families known to the harness.

A family is plain data plus numpy: its config schema, input checks, probe names, built-in cases and the probe
map that tells the harness where each probe lives in the torch reference and the MindSpore subject. The
harness reaches the framework-side code of a family only through the import strings in its probe map, so
``parity`` itself never imports ``reference_torch`` or ``ms_impl``.
"""

from __future__ import annotations

import importlib

from parity.errors import ParityError

FAMILIES = ("opensora_v13", "stdit")
DEFAULT_FAMILY = "opensora_v13"


def get_family(name: str = DEFAULT_FAMILY):
    """The family module: ``parse_config``, ``num_layers``, ``normalize_inputs``, ``probe_names``,
    ``builtin_cases``, ``default_case_name``."""
    if name not in FAMILIES:
        raise ParityError(f"unknown model family {name!r}; use one of: {', '.join(FAMILIES)}")
    return importlib.import_module(f"parity.families.{name}")
