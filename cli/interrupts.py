"""Ctrl-C and SIGTERM for the console entry point: delivered as ``KeyboardInterrupt``, but never
inside the standard library's locking code.

Python runs a signal handler between two bytecodes of the main thread, so a handler that raises
can land just after ``concurrent.futures`` or ``threading`` took a lock and before the ``with`` or
``finally`` that releases it. A job's cleanup then joins its writer or reader thread, which waits
on that lock forever: an interrupted run that never ends (seen once in the test suite here: a
SIGTERM during a long write, the process asleep at 0 % CPU for the test's 60 s). So while the
main thread is in such code the interrupt waits, retried every :data:`RETRY_S` seconds (SIGALRM),
and is raised as soon as the thread is back in patchfold's own code; after :data:`GRACE_S`
seconds of waiting (a wait on a stuck worker) it is raised wherever the thread is, as before.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

#: Code an interrupt waits outside of: where Python's threads, futures, queues, logging and import
#: machinery hold locks that only their own ``with`` / ``finally`` release.
DEFERRED_IN = (
    f"{os.sep}threading.py",
    f"{os.sep}concurrent{os.sep}futures{os.sep}",
    f"{os.sep}queue.py",
    f"{os.sep}logging{os.sep}",
    "<frozen importlib.",
    f"{os.sep}importlib{os.sep}",
)

#: Seconds between tries of a waiting interrupt.
RETRY_S = 0.01

#: Seconds an interrupt waits at most before it is raised wherever the main thread is.
GRACE_S = 5.0

#: When the waiting interrupt first arrived (``time.monotonic()``), or None when none waits.
_waiting_since: float | None = None


def install() -> None:
    """Deliver SIGINT and SIGTERM (a cluster's kill, handled like Ctrl-C so jobs clean up) through
    :func:`interrupt`. Call from the main thread."""
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, _retry)


def in_locking_code(frame: FrameType | None) -> bool:
    """Whether ``frame`` or any frame it was called from runs code of :data:`DEFERRED_IN`."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if any(part in filename for part in DEFERRED_IN):
            return True
        frame = frame.f_back
    return False


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Raise ``KeyboardInterrupt`` now, or arm the retry timer while ``frame`` is in locking code
    (and the grace period lasts)."""
    global _waiting_since
    now = time.monotonic()
    if _waiting_since is None:
        _waiting_since = now
    if hasattr(signal, "setitimer") and in_locking_code(frame) and now - _waiting_since < GRACE_S:
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    _waiting_since = None
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    raise KeyboardInterrupt


def uninstall() -> None:
    """Once the command has returned: ignore Ctrl-C (Python restores the default handler while it
    shuts down, and a late Ctrl-C would otherwise turn a finished run into a process killed by the
    signal) and any waiting interrupt."""
    global _waiting_since
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
    _waiting_since = None


def _retry(signum: int, frame: FrameType | None) -> None:
    """SIGALRM: try the waiting interrupt again (a stray alarm with none waiting does nothing)."""
    if _waiting_since is not None:
        interrupt(signum, frame)
