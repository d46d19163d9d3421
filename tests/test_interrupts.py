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
from pathlib import Path
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
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGALRM, signal.SIGINT)}
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # an alarm armed by a test must not end the run
    signal.signal(signal.SIGINT, interrupts.interrupt)  # as install() leaves it
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    interrupts._waiting_since = None


def test_locking_code_is_recognised_in_the_innermost_frames(blocked_frame: FrameType) -> None:
    assert interrupts.in_locking_code(blocked_frame)
    assert not interrupts.in_locking_code(sys._getframe())
    assert not interrupts.in_locking_code(None)


def test_only_the_standard_librarys_own_files_count(tmp_path: Path) -> None:
    """A script or checkout under a directory called logging/ or named queue.py is not locking
    code, and frames deeper than INNER_FRAMES do not count (the whole stack would always hold one)."""
    for name in ("logging/run.py", "importlib/run.py", "queue.py", "concurrent/futures/run.py"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("import sys\ndef here():\n    return sys._getframe()\n")
        namespace: dict[str, object] = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        here = namespace["here"]
        assert callable(here) and not interrupts.in_locking_code(here()), name

    frames: list[FrameType] = []

    def nested(depth: int) -> None:  # a thread's target: Thread.run (threading.py) calls it
        if depth == 0:
            frames.append(sys._getframe())
        else:
            nested(depth - 1)

    for depth in (interrupts.INNER_FRAMES - 2, interrupts.INNER_FRAMES - 1):
        ran = threading.Thread(target=nested, args=(depth,))
        ran.start()
        ran.join()
    # threading.py is the innermost frame's caller number depth + 1: within the frames looked at
    # for INNER_FRAMES - 2, just beyond them for INNER_FRAMES - 1
    assert interrupts.in_locking_code(frames[0])
    assert not interrupts.in_locking_code(frames[1])


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


def test_a_wait_in_locking_code_ends_after_the_grace_period(
    blocked_frame: FrameType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread blocked in a wait (batch's ``concurrent.futures.wait``) never leaves locking code:
    the interrupt is raised there after GRACE_S, where it is safe."""
    clock = [100.0]
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: clock[0])
    interrupts.interrupt(signal.SIGTERM, blocked_frame)
    clock[0] += interrupts.GRACE_S / 2
    interrupts._retry(signal.SIGALRM, blocked_frame)  # still waiting
    clock[0] += interrupts.GRACE_S
    with pytest.raises(KeyboardInterrupt):
        interrupts._retry(signal.SIGALRM, blocked_frame)
    assert interrupts.GRACE_S <= 0.5  # Ctrl-C stays prompt


def test_interrupts_go_to_the_librarys_holder_while_it_starts_workers(blocked_frame: FrameType) -> None:
    """The library holds Ctrl-C while it starts worker processes (its SIGINT handler, marked
    ``holds_interrupts``, notes it and replays it to ours afterwards): a waiting interrupt's retry
    and a SIGTERM are handed to it instead of raised mid-start; an unmarked handler (user code's)
    gets nothing."""
    from patchfold.scheduling import _interrupts_held

    reached_the_end = False
    with pytest.raises(KeyboardInterrupt), _interrupts_held():  # replayed to our handler as the block ends
        interrupts.interrupt(signal.SIGTERM, sys._getframe())  # not raised here: held
        holder = signal.getsignal(signal.SIGINT)
        reached_the_end = True
    assert reached_the_end and getattr(holder, "holds_interrupts", False)
    assert signal.getsignal(signal.SIGINT) == interrupts.interrupt  # restored by the block
    interrupts.interrupt(signal.SIGTERM, blocked_frame)  # waits
    noted: list[int] = []

    def foreign(number: int, _frame: object) -> None:
        noted.append(number)

    signal.signal(signal.SIGINT, foreign)
    with pytest.raises(KeyboardInterrupt):  # not a holder: raised here, outside locking code
        interrupts._retry(signal.SIGALRM, sys._getframe())
    assert noted == []


def test_a_stray_alarm_with_nothing_waiting_does_nothing() -> None:
    interrupts._retry(signal.SIGALRM, sys._getframe())
    assert interrupts._waiting_since is None


def test_uninstall_reports_a_waiting_interrupt_and_disarms_the_retry(blocked_frame: FrameType) -> None:
    previous_int, previous_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert interrupts.uninstall() is False
        interrupts.interrupt(signal.SIGTERM, blocked_frame)
        signal.signal(signal.SIGTERM, interrupts.interrupt)
        assert interrupts.uninstall() is True
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a kill during shutdown ends it
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
        assert interrupts._waiting_since is None
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def test_install_keeps_a_signal_the_process_was_started_ignoring() -> None:
    """A shell's background job (``cmd &``) starts with SIGINT ignored: it must stay so."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        interrupts.install()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == interrupts.interrupt
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_an_interrupt_as_the_command_finishes_exits_130(
    blocked_frame: FrameType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signal that arrives while the finished command's last wait returns is not dropped."""
    from patchfold.cli import main as entry

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def finishing(**_: object) -> None:
        interrupts.interrupt(signal.SIGTERM, blocked_frame)  # waits, then the command returns
        raise SystemExit(0)

    monkeypatch.setattr(entry, "main", finishing)
    monkeypatch.setattr(interrupts, "RETRY_S", 60)  # the real timer must not fire inside the test
    try:
        with pytest.raises(SystemExit) as ended:
            entry.run()
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert ended.value.code == 130
    assert capsys.readouterr().err.strip().startswith("Error: interrupted")
