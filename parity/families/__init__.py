"""Model families known to the harness.

A family is plain data plus numpy: its config schema, input checks, probe names, built-in cases, the probe map
(where each probe lives on the reference) and the teacher plan (which reference probes feed which step in
isolated mode). The harness reaches a family's models only through plug-ins (``parity.plugins``), so ``parity``
itself never imports ``reference_torch`` or ``ms_impl``.

The family of a dump is in its manifest; that of a config file is recognised from its keys (each family's
``recognizes(config)``), or named with ``--family``; that of a built-in case from the case name.
"""

from __future__ import annotations

import importlib

from parity.errors import ParityError, shown

FAMILIES = ("opensora_v13", "stdit3", "stdit", "mt5_encoder", "pipeline")
DEFAULT_FAMILY = "opensora_v13"


def get_family(name: str = DEFAULT_FAMILY, source: str | None = None):
    """The family module: ``parse_config``, ``num_layers``, ``normalize_inputs``, ``probe_names``,
    ``teacher_plan``, ``adapter_context``, ``builtin_cases``, ``default_case_name``, ``recognizes``. ``source``
    (e.g. a dump's manifest.json) names where the family name came from; verify and compare refuse an unknown
    family with this one message."""
    if not isinstance(name, str) or name not in FAMILIES:
        where = f"{source}: " if source else ""
        raise ParityError(f"{where}unknown model family {shown(name, 60)}; use one of: {', '.join(FAMILIES)}")
    return importlib.import_module(f"parity.families.{name}")


def fixture_dumps() -> list[tuple[str, str]]:
    """(case, precision) of every committed reference fixture (``fixtures/reference/<case>-<precision>``), from
    each family's ``cases.fixture_dumps()``; ``make dump-reference`` writes them."""
    out = []
    for name in FAMILIES:
        cases = importlib.import_module(f"parity.families.{name}.cases")
        out += getattr(cases, "fixture_dumps", lambda: [])()
    return out


def family_of_case(case: str, family: str | None = None) -> str:
    """The family whose built-in case is called ``case`` (within ``family`` when given)."""
    names = [family] if family else list(FAMILIES)
    owners = [f for f in names if case in get_family(f).builtin_cases()]
    if not owners:
        known = ", ".join(c for f in names for c in get_family(f).builtin_cases())
        raise ParityError(f"unknown case {case!r}; pick one of: {known} (see 'parity cases')")
    return owners[0]


def family_for_config(config, family: str | None = None, source: str = "config") -> str:
    """The family a config belongs to: ``family`` when given, else the one that recognises its keys."""
    if family:
        get_family(family)
        return family
    if not isinstance(config, dict):
        raise ParityError(f"{source}: a config must be a JSON object; pass the model's own config.json")
    claims = [f for f in FAMILIES if get_family(f).recognizes(config)]
    if len(claims) == 1:
        return claims[0]
    if not claims:
        raise ParityError(f"{source}: no model family recognises this config (families: {', '.join(FAMILIES)}); pass "
                          f"--family NAME, or the model's own upstream config.json")
    raise ParityError(f"{source}: the config fits several families ({', '.join(claims)}); pass --family NAME")
