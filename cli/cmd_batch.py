"""``patchfold batch unfold`` and ``patchfold batch tiles``: whole datasets, in parallel."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from patchfold.blocks import Blocks
from patchfold.cli.cmd_tiles import tile_format_option
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    PATH,
    ByteSize,
    apply_options,
    block_options,
    compression_option,
    dtype_option,
    json_option,
    keep_options,
    level_options,
    max_pixels_option,
    progress_option,
    verbosity_options,
)
from patchfold.cli.present import emit_summary, track_images, verbosity
from patchfold.io.levels import Level

if TYPE_CHECKING:  # numpy-backed: loaded by the job, not for --help
    from patchfold.keep import KeepRules


def _common(output_help: str):
    """Options shared by batch commands: sources, parallelism, resumption (``output_help``: what -o is)."""
    decorators = [
        click.argument("sources", nargs=-1, required=True),
        click.option("-o", "--output", required=True, type=PATH, help=output_help),
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
    return lambda command: apply_options(command, decorators)


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
@_common("Dataset directory of .npy shards, or NAME.zarr: one Zarr v3 store.")
@block_options()
@dtype_option("Dataset dtype; floats scale integer images to [0, 1] (keep: the images' common dtype).")
@click.option(
    "--shard-size", type=ByteSize(), default=None, show_default="1GB", help="Largest shard file (not for .zarr)."
)
@compression_option
@click.option(
    "--append",
    is_flag=True,
    help="Add the images to the .zarr dataset store OUTPUT (same options; the images it holds are kept).",
)
@keep_options
@level_options
@verbosity_options
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
    blocks: Blocks,
    dtype: str,
    shard_size: int | None,
    compression: str,
    append: bool,
    keep: KeepRules | None,
    level: Level,
) -> None:
    """Unfold every image of SOURCES (files, directories, globs) into a sharded patch dataset in
    OUTPUT: shard-NNNNN.npy (one patch per row), index.npy and manifest.json; or, for OUTPUT
    NAME.zarr, one Zarr v3 group (patches, index, done; the manifest in its attributes) that
    zarr and dask read as it is. Images may differ in size. A re-run of the same command skips
    images already done; failed images are reported and do not stop the others. --append adds
    images to a .zarr store, after those it holds.

    \b
    Example:
      patchfold sample -o scans/a.png && patchfold sample --channels 1 --size 200,300 -o scans/b.png
      patchfold batch unfold 'scans/*.png' -k 16 -s 8 --channels 3 -o out/dataset
      python -c "import patchfold; d = patchfold.load_dataset('out/dataset'); print(len(d), d[0].shape)"
      patchfold batch unfold 'scans/*.png' -k 16 -s 8 --channels 3 -o out/dataset.zarr
      python -c "import dask.array as da; print(da.from_zarr('out/dataset.zarr', component='patches'))"
      patchfold sample --size 120,160 -o scans/c.png
      patchfold batch unfold scans/c.png -k 16 -s 8 --channels 3 -o out/dataset.zarr --append
    """
    from patchfold.datasets.build import unfold_dataset

    job = unfold_dataset(
        sources, output, blocks, recursive=recursive, dtype=dtype, channels=channels, shard_size=shard_size,
        compression=compression, workers=workers, scheduler=scheduler, fail_fast=fail_fast, max_pixels=max_pixels,
        level=level, keep=keep, append=append,
    )  # fmt: skip
    _report("batch unfold", output, track_images(job, not no_progress, "patches"), as_json)


@batch.command("tiles")
@_common("Dataset directory.")
@block_options()
@tile_format_option
@keep_options
@level_options
@verbosity_options
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
    blocks: Blocks,
    fmt: str,
    keep: KeepRules | None,
    level: Level,
) -> None:
    """Write the tiles of every image of SOURCES into its own directory under OUTPUT (as
    `patchfold tiles` does for one image), with a top-level manifest.json. Resumable.
    --min-foreground/--max-blank skip blank blocks, each image with its own threshold.

    \b
    Example:
      patchfold sample -o scans/a.png && patchfold sample --channels 1 --size 200,300 -o scans/b.png
      patchfold batch tiles 'scans/*.png' -k 32 -s 32 --format npy -o out/tiles
    """
    from patchfold.datasets.build import tile_dataset

    job = tile_dataset(
        sources, output, blocks, recursive=recursive, tile_format=fmt, channels=channels, workers=workers,
        scheduler=scheduler, fail_fast=fail_fast, max_pixels=max_pixels, keep=keep, level=level,
    )  # fmt: skip
    _report("batch tiles", output, track_images(job, not no_progress, "tiles"), as_json)


def _report(title: str, output: Path, result, as_json: bool) -> None:
    """The summary of a batch run; exit 1 (after the summary) when any image failed."""
    emit_summary(f"{title} → {output}", result.summary(), as_json)
    if result.failed:
        first, more = result.failed[0], len(result.failed) - 1
        where = "in the JSON" if as_json else "listed above" if verbosity() >= 0 else "listed without -q"
        others = f" ({more} more {where})" if more else ""
        reason = first.error if first.source in first.error else f"'{first.source}': {first.error}"
        raise click.ClickException(
            f"{len(result.failed)} of {result.images} image(s) failed: {reason}{others}; the "
            "others are done, and a re-run retries only the failed ones"
        )
