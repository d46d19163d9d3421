"""``patchfold show``: pictures of the patch grid, of patches, and of the overlap."""

from __future__ import annotations

from pathlib import Path

import click
from patchfold import render
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import block_options, max_pixels_option
from patchfold.io.formats import check_against_sidecar, read_sidecar, sidecar_path
from patchfold.io.read import load_inputs, read_patch_matrix
from patchfold.io.write import check_output_path

_OUTPUT = click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="PNG to write.")


def _check_png(output: Path) -> None:
    if output.suffix.lower() != ".png":
        raise click.BadParameter(f"pictures are written as .png, got '{output}'", param_hint="'-o' / '--output'")
    check_output_path(output)


def _first_image(image: Path, max_pixels: int):
    return load_inputs([image], max_pixels=max_pixels).array[0]


@click.group()
def show() -> None:
    """Render pictures: the block grid over an image, a mosaic of patches, or the divisor map
    beside the image.

    \b
    Example:
      patchfold show grid sample_images/scene_rgb.png -k 64 -s 48 -p 8 -o out/grid.png
      patchfold show mosaic out/patches.npy --count 64 -o out/mosaic.png
      patchfold show divisor sample_images/scene_rgb.png -k 64 -s 48 -o out/overlap.png
    """


@show.command()
@click.argument("image", type=click.Path(path_type=Path))
@block_options()
@_OUTPUT
@max_pixels_option
@handle_errors
def grid(image: Path, block, output: Path, max_pixels: int) -> None:
    """Draw the block grid over IMAGE: outlines of every n-th block (the first one in blue) and the
    padding area hatched.

    \b
    Example:
      patchfold show grid sample_images/scene_rgb.png -k 64 -s 48 -p 8 -o out/grid.png
    """
    _check_png(output)
    pixels = _first_image(image, max_pixels)
    render.save_png(output, render.grid_picture(pixels, block.geometry(pixels.shape[1:])))
    click.echo(f"wrote {output}", err=True)


@show.command()
@click.argument("patches", type=click.Path(path_type=Path))
@click.option("--count", type=click.IntRange(1, 4096), default=64, show_default=True, help="Patches to show.")
@click.option("--spread", is_flag=True, help="Pick COUNT patches evenly over the image instead of the first ones.")
@_OUTPUT
@handle_errors
def mosaic(patches: Path, count: int, spread: bool, output: Path) -> None:
    """Lay out the first COUNT patches of a patch matrix PATCHES.npy (with its sidecar) as a grid.

    \b
    Example:
      patchfold show mosaic out/patches.npy --count 100 --spread -o out/mosaic.png
    """
    _check_png(output)
    cols = read_patch_matrix(patches)
    sidecar = read_sidecar(patches)
    if sidecar is None:
        raise click.ClickException(f"'{patches}' has no sidecar '{sidecar_path(patches)}' to tell the patch shape")
    check_against_sidecar(cols, sidecar, sidecar.layout, patches)
    channels = sidecar.input_shape[1]
    picture = render.mosaic_picture(cols, channels, sidecar.kernel_size, sidecar.layout, count, spread)
    render.save_png(output, picture)
    click.echo(f"wrote {output}", err=True)


@show.command("divisor")
@click.argument("image", type=click.Path(path_type=Path))
@block_options()
@_OUTPUT
@max_pixels_option
@handle_errors
def divisor_picture(image: Path, block, output: Path, max_pixels: int) -> None:
    """IMAGE and its divisor map (blocks per pixel, with a legend) side by side.

    \b
    Example:
      patchfold show divisor sample_images/scene_rgb.png -k 64 -s 48 -o out/overlap.png
    """
    _check_png(output)
    pixels = _first_image(image, max_pixels)
    render.save_png(output, render.divisor_beside_image(pixels, block.geometry(pixels.shape[1:])))
    click.echo(f"wrote {output}", err=True)
