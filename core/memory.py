"""How much memory there is, and the check every allocation that depends on the input passes first."""

from __future__ import annotations

import math
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
    :data:`READING_SECONDS`), or 4 GB when unknown."""
    global _last_reading
    taken, available = _last_reading
    now = time.monotonic()
    if now - taken < READING_SECONDS:
        return available
    available = _read_available()
    _last_reading = (now, available)
    return available


def _read_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 10**9


def check_fits(nbytes: int, what: str) -> None:
    """Refuse, before allocating, ``nbytes`` for ``what`` that memory cannot hold."""
    available = available_memory()
    if nbytes > available * ALLOCATION_SHARE:
        raise PatchfoldError(
            f"out of memory: {what} would take {format_bytes(nbytes)} but only {format_bytes(available)} is available"
        )
