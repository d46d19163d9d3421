"""``patchfold stats`` and ``patchfold divisor``: overlap statistics and the divisor map."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from patchfold.blocks import Blocks
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    PATH,
    block_options,
    dtype_option,
    json_option,
    keep_options,
    layout_option,
    level_options,
    max_memory_option,
    max_pixels_option,
    recursive_option,
    size_option,
    spatial_dims_option,
    stack_option,
    verbosity_options,
)
from patchfold.cli.present import divisor_preview, emit_summary, human_bytes, kept_row, verbosity
from patchfold.io.levels import Level

if TYPE_CHECKING:  # numpy-backed: loaded by the job, not for --help
    from patchfold.keep import KeepRules


def stats_rows(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    """Table rows for the human-readable summary."""
    cov = stats["coverage"]
    histogram = ", ".join(f"{count}×: {pixels:,}" for count, pixels in cov["histogram"].items())
    return [
        ("input shape", stats["input_shape"]),
        ("kernel / stride", f"{stats['kernel_size']} / {stats['stride']}"),
        ("padding / dilation", f"{stats['padding']} / {stats['dilation']}"),
        *([("cover", "last blocks moved inward to the border")] if stats.get("cover") else []),
        ("blocks per dim", stats["blocks_per_dim"]),
        ("blocks (L)", f"{stats['num_blocks']:,}"),
        ("patch length", f"{stats['patch_length']:,}"),
        ("output shape", stats["output_shape"]),
        ("output size", human_bytes(stats["output_bytes"])),
        ("coverage min/mean/max", f"{cov['min']} / {cov['mean']:.4g} / {cov['max']}"),
        ("coverage histogram", histogram),
        ("uncovered pixels", f"{stats['uncovered_pixels']:,} ({stats['uncovered_fraction']:.3%})"),
        ("redundancy", f"{stats['redundancy']:.4g}× the input"),
        ("invertible", "yes" if stats["invertible"] else "no: uncovered pixels fold back to 0"),
    ]


@click.command()
@click.argument("inputs", nargs=-1, type=PATH)
@size_option
@block_options(cover=True)
@click.option(
    "--channels",
    type=click.IntRange(1),
    default=None,
    help="Channels each image has in the estimate, as batch --channels converts them (default: the input's, or 1).",
)
@click.option("--batch", type=click.IntRange(1), default=None, help="Batch size N (default: the inputs', or 1).")
@dtype_option("Output dtype for the memory estimate (keep: the input's; float32 with --size).")
@layout_option("Layout of the patch matrix whose shape is estimated: ncl (N, C·∏k, L) or nlc (N, L, C·∏k).")
@keep_options
@spatial_dims_option
@stack_option
@level_options
@recursive_option
@max_pixels_option
@max_memory_option
@json_option
@verbosity_options
@handle_errors
def stats(
    inputs: tuple[Path, ...],
    spatial_size: int | tuple[int, ...] | None,
    blocks: Blocks,
    channels: int | None,
    batch: int | None,
    dtype: str,
    layout: str,
    keep: KeepRules | None,
    spatial_dims: int | None,
    stack: bool,
    level: Level,
    max_pixels: int,
    max_memory: int | None,
    as_json: bool,
) -> None:
    """Print overlap statistics for INPUT (or --size) without unfolding anything.

    Exact, and instant even for huge sizes: coverage is computed per axis. With --min-foreground
    or --max-blank, also how many blocks tiles would keep (this reads the pixels).

    \b
    Example:
      patchfold stats --size 512,512 -k 16 -s 8
      patchfold sample -o scene.png
      patchfold stats scene.png -k 32 -s 16 --json
      patchfold stats scene.png -k 32 -s 32 --min-foreground 0.5
    """
    from patchfold.jobs.estimate import estimate

    result = estimate(
        inputs, blocks, size=spatial_size, channels=channels, batch=batch, dtype=dtype, layout=layout,
        spatial_dims=spatial_dims, stack=stack, max_pixels=max_pixels, max_memory=max_memory, level=level, keep=keep,
    )  # fmt: skip
    plan = result.plan
    streaming = (
        f"yes: {plan.bands} bands of {plan.band_rows} block rows within {human_bytes(plan.budget)}"
        if plan.streaming
        else f"no: the whole output fits the {human_bytes(plan.budget)} budget"
    )
    rows = [
        *stats_rows(result.stats),
        *([("kept blocks", kept_row(result.keep))] if result.keep is not None else []),
        ("unfold would stream", streaming),
        ("unfold peak memory", f"≈ {human_bytes(result.peak_memory)} (input, padding, bands)"),
    ]
    summary = result.summary()
    emit_summary("overlap statistics", summary, as_json, [*rows, ("CPU engine", summary["cpu_engine"])], report=True)


@click.command()
@click.argument("inputs", nargs=-1, type=PATH)
@size_option
@block_options(cover=True)
@click.option(
    "-o",
    "--output",
    "outputs",
    type=PATH,
    multiple=True,
    help="Write the map as .npy (H, W) and/or as a heatmap .png with a legend (give -o twice for both).",
)
@click.option("--npy", "npy_path", type=PATH, default=None, hidden=True, help="Old spelling of -o MAP.npy.")
@click.option("--png", "png_path", type=PATH, default=None, hidden=True, help="Old spelling of -o MAP.png.")
@spatial_dims_option
@stack_option
@level_options
@recursive_option
@max_pixels_option
@json_option
@verbosity_options
@handle_errors
def divisor(
    inputs: tuple[Path, ...],
    spatial_size: int | tuple[int, ...] | None,
    blocks: Blocks,
    outputs: tuple[Path, ...],
    npy_path: Path | None,
    png_path: Path | None,
    spatial_dims: int | None,
    stack: bool,
    level: Level,
    max_pixels: int,
    as_json: bool,
) -> None:
    """Compute the divisor map fold(unfold(ones)) — how many blocks cover each pixel — for INPUT's
    size (or --size), write it as .npy and/or a heatmap PNG, and print the overlap statistics.

    \b
    Example:
      patchfold divisor --size 256,256 -k 32 -s 24 -o divisor.png -o divisor.npy
    """
    from patchfold.jobs.estimate import divisor_files

    result = divisor_files(
        inputs, blocks, size=spatial_size, npy=npy_path, png=png_path, outputs=outputs, spatial_dims=spatial_dims,
        stack=stack, max_pixels=max_pixels, level=level,
    )  # fmt: skip
    if not as_json and verbosity() >= 0 and sys.stderr.isatty():
        divisor_preview(result.estimate.geometry)
    written = ", ".join(str(p) for p in result.written) or "nothing (use -o)"
    rows = [*stats_rows(result.estimate.stats), ("written", written)]
    emit_summary("divisor map", result.summary(), as_json, rows, report=True)
