"""One image of a dataset, as a worker reads it: its pixels, the blocks the keep rules choose, its
patches band by band, and the digest that tells a resumed run whether it changed.

An image that is a **region source** (a pyramid level, a Zarr store, a whole-slide image, a single
tiled TIFF) is never read whole: its blocks are chosen (:func:`choose_blocks`) and its patches made
(:func:`patch_bands`) band by band of block rows, as ``tiles`` reads it
(:mod:`patchfold.jobs.tile_rows`), so a worker holds a band of rows and the patches of that band,
not the level. Any other image is read whole, within the memory budget, one per worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from patchfold import dtypes
from patchfold.blocks import Blocks
from patchfold.engines.cpu import unfold_into
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.io import read
from patchfold.io.levels import Level
from patchfold.io.sources import RegionSource, convert_channels
from patchfold.jobs import tile_rows
from patchfold.keep import KeepRules, Selection, select_blocks
from patchfold.ops import unfold


@dataclass(frozen=True, kw_only=True)
class ImagePart:
    """One image's share of a dataset: its rows ``[first_row, first_row + rows)`` and how they are
    made. Picklable, sent to workers; each layout's task adds where the rows go."""

    image_id: int
    source: str
    first_row: int
    rows: int
    patch_length: int
    dtype: str
    scale: float
    channels: int | None
    blocks: Blocks
    max_pixels: int
    level: Level = None  # the pyramid level (or resolution) read of every image
    #: with keep rules: the blocks (row-major indices) whose patches are kept, in order
    kept: np.ndarray | None = field(default=None, compare=False)

    def part(self) -> dict[str, Any]:
        """Its fields as :class:`ImagePart`'s, to make another layout's task of the same rows."""
        return {f.name: getattr(self, f.name) for f in fields(ImagePart)}


def open_source(source: str, max_pixels: int, level: Level, channels: int | None) -> np.ndarray | RegionSource:
    """One image as ``(N, C, *spatial)`` with ``channels`` (None: its own): a
    :class:`~patchfold.io.sources.RegionSource` where it is read region by region (a level, a
    Zarr store, a slide, a single tiled TIFF), otherwise the array, read whole."""
    path = Path(source)
    array = read.read_input(path, None, max_pixels, level=tile_rows.read_level([path], level))
    if isinstance(array, RegionSource):
        return array if channels is None else replace(array, channels=channels)
    return convert_channels(array, channels, source)


def choose_blocks(
    path: Path, geometry: Geometry, keep: KeepRules, channels: int | None, max_pixels: int, level: Level
) -> tuple[Selection, int | None]:
    """The keep rules' choice of an image's blocks (its pixels read as a worker reads them), and
    the pyramid level its threshold was sampled from where that is not the level read (see
    :mod:`patchfold.jobs.tile_rows`)."""
    array = open_source(str(path), max_pixels, level, channels)
    if array.shape[0] != 1:
        raise PatchfoldError(f"'{path}' holds {array.shape[0]} images; keep rules choose the blocks of one")
    if not isinstance(array, RegionSource):
        return select_blocks(array[0], geometry, keep), None
    selections, sampled = tile_rows.streamed_selections(array, geometry, keep)
    return selections[0], (sampled if sampled != array.level else None)


def patch_bands(task: ImagePart) -> Iterator[tuple[int, np.ndarray]]:
    """One image's patches as the plan has them, ``(rows, C·∏k)`` in the dataset's dtype and scale
    (only the kept blocks' with keep rules), band by band, each with the first of the image's rows
    it holds: one band of an image in memory, bands of block rows of a region source."""
    array = open_source(task.source, task.max_pixels, task.level, task.channels)
    geometry = task.blocks.at(array.shape[2:])
    _check_planned(task, array, geometry)
    if not isinstance(array, RegionSource):
        values = dtypes.cast_scaled(array[:1], np.dtype(task.dtype), task.scale)
        patches = unfold(np.ascontiguousarray(values), task.blocks, layout="nlc", threads=1)[0]
        yield 0, (patches if task.kept is None else patches[task.kept])
        return
    done = 0
    for first, last in _bands(array, geometry, task):
        patches = _band_patches(array, geometry, task, first, last)
        if len(patches):  # a band may keep none of its blocks
            yield done, patches
            done += len(patches)


def _check_planned(task: ImagePart, array: np.ndarray | RegionSource, geometry: Geometry) -> None:
    """Refuse an image whose blocks or patch length are not those it was planned with."""
    blocks, length = geometry.num_blocks, array.shape[1] * geometry.kernel_volume
    rows = blocks if task.kept is None else len(task.kept)
    fits = task.kept is None or int(task.kept.max(initial=-1)) < blocks
    if not fits or rows != task.rows or length != task.patch_length:
        raise PatchfoldError(
            f"'{task.source}' changed since the dataset was planned: {blocks} blocks of patches of "
            f"{length} values, expected {task.rows} patches of {task.patch_length}"
        )


def _bands(source: RegionSource, geometry: Geometry, task: ImagePart) -> Iterator[tuple[int, int]]:
    """Block rows ``[first, last)`` per band: the padded rows of each, and its patches, within
    about :data:`~patchfold.jobs.tile_rows.BAND_BYTES`."""
    padded_row = source.nbytes // source.shape[0] // source.shape[2]
    padded_row = padded_row * int(np.prod(geometry.padded_size[1:])) // int(np.prod(source.shape[3:]))
    patch_row = geometry.blocks_per_row * task.patch_length * np.dtype(task.dtype).itemsize
    most = max(1, tile_rows.BAND_BYTES // max(1, patch_row))  # block rows of patches a band holds
    for first, last in tile_rows.row_bands(geometry, max(1, padded_row)):
        for lo in range(first, last, most):
            yield lo, min(last, lo + most)


def _band_patches(source: RegionSource, geometry: Geometry, task: ImagePart, first: int, last: int) -> np.ndarray:
    """The patches of block rows ``[first, last)`` of the first image of ``source`` (the kept ones)."""
    pixels, _ = tile_rows.read_band(source, geometry, first, last)
    slab = dtypes.cast_scaled(pixels[:1], np.dtype(task.dtype), task.scale)
    slab_geometry = geometry.over_padded(slab.shape[2:])
    per_row = geometry.blocks_per_row
    out = np.empty((1, (last - first) * per_row, task.patch_length), np.dtype(task.dtype))
    unfold_into(np.ascontiguousarray(slab), slab_geometry, out, "nlc", threads=1)
    if task.kept is None:
        return out[0]
    lo, hi = np.searchsorted(task.kept, [first * per_row, last * per_row])
    return out[0][task.kept[lo:hi] - first * per_row]


def fingerprint(source: str | Path) -> str:
    """A digest of a source's bytes (of every file of a directory, such as a Zarr store, with its
    name): a changed image is redone on resume. Empty where it cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    path = Path(source)
    try:
        if path.is_dir():
            for name in sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()):
                digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
                _digest_file(digest, path / name)
        else:
            _digest_file(digest, path)
    except OSError:
        return ""
    return digest.hexdigest()


def _digest_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
