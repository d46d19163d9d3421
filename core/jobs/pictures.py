"""Picture jobs for ``patchfold show``: the block grid over an image, a mosaic of a patch matrix's
patches, and the divisor map beside the image, each written as a PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from patchfold import render
from patchfold.blocks import Blocks
from patchfold.errors import PatchfoldError
from patchfold.io.formats import check_against_sidecar, read_sidecar, sidecar_path
from patchfold.io.levels import Level
from patchfold.io.read import DEFAULT_MAX_PIXELS, load_inputs, read_patch_matrix
from patchfold.io.sources import RegionSource
from patchfold.io.write import check_output_path, image_targets, save_images, save_npy
from patchfold.jobs import tile_rows


def _check_png(output: Path) -> Path:
    if output.suffix.lower() != ".png":
        raise PatchfoldError(f"pictures are written as .png, got '{output}'", param="output")
    check_output_path(output)
    return output


def grid_picture_file(
    image: str | Path,
    blocks: Blocks,
    output: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    level: Level = None,
) -> Path:
    """Draw the block grid of ``blocks`` over ``image`` (at pyramid ``level``) into the PNG ``output``."""
    return _picture_of_image(render.grid_picture, image, blocks, output, max_pixels, level)


def _picture_of_image(
    draw: Callable[..., np.ndarray], image: str | Path, blocks: Blocks, output: str | Path,
    max_pixels: int, level: Level = None, most: int | None = None,
) -> Path:  # fmt: skip
    """``draw(pixels, geometry, step)`` of the first image of ``image`` (at pyramid ``level``),
    saved as the PNG ``output``: the image at every ``step``-th pixel (:func:`picture_pixels`,
    at most ``most`` pixels)."""
    output = _check_png(Path(output))
    inputs = [image]
    batch = load_inputs(inputs, max_pixels=max_pixels, level=tile_rows.read_level(inputs, level), regions=True)
    geometry = blocks.at(batch.array.shape[2:])
    if geometry.ndim != 2:  # refused before any pixel is read
        raise PatchfoldError(f"'{image}' is a {geometry.ndim}-D image; pictures are drawn of 2-D images only")
    pixels, step = picture_pixels(batch.array, most)
    render.save_png(output, draw(pixels, geometry, step=step))
    return output


def picture_pixels(source: np.ndarray | RegionSource, most: int | None = None) -> tuple[np.ndarray, int]:
    """The first image of a 2-D ``source`` at every ``step``-th pixel of each dim (``(C, h, w)``,
    ``h = ceil(H / step)``), at most ``most`` (:data:`~patchfold.render.PICTURE_PIXELS`) pixels,
    and ``step``. A region source is never read whole: its pixels come from the smallest level of
    its pyramid that still has ``most`` pixels (nearest, the source itself where none does), read
    band by band (:func:`~patchfold.jobs.tile_rows.sample_source`)."""
    most = render.PICTURE_PIXELS if most is None else most
    step = render.picture_step(source.shape[2:], most)
    if not isinstance(source, RegionSource):
        return np.ascontiguousarray(source[0, :, ::step, ::step]), step
    drawn = tile_rows.threshold_level(source, most)
    sample = tile_rows.sample_source(drawn, most)[0]
    if drawn is source:
        return sample, step
    # picture row i is row i*step of the source, row i*step*n'/n of the level drawn, and row
    # (that)/step' of its sample (every step'-th row of that level)
    drawn_step = render.picture_step(drawn.shape[2:], most)
    taken = [
        np.minimum(np.arange(-(-n // step)) * step * drawn_n // (n * drawn_step), got - 1)
        for n, drawn_n, got in zip(source.shape[2:], drawn.shape[2:], sample.shape[1:])
    ]
    return np.ascontiguousarray(sample[:, taken[0]][:, :, taken[1]]), step


def mosaic_file(patches: str | Path, output: str | Path, *, count: int = 64, spread: bool = False) -> Path:
    """Lay out ``count`` patches of the patch matrix ``patches`` (with its sidecar) as a PNG."""
    output, patches = _check_png(Path(output)), Path(patches)
    cols = read_patch_matrix(patches)
    sidecar = read_sidecar(patches)
    if sidecar is None:
        raise PatchfoldError(f"'{patches}' has no sidecar '{sidecar_path(patches)}' to tell the patch shape")
    check_against_sidecar(cols, sidecar, patches)
    channels = sidecar.input_shape[1]
    picture = render.mosaic_picture(cols, channels, sidecar.geometry.kernel_size, sidecar.layout, count, spread)
    render.save_png(output, picture)
    return output


def divisor_picture_file(
    image: str | Path,
    blocks: Blocks,
    output: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    level: Level = None,
) -> Path:
    """``image`` (at pyramid ``level``) and its divisor map side by side, as the PNG ``output``."""
    # two pictures side by side, each of a quarter of the pixels of a grid picture
    most = render.PICTURE_PIXELS // 4
    return _picture_of_image(render.divisor_beside_image, image, blocks, output, max_pixels, level, most)


def sample_file(output: str | Path, *, size: Any = (240, 320), channels: int = 3, dtype: str = "uint8") -> Path:
    """Write :func:`patchfold.render.sample_scene` of ``size`` (H,W; one int for a square) as
    ``output``: an image file Pillow writes for that dtype and channel count, or ``.npy``
    ``(C, H, W)``. The test image of the help examples."""
    sides = (size, size) if isinstance(size, int) else tuple(size)
    if len(sides) != 2:
        raise PatchfoldError(
            f"a sample image is 2-D: give H,W (or one int), got {len(sides)} values", param="spatial_size"
        )
    height, width = sides
    if not (1 <= height <= 8192 and 1 <= width <= 8192):
        raise PatchfoldError(f"a sample image is 1 to 8192 pixels a side, got {height}x{width}", param="spatial_size")
    if not 1 <= channels <= 4:
        raise PatchfoldError(f"a sample image has 1 to 4 channels, got {channels}", param="channels")
    output = Path(output)
    targets = image_targets(output, 1)
    picture = render.sample_scene(height, width, channels, dtype)
    if targets is None:
        save_npy(output, picture)
    else:
        save_images(targets, picture[None])
    return output
