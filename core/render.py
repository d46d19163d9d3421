"""Pictures of coverage: a divisor heatmap with a colour legend, rendered without matplotlib.

Maps are drawn from the per-dim coverage vectors, sampled to the picture's size, so a picture of a
100000×100000 divisor costs no more than one of 1000×1000.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from patchfold.coverage import coverage_vectors, outer
from patchfold.geometry import Geometry
from patchfold.io import atomic_paths, check_output_path

#: Viridis (perceptually uniform, colour-blind safe), sampled at 11 stops.
VIRIDIS = np.array(
    [
        (68, 1, 84),
        (72, 35, 116),
        (64, 67, 135),
        (52, 94, 141),
        (41, 120, 142),
        (32, 144, 140),
        (34, 167, 132),
        (68, 190, 112),
        (121, 209, 81),
        (189, 222, 38),
        (253, 231, 36),
    ],
    dtype=np.float64,
)
#: Colour of pixels no block covers: outside the colormap, so they stand out.
UNCOVERED = (255, 64, 64)
MAX_SIDE = 1024
MIN_SIDE = 256


def colormap(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map values to viridis RGB (uint8, shape ``values.shape + (3,)``)."""
    span = high - low if high > low else 1.0
    position = np.clip((values - low) / span, 0.0, 1.0) * (len(VIRIDIS) - 1)
    index = np.minimum(position.astype(np.int64), len(VIRIDIS) - 2)
    fraction = (position - index)[..., None]
    return np.rint(VIRIDIS[index] * (1 - fraction) + VIRIDIS[index + 1] * fraction).astype(np.uint8)


def sampled_divisor(geometry: Geometry, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE) -> np.ndarray:
    """The 2-D divisor map resampled (nearest) so its longer side is at most ``max_side`` and its
    shorter side at least ``min_side`` where that needs no more than ``max_side``."""
    vectors = coverage_vectors(geometry)
    if geometry.ndim == 1:
        vectors = [np.ones(1, dtype=np.int64), vectors[0]]
    elif geometry.ndim > 2:  # a picture of the middle slice of the leading dims
        leading = outer([v[len(v) // 2 : len(v) // 2 + 1] for v in vectors[:-2]]).reshape(())
        vectors = [vectors[-2] * int(leading), vectors[-1]]
    height, width = len(vectors[0]), len(vectors[1])
    zoom = min(max_side / max(height, width), max(1.0, min_side / min(height, width)))
    rows = np.minimum((np.arange(max(1, round(height * zoom))) / zoom).astype(np.int64), height - 1)
    cols = np.minimum((np.arange(max(1, round(width * zoom))) / zoom).astype(np.int64), width - 1)
    return np.multiply.outer(vectors[0][rows], vectors[1][cols])


def heatmap_image(values: np.ndarray) -> np.ndarray:
    """RGB picture of a coverage map with a legend strip on the right (uint8 ``(H, W, 3)``)."""
    from PIL import Image, ImageDraw

    covered = values > 0
    low = float(values[covered].min()) if covered.any() else 0.0
    high = float(values.max())
    picture = colormap(values, low, high)
    picture[~covered] = UNCOVERED
    height, width = values.shape
    legend_width = 150
    canvas = Image.new("RGB", (width + legend_width, max(height, 200)), (255, 255, 255))
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = width + 12
    draw.text((x0, 4), "blocks per pixel", fill=(0, 0, 0))
    entries = _legend_entries(values, low, high)
    swatch = max(12, min(24, (canvas.height - 40) // max(1, len(entries))))
    for row, (label, colour) in enumerate(entries):
        y = 22 + row * swatch
        draw.rectangle((x0, y, x0 + swatch - 3, y + swatch - 3), fill=colour, outline=(0, 0, 0))
        draw.text((x0 + swatch + 4, y + (swatch - 14) // 2), label, fill=(0, 0, 0))
    return np.asarray(canvas)


def _legend_entries(values: np.ndarray, low: float, high: float) -> list[tuple[str, tuple[int, int, int]]]:
    distinct = np.unique(values)
    shown = distinct[distinct > 0]
    if len(shown) > 10:
        shown = np.unique(np.linspace(low, high, 8).round(2))
    entries = [(f"{v:g}", tuple(int(c) for c in colormap(np.array([v]), low, high)[0])) for v in shown]
    if (distinct == 0).any():
        entries.insert(0, ("0 (uncovered)", UNCOVERED))
    return entries


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Write an RGB/grey uint8 picture atomically."""
    from PIL import Image

    check_output_path(path)
    with atomic_paths(path) as (temporary,):
        Image.fromarray(pixels).save(temporary, format="PNG")


def write_divisor_png(path: Path, geometry: Geometry) -> None:
    save_png(path, heatmap_image(sampled_divisor(geometry)))
