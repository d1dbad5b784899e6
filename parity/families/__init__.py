"""Model families known to the harness.

A family is plain data plus numpy: its config schema, input checks, probe names, built-in cases and the probe
map that tells the harness where each probe lives in the torch reference and the MindSpore subject. The
harness reaches the framework-side code of a family only through the import strings in its probe map, so
``parity`` itself never imports ``reference_torch`` or ``ms_impl``.
"""

from __future__ import annotations

import importlib

from parity.errors import ParityError, shown

FAMILIES = ("opensora_v13",)
DEFAULT_FAMILY = "opensora_v13"


def get_family(name: str = DEFAULT_FAMILY, source: str | None = None):
    """The family module: ``parse_config``, ``num_layers``, ``normalize_inputs``, ``probe_names``,
    ``builtin_cases``, ``default_case_name``. ``source`` (e.g. a dump's manifest.json) names where the family
    name came from; verify and compare refuse an unknown family with this one message."""
    if not isinstance(name, str) or name not in FAMILIES:
        where = f"{source}: " if source else ""
        raise ParityError(f"{where}unknown model family {shown(name, 60)}; use one of: {', '.join(FAMILIES)}")
    return importlib.import_module(f"parity.families.{name}")
