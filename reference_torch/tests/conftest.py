"""The reference (torch) tests are not even collected when torch is blocked (PARITY_BLOCK_TORCH=1): every module
here imports torch at the top, and the torch-free run of the MindSpore-side suite must not error on them."""

import os

if os.environ.get("PARITY_BLOCK_TORCH") == "1":
    collect_ignore_glob = ["test_*.py", "helpers.py"]
