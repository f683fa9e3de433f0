"""Freed memory kept for reuse: the C allocator's settings for a training loop's large arrays.

A training step of the hand-written engines makes and frees the same large arrays every step
(the caches of the forward, the rows of the backward loop: megabytes each). glibc's malloc gives
blocks that large their own ``mmap`` and returns them to the system on ``free``, and trims the
top of its heap when a few megabytes there are free; the next step's arrays are then fresh
pages, each written for the first time through a page fault (the kernel zeroing 4 KiB). Measured
in a fresh process at H 256 (``bptt bench``'s workers; docs/performance.md, "The
layer-normalised cells against their plain twins"): the torch engine took 500 to 3,000 page
faults per step, 2 to 5 ms of a 9 to 15 ms step, more for the cells whose steps keep more.

:func:`keep_freed_memory` raises both thresholds once per process, so that blocks up to 32 MiB
(glibc's largest mmap threshold) come from the heap and freed memory stays there for the next
step. The price is peak memory: kept memory serves only blocks that fit where it was, so the
peak grows (``bptt bench --configs long --parts memory``: the torch engine 99 -> 136 MiB, numpy
22.5 -> 26 MiB). ``BPTT_KEEP_FREED_MEMORY=0`` in the environment leaves the allocator as it
was. Other C libraries (musl, macOS, Windows) are left
alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size come from the heap (glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64 bits)."""
TRIM_THRESHOLD = 256 << 20
"""Free memory at the heap's top kept up to this much (several steps' worth of arrays)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3    # glibc's malloc.h
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process (see the module); True when they are set."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if os.environ.get("BPTT_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
