"""Allocator setting for real-size runs (framework-free)."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LARGE_BLOCK_BYTES = 1 << 20


def return_large_blocks_to_os(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Serve allocations of ``threshold`` bytes and more with mmap, so a freed large buffer leaves RSS at once.

    glibc's default threshold grows up to 32 MiB after the first large free; below it, freed buffers stay in the
    heap, fragmented between live ones, and count in RSS. At real token counts every chunk temporary of the
    streamed paths is such a buffer. Process-wide; False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
