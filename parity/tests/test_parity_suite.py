"""The parity suite: one test per (case, precision, mode, probe) of every reference dump, from the pytest plugin
``parity.pytest_plugin`` (e.g. ``test_probe[tiny-sparse-fp32-isolated-hidden_states_2_block]``). Needs MindSpore,
not torch. Options: ``--parity-reference``, ``--parity-subject``, ``--parity-precision``, ``--parity-mode``,
``--parity-report``."""

from parity.pytest_plugin import test_probe  # noqa: F401
