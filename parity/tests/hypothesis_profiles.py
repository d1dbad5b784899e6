"""Hypothesis profiles for the parity tests: "ci" (quick, default) and "fuzz" (long runs).

Select with the environment variable PARITY_HYPOTHESIS_PROFILE, e.g.
``PARITY_HYPOTHESIS_PROFILE=fuzz python -m pytest parity/tests/test_store_fuzz.py``.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ci: the same examples on every run (no .hypothesis/ litter, no run-to-run luck); fuzz: fresh ones
settings.register_profile("ci", max_examples=50, database=None, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=1000, **_COMMON)

PROFILE = os.environ.get("PARITY_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
