"""``patchfold.cli.interrupts``: Ctrl-C / SIGTERM wait outside the standard library's locking code.

The end-to-end cases (a real process signalled mid-write leaves nothing and exits 130) are in
``tests/test_hostile.py``; here the handler itself, on real frames: one of a thread blocked in
``threading`` code, and the test's own.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest
from patchfold.cli import interrupts

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timers (not POSIX)")


@pytest.fixture
def blocked_frame() -> Iterator[FrameType]:
    """The innermost frame of a thread waiting on a ``threading.Event`` (so inside threading.py)."""
    release = threading.Event()
    waiter = threading.Thread(target=release.wait, daemon=True)
    waiter.start()
    try:
        for _ in range(1000):
            frame = sys._current_frames().get(waiter.ident)
            if frame is not None and frame.f_code.co_filename.endswith("threading.py"):
                break
            release.wait(0.001)
        assert frame is not None
        yield frame
    finally:
        release.set()
        waiter.join()


@pytest.fixture(autouse=True)
def clean_state() -> Iterator[None]:
    """No alarm and no waiting interrupt before or after each test; SIGALRM's handler restored."""
    previous = signal.getsignal(signal.SIGALRM)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # an alarm armed by a test must not end the run
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
    interrupts._waiting_since = None


def test_locking_code_is_recognised_on_the_whole_stack(blocked_frame: FrameType) -> None:
    assert interrupts.in_locking_code(blocked_frame)
    assert not interrupts.in_locking_code(sys._getframe())
    assert not interrupts.in_locking_code(None)


def test_an_interrupt_in_locking_code_waits_then_is_raised_in_our_code(blocked_frame: FrameType) -> None:
    interrupts.interrupt(signal.SIGTERM, blocked_frame)  # waits: no exception, the retry armed
    assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= interrupts.RETRY_S
    assert interrupts._waiting_since is not None
    with pytest.raises(KeyboardInterrupt):
        interrupts._retry(signal.SIGALRM, sys._getframe())  # back in our code: raised at once
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert interrupts._waiting_since is None


def test_an_interrupt_outside_locking_code_is_raised_at_once() -> None:
    with pytest.raises(KeyboardInterrupt):
        interrupts.interrupt(signal.SIGINT, sys._getframe())
    with pytest.raises(KeyboardInterrupt):  # the library's held Ctrl-C replays with no frame
        interrupts.interrupt(signal.SIGINT, None)
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_a_wait_ends_after_the_grace_period(blocked_frame: FrameType, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: clock[0])
    interrupts.interrupt(signal.SIGTERM, blocked_frame)
    clock[0] += interrupts.GRACE_S / 2
    interrupts._retry(signal.SIGALRM, blocked_frame)  # still waiting
    clock[0] += interrupts.GRACE_S
    with pytest.raises(KeyboardInterrupt):  # a worker that never finishes does not block Ctrl-C
        interrupts._retry(signal.SIGALRM, blocked_frame)


def test_a_stray_alarm_with_nothing_waiting_does_nothing() -> None:
    interrupts._retry(signal.SIGALRM, sys._getframe())
    assert interrupts._waiting_since is None


def test_uninstall_ignores_late_interrupts_and_disarms_the_retry(blocked_frame: FrameType) -> None:
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        interrupts.interrupt(signal.SIGTERM, blocked_frame)
        interrupts.uninstall()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
        assert interrupts._waiting_since is None
    finally:
        signal.signal(signal.SIGINT, previous_int)
