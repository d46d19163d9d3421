"""Pictures of coverage: a divisor heatmap with a colour legend, rendered without matplotlib.

Maps are drawn from the per-dim coverage vectors, sampled to the picture's size, so a picture of a
100000×100000 divisor costs no more than one of 1000×1000.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from patchfold.coverage import coverage_vectors, outer
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry, matrix_dims
from patchfold.io.write import atomic_paths

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
#: Pixels of an image drawn at most (``show grid``, ``show divisor``); a larger one is drawn at
#: every n-th pixel (:func:`picture_step`).
PICTURE_PIXELS = 2048 * 2048


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
        leading = math.prod(int(v[len(v) // 2]) for v in vectors[:-2])
        vectors = [vectors[-2] * leading, vectors[-1]]
    height, width = len(vectors[0]), len(vectors[1])
    zoom = min(max_side / max(height, width), max(1.0, min_side / min(height, width)))
    rows = np.minimum((np.arange(max(1, round(height * zoom))) / zoom).astype(np.int64), height - 1)
    cols = np.minimum((np.arange(max(1, round(width * zoom))) / zoom).astype(np.int64), width - 1)
    return outer([vectors[0][rows], vectors[1][cols]])


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

    with atomic_paths(path) as (temporary,):
        Image.fromarray(pixels).save(temporary, format="PNG")


def write_divisor_png(path: Path, geometry: Geometry) -> None:
    save_png(path, heatmap_image(sampled_divisor(geometry)))


# ----- pictures of images and patches ------------------------------------------------------------
def display_rgb(pixels: np.ndarray) -> np.ndarray:
    """Any ``(C, H, W)`` image as viewable RGB uint8 ``(H, W, 3)`` (floats and 16-bit stretched)."""
    channels = pixels.shape[0]
    picked = pixels[:3] if channels >= 3 else pixels[:1].repeat(3, axis=0)
    values = np.moveaxis(picked, 0, -1)
    if values.dtype == np.uint8:
        return np.ascontiguousarray(values)
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if values.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    span = high - low if high > low else 1.0
    return np.rint(np.clip(np.nan_to_num((values - low) / span), 0, 1) * 255).astype(np.uint8)


def _zoom_for(height: int, width: int, target: int = 512) -> int:
    return max(1, min(8, target // max(height, width, 1)))


def grid_picture(pixels: np.ndarray, geometry: Geometry, max_outlines: int = 12, step: int = 1) -> np.ndarray:
    """The image with its padding shaded and block outlines drawn over it (every n-th block along
    each dim, so the grid stays readable; the first block is drawn in a second colour).

    ``pixels`` is the image at every ``step``-th pixel of each dim (:func:`picture_step`: a large
    image is drawn smaller); pixel ``y`` of the padded image is drawn at ``y // step``."""
    from PIL import Image, ImageDraw

    if geometry.ndim != 2:
        raise PatchfoldError("grid pictures are drawn for 2-D images only")
    (pad_y, _), (pad_x, _) = geometry.pad_widths
    canvas_size = tuple(-(-n // step) for n in geometry.padded_size)
    zoom = _zoom_for(*canvas_size)
    canvas = np.full((*canvas_size, 3), 0, dtype=np.uint8)
    yy, xx = np.mgrid[0 : canvas.shape[0], 0 : canvas.shape[1]]
    canvas[:] = np.where(((yy + xx) // 4 % 2 == 0)[..., None], 150, 110)  # hatched padding
    top, left = pad_y // step, pad_x // step
    canvas[top : top + pixels.shape[1], left : left + pixels.shape[2]] = display_rgb(pixels)
    picture = Image.fromarray(canvas).resize((canvas.shape[1] * zoom, canvas.shape[0] * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    steps = [max(1, -(-count // max_outlines)) for count in geometry.blocks_per_dim]
    outlines = [
        (row, col)
        for row in range(0, geometry.blocks_per_dim[0], steps[0])
        for col in range(0, geometry.blocks_per_dim[1], steps[1])
    ]
    for row, col in [*outlines[1:], outlines[0]]:  # the first block last, in its own colour, on top
        (y0, y1), (x0, x1) = geometry.block_box((row, col))  # unpadded: shift onto the padded canvas
        first_row, first_col = (y0 + pad_y) // step * zoom, (x0 + pad_x) // step * zoom
        last_row, last_col = ((y1 - 1 + pad_y) // step + 1) * zoom - 1, ((x1 - 1 + pad_x) // step + 1) * zoom - 1
        colour = (0, 220, 255) if (row, col) == (0, 0) else (255, 230, 0)
        draw.rectangle((first_col, first_row, last_col, last_row), outline=colour, width=max(2, zoom // 2))
    return np.asarray(picture)


def picture_step(spatial: Sequence[int], most: int | None = None) -> int:
    """The step at which an image of ``spatial`` size is drawn: every pixel up to
    :data:`PICTURE_PIXELS` pixels (or ``most``), every ``step``-th of each dim beyond."""
    from patchfold.keep import subsample_step

    return subsample_step(spatial, PICTURE_PIXELS if most is None else most)


def mosaic_picture(
    cols: np.ndarray, channels: int, kernel_size: Sequence[int], layout: str, count: int, spread: bool = False
) -> np.ndarray:
    """The first ``count`` patches of item 0 of a 2-D patch matrix (or ``count`` spread evenly over
    all of them), laid out in a square grid."""
    if len(kernel_size) != 2:
        raise PatchfoldError("mosaics are drawn for 2-D patches only")
    kh, kw = kernel_size
    blocks = matrix_dims(cols.shape, layout)[1]
    count = max(1, min(count, blocks))
    per_row = int(np.ceil(np.sqrt(count)))
    rows = -(-count // per_row)
    zoom = _zoom_for(rows * (kh + 1), per_row * (kw + 1))
    sheet = np.full((rows * (kh + 1) + 1, per_row * (kw + 1) + 1, 3), 255, dtype=np.uint8)
    chosen = np.linspace(0, blocks - 1, count).astype(np.int64) if spread else np.arange(count)
    patches = np.asarray(cols[0][:, chosen] if layout == "ncl" else cols[0][chosen, :].T)
    side_by_side = patches.reshape(channels, kh, kw, count).transpose(0, 1, 3, 2).reshape(channels, kh, count * kw)
    shown = display_rgb(side_by_side).reshape(kh, count, kw, 3)
    for index in range(count):
        top, left = 1 + (index // per_row) * (kh + 1), 1 + (index % per_row) * (kw + 1)
        sheet[top : top + kh, left : left + kw] = shown[:, index]
    return sheet.repeat(zoom, axis=0).repeat(zoom, axis=1)


def divisor_beside_image(pixels: np.ndarray, geometry: Geometry, step: int = 1) -> np.ndarray:
    """The image and its divisor heatmap (with legend) side by side, at the same scale (``pixels``
    and the map both at every ``step``-th pixel of each dim, as in :func:`grid_picture`)."""
    if geometry.ndim != 2:
        raise PatchfoldError("divisor pictures beside the image are drawn for 2-D images only")
    zoom = _zoom_for(*pixels.shape[1:], 384)
    image = display_rgb(pixels).repeat(zoom, axis=0).repeat(zoom, axis=1)
    vectors = coverage_vectors(geometry)
    heat = heatmap_image(outer([vector[::step].repeat(zoom) for vector in vectors]))
    out = np.full((max(image.shape[0], heat.shape[0]), image.shape[1] + 8 + heat.shape[1], 3), 255, np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    out[: heat.shape[0], image.shape[1] + 8 :] = heat
    return out


def sample_scene(height: int, width: int, channels: int = 3, dtype: str = "uint8") -> np.ndarray:
    """A synthetic test picture ``(channels, height, width)``: smooth colour gradients, a few
    discs and a band of fine stripes, using the dtype's whole range; the same every time (no
    data file needed, so help examples run anywhere).

    >>> sample_scene(4, 6, 1).shape
    (1, 4, 6)
    """
    kind = np.dtype(dtype)
    if kind not in (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32")):
        raise PatchfoldError(f"a sample image is uint8, uint16 or float32, got {dtype!r}")
    # broadcast (H, 1) and (1, W) axes in float32: no full-size coordinate grids
    y = (np.arange(height, dtype=np.float32) / max(height - 1, 1))[:, None]
    x = (np.arange(width, dtype=np.float32) / max(width - 1, 1))[None, :]
    planes = [
        lambda: x + 0 * y,
        lambda: y + 0 * x,
        lambda: 1 - (x + y) / 2,
        lambda: 0.5 + 0.5 * np.sin(6 * np.pi * x * y),
    ]
    scene = np.empty((channels, height, width), np.float32)
    for channel in range(channels):
        scene[channel] = planes[channel % len(planes)]()
    for cy, cx, radius, shade in ((0.35, 0.3, 0.18, 1.0), (0.6, 0.7, 0.22, 0.0), (0.75, 0.25, 0.1, 0.8)):
        inside = (y - cy) ** 2 + ((x - cx) * (width / max(height, 1))) ** 2 < radius**2
        scene[:, inside] = shade
    stripes = (np.arange(height)[:, None] > height * 0.85) & ((np.arange(width)[None, :] // 2) % 2 == 0)
    scene[:, stripes] = 1.0
    if kind.kind == "f":
        return scene
    scene *= np.iinfo(kind).max
    return np.rint(scene, out=scene).astype(kind)
