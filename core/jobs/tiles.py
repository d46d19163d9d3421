"""Patch tiles for the shell: one image file per patch plus a manifest, and back.

``write_tiles`` cuts every block of every image into its own file (PNG, TIFF or .npy), named by
image and block position (``scene_r003_c017.png``), and writes ``manifest.json`` and
``manifest.csv`` with each tile's file, image, block index and pixel box. Any program can then
process the files in place; ``read_tiles`` gathers them back into a patch matrix for folding.
The directory appears only when complete.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.engines.cpu import pad_input
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.io.formats import MANIFEST_FORMAT, MANIFEST_VERSION, manifest_geometry, read_manifest
from patchfold.io.read import read_image, read_npy, read_tiff
from patchfold.io.write import check_parent, to_image_array
from patchfold.jobs.plan import Progress

#: Tile file formats: ``png`` (uint8 with 1-4 channels, or one 16-bit channel), ``tif`` (also one
#: channel of float32/int32, and volumes), ``npy`` (anything, exact).
TILE_FORMATS = ("png", "tif", "npy")


_AXIS_LETTERS = "zrc"


@dataclass
class TileSet:
    """A tile directory read back: the patch matrix ``(N, C·∏k, L)`` and its manifest."""

    cols: np.ndarray
    manifest: dict[str, Any]

    @cached_property
    def geometry(self) -> Geometry:
        return manifest_geometry(self.manifest)


def tile_name(stem: str, index: Sequence[int], suffix: str) -> str:
    """``scene_r003_c017.png`` (2-D), ``vol_z001_r002_c003.npy`` (3-D), ``sig_c012.npy`` (1-D)."""
    letters = _AXIS_LETTERS[-len(index) :] if len(index) <= 3 else "d" * len(index)
    return stem + "".join(f"_{letter}{i:03d}" for letter, i in zip(letters, index)) + f".{suffix}"


def check_tile_format(fmt: str, dtype: np.dtype, channels: int, ndim: int) -> None:
    """Fail before writing anything if tiles of this kind cannot be stored as ``fmt``."""
    if fmt not in TILE_FORMATS:
        raise PatchfoldError(f"tile format must be one of {', '.join(TILE_FORMATS)}, got {fmt!r}", param="format")
    if fmt == "npy":
        return
    if ndim != 2 and not (fmt == "tif" and ndim == 3):
        raise PatchfoldError(f"{ndim}-D tiles are written as npy (or tif for 3-D), not {fmt}", param="format")
    image_ok = (dtype == np.uint8 and channels <= 4) or (channels == 1 and dtype == np.uint16)
    tif_ok = image_ok or (channels == 1 and dtype in (np.float32, np.int32))
    if not (image_ok if fmt == "png" else tif_ok):
        raise PatchfoldError(
            f"{channels}-channel {dtype} tiles cannot be written as {fmt} (png: uint8 with 1-4 channels or one "
            "uint16 channel; tif also one float32/int32 channel); use --format npy",
            param="format",
        )


def write_tiles(
    array: np.ndarray, geometry: Geometry, directory: Path, sources: Sequence[str], fmt: str = "png"
) -> Iterator[Progress]:
    """Write every block of ``array`` ``(N, C, *spatial)`` as a file under ``directory``, one image
    at a time, yielding progress per image. The directory must not exist or be empty."""
    check_tile_format(fmt, array.dtype, array.shape[1], geometry.ndim)
    stems = _unique_stems(sources, array.shape[0])
    with _atomic_directory(directory) as staging:
        tiles: list[dict[str, Any]] = []
        per_image = geometry.num_blocks
        for item in range(array.shape[0]):
            padded = pad_input(np.asarray(array[item : item + 1]), geometry)[0]
            for index in product(*(range(n) for n in geometry.blocks_per_dim)):
                name = tile_name(stems[item], index, fmt)
                _save_tile(staging / name, _cut(padded, geometry, index), fmt)
                tiles.append(_tile_record(name, item, index, geometry))
            yield Progress(item + 1, array.shape[0], (item + 1) * per_image, array.shape[0] * per_image)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "kernel_size": list(geometry.kernel_size),
            "stride": list(geometry.stride),
            "padding": list(geometry.padding),
            "dilation": list(geometry.dilation),
            "padding_mode": geometry.padding_mode,
            "blocks_per_dim": list(geometry.blocks_per_dim),
            "input_shape": list(array.shape),
            "dtype": str(array.dtype),
            "tile_format": fmt,
            "images": [{"index": i, "source": s, "stem": stem} for i, (s, stem) in enumerate(zip(sources, stems))],
            "tiles": tiles,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _write_csv(staging / "manifest.csv", tiles, geometry.ndim)


def _cut(padded: np.ndarray, geometry: Geometry, index: Sequence[int]) -> np.ndarray:
    """The block at ``index`` of a padded ``(C, *padded_size)`` image: ``(C, *kernel_size)``."""
    window = tuple(
        slice(start + p, stop + p, d)
        for (start, stop), p, d in zip(geometry.block_box(index), geometry.padding, geometry.dilation)
    )
    return padded[(slice(None), *window)]


def _tile_record(name: str, item: int, index: Sequence[int], geometry: Geometry) -> dict[str, Any]:
    box = geometry.block_box(index)
    return {
        "file": name,
        "image": item,
        "index": list(index),
        "start": [b[0] for b in box],
        "stop": [b[1] for b in box],
    }


def _write_csv(path: Path, tiles: list[dict[str, Any]], ndim: int) -> None:
    axes = ["row", "col"] if ndim == 2 else [f"block_{d}" for d in range(ndim)]
    box = (
        ["y0", "x0", "y1", "x1"]
        if ndim == 2
        else [f"start_{d}" for d in range(ndim)] + [f"stop_{d}" for d in range(ndim)]
    )
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "image", *axes, *box])
        for tile in tiles:
            writer.writerow([tile["file"], tile["image"], *tile["index"], *tile["start"], *tile["stop"]])


def _unique_stems(sources: Sequence[str], count: int) -> list[str]:
    stems = [Path(s).stem for s in sources][:count]
    if len(stems) != count or len(set(stems)) != count:
        return [f"{(Path(sources[i]).stem if i < len(sources) else 'image')}_{i:04d}" for i in range(count)]
    return stems


def _save_tile(path: Path, tile: np.ndarray, fmt: str) -> None:
    if fmt == "npy":
        np.save(path, np.ascontiguousarray(tile), allow_pickle=False)
    elif fmt == "tif":
        import tifffile

        pages = tile[0] if tile.shape[0] == 1 else np.moveaxis(tile, 0, -1)
        tifffile.imwrite(path, np.ascontiguousarray(pages))
    else:
        from PIL import Image

        Image.fromarray(to_image_array(np.ascontiguousarray(tile), path)).save(path, format="PNG")


@contextlib.contextmanager
def _atomic_directory(directory: Path) -> Iterator[Path]:
    """Stage files in a hidden sibling directory and move it into place at the end."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise PatchfoldError(f"output directory '{directory}' already exists and is not empty")
    parent = check_parent(directory, "output directory's parent")
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".part", dir=parent))
    try:
        try:
            yield staging
        except OSError as error:
            raise PatchfoldError(f"cannot write tiles into '{directory}': {error.strerror or error}") from None
        try:
            if directory.exists():
                directory.rmdir()
            os.replace(staging, directory)
        except OSError:
            raise PatchfoldError(f"output directory '{directory}' was filled by another run meanwhile") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_tiles(directory: Path) -> Iterator[Progress | TileSet]:
    """Read a tile directory back into a patch matrix ``(N, C·∏k, L)`` (ncl), yielding progress
    per image and finally the :class:`TileSet`. Tiles may have been rewritten by other programs,
    in another dtype, but must keep their shape."""
    manifest = read_manifest(directory)
    geometry = manifest_geometry(manifest)
    batch, channels = manifest["input_shape"][:2]
    expected = (channels, *geometry.kernel_size)
    tiles = manifest["tiles"]
    if len(tiles) != batch * geometry.num_blocks:
        raise PatchfoldError(
            f"manifest lists {len(tiles)} tiles but {batch} image(s) × {geometry.num_blocks} blocks are expected"
        )
    cols: np.ndarray | None = None
    for position, tile in enumerate(tiles):
        item, column = divmod(position, geometry.num_blocks)
        path = directory / Path(str(tile.get("file", ""))).name  # never leave the directory
        pixels = _load_tile(path, len(expected) - 1)
        if pixels.shape != expected:
            raise PatchfoldError(f"tile '{path}' has shape {list(pixels.shape)}; expected {list(expected)}")
        if cols is None:
            cols = np.empty((batch, channels * geometry.kernel_volume, geometry.num_blocks), dtype=pixels.dtype)
        cols[item, :, column] = pixels.reshape(-1)
        if column == geometry.num_blocks - 1:
            yield Progress(item + 1, batch, position + 1, len(tiles))
    assert cols is not None
    yield TileSet(cols, manifest)


def _load_tile(path: Path, ndim: int) -> np.ndarray:
    if not path.exists():
        raise PatchfoldError(f"tile '{path}' listed in the manifest is missing")
    if path.suffix == ".npy":
        return read_npy(path, spatial_dims=ndim)[0]
    if path.suffix in (".tif", ".tiff"):
        pixels = read_tiff(path)
        if pixels is not None:
            return pixels
    return read_image(path)
