"""``patchfold tiles`` and ``patchfold untile``: the shell workflow tiles → any program → untile."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from patchfold.blocks import Blocks
from patchfold.choices import TILE_FORMATS
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    PATH,
    block_options,
    fold_output_options,
    json_option,
    keep_options,
    level_options,
    max_pixels_option,
    progress_option,
    recursive_option,
    spatial_dims_option,
    stack_option,
    verbosity_options,
)
from patchfold.cli.present import emit_summary, kept_row, track
from patchfold.io.levels import Level

if TYPE_CHECKING:  # numpy-backed: loaded by the job, not for --help
    from patchfold.keep import KeepRules

#: ``--format`` of tiles and batch tiles.
tile_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(TILE_FORMATS),
    default="png",
    show_default=True,
    help="Tile file format (npy keeps any dtype exactly).",
)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=PATH)
@click.option("-o", "--output", required=True, type=PATH, help="Directory to create.")
@block_options(cover=True)
@tile_format_option
@keep_options
@spatial_dims_option
@stack_option
@level_options
@recursive_option
@max_pixels_option
@progress_option
@json_option
@verbosity_options
@handle_errors
def tiles(
    inputs: tuple[Path, ...],
    output: Path,
    blocks: Blocks,
    fmt: str,
    keep: KeepRules | None,
    spatial_dims: int | None,
    stack: bool,
    level: Level,
    max_pixels: int,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Write every patch of INPUTS as its own file in a new directory OUTPUT, with manifest.json
    and manifest.csv listing each tile's file, image, block row/column and pixel box.

    Process the files with any program (keeping their size), then fold them back with untile.
    --min-foreground/--max-blank skip blank blocks (background: the light side of the image's
    Otsu threshold); untile leaves the pixels no kept tile covers at 0.

    \b
    Example:
      patchfold sample -o scene.png
      patchfold tiles scene.png -k 64 -s 48 -o out/tiles
      mogrify -blur 0x2 out/tiles/*.png            # any per-tile processing
      patchfold untile out/tiles --window hann -o out/blended.png
      patchfold tiles scene.png -k 64 -s 64 --min-foreground 0.5 -o out/kept
    """
    from patchfold.jobs.tiles import tiles_file

    job = tiles_file(
        inputs, output, blocks, tile_format=fmt, spatial_dims=spatial_dims, stack=stack, max_pixels=max_pixels,
        level=level, keep=keep,
    )  # fmt: skip
    result = track(job, "tiles", not no_progress)
    summary = result.summary()
    rows = [(key, kept_row(value) if key == "keep" else value) for key, value in summary.items()]
    emit_summary(f"tiles → {output}", summary, as_json, rows)


@click.command()
@click.argument("directory", type=PATH)
@fold_output_options()
@progress_option
@json_option
@verbosity_options
@handle_errors
def untile(directory: Path, output: Path, window: str, normalize: bool, no_progress: bool, as_json: bool) -> None:
    """Fold a tile DIRECTORY written by `patchfold tiles` (and possibly processed since) back into
    images, using its manifest.

    \b
    Example:
      patchfold sample -o scene.png && patchfold tiles scene.png -k 64 -s 48 -o out/tiles
      patchfold untile out/tiles -o out/restored.png
      patchfold untile out/tiles --window gaussian:0.2 -o out/blended.png
    """
    from patchfold.jobs.tiles import untile_dir

    result = track(untile_dir(directory, output, normalize=normalize, window=window), "untile", not no_progress)
    emit_summary(f"untile → {output}", result.summary(), as_json)
