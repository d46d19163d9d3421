"""``patchfold fold``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    PATH,
    POSITIVE,
    AliasedOption,
    block_options,
    check_one_stdout,
    compression_option,
    device_options,
    fold_output_options,
    json_option,
    max_memory_option,
    progress_option,
    verbosity_options,
)
from patchfold.cli.present import emit_summary, track
from patchfold.geometry import LAYOUTS

#: What -o - can write (as patchfold.jobs.fold.STREAM_FORMATS, kept here so --help imports no numpy)
STREAM_FORMATS = ("npy", "png", "tif", "jpg", "bmp", "webp")


@click.command()
@click.argument("patches", type=PATH)
@fold_output_options(zarr=True)
@compression_option
@click.option(
    "--size",
    "--output-size",
    "output_size",
    cls=AliasedOption,
    hidden=("--output-size",),
    type=POSITIVE,
    default=None,
    help="Spatial size of the images, H,W (default: from the sidecar).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(STREAM_FORMATS),
    default=None,
    help="What -o - sends to standard output: the .npy array (the default), or one image.",
)
@block_options(required=False, cover=True)
@click.option(
    "--layout", type=click.Choice(LAYOUTS), default=None, help="Layout of PATCHES (default: sidecar, else ncl)."
)
@device_options
@max_memory_option
@progress_option
@json_option
@verbosity_options
@handle_errors
def fold(
    patches: Path,
    output: Path,
    normalize: bool,
    compression: str,
    output_size: int | tuple[int, ...] | None,
    output_format: str | None,
    blocks: dict,
    layout: str | None,
    window: str,
    device: str,
    engine: str,
    max_memory: int | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Overlap-add a patch matrix PATCHES.npy back into images.

    Parameters come from the sidecar PATCHES.json written by unfold (a PATCHES.zarr keeps them in
    its attributes); options given here override it. Without a sidecar (PATCHES - is standard
    input), -k and --size are required.

    \b
    Example:
      patchfold sample -o scene.png
      patchfold unfold scene.png -k 16 -s 8 -o p.npy
      patchfold fold p.npy -o restored.png
      patchfold fold p.npy --window hann -o blended.png
      patchfold fold p.npy --compression zstd -o restored.zarr
      patchfold fold - -k 16 -s 8 --size 240,320 -o - --format png < p.npy > again.png
    """
    from patchfold.jobs.fold import fold_file

    check_one_stdout(as_json, output)
    job = fold_file(
        patches, output, blocks, output_size=output_size, layout=layout, normalize=normalize, window=window,
        device=device, engine=engine, max_memory=max_memory, output_format=output_format,
        compression=compression, stdout=sys.stdout.buffer,
    )  # fmt: skip
    result = track(job, "fold", not no_progress)
    emit_summary(f"fold → {output}", result.summary(), as_json)
