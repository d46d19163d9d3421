"""``patchfold batch unfold`` and ``patchfold batch tiles``: whole datasets, in parallel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import click
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    ByteSize,
    apply_options,
    block_options,
    dtype_option,
    json_option,
    max_pixels_option,
    progress_option,
)
from patchfold.cli.present import emit_summary, stderr_console
from patchfold.datasets.build import plan_dataset, plan_tiles, run_dataset, run_tiles
from patchfold.engines.cpu import cpu_count
from patchfold.io.read import find_sources
from patchfold.jobs.tiles import TILE_FORMATS
from patchfold.scheduling import ImageResult


def _common(command):
    """Options shared by batch commands: sources, parallelism, resumption."""
    decorators = [
        click.argument("sources", nargs=-1, required=True),
        click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Dataset directory."),
        click.option("-r", "--recursive", is_flag=True, help="Descend into sub-directories (and ** in globs)."),
        click.option("--workers", type=click.IntRange(1), default=None, help="Local worker processes [all cores]."),
        click.option(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="Send the work to a Dask cluster, e.g. tcp://host:8786 (pip install 'patchfold[distributed]').",
        ),
        click.option(
            "--channels",
            type=click.IntRange(1, 4),
            default=None,
            help="Convert every image to this many channels (grey<->RGB, alpha dropped).",
        ),
        click.option("--fail-fast", is_flag=True, help="Stop at the first image that fails."),
        max_pixels_option,
        progress_option,
        json_option,
    ]
    return apply_options(command, decorators)


@click.group()
def batch() -> None:
    """Unfold or tile whole datasets of images of different sizes, in parallel, resumably.

    \b
    Example:
      patchfold batch unfold photos/ -r -k 64 -s 32 -o dataset/ --workers 8
      patchfold batch unfold 'scans/*.tif' -k 256 -o dataset/ --scheduler tcp://head:8786
      patchfold batch tiles photos/ -k 128 -s 96 -o tiles/
    """


@batch.command("unfold")
@_common
@block_options()
@dtype_option("Dataset dtype; floats scale integer images to [0, 1] (keep: the images' common dtype).")
@click.option("--shard-size", type=ByteSize(), default="1GB", show_default=True, help="Largest shard file.")
@handle_errors
def batch_unfold(
    sources,
    output: Path,
    recursive: bool,
    workers: int | None,
    scheduler: str | None,
    channels: int | None,
    fail_fast: bool,
    max_pixels: int,
    no_progress: bool,
    as_json: bool,
    block,
    dtype: str,
    shard_size: int,
) -> None:
    """Unfold every image of SOURCES (files, directories, globs) into a sharded patch dataset in
    OUTPUT: shard-NNNNN.npy (one patch per row), index.npy and manifest.json. Images may differ in
    size. A re-run of the same command skips images already done; failed images are reported and
    do not stop the others.

    \b
    Example:
      patchfold batch unfold 'sample_images/*.png' -k 16 -s 8 --channels 3 -o out/dataset
      python -c "import patchfold; d = patchfold.load_dataset('out/dataset'); print(len(d), d[0].shape)"
    """
    started = time.perf_counter()
    workers = workers or cpu_count()
    paths = find_sources(sources, recursive)
    plan = plan_dataset(
        paths,
        output,
        block.kernel_size,
        block.stride,
        block.padding,
        block.dilation,
        block.padding_mode,
        dtype=dtype,
        channels=channels,
        shard_size=shard_size,
        max_pixels=max_pixels,
    )
    results = _track(
        run_dataset(plan, workers=workers, scheduler=scheduler, fail_fast=fail_fast),
        len(plan.tasks),
        not no_progress,
        "patches",
    )
    extra = {
        "patches": plan.total_rows,
        "shards": len(plan.manifest["shards"]),
        "patch_length": plan.manifest["patch_length"],
        "dtype": plan.manifest["dtype"],
    }
    _report("batch unfold", output, len(paths), results, plan.failed, extra, scheduler, workers, started, as_json)


@batch.command("tiles")
@_common
@block_options()
@click.option("--format", "fmt", type=click.Choice(TILE_FORMATS), default="png", show_default=True)
@handle_errors
def batch_tiles(
    sources,
    output: Path,
    recursive: bool,
    workers: int | None,
    scheduler: str | None,
    channels: int | None,
    fail_fast: bool,
    max_pixels: int,
    no_progress: bool,
    as_json: bool,
    block,
    fmt: str,
) -> None:
    """Write the tiles of every image of SOURCES into its own directory under OUTPUT (as
    `patchfold tiles` does for one image), with a top-level manifest.json. Resumable.

    \b
    Example:
      patchfold batch tiles 'sample_images/*.png' -k 32 -s 32 --format npy -o out/tiles
    """
    started = time.perf_counter()
    workers = workers or cpu_count()
    paths = find_sources(sources, recursive)
    params = (block.kernel_size, block.stride, block.padding, block.dilation, block.padding_mode)
    tasks = plan_tiles(paths, output, params, fmt, channels, max_pixels)
    results = _track(
        run_tiles(tasks, output, workers=workers, scheduler=scheduler, fail_fast=fail_fast),
        len(tasks),
        not no_progress,
        "tiles",
    )
    extra = {"tiles": sum(r.rows for r in results)}
    _report("batch tiles", output, len(paths), results, [], extra, scheduler, workers, started, as_json)


def _report(
    title: str,
    output: Path,
    count: int,
    results: list,
    failed_early: list,
    extra: dict,
    scheduler: str | None,
    workers: int,
    started: float,
    as_json: bool,
) -> None:
    """The summary of a batch run; exit 1 (after the summary) when any image failed."""
    failed = [*failed_early, *(r for r in results if not r.ok)]
    summary = {
        "output": str(output),
        "images": count,
        "done": sum(1 for r in results if r.ok and not r.skipped),
        "skipped": sum(1 for r in results if r.skipped),
        "failed": len(failed),
        **extra,
        "workers": "dask " + scheduler if scheduler else workers,
        "seconds": round(time.perf_counter() - started, 3),
        "errors": {r.source: r.error for r in failed},
    }
    emit_summary(f"{title} → {output}", summary, as_json)
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {count} image(s) failed (listed above); the others are done, and a re-run "
            "retries only the failed ones"
        )


def _track(results: Iterator[ImageResult], total: int, show: bool, unit: str) -> list:
    """Collect results, with a progress bar on stderr (images, patches, failures) when a TTY."""
    import sys

    collected: list[ImageResult] = []
    bar = task = None
    show = show and sys.stderr.isatty()
    patches = failed = 0
    try:
        for result in results:
            collected.append(result)
            patches += result.rows
            failed += not result.ok
            if show and bar is None:
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
                task = bar.add_task("images", total=total, patches=0, failed=0)
            if bar is not None:
                bar.update(task, advance=1, patches=patches, failed=failed)
    finally:
        if bar is not None:
            bar.stop()
        close = getattr(results, "close", None)
        if close is not None:
            close()
    return collected
