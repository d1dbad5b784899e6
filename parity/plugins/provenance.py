"""Where a plug-in's model comes from: the git commit of a checkout, for manifests and reports."""

from __future__ import annotations

import os
import shutil
import subprocess


def checkout_commit(path: str | None) -> str | None:
    """``<commit>`` (``<commit>+dirty`` with uncommitted changes to tracked files) of the git checkout at ``path``;
    None when ``path`` is not in a git checkout or git is not installed."""
    if not path or not os.path.isdir(path) or shutil.which("git") is None:
        return None
    try:
        head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else commit
