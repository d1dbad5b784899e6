"""The progress bar of ``parity compare`` on stderr: tqdm's, shown once a run has taken 2 s (tqdm's ``delay``).

tqdm is what users know (rate, ETA, terminal width) and is one small pure-Python dependency; it is imported only
when a bar is wanted (the CLI asks for one on a terminal only, ``--no-progress`` never).
"""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, label: str, *, delay: float = 2.0, stream=None, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=max(int(total), 1), desc=label, unit="probe", delay=delay,
                            file=stream or sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1, what: str = "") -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what[:40], refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
