"""Shared helpers for the reference tests: tiny configs and deterministic inputs (shared with the MindSpore side)."""

from parity.families.opensora_v13.testing import make_inputs, tiny_config  # noqa: F401
