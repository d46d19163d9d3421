"""How much memory there is, and the check every allocation that depends on the input passes first."""

from __future__ import annotations

import math
import os
import time

from patchfold.errors import PatchfoldError
from patchfold.units import format_bytes

#: Share of available memory one allocation may take before it is refused: the rest is for the
#: input, the other buffers and everything else on the machine.
ALLOCATION_SHARE = 0.8


#: How long a reading of MemAvailable stands in for a fresh one: a training loop checks several
#: allocations per step, and reading /proc/meminfo costs about 0.1 ms each time.
READING_SECONDS = 0.5

_last_reading: tuple[float, int] = (-math.inf, 0)


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable, read at most every
    :data:`READING_SECONDS`; see :func:`_read_available` where /proc is absent)."""
    global _last_reading
    taken, available = _last_reading
    now = time.monotonic()
    if now - taken < READING_SECONDS:
        return available
    available = _read_available()
    _last_reading = (now, available)
    return available


#: What is assumed available where the platform says nothing (neither /proc nor sysconf).
UNKNOWN_AVAILABLE = 4 * 10**9


def _read_available() -> int:
    """MemAvailable from /proc/meminfo (Linux); else free pages from sysconf where it counts them;
    else half the physical memory (macOS reports no free pages); else :data:`UNKNOWN_AVAILABLE`."""
    return _meminfo_available() or _sysconf_available() or UNKNOWN_AVAILABLE


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_available() -> int | None:
    names = getattr(os, "sysconf_names", {})  # absent on Windows
    if "SC_PAGE_SIZE" not in names:
        return None
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        if "SC_AVPHYS_PAGES" in names:
            return page * os.sysconf("SC_AVPHYS_PAGES") or None
        if "SC_PHYS_PAGES" in names:
            return page * os.sysconf("SC_PHYS_PAGES") // 2 or None
    except (OSError, ValueError):
        pass
    return None


def check_fits(nbytes: int, what: str) -> None:
    """Refuse, before allocating, ``nbytes`` for ``what`` that memory cannot hold."""
    available = available_memory()
    if nbytes > available * ALLOCATION_SHARE:
        raise PatchfoldError(
            f"out of memory: {what} would take {format_bytes(nbytes)} but only {format_bytes(available)} is available"
        )
