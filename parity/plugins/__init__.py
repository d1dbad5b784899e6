"""Plug-ins: how the harness reaches a reference or a subject model (see ``contract`` and docs/plugins.md)."""

from parity.plugins.contract import BuildRequest, ModelPlugin, OptionSpec, ReferencePlugin, SubjectPlugin  # noqa: F401
from parity.plugins.registry import DEFAULTS, load_plugin, parse_options, registered  # noqa: F401
