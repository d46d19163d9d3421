"""``patchfold unfold``."""

from __future__ import annotations

from pathlib import Path

import click
from patchfold.blocks import Blocks
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    PATH,
    block_options,
    device_options,
    dtype_option,
    json_option,
    max_memory_option,
    max_pixels_option,
    progress_option,
    spatial_dims_option,
    stack_option,
)
from patchfold.cli.present import emit_summary, human_bytes, track
from patchfold.geometry import LAYOUTS


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=PATH)
@click.option("-o", "--output", required=True, type=PATH, help="Patch matrix .npy to write.")
@block_options()
@dtype_option("Output dtype; floats scale integer images to [0, 1].")
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="ncl",
    show_default=True,
    help="ncl: (N, C·∏k, L), PyTorch's; nlc: (N, L, C·∏k), one row per patch.",
)
@device_options
@spatial_dims_option
@stack_option
@max_pixels_option
@max_memory_option
@progress_option
@json_option
@handle_errors
def unfold(
    inputs: tuple[Path, ...],
    output: Path,
    blocks: Blocks,
    dtype: str,
    layout: str,
    device: str,
    engine: str,
    spatial_dims: int | None,
    stack: bool,
    max_pixels: int,
    max_memory: int | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Extract the sliding blocks of INPUTS (images, directories of images, or .npy arrays) into a
    patch matrix OUTPUT.npy, with its parameters in OUTPUT.json beside it.

    Several inputs stack into the batch N and must agree in size and channels.

    \b
    Example:
      patchfold unfold sample_images/scene_rgb.png -k 16 -s 8 -o patches.npy
      patchfold unfold my_scans/ -k 32,16 --layout nlc --dtype float32 -o all.npy
    """
    from patchfold.jobs.unfold import unfold_file

    job = unfold_file(
        inputs, output, blocks, dtype=dtype, layout=layout, device=device, engine=engine,
        spatial_dims=spatial_dims, stack=stack, max_pixels=max_pixels, max_memory=max_memory,
    )  # fmt: skip
    result = track(job, "unfold", not no_progress)
    summary = result.summary()
    # the table shows the output's size in words where the JSON has its byte count
    rows = [("size", human_bytes(value)) if key == "output_bytes" else (key, value) for key, value in summary.items()]
    if result.plan.streaming:
        rows.append(("note", f"streamed in {result.plan.bands} bands to stay within {human_bytes(result.plan.budget)}"))
    emit_summary(f"unfold → {output}", summary, as_json, rows)
