"""``patchfold tiles`` and ``patchfold untile``: the shell workflow tiles → any program → untile."""

from __future__ import annotations

import time
from pathlib import Path

import click
from patchfold import ops
from patchfold.cli.cmd_fold import output_targets, write_images, written_to
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    block_options,
    fold_output_options,
    json_option,
    max_pixels_option,
    progress_option,
    spatial_dims_option,
    stack_option,
)
from patchfold.cli.present import emit_summary, track
from patchfold.io.read import load_inputs
from patchfold.jobs.tiles import TILE_FORMATS, TileSet, read_tiles, write_tiles


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Directory to create.")
@block_options()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TILE_FORMATS),
    default="png",
    show_default=True,
    help="Tile file format (npy keeps any dtype exactly).",
)
@spatial_dims_option
@stack_option
@max_pixels_option
@progress_option
@json_option
@handle_errors
def tiles(
    inputs: tuple[Path, ...],
    output: Path,
    block,
    fmt: str,
    spatial_dims: int | None,
    stack: bool,
    max_pixels: int,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Write every patch of INPUTS as its own file in a new directory OUTPUT, with manifest.json
    and manifest.csv listing each tile's file, image, block row/column and pixel box.

    Process the files with any program (keeping their size), then fold them back with untile.

    \b
    Example:
      patchfold tiles sample_images/scene_rgb.png -k 64 -s 48 -o out/tiles
      mogrify -blur 0x2 out/tiles/*.png            # any per-tile processing
      patchfold untile out/tiles --window hann -o out/blended.png
    """
    started = time.perf_counter()
    batch = load_inputs(inputs, spatial_dims, max_pixels, stack)
    geometry = block.geometry(batch.spatial_size)
    track(write_tiles(batch.array, geometry, output, batch.sources, fmt), "tiles", not no_progress)
    count = batch.array.shape[0] * geometry.num_blocks
    summary = {
        "output": str(output),
        "tiles": count,
        "images": batch.array.shape[0],
        "format": fmt,
        "tile_shape": [batch.array.shape[1], *geometry.kernel_size],
        "blocks_per_dim": list(geometry.blocks_per_dim),
        "manifest": [str(output / "manifest.json"), str(output / "manifest.csv")],
        "seconds": round(time.perf_counter() - started, 4),
    }
    emit_summary(f"tiles → {output}", summary, as_json)


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@fold_output_options
@progress_option
@json_option
@handle_errors
def untile(directory: Path, output: Path, window: str, normalize: bool, no_progress: bool, as_json: bool) -> None:
    """Fold a tile DIRECTORY written by `patchfold tiles` (and possibly processed since) back into
    images, using its manifest.

    \b
    Example:
      patchfold untile out/tiles -o out/restored.png
      patchfold untile out/tiles --window gaussian:0.2 -o out/blended.png
    """
    started = time.perf_counter()
    tileset: TileSet = track(read_tiles(directory), "untile", not no_progress)
    geometry = tileset.geometry
    sources = [image.get("source", "") for image in tileset.manifest.get("images", [])]
    targets = output_targets(output, tileset.cols.shape[0], sources)
    images = ops.fold_with(tileset.cols, geometry, normalize, window=window)
    write_images(output, targets, images)
    summary = {
        "output": written_to(output, targets),
        "tiles": tileset.cols.shape[2] * tileset.cols.shape[0],
        "output_shape": list(images.shape),
        "output_dtype": str(images.dtype),
        "window": window,
        "normalize": normalize,
        "seconds": round(time.perf_counter() - started, 4),
    }
    emit_summary(f"untile → {output}", summary, as_json)
