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
from patchfold.geometry import Geometry
from patchfold.io.formats import check_against_sidecar, read_sidecar, sidecar_path
from patchfold.io.levels import Level
from patchfold.io.read import DEFAULT_MAX_PIXELS, load_inputs, read_patch_matrix
from patchfold.io.write import check_output_path, image_targets, save_images, save_npy


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
    draw: Callable[[np.ndarray, Geometry], np.ndarray], image: str | Path, blocks: Blocks, output: str | Path,
    max_pixels: int, level: Level = None,
) -> Path:  # fmt: skip
    """``draw(pixels, geometry)`` of the first image of ``image`` (at pyramid ``level``), saved as
    the PNG ``output``."""
    output = _check_png(Path(output))
    pixels = load_inputs([image], max_pixels=max_pixels, level=level).array[0]
    render.save_png(output, draw(pixels, blocks.at(pixels.shape[1:])))
    return output


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
    return _picture_of_image(render.divisor_beside_image, image, blocks, output, max_pixels, level)


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
