"""Whole-slide images (Aperio ``.svs``, Hamamatsu ``.ndpi``, 3DHISTECH ``.mrxs``, Leica ``.scn``,
Hamamatsu ``.vms``/``.vmu``, Ventana ``.bif``) read region by region through OpenSlide (the
``slide`` extra: ``pip install 'patchfold[slide]'``).

A level is read with ``read_region`` in strips of rows (at most :data:`STRIP_PIXELS` at a time),
so a band of an unfold holds only its own rows. OpenSlide gives RGBA with its alpha 0 where the slide
has no data (outside the scanned area, or between the tiles of an MRXS); patchfold gives RGB, every
pixel composited onto the slide's background colour (``openslide.background-color``, white where
the slide names none) as OpenSlide's documentation advises: ``rgb·a + background·(1 − a)``.
Where alpha is 255 (all of a plain TIFF or SVS) this is the RGB OpenSlide read, unchanged.

OpenSlide places a region by its top-left pixel in level-0 coordinates: on a level whose
downsample is not a whole number that origin is rounded, and OpenSlide resamples the rows by the
fraction of a pixel left over (its own ``read_region`` behaviour; exact on whole-number levels).

Levels, their sizes and downsamples are OpenSlide's; the resolution comes from
``openslide.mpp-x`` / ``openslide.mpp-y`` (scaled by each level's size) and the magnification
from ``openslide.objective-power`` over the level's downsample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from patchfold.errors import PatchfoldError
from patchfold.io.levels import Level, LevelRequest, LevelScale, pick_level
from patchfold.io.sources import RegionSource

#: The suffixes read through OpenSlide (other TIFFs, pyramidal or not, are read with tifffile).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif")

#: Pixels asked of OpenSlide per ``read_region`` call (16 MiB of RGBA).
STRIP_PIXELS = 1 << 22

#: The background of a slide that names none (``openslide.background-color``): white glass.
WHITE = (255, 255, 255)


def is_slide(path: Path) -> bool:
    """Whether ``path`` is read through OpenSlide (by its suffix)."""
    return path.suffix.lower() in SLIDE_SUFFIXES


def openslide_module() -> Any:
    """The openslide package (with its library), or one clear error naming the extra."""
    try:
        import openslide
    except (ImportError, OSError):  # not installed, or installed without the OpenSlide library
        raise PatchfoldError(
            f"reading whole-slide images ({', '.join(SLIDE_SUFFIXES)}) needs OpenSlide: pip install 'patchfold[slide]'"
        ) from None
    return openslide


class SlideLevel:
    """One level of an open slide as a read-only ``(H, W, 3)`` uint8 array: indexing it with
    slices reads that region (what :class:`~patchfold.io.sources.RegionSource` asks of it)."""

    def __init__(self, slide: Any, level: int, background: tuple[int, int, int]) -> None:
        width, height = slide.level_dimensions[level]
        self.slide, self.level, self.background = slide, level, np.array(background, dtype=np.uint16)
        self.downsample = float(slide.level_downsamples[level])
        self.shape = (int(height), int(width), 3)
        self.ndim = 3
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        rows, cols, channels = (index + (slice(None),) * 3)[:3]
        top, bottom = _span(rows, self.shape[0])
        left, right = _span(cols, self.shape[1])
        out = np.empty((bottom - top, right - left, 3), dtype=np.uint8)
        step = max(1, STRIP_PIXELS // max(1, right - left))
        for lo in range(top, bottom, step):
            hi = min(bottom, lo + step)
            out[lo - top : hi - top] = self._read(lo, hi, left, right)
        return out[:, :, channels]

    def _read(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """Rows ``[top, bottom)``, columns ``[left, right)`` of the level, as RGB."""
        # OpenSlide places a region by its top-left pixel in level-0 coordinates
        origin = (round(left * self.downsample), round(top * self.downsample))
        region = self.slide.read_region(origin, self.level, (right - left, bottom - top))
        return composite(np.asarray(region), self.background)


def _span(index: Any, size: int) -> tuple[int, int]:
    if not isinstance(index, slice):
        raise TypeError(f"a slide level is read by slices of rows and columns, got {index!r}")
    start, stop, step = index.indices(size)
    if step != 1:
        raise TypeError("a slide level is read by contiguous slices")
    return start, max(start, stop)


def composite(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """RGB of OpenSlide's (unpremultiplied) RGBA composited onto ``background``; where alpha is
    255 everywhere, the RGB as it is.

    >>> composite(np.array([[[10, 20, 30, 255], [200, 0, 0, 0], [0, 0, 0, 128]]], np.uint8), np.array(WHITE))
    array([[[ 10,  20,  30],
            [255, 255, 255],
            [127, 127, 127]]], dtype=uint8)
    """
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if alpha.min(initial=255) == 255:
        return rgb
    a = alpha.astype(np.uint16)
    blended = (rgb.astype(np.uint16) * a + background.astype(np.uint16) * (255 - a) + 127) // 255
    return blended.astype(np.uint8)


def open_slide(path: Path, level: Level = None) -> RegionSource:
    """Level ``level`` (None: 0; a :class:`~patchfold.io.levels.LevelRequest`: from the slide's
    pixel size and objective power) of a whole-slide image, as a :class:`RegionSource` of
    ``(1, 3, H, W)`` uint8 read through OpenSlide."""
    openslide = openslide_module()
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise PatchfoldError(
            f"'{path}' is not a slide OpenSlide can read (supported: {', '.join(SLIDE_SUFFIXES)})"
        ) from None
    except (openslide.OpenSlideError, OSError) as error:
        raise PatchfoldError(f"'{path}' is a damaged slide or cannot be read: {error}") from None
    properties = slide.properties
    levels = int(slide.level_count)
    chosen = pick_level(path, level, levels, lambda: [_scale(slide, i) for i in range(levels)])
    return RegionSource(
        SlideLevel(slide, chosen, _background(properties)),
        "YXS",
        str(path),
        level=chosen,
        levels=levels,
        resolution=_resolution(slide, chosen),
        magnification=_scale(slide, chosen).magnification if _number(properties, "objective-power") else None,
        asked=level if isinstance(level, LevelRequest) else None,
    )


def _number(properties: Any, name: str) -> float | None:
    """The positive number property ``openslide.NAME``, or None where absent or not a number."""
    try:
        value = float(properties.get(f"openslide.{name}", ""))
    except ValueError:
        return None
    return value if value > 0 and value != float("inf") else None


def _resolution(slide: Any, level: int) -> tuple[float, float] | None:
    """Micrometres per pixel (Y, X) of a level: the slide's ``mpp-y``/``mpp-x`` times the
    level's size ratio to level 0 along each dim."""
    mpp_y, mpp_x = _number(slide.properties, "mpp-y"), _number(slide.properties, "mpp-x")
    if mpp_y is None or mpp_x is None:
        return None
    (width0, height0), (width, height) = slide.level_dimensions[0], slide.level_dimensions[level]
    return (mpp_y * height0 / height, mpp_x * width0 / width)


def _scale(slide: Any, level: int) -> LevelScale:
    objective = _number(slide.properties, "objective-power")
    return LevelScale.of(_resolution(slide, level), objective, float(slide.level_downsamples[level]))


def _background(properties: Any) -> tuple[int, int, int]:
    """The slide's background colour (``openslide.background-color``, ``RRGGBB``), else white."""
    text = str(properties.get("openslide.background-color", ""))
    try:
        value = int(text, 16) if len(text) == 6 else -1
    except ValueError:
        return WHITE
    return WHITE if value < 0 else (value >> 16 & 255, value >> 8 & 255, value & 255)
