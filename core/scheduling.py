"""Running independent work items (one per image) on a local process pool or a Dask cluster,
yielding each item's result as it finishes."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

from patchfold.errors import PatchfoldError


@dataclass
class ImageResult:
    image_id: int
    source: str
    rows: int
    error: str | None = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


#: What one image may raise without stopping the others (reported per image instead).
IMAGE_ERRORS = (PatchfoldError, OSError, ValueError, MemoryError)


def failure(image_id: int, source: str, error: Exception) -> ImageResult:
    """The result of an image that failed: our own messages as they are, others with their type."""
    message = str(error) if isinstance(error, PatchfoldError) else f"{type(error).__name__}: {error}"
    return ImageResult(image_id, source, 0, message)


def process_chunk(tasks: Sequence[Any], function: Callable[[Any], ImageResult]) -> list[ImageResult]:
    """Several small images per scheduled task, so scheduling costs stay small next to the work."""
    return [function(task) for task in tasks]


def chunks(tasks: Sequence[Any], workers: int, per_worker: int = 16, largest: int = 32) -> list[list[Any]]:
    """Groups of consecutive tasks: about ``per_worker`` per worker, at most ``largest`` each."""
    size = max(1, min(largest, len(tasks) // max(1, workers * per_worker)))
    return [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]


def run_local(
    tasks: Sequence[Any], function: Callable[[Any], ImageResult], workers: int, fail_fast: bool = False
) -> Iterator[ImageResult]:
    """Run tasks on a pool of ``workers`` processes (in this process when 1), yielding results as
    they finish."""
    if workers <= 1:
        for task in tasks:
            result = function(task)
            yield result
            if fail_fast and not result.ok:
                return
        return
    # imported here: process pools are not needed by `import patchfold` (nor by the CLI's start-up)
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    if sys.platform == "win32":  # ProcessPoolExecutor refuses more than 61 workers there
        workers = min(workers, 61)
    context = get_context(start_method())
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker, initargs=(os.getpid(),))
    pending: set[Future[list[ImageResult]]] = set()
    finished_normally = False
    try:
        queue = iter(chunks(tasks, workers))
        with _interrupts_held():  # the forkserver and workers start with Ctrl-C blocked: only we see it
            # every worker up before a Ctrl-C can end this process: a worker still starting when
            # it is gone finds the pool's semaphores removed and prints a traceback
            wait([pool.submit(_ready) for _ in range(workers)])
            for group in queue:
                pending.add(pool.submit(process_chunk, group, function))
                if len(pending) >= workers * 2:
                    break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                for result in future.result():
                    yield result
                    if fail_fast and not result.ok:
                        return
                group = next(queue, None)
                if group is not None:
                    pending.add(pool.submit(process_chunk, group, function))
        finished_normally = True
    finally:
        _stop(pool, pending, finished_normally)


def start_method() -> str:
    """How worker processes start: ``forkserver`` where there is one (POSIX), so no worker inherits
    this process's threads, locks or torch state as a fork would; ``spawn`` elsewhere (Windows), slower
    to start but equally clean."""
    from multiprocessing import get_all_start_methods

    return "forkserver" if "forkserver" in get_all_start_methods() else "spawn"


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C while processes are started, then act on it.

    SIGINT is blocked in this thread (children inherit the mask, so a Ctrl-C reaches this process
    alone) and, in the main thread, Python's handler only notes it: other threads (a BLAS pool's)
    do not block it, and Python would raise KeyboardInterrupt here mid-start, orphaning a worker
    that then fails on the pool's removed semaphores. The noted Ctrl-C is raised when the block ends.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    noted: list[int] = []

    def note(number: int, _frame: object) -> None:
        noted.append(number)

    note.holds_interrupts = True  # type: ignore[attr-defined]  # the CLI hands a waiting SIGTERM to it
    in_main = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, note) if in_main else None
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if in_main:
            signal.signal(signal.SIGINT, handler)
    if noted and callable(handler):
        handler(signal.SIGINT, None)
    elif noted and handler == signal.SIG_DFL:
        raise KeyboardInterrupt


def _ready() -> None:
    """A task that does nothing: its result says a worker has started."""


def _quiet_worker(run: int | None = None) -> None:
    """Workers leave Ctrl-C to the parent (which stops them): no traceback from each of them. And
    each ends when the run's process ``run`` does: a run killed outright (SIGKILL, out of memory)
    cannot stop its pool, whose workers (children of the forkserver, which outlives the run) would
    otherwise wait for work forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if run is not None and os.name == "posix":  # (os.kill(pid, 0) on Windows sends Ctrl-C)
        threading.Thread(target=_end_with, args=(run,), name="patchfold-run-watch", daemon=True).start()


#: Seconds between checks that the run is alive, where the process cannot be waited on directly.
_WATCH_INTERVAL = 2.0


def _end_with(run: int) -> None:
    """Return only to end this worker, once process ``run`` has ended: waits on a pidfd (Linux
    5.3+), else checks every :data:`_WATCH_INTERVAL` seconds."""
    try:
        descriptor = os.pidfd_open(run)
    except (AttributeError, OSError):  # no pidfd here, or the run is already gone
        while _alive(run):
            time.sleep(_WATCH_INTERVAL)
    else:
        select.select([descriptor], [], [])  # readable once the process has ended
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(pool: Any, pending: set[Future[Any]], finished_normally: bool) -> None:
    """Shut the pool down: wait for it after a normal end; otherwise (interrupted, failed fast,
    closed early) cancel what is queued and end the workers now, rather than wait for them."""
    for future in pending:
        future.cancel()
    if finished_normally:
        pool.shutdown(wait=True)
        return
    processes = list(getattr(pool, "_processes", {}).values())  # the executor offers no public handle
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)


def run_dask(
    tasks: Sequence[Any], function: Callable[[Any], ImageResult], scheduler: str, fail_fast: bool = False
) -> Iterator[ImageResult]:
    """Send tasks to a running Dask distributed cluster; workers write to the shared directory."""
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise PatchfoldError("scheduler= needs dask.distributed: pip install 'patchfold[distributed]'") from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as error:
        raise PatchfoldError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        groups = chunks(tasks, workers, per_worker=4, largest=128)  # a cluster's tasks cost more to schedule
        futures = client.map(process_chunk, groups, function=function, pure=False)
        for future in as_completed(futures):
            for result in future.result():
                yield result
                if fail_fast and not result.ok:
                    client.cancel(futures)
                    return
    finally:
        client.close()
