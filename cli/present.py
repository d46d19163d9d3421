"""Presentation: summaries as rich tables on stderr (or JSON on stdout), progress bars on stderr,
all of it shaped by ``-q``/``-v``."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import click
from patchfold.cli.options import VERBOSITY_KEY
from patchfold.jobs.progress import Progress
from patchfold.units import format_bytes

#: When the command line was loaded: where the start-up stage begins if the process's own start is unknown.
_LOADED = time.perf_counter()


def _process_start() -> float:
    """When this process started, on the ``time.perf_counter`` clock: the start of the start-up
    stage -v reports (Python, imports, options). From ``/proc`` (Linux, to the kernel's clock
    tick), else when the command line was loaded. Asked only by -v, so no command pays for it."""
    now = time.perf_counter()
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            since_boot = float(uptime.read().split()[0])
        return now - max(0.0, since_boot - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return _LOADED


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def verbosity() -> int:
    """-1 with ``-q``, 1 with ``-v``, else 0 (see :func:`patchfold.cli.options.verbosity_options`)."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:  # set on the command's own context; a group's subcommand looks up
        if VERBOSITY_KEY in ctx.meta:
            return int(ctx.meta[VERBOSITY_KEY])
        ctx = ctx.parent
    return 0


#: A library parameter as the command-line flag of ``fold`` that gives it.
_FOLD_FLAGS = {
    "kernel_size": "-k",
    "stride": "-s",
    "padding": "-p",
    "dilation": "-d",
    "padding_mode": "--padding-mode",
    "output_size": "--size",
    "layout": "--layout",
}


def fold_flags(result: Any) -> str:
    """The ``fold`` options that give an unfold result's parameters (its matrix has no sidecar)."""
    defaults = {"stride": 1, "padding": 0, "dilation": 1, "padding_mode": "zeros", "layout": "ncl"}
    flags = []
    for name, value in result.fold_parameters().items():
        values = list(value) if isinstance(value, list | tuple) else [value]
        text = str(values[0]) if len(set(values)) == 1 and name != "output_size" else ",".join(map(str, values))
        if name in _FOLD_FLAGS and not (name in defaults and _same(value, defaults[name])):
            flags.append(f"{_FOLD_FLAGS[name]} {text}")
    return " ".join(flags)


def _same(value: Any, default: Any) -> bool:
    values = value if isinstance(value, list | tuple) else [value]
    return all(v == default for v in values)


def note(message: str) -> None:
    """A message for the user on stderr (not with ``-q``)."""
    if verbosity() >= 0:
        click.echo(message, err=True)


def emit_summary(
    title: str,
    summary: dict[str, Any],
    as_json: bool,
    rows: Iterable[tuple[str, Any]] | None = None,
    *,
    report: bool = False,
) -> None:
    """JSON on stdout with ``--json``; otherwise a two-column table on stderr, or for a ``report``
    (the command's own result, as ``stats`` prints) on stdout when stdout is a terminal. Nothing
    with ``-q`` but the JSON. Where the table goes to a pipe or file it is plain text: no colours,
    no padding at line ends."""
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    if verbosity() < 0:
        return
    table_rows = [(key, format_value(value)) for key, value in (rows if rows is not None else summary.items())]
    to_stdout = report and sys.stdout.isatty()
    stream = sys.stdout if to_stdout else sys.stderr
    if not stream.isatty():
        click.echo(plain_table(title, table_rows), err=not to_stdout)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, value in table_rows:
        table.add_row(key, value)
    Console(stderr=not to_stdout, highlight=False).print(table)


def plain_table(title: str, rows: list[tuple[str, str]]) -> str:
    """The summary as plain lines: the title, then each key padded to one column and its value."""
    width = max((len(key) for key, _ in rows), default=0)
    lines = [title, *(f"  {key:<{width}}  {value}".rstrip() for key, value in rows)]
    return "\n".join(lines)


def format_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "×".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def kept_row(keep: dict[str, Any]) -> str:
    """``12 of 48 (min foreground 0.5; 36 skipped)``: what keep rules keep (or would keep)."""
    named = ("min_foreground", "max_blank")
    rules = [f"{name.replace('_', ' ')} {keep[name]:g}" for name in named if keep[name] is not None]
    background = "" if keep["background"] == "auto" else f", background {keep['background']:g}"
    total = keep["kept"] + keep["skipped"]
    return f"{keep['kept']:,} of {total:,} ({'; '.join(rules)}{background}; {keep['skipped']:,} skipped)"


def track(events: Iterator[Any], label: str, enabled: bool) -> Any:
    """Drain a job's progress events, drawing a bar on stderr once the job has run for a second
    (not with ``-q``); with ``-v``, print the time each stage took.

    Returns the last event (None when there was none): a job may end with its result, which is
    not a :class:`Progress` and is passed over by the bar.
    """
    started = time.perf_counter()
    stages = Stages(label, started)
    last: Any = None
    bar = task = None
    show = enabled and verbosity() >= 0 and sys.stderr.isatty()
    try:
        for last in events:
            stages.saw(last)
            if not isinstance(last, Progress):
                continue
            if show and bar is None and time.perf_counter() - started > 1.0 and last.done < last.total:
                bar, task = _start_bar(label, last)
            if bar is not None:
                bar.update(task, completed=last.bytes_done)
    finally:
        if bar is not None:
            bar.stop()
        close = getattr(events, "close", None)
        if close is not None:  # an interrupted job deletes its temporary files now, not at exit
            close()
    stages.report()
    return last


class Stages:
    """The stages of a job as the command line sees them: start-up (imports, options), reading
    and planning with the first step (until the job's first event), the other steps (bands or
    images, until the last of them) and finishing (sidecar, manifest, the atomic rename), printed
    on stderr with ``-v``."""

    def __init__(self, label: str, started: float) -> None:
        self.label, self.started = label, started
        self.first: float | None = None
        self.last_progress: float | None = None
        self.events = 0

    def saw(self, event: Any) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        if isinstance(event, Progress) or hasattr(event, "rows"):  # a band, or one image of a dataset
            self.last_progress, self.events = now, self.events + 1

    def report(self) -> None:
        if verbosity() < 1:
            return
        ended = time.perf_counter()
        first = self.first if self.first is not None else ended
        last = self.last_progress if self.last_progress is not None else first
        lines = [
            ("start-up (Python, imports, options)", self.started - _process_start()),
            (f"reading inputs, planning and the first {self.label} step", first - self.started),
            (f"the other {max(0, self.events - 1)} {self.label} steps", last - first),
            ("finishing (metadata, atomic rename)", ended - last),
        ]
        for stage, seconds in lines:
            click.echo(f"time: {stage}: {seconds:.3f} s", err=True)
        _mark_timed()


def report_total(started: float) -> None:
    """With ``-v``, for a command whose work had no stages to show (no job drained by
    :func:`track`): start-up and the command's own time, on stderr."""
    ctx = click.get_current_context(silent=True)
    if verbosity() < 1 or (ctx is not None and ctx.meta.get(_TIMED_KEY)):
        return
    click.echo(f"time: start-up (Python, imports, options): {started - _process_start():.3f} s", err=True)
    click.echo(f"time: the command: {time.perf_counter() - started:.3f} s", err=True)


_TIMED_KEY = "patchfold.timed"


def _mark_timed() -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_TIMED_KEY] = True


def _start_bar(label: str, first: Progress) -> tuple[Any, Any]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    bar.start()
    task = bar.add_task(label, total=first.bytes_total, completed=first.bytes_done)
    return bar, task


def human_bytes(count: int) -> str:
    return f"{format_bytes(count)} ({count:,} B)"


def divisor_preview(geometry: Any, width: int = 48) -> None:
    """A small colour picture of the divisor map on stderr, two map rows per text line (▀)."""
    import numpy as np  # here, not at the top: the other commands' start-up never loads it for this
    from patchfold.render import UNCOVERED, colormap, sampled_divisor
    from rich.text import Text

    values = sampled_divisor(geometry, max_side=width, min_side=1)
    covered = values > 0
    low = float(values[covered].min()) if covered.any() else 0.0
    colours = colormap(values, low, float(values.max()))
    colours[~covered] = UNCOVERED
    if len(colours) % 2:
        colours = np.concatenate([colours, np.full((1, *colours.shape[1:]), 255, np.uint8)])
    text = Text()
    for top, bottom in zip(colours[::2], colours[1::2]):
        for upper, lower in zip(top, bottom):
            text.append("▀", style=f"rgb({upper[0]},{upper[1]},{upper[2]}) on rgb({lower[0]},{lower[1]},{lower[2]})")
        text.append("\n")
    stderr_console().print(text, end="")


def track_images(events: Iterator[Any], enabled: bool, unit: str) -> Any:
    """Drain a dataset job's events, with a bar on stderr (images, patches or tiles, failures) when
    a TTY; return its final result. The job's first event (a :class:`Progress`) gives the total."""
    bar = task = None
    show = enabled and verbosity() >= 0 and sys.stderr.isatty()
    patches = failed = 0
    last: Any = None
    stages = Stages("images", time.perf_counter())
    try:
        for last in events:
            stages.saw(last)
            if isinstance(last, Progress):
                if show:
                    bar, task = _start_image_bar(last.total, unit)
                continue
            if not hasattr(last, "rows"):  # the final result
                continue
            patches += last.rows
            failed += not last.ok
            if bar is not None:
                bar.update(task, advance=1, patches=patches, failed=failed)
    finally:
        if bar is not None:
            bar.stop()
        close = getattr(events, "close", None)
        if close is not None:
            close()
    stages.report()
    return last


def _start_image_bar(total: int, unit: str) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]images"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[patches]:,} " + unit),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    bar.start()
    return bar, bar.add_task("images", total=total, patches=0, failed=0)
