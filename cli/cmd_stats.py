"""``patchfold stats`` and ``patchfold divisor``: overlap statistics and the divisor map."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from patchfold import coverage, ops
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    BlockParams,
    block_options,
    dtype_option,
    json_option,
    max_memory_option,
    max_pixels_option,
    size_option,
    spatial_dims_option,
    stack_option,
    typed_size,
)
from patchfold.cli.present import divisor_preview, emit_summary, human_bytes
from patchfold.geometry import LAYOUTS
from patchfold.io.read import load_inputs, probe_shape
from patchfold.io.write import check_output_path, save_npy
from patchfold.jobs.plan import plan_unfold


def shape_of(
    inputs: tuple[Path, ...],
    spatial_size: tuple[int, ...] | None,
    block: BlockParams,
    spatial_dims: int | None,
    stack: bool,
    max_pixels: int,
) -> tuple[tuple[int, ...], np.dtype | None]:
    """``(N, C, *spatial)`` and dtype from INPUT (headers only), or ``(1, 1, *size)`` from --size."""
    if bool(inputs) == bool(spatial_size):
        raise click.UsageError("give either INPUT or --size H,W (exactly one)")
    if inputs and stack:  # volumes are assembled from their slices: read them
        array = load_inputs(inputs, spatial_dims, max_pixels, stack=True).array
        return array.shape, array.dtype
    if inputs:
        return probe_shape(inputs, spatial_dims, max_pixels)
    assert spatial_size is not None
    return (1, 1, *typed_size(spatial_size, block.kernel_size)), None


def stats_rows(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    """Table rows for the human-readable summary."""
    cov = stats["coverage"]
    histogram = ", ".join(f"{count}×: {pixels:,}" for count, pixels in cov["histogram"].items())
    return [
        ("input shape", stats["input_shape"]),
        ("kernel / stride", f"{stats['kernel_size']} / {stats['stride']}"),
        ("padding / dilation", f"{stats['padding']} / {stats['dilation']}"),
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
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@size_option
@block_options()
@click.option("--channels", type=click.IntRange(1), default=None, help="Channels C (default: the input's, or 1).")
@click.option("--batch", type=click.IntRange(1), default=None, help="Batch size N (default: the inputs', or 1).")
@dtype_option("Output dtype for the memory estimate (keep: the input's; float32 with --size).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="ncl", show_default=True)
@spatial_dims_option
@stack_option
@max_pixels_option
@max_memory_option
@json_option
@handle_errors
def stats(
    inputs: tuple[Path, ...],
    spatial_size: tuple[int, ...] | None,
    block: BlockParams,
    channels: int | None,
    batch: int | None,
    dtype: str,
    layout: str,
    spatial_dims: int | None,
    stack: bool,
    max_pixels: int,
    max_memory: int | None,
    as_json: bool,
) -> None:
    """Print overlap statistics for INPUT (or --size) without unfolding anything.

    Exact, and instant even for huge sizes: coverage is computed per axis.

    \b
    Example:
      patchfold stats --size 512,512 -k 16 -s 8
      patchfold stats sample_images/scene_rgb.png -k 32 -s 16 --json
    """
    shape, input_dtype = shape_of(inputs, spatial_size, block, spatial_dims, stack, max_pixels)
    shape = (batch or shape[0], channels or shape[1], *shape[2:])
    out_dtype = dtype if dtype != "keep" else (input_dtype or np.dtype(np.float32))
    geometry = block.geometry(tuple(shape[2:]))
    result = ops.stats_with(geometry, channels=shape[1], batch=shape[0], dtype=out_dtype, layout=layout)
    plan = plan_unfold(shape, out_dtype, geometry, layout, max_memory)
    input_bytes = math.prod(shape) * np.dtype(input_dtype or out_dtype).itemsize
    streaming = (
        f"yes: {plan.bands} bands of {plan.band_rows} block rows within {human_bytes(plan.budget)}"
        if plan.streaming
        else f"no: the whole output fits the {human_bytes(plan.budget)} budget"
    )
    rows = [
        *stats_rows(result),
        ("unfold would stream", streaming),
        ("unfold peak memory", f"≈ {human_bytes(plan.peak_memory(input_bytes))} (input, padding, bands)"),
    ]
    emit_summary("overlap statistics", result, as_json, rows)


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@size_option
@block_options()
@click.option("--npy", "npy_path", type=click.Path(path_type=Path), default=None, help="Write the map as .npy (H, W).")
@click.option(
    "--png", "png_path", type=click.Path(path_type=Path), default=None, help="Write a heatmap PNG with a legend."
)
@spatial_dims_option
@stack_option
@max_pixels_option
@json_option
@handle_errors
def divisor(
    inputs: tuple[Path, ...],
    spatial_size: tuple[int, ...] | None,
    block: BlockParams,
    npy_path: Path | None,
    png_path: Path | None,
    spatial_dims: int | None,
    stack: bool,
    max_pixels: int,
    as_json: bool,
) -> None:
    """Compute the divisor map fold(unfold(ones)) — how many blocks cover each pixel — for INPUT's
    size (or --size), write it as .npy and/or a heatmap PNG, and print the overlap statistics.

    \b
    Example:
      patchfold divisor --size 256,256 -k 32 -s 24 --png divisor.png --npy divisor.npy
    """
    shape, _ = shape_of(inputs, spatial_size, block, spatial_dims, stack, max_pixels)
    geometry = block.geometry(tuple(shape[2:]))
    for path, suffix, option in ((npy_path, ".npy", "'--npy'"), (png_path, ".png", "'--png'")):
        if path is not None:
            if path.suffix.lower() != suffix:
                raise click.BadParameter(f"expected a {suffix} path, got '{path}'", param_hint=option)
            check_output_path(path)
    if npy_path is not None:
        save_npy(npy_path, coverage.divisor_map(geometry))
    if png_path is not None:
        from patchfold.render import write_divisor_png

        write_divisor_png(png_path, geometry)
    result = ops.stats_with(geometry, channels=shape[1], batch=shape[0], dtype=np.float32)
    if not as_json and sys.stderr.isatty():
        divisor_preview(geometry)
    written = [str(p) for p in (npy_path, png_path) if p is not None]
    emit_summary(
        "divisor map",
        {**result, "written": written},
        as_json,
        [*stats_rows(result), ("written", ", ".join(written) or "nothing (use --npy/--png)")],
    )
