"""Reusable checks for a family's config schema and resource needs (framework-free).

A family declares its config keys as ``Field``s (``Int``, ``Float``, ``Bool``, ``Text``, ``Opaque``) and calls
``check_fields(values, FIELDS, source)`` before anything is built: JSON bools must be real bools (``"false"``
is not false), ints real ints (not ``4.0``, not ``True``), floats finite and in range, sizes bounded. Then
``check_memory(need_bytes, what, source)`` compares a lower bound of the memory a run needs with what this
machine has (``available_memory``: MemAvailable, the cgroup limit, RLIMIT_AS — the smallest), so an absurd
config is one line naming the file instead of a MemoryError after minutes. Every message names ``source``.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from typing import Any, Mapping

from parity.errors import ParityError, shown

_FIX = "fix this value in the config"


@dataclass(frozen=True)
class Field:
    nullable: bool = False

    def problem(self, v) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Field):
    lo: int = 0
    hi: int = 2**31 - 1

    def problem(self, v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer in [{self.lo}, {self.hi}]"
        if not self.lo <= v <= self.hi:
            return f"must be in [{self.lo}, {self.hi}]"
        return None


@dataclass(frozen=True)
class Float(Field):
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, v):
        rng = f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"must be a finite number in {rng}"
        if v < self.lo or v > self.hi or (self.lo_open and v == self.lo) or (self.hi_open and v == self.hi):
            return f"must be in {rng}"
        return None


@dataclass(frozen=True)
class Bool(Field):
    def problem(self, v):
        return None if isinstance(v, bool) else "must be true or false (a JSON boolean, not a string or number)"


@dataclass(frozen=True)
class Text(Field):
    choices: tuple = ()
    max_len: int = 200

    def problem(self, v):
        if not isinstance(v, str) or len(v) > self.max_len:
            return f"must be a string of at most {self.max_len} characters"
        if self.choices and v not in self.choices:
            return f"must be one of {', '.join(map(repr, self.choices))}"
        return None


@dataclass(frozen=True)
class Opaque(Field):
    """Informational: any JSON value of bounded size (e.g. upstream's ``sample_size`` lists)."""
    max_items: int = 64

    def problem(self, v):
        if isinstance(v, (list, tuple, dict)) and len(v) > self.max_items:
            return f"must have at most {self.max_items} entries"
        return None


def check_fields(values: Mapping[str, Any], fields: Mapping[str, Field], source: str) -> None:
    """ParityError naming ``source`` and the first key whose value does not fit its field."""
    for key, f in fields.items():
        if key not in values:
            continue
        v = values[key]
        if v is None and f.nullable:
            continue
        problem = "must not be null" if v is None else f.problem(v)
        if problem:
            raise ParityError(f"{source}: '{key}' {problem}, got {shown(v, 60)}; {_FIX}")


# ---------------------------------------------------------------------------------------------- memory


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:  # a kernel file (st_size 0): read a bounded prefix
            text = f.read(1 << 16).decode("ascii", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _cgroup_available() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max", "rb") as f:
            limit = f.read(64).decode().strip()
        with open("/sys/fs/cgroup/memory.current", "rb") as f:
            used = f.read(64).decode().strip()
    except OSError:
        return None
    if not (limit.isdigit() and used.isdigit()):
        return None
    return max(int(limit) - int(used), 0)


def available_memory() -> tuple[int | None, str]:
    """(bytes this process can still allocate, where the figure comes from); (None, "") if unknown."""
    found = []
    for value, label in ((_meminfo_available(), "MemAvailable"), (_cgroup_available(), "cgroup memory.max")):
        if value is not None:
            found.append((value, label))
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            found.append((soft, "ulimit -v"))
    except (OSError, ValueError):
        pass
    return min(found) if found else (None, "")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def check_memory(need: int, what: str, source: str, fix: str) -> None:
    """Refuse (one line naming ``source``) when ``need`` bytes — a lower bound of what ``what`` takes — exceed
    the memory this machine has available."""
    avail, label = available_memory()
    if avail is not None and need > avail:
        raise ParityError(f"{source}: {what} needs at least {format_bytes(need)} of memory but this machine has "
                          f"{format_bytes(avail)} available ({label}); {fix}")
