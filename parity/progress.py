"""A dependency-free progress bar on stderr that appears only once a run has taken ~2 s."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, *, delay: float = 2.0, stream=None, enabled: bool = True):
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self.delay = delay
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.monotonic()
        self.shown = False
        self._last_pct = -1
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1, what: str = "") -> None:
        self.done = min(self.done + n, self.total)
        if not self.enabled or time.monotonic() - self.start < self.delay:
            return
        pct = int(100 * self.done / self.total)
        if self.tty:
            bar = "#" * (pct // 4) + "." * (25 - pct // 4)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {what[:40]:<40}")
            self.stream.flush()
            self.shown = True
        elif pct // 10 != self._last_pct // 10:  # plain logs: one line per 10 %
            self.stream.write(f"{self.label}: {self.done}/{self.total} ({pct}%)\n")
            self.stream.flush()
            self._last_pct = pct

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()
