"""Presentation: summaries as rich tables on stderr (or JSON on stdout), progress bars on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import click
import numpy as np
from patchfold.jobs.plan import Progress
from patchfold.units import format_bytes


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def emit_summary(
    title: str, summary: dict[str, Any], as_json: bool, rows: Iterable[tuple[str, Any]] | None = None
) -> None:
    """JSON on stdout with ``--json``; otherwise a two-column table on stderr."""
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, value in rows if rows is not None else summary.items():
        table.add_row(key, format_value(value))
    stderr_console().print(table)


def format_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "×".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def track(events: Iterator[Any], label: str, enabled: bool) -> Any:
    """Drain a job's progress events, drawing a bar on stderr once the job has run for a second.

    Returns the last event (None when there was none): a job may end with its result, which is
    not a :class:`Progress` and is passed over by the bar.
    """
    started = time.perf_counter()
    last: Any = None
    bar = task = None
    show = enabled and sys.stderr.isatty()
    try:
        for last in events:
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
    return last


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
    show = enabled and sys.stderr.isatty()
    patches = failed = 0
    last: Any = None
    try:
        for last in events:
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
