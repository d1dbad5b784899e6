"""opensora-parity: a PyTorch -> MindSpore numerical parity harness.

The core of this package is numpy-only; torch and MindSpore are imported lazily by the capture modules.
"""

__version__ = "0.1.0"
