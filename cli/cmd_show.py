"""``patchfold show``: pictures of the patch grid, of patches, and of the overlap."""

from __future__ import annotations

from pathlib import Path

import click
from patchfold.blocks import Blocks
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import PATH, block_options, level_options, max_pixels_option, verbosity_options
from patchfold.cli.present import note
from patchfold.io.levels import Level

_OUTPUT = click.option("-o", "--output", required=True, type=PATH, help="PNG to write.")


@click.group()
def show() -> None:
    """Render pictures: the block grid over an image, a mosaic of patches, or the divisor map
    beside the image.

    \b
    Example:
      patchfold sample -o scene.png && patchfold unfold scene.png -k 16 -s 8 -o out/patches.npy
      patchfold show grid scene.png -k 64 -s 48 -p 8 -o out/grid.png
      patchfold show mosaic out/patches.npy --count 64 -o out/mosaic.png
      patchfold show divisor scene.png -k 64 -s 48 -o out/overlap.png
    """


@show.command()
@click.argument("image", type=PATH)
@block_options(cover=True)
@_OUTPUT
@level_options
@max_pixels_option
@verbosity_options
@handle_errors
def grid(image: Path, blocks: Blocks, output: Path, level: Level, max_pixels: int) -> None:
    """Draw the block grid over IMAGE: outlines of every n-th block (the first one in blue) and the
    padding area hatched.

    \b
    Example:
      patchfold sample -o scene.png
      patchfold show grid scene.png -k 64 -s 48 -p 8 -o out/grid.png
    """
    from patchfold.jobs.pictures import grid_picture_file

    note(f"wrote {grid_picture_file(image, blocks, output, max_pixels=max_pixels, level=level)}")


@show.command()
@click.argument("patches", type=PATH)
@click.option("--count", type=click.IntRange(1, 4096), default=64, show_default=True, help="Patches to show.")
@click.option("--spread", is_flag=True, help="Pick COUNT patches evenly over the image instead of the first ones.")
@_OUTPUT
@verbosity_options
@handle_errors
def mosaic(patches: Path, count: int, spread: bool, output: Path) -> None:
    """Lay out the first COUNT patches of a patch matrix PATCHES.npy (with its sidecar) as a grid.

    \b
    Example:
      patchfold sample -o scene.png && patchfold unfold scene.png -k 16 -s 8 -o out/patches.npy
      patchfold show mosaic out/patches.npy --count 100 --spread -o out/mosaic.png
    """
    from patchfold.jobs.pictures import mosaic_file

    note(f"wrote {mosaic_file(patches, output, count=count, spread=spread)}")


@show.command("divisor")
@click.argument("image", type=PATH)
@block_options(cover=True)
@_OUTPUT
@level_options
@max_pixels_option
@verbosity_options
@handle_errors
def divisor_picture(image: Path, blocks: Blocks, output: Path, level: Level, max_pixels: int) -> None:
    """IMAGE and its divisor map (blocks per pixel, with a legend) side by side.

    \b
    Example:
      patchfold sample -o scene.png
      patchfold show divisor scene.png -k 64 -s 48 -o out/overlap.png
    """
    from patchfold.jobs.pictures import divisor_picture_file

    note(f"wrote {divisor_picture_file(image, blocks, output, max_pixels=max_pixels, level=level)}")
