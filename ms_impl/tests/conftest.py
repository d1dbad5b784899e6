"""MindSpore-side test setup: one PyNative CPU context per process and the project's Hypothesis profiles."""

import parity.tests.hypothesis_profiles  # noqa: F401  (registers and loads the "ci"/"fuzz" profiles)
from ms_impl.harness import setup_context

setup_context("CPU")
