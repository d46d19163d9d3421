"""Read leases on memory-mapped inputs: another process that opens one for writing (or truncates
it) is held back by the kernel until patchfold has stopped reading it, and patchfold is told.

A memory-mapped file that another process shrinks kills the reader with SIGBUS. With a read lease
(``fcntl(F_SETLEASE, F_RDLCK)``) the kernel instead makes that writer wait (up to
``/proc/sys/fs/lease-break-time``, 45 s by default) and sends this process SIGIO: the handler raises
:class:`PatchfoldError` in the main thread, the job stops and removes its temporaries, and the lease
is released when the mapping is freed, after every thread has stopped touching it; only then does
the writer go on. Leases need the main thread (for the signal), a file this user owns on a local
file system and no writer already holding it open; otherwise the file is mapped without one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

from patchfold.errors import PatchfoldError

#: Open descriptors holding a read lease, and the file each is on.
_LEASED: dict[int, Path] = {}
_previous_handler: Any = None


def lease(path: Path, mapping: Any) -> bool:
    """Take a read lease on ``path`` for as long as ``mapping`` (the object that owns the pages,
    such as a numpy memmap's ``_mmap``) lives. Returns whether a lease was taken (never where
    the platform has no leases: Windows has no ``fcntl``, macOS no ``F_SETLEASE``)."""
    fcntl = _fcntl()
    if fcntl is None or not hasattr(signal, "SIGIO") or threading.current_thread() is not threading.main_thread():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:  # a writer has it open, another user's file, or no leases on this file system
        os.close(fd)
        return False
    _install_handler()
    _LEASED[fd] = Path(path)
    weakref.finalize(mapping, _release, fd)
    return True


def _fcntl() -> ModuleType | None:
    """The ``fcntl`` module where it offers read leases (Linux), else None."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    return fcntl if hasattr(fcntl, "F_SETLEASE") else None


def _install_handler() -> None:
    global _previous_handler
    if not _LEASED:
        _previous_handler = signal.signal(signal.SIGIO, _lease_broken)


def _release(fd: int) -> None:
    """The mapping is gone: let the waiting writer go on."""
    import fcntl

    _LEASED.pop(fd, None)
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    with contextlib.suppress(OSError):
        os.close(fd)
    if not _LEASED and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGIO, _previous_handler if _previous_handler is not None else signal.SIG_DFL)


def broken() -> list[Path]:
    """The leased files another process is waiting to write."""
    fcntl = _fcntl()
    if fcntl is None:
        return []
    found = []
    for fd, path in list(_LEASED.items()):
        try:
            state = fcntl.fcntl(fd, fcntl.F_GETLEASE)
        except OSError:
            continue
        if state != fcntl.F_RDLCK:  # a break in progress shows the lease it is being broken to
            found.append(path)
    return found


def _lease_broken(signum: int, frame: Any) -> None:
    paths = broken()
    if not paths:  # another source of SIGIO: what was there before
        if callable(_previous_handler):
            _previous_handler(signum, frame)
        return
    names = ", ".join(f"'{p}'" for p in paths)
    raise PatchfoldError(
        f"{names} is being written by another process while patchfold reads it; stopped, nothing was written "
        "(the other process goes on once patchfold lets go of the file)"
    )
