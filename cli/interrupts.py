"""Ctrl-C and SIGTERM for the console entry point: delivered as ``KeyboardInterrupt``, but not
in the middle of the standard library's locking code.

Python runs a signal handler between two bytecodes of the main thread, so a handler that raises
can land just after ``concurrent.futures`` or ``threading`` took a lock and before the ``with`` or
``finally`` that releases it; a job's cleanup then joins its writer or reader thread, which waits
on that lock forever. An interrupted run hung once in the test suite here (a SIGTERM during a long
write, the process asleep at 0 % CPU for the test's 60 s; not reproduced since), and such a window
is the likely cause. So when the innermost frames (:data:`INNER_FRAMES`) run that code the
interrupt waits, retried every :data:`RETRY_S` seconds (SIGALRM), and is raised as soon as they
do not: the window lasts a few bytecodes. A thread blocked in a wait there (``Future.result``,
``concurrent.futures.wait``) is safe to interrupt, so after :data:`GRACE_S` seconds the interrupt
is raised wherever the thread is. An interrupt still waiting when a command returns with success is
reported then (exit 130; one that fails has said why already); a signal ignored when the process
started (a shell's background job) stays so. Where there are no interval timers (Windows) the
interrupt is raised at once, as Python's own handler would.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

#: Where an interrupt waits: the standard library's threads, futures, queues and logging (their
#: own files, found beside ``os`` without importing them, not any path that contains such a name)
#: and the import machinery.
_STDLIB = os.path.dirname(os.__file__)
_LOCKING_FILES = frozenset(os.path.join(_STDLIB, name) for name in ("threading.py", "queue.py"))
_LOCKING_DIRS = tuple(os.path.join(_STDLIB, *parts) + os.sep for parts in (("concurrent", "futures"), ("logging",)))
_LOCKING_PREFIXES = ("<frozen importlib.",)

#: How many of the innermost frames are looked at: a lock's window is in the function that took it
#: or the one it returned to (``Condition.__enter__`` -> ``Future.result``).
INNER_FRAMES = 3

#: Seconds between tries of a waiting interrupt.
RETRY_S = 0.01

#: Seconds an interrupt waits at most: a lock's window lasts microseconds, so a thread still in
#: locking code after a few retries is blocked in a wait, where the interrupt is safe.
GRACE_S = 0.05

#: When the waiting interrupt first arrived (``time.monotonic()``), or None when none waits.
_waiting_since: float | None = None


def install() -> None:
    """Deliver SIGINT and SIGTERM (a cluster's kill, handled like Ctrl-C so jobs clean up) through
    :func:`interrupt`, except a signal the process was started ignoring. Call from the main thread."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, interrupt)
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, _retry)


def uninstall() -> bool:
    """Once the command has returned: disarm the retry, ignore Ctrl-C (Python restores the default
    handler while it shuts down, and a late Ctrl-C would otherwise turn a finished run into a
    process killed by the signal) and give SIGTERM its default action (a kill during shutdown
    ends the process, never waits on a retry that no longer comes). Returns whether an interrupt
    was still waiting: it came in the command's last moments, and the caller reports it."""
    waiting = _waiting_since is not None
    _stop_waiting()
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if signal.getsignal(signal.SIGTERM) is interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return waiting


def in_locking_code(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of the :data:`INNER_FRAMES` - 1 frames it was called from runs
    code of the standard library's threads, futures, queues, logging or import machinery."""
    for _ in range(INNER_FRAMES):
        if frame is None:
            return False
        filename = frame.f_code.co_filename
        if filename in _LOCKING_FILES or filename.startswith(_LOCKING_DIRS + _LOCKING_PREFIXES):
            return True
        frame = frame.f_back
    return False


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Raise ``KeyboardInterrupt`` now, hand it to the library's Ctrl-C holder, or arm the retry
    timer while ``frame`` is in locking code (and the grace period lasts)."""
    global _waiting_since
    if _handed_to_holder(frame):
        return
    now = time.monotonic()
    if _waiting_since is None:
        _waiting_since = now
    if hasattr(signal, "setitimer") and now - _waiting_since < GRACE_S and in_locking_code(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    _stop_waiting()
    raise KeyboardInterrupt


def _handed_to_holder(frame: FrameType | None) -> bool:
    """While the library holds Ctrl-C (its SIGINT handler, marked ``holds_interrupts``, notes it
    while worker processes start and replays it to ours afterwards: raised then, it would orphan
    a worker mid-start), an interrupt (a SIGTERM, or a waiting one) goes to that handler."""
    holder = signal.getsignal(signal.SIGINT)
    if not getattr(holder, "holds_interrupts", False):
        return False
    _stop_waiting()
    holder(signal.SIGINT, frame)
    return True


def _stop_waiting() -> None:
    """No interrupt waits any more: forget it and disarm the retry timer."""
    global _waiting_since
    _waiting_since = None
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)


def _retry(signum: int, frame: FrameType | None) -> None:
    """SIGALRM: try the waiting interrupt again (a stray alarm with none waiting does nothing)."""
    if _waiting_since is not None:
        interrupt(signum, frame)
