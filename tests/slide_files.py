"""Small slides for the tests (test_slides.py, test_docs.py): tiled TIFF pyramids that both
tifffile and OpenSlide read as the same levels, written with tifffile.

- :func:`write_tiled_pyramid`: a generic tiled TIFF, one top-level page per level (reduced
  levels marked ``subfiletype=1``): OpenSlide's ``generic-tiff`` vendor, tifffile's series levels.
- :func:`write_svs`: the same with Aperio's ImageDescription (``AppMag``, ``MPP``) and a stripped
  thumbnail as the second page, as an SVS has: OpenSlide's ``aperio`` vendor, which reports
  ``openslide.objective-power`` and ``openslide.mpp-x``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyramid_levels(image_hwc: np.ndarray, levels: int) -> list[np.ndarray]:
    """Each level the image halved again (every other pixel), level 0 the image."""
    return [np.ascontiguousarray(image_hwc[:: 2**i, :: 2**i]) for i in range(levels)]


def write_tiled_pyramid(
    path: Path, image_hwc: np.ndarray, levels: int = 3, mpp: float | None = 0.25, tile: int = 32
) -> list[np.ndarray]:
    """A generic tiled RGB TIFF pyramid (resolution tags in cm where ``mpp`` is given, on every
    level scaled by its size); returns its levels."""
    import tifffile

    pyramid = pyramid_levels(image_hwc, levels)
    with tifffile.TiffWriter(path) as tif:
        for index, level in enumerate(pyramid):
            extra = {} if mpp is None else {"resolution": (1e4 / (mpp * 2**index),) * 2, "resolutionunit": 3}
            tif.write(level, tile=(tile, tile), photometric="rgb", subfiletype=1 if index else 0, **extra)
    return pyramid


def write_svs(
    path: Path, image_hwc: np.ndarray, levels: int = 3, mpp: float = 0.25, objective: float = 40, tile: int = 32
) -> list[np.ndarray]:
    """An Aperio-style SVS (uncompressed tiles): level 0, a stripped thumbnail, then the reduced
    levels; returns its levels."""
    import tifffile

    pyramid = pyramid_levels(image_hwc, levels)
    height, width = image_hwc.shape[:2]
    description = (
        f"Aperio Image Library v12.0.0\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) RAW/RGB"
        f"|AppMag = {objective:g}|MPP = {mpp:g}|Filename = test"
    )
    options = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(pyramid[0], tile=(tile, tile), description=description, **options)
        thumbnail = np.ascontiguousarray(image_hwc[::8, ::8])
        tif.write(thumbnail, rowsperstrip=16, description="Aperio Image Library thumbnail", **options)
        for level in pyramid[1:]:
            tif.write(level, tile=(tile, tile), description="Aperio Image Library level", **options)
    return pyramid


def tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 picture of darker, textured tissue on white glass, ``(H, W, 3)``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    inside = ((y - height / 2) / (height / 3)) ** 2 + ((x - width / 2) / (width / 3)) ** 2 < 1
    image = np.full((height, width, 3), 245, dtype=np.uint8)
    image[inside] = rng.integers(60, 200, (int(inside.sum()), 3), dtype=np.uint8)
    return image
