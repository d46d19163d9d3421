"""``patchfold sample``: the synthetic test image the help examples use."""

from __future__ import annotations

from pathlib import Path

import click
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import PATH, POSITIVE, verbosity_options
from patchfold.cli.present import note


@click.command()
@click.option("-o", "--output", required=True, type=PATH, help="Image file (.png, .tif, ...) or .npy (C, H, W).")
@click.option("--size", "spatial_size", type=POSITIVE, default=(240, 320), show_default="240,320", help="H,W.")
@click.option("--channels", type=click.IntRange(1, 4), default=3, show_default=True, help="1 grey, 3 RGB, 4 RGBA.")
@click.option(
    "--dtype",
    type=click.Choice(["uint8", "uint16", "float32"]),
    default="uint8",
    show_default=True,
    help="Pixel type (uint16 images: one channel as .png, any as .tif or .npy).",
)
@verbosity_options
@handle_errors
def sample(output: Path, spatial_size: int | tuple[int, ...], channels: int, dtype: str) -> None:
    """Write a synthetic test image (gradients, discs, fine stripes) to try the other commands on.

    The same picture every time, made on the spot: no data file is needed.

    \b
    Example:
      patchfold sample -o scene.png
      patchfold sample --size 512,512 --channels 1 --dtype uint16 -o depth.png
    """
    from patchfold.jobs.pictures import sample_file

    note(f"wrote {sample_file(output, size=spatial_size, channels=channels, dtype=dtype)}")
