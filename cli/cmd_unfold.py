"""``patchfold unfold``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from patchfold.blocks import Blocks
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    PATH,
    block_options,
    check_one_stdout,
    compression_option,
    device_options,
    dtype_option,
    json_option,
    layout_option,
    level_options,
    max_memory_option,
    max_pixels_option,
    progress_option,
    recursive_option,
    spatial_dims_option,
    stack_option,
    verbosity_options,
)
from patchfold.cli.present import emit_summary, fold_flags, human_bytes, note, track
from patchfold.io.levels import Level
from patchfold.io.streams import is_stdio


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=PATH)  # - is standard input
@click.option(
    "-o",
    "--output",
    required=True,
    type=PATH,
    help="Patch matrix to write: .npy (sidecar .json beside it), .zarr, or - for the .npy on standard output.",
)
@block_options(cover=True)
@dtype_option("Output dtype; floats scale integer images to [0, 1].")
@layout_option("ncl: (N, C·∏k, L), PyTorch's; nlc: (N, L, C·∏k), one row per patch.")
@compression_option
@device_options
@spatial_dims_option
@stack_option
@level_options
@recursive_option
@max_pixels_option
@max_memory_option
@progress_option
@json_option
@verbosity_options
@handle_errors
def unfold(
    inputs: tuple[Path, ...],
    output: Path,
    blocks: Blocks,
    dtype: str,
    layout: str,
    compression: str,
    device: str,
    engine: str,
    spatial_dims: int | None,
    stack: bool,
    level: Level,
    max_pixels: int,
    max_memory: int | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Extract the sliding blocks of INPUTS (images, directories of images, .npy arrays, Zarr or
    OME-Zarr stores, pyramidal TIFFs, whole-slide images such as .svs) into a patch matrix:
    OUTPUT.npy with its parameters in OUTPUT.json beside it, or OUTPUT.zarr with them in its
    attributes.

    Several inputs stack into the batch N and must agree in size and channels. Zarr inputs, slides
    and pyramid levels (--level, or --mpp / --magnification from the file's resolution) are read
    band by band, so a level larger than memory streams through.

    \b
    Example:
      patchfold sample -o scene.png
      patchfold unfold scene.png -k 16 -s 8 -o patches.npy
      patchfold unfold my_scans/ -k 32,16 --layout nlc --dtype float32 -o all.npy
      patchfold unfold slide.ome.tif --level 1 -k 256 -s 256 -o patches.zarr
      patchfold unfold slide.ome.tif --mpp 1 -k 256 -s 256 -o coarse.npy
      cat scene.png | patchfold unfold - -k 16 -s 8 -o - > piped.npy
    """
    from patchfold.jobs.unfold import unfold_file

    check_one_stdout(as_json, output)
    job = unfold_file(
        inputs, output, blocks, dtype=dtype, layout=layout, device=device, engine=engine,
        spatial_dims=spatial_dims, stack=stack, max_pixels=max_pixels, max_memory=max_memory,
        level=level, compression=compression, stdout=sys.stdout.buffer,
    )  # fmt: skip
    result = track(job, "unfold", not no_progress)
    if is_stdio(output):
        note(f"no sidecar goes with standard output; fold it with: patchfold fold - {fold_flags(result)} -o OUT")
    summary = result.summary()
    # the table shows the output's size in words where the JSON has its byte count
    rows = [("size", human_bytes(value)) if key == "output_bytes" else (key, value) for key, value in summary.items()]
    if result.plan.streaming:
        rows.append(("note", f"streamed in {result.plan.bands} bands to stay within {human_bytes(result.plan.budget)}"))
    emit_summary(f"unfold → {output}", summary, as_json, rows)
