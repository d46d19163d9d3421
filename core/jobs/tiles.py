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
import functools
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.blocks import Blocks
from patchfold.choices import TILE_FORMATS as TILE_FORMATS  # re-exported from patchfold.choices
from patchfold.dtypes import finish_fold
from patchfold.engines.cpu import pad_input
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.io.formats import TileManifest, dumps, read_tile_manifest, tile_manifest
from patchfold.io.levels import Level
from patchfold.io.read import DEFAULT_MAX_PIXELS, load_inputs, read_image, read_npy, read_tiff
from patchfold.io.sources import RegionSource
from patchfold.io.write import (
    check_parent,
    deep_png,
    deep_png_writer,
    image_targets,
    libc_function,
    made_parents,
    remove_stale_temporaries,
    stale_temporary,
    temporary_prefix,
    to_image_array,
    write_images,
)
from patchfold.jobs import tile_rows
from patchfold.jobs.fold import FoldResult
from patchfold.jobs.plan import Progress
from patchfold.keep import KeepRules, Selection, keep_record, select_blocks
from patchfold.ops import fold_with
from patchfold.windows import window_weights

_AXIS_LETTERS = "zrc"


@dataclass(frozen=True)
class TileSet:
    """A tile directory read back: the patch matrix ``(N, C·∏k, L)`` (ncl) and its manifest.
    ``present`` ``(N, L)`` says which blocks had a tile (all of them unless keep rules skipped
    some; the columns of the others are zeros)."""

    cols: np.ndarray
    manifest: TileManifest
    present: np.ndarray

    @property
    def missing(self) -> int:
        """Blocks without a tile (skipped by keep rules)."""
        return int(self.present.size - np.count_nonzero(self.present))

    @property
    def geometry(self) -> Geometry:
        return self.manifest.geometry


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
    png_ok = dtype in (np.uint8, np.uint16) and channels <= 4  # 16-bit colour through imagecodecs
    tif_ok = np.dtype(dtype).kind in "biuf" and np.dtype(dtype).itemsize <= 8  # tifffile writes every one
    if not (png_ok if fmt == "png" else tif_ok):
        raise PatchfoldError(
            f"{channels}-channel {dtype} tiles cannot be written as {fmt} (png: uint8 or uint16 with 1-4 "
            "channels; tif: any integer or float dtype); use format=npy",
        )


def tile_stems(sources: Sequence[str], count: int, level: int | None = None) -> list[str]:
    """The file stem of each image's tiles: its source's name (numbered where names repeat), and
    ``_L{level}`` after it where a pyramid level was read (``slide_L1`` → ``slide_L1_r000_c003.png``)."""
    stems = _unique_stems(sources, count)
    return stems if level is None else [f"{stem}_L{level}" for stem in stems]


def write_tiles(
    array: np.ndarray | RegionSource,
    geometry: Geometry,
    directory: Path,
    sources: Sequence[str],
    fmt: str = "png",
    keep: KeepRules | None = None,
    *,
    level: int | None = None,
    source_level: dict[str, Any] | None = None,
    replace: bool = False,
) -> Generator[Progress, None, dict[str, Any] | None]:
    """Write every block of ``array`` ``(N, C, *spatial)`` as a file under ``directory``, yielding
    progress per image (an array) or per band of block rows (a :class:`RegionSource`, read band
    by band, never whole: see :mod:`patchfold.jobs.tile_rows`). The directory must not exist or be
    empty, unless ``replace`` (the new one then takes its place once complete). With ``keep``,
    only the blocks its rules keep are written (see :mod:`patchfold.keep`); the manifest then
    lists those, each with its ``foreground`` fraction, and records the rules
    under ``"keep"`` and each image's threshold and counts under its ``"keep"``. ``level`` goes
    into the file names (:func:`tile_stems`), ``source_level`` into the manifest. Files are
    saved by a few threads; names, contents and manifest do not depend on their order. Returns
    the ``"keep"`` record (None without rules)."""
    check_tile_format(fmt, array.dtype, array.shape[1], geometry.ndim)
    stems = tile_stems(sources, array.shape[0], level)
    with _atomic_directory(directory, replace) as staging:
        images = [{"index": i, "source": s, "stem": stem} for i, (s, stem) in enumerate(zip(sources, stems))]
        with _TileWriter(staging, geometry, stems, fmt) as writer:
            if isinstance(array, RegionSource):
                selections = yield from _streamed(array, geometry, keep, writer, images)
            else:
                selections = yield from _in_memory(array, geometry, keep, writer, images)
        tiles = [record for records in writer.records for record in records]
        manifest = tile_manifest(geometry, array.shape, array.dtype, fmt, images, tiles)
        if source_level is not None:
            manifest["source_level"] = source_level
        if keep is not None:
            manifest["keep"] = keep_record(keep, selections)
        (staging / "manifest.json").write_text(dumps(manifest), encoding="utf-8")
        _write_csv(staging / "manifest.csv", tiles, geometry.ndim, keep is not None)
    return manifest.get("keep")


def _in_memory(
    array: np.ndarray, geometry: Geometry, keep: KeepRules | None, writer: _TileWriter, images: list[dict[str, Any]]
) -> Generator[Progress, None, list[Selection]]:
    """The tiles of an array in memory, one image at a time."""
    selections: list[Selection] = []
    per_image, per_row = geometry.num_blocks, geometry.blocks_per_row
    for item in range(array.shape[0]):
        image = np.asarray(array[item])
        chosen = select_blocks(image, geometry, keep) if keep is not None else None
        padded = pad_input(image[None], geometry)[0]
        for row in range(geometry.blocks_per_dim[0]):
            columns = slice(row * per_row, (row + 1) * per_row)
            counts = chosen.counts[columns] if chosen is not None else None
            writer.row(item, row, padded, 0, counts, chosen.keep[columns] if chosen is not None else None)
        if chosen is not None:
            selections.append(chosen)
            if item < len(images):  # a caller may name fewer sources than images
                images[item]["keep"] = chosen.summary()
        yield Progress(item + 1, array.shape[0], (item + 1) * per_image, array.shape[0] * per_image)
    return selections


def _streamed(
    source: RegionSource, geometry: Geometry, keep: KeepRules | None, writer: _TileWriter, images: list[dict[str, Any]]
) -> Generator[Progress, None, list[Selection]]:
    """The tiles of a region source, band by band of block rows (each read while the one before
    is cut), the keep rules' counts taken of each band."""
    thresholds, sampled = tile_rows.source_thresholds(source, keep.background) if keep is not None else (None, 0)
    counted: list[list[np.ndarray]] = [[] for _ in range(source.shape[0])]
    rows, per_row = geometry.blocks_per_dim[0], geometry.blocks_per_row
    total = source.shape[0] * geometry.num_blocks
    for band in tile_rows.walk_bands(source, geometry, thresholds):
        for item, pixels in enumerate(band.pixels):
            for row in range(band.first, band.last):
                counts = band.counts[item][row - band.first].reshape(-1) if band.counts is not None else None
                chosen = keep.keeps(counts, geometry.kernel_volume) if keep is not None else None
                writer.row(item, row, pixels, band.top, counts, chosen)
                if counts is not None:
                    counted[item].append(counts)
        done = band.last
        del band  # the next band is read meanwhile: hold at most two
        yield Progress(done, rows, done * per_row * source.shape[0], total)
    if keep is None or thresholds is None:
        return []
    selections = [tile_rows.selection(keep, t, np.concatenate(c), geometry) for t, c in zip(thresholds, counted)]
    for item, chosen in enumerate(selections):
        if item < len(images):
            images[item]["keep"] = chosen.summary() | ({"sampled_level": sampled} if sampled != source.level else {})
    return selections


#: Threads that save tiles (PNG and TIFF encoders release the GIL), and tiles queued per thread.
TILE_WRITERS = min(4, os.cpu_count() or 1)
_QUEUED_PER_WRITER = 4


class _TileWriter:
    """Tiles cut from the rows of blocks of padded images, saved into ``staging`` by
    :data:`TILE_WRITERS` threads; the manifest entries gathered per image, in block order."""

    def __init__(self, staging: Path, geometry: Geometry, stems: Sequence[str], fmt: str) -> None:
        self.staging, self.geometry, self.stems, self.fmt = staging, geometry, stems, fmt
        self.records: list[list[dict[str, Any]]] = [[] for _ in stems]
        self.rest = list(product(*(range(n) for n in geometry.blocks_per_dim[1:])))
        self.pool = ThreadPoolExecutor(max_workers=TILE_WRITERS, thread_name_prefix="patchfold-tiles")
        self.pending: deque[Future[None]] = deque()

    def row(
        self,
        item: int,
        row: int,
        padded: np.ndarray,
        top: int,
        counts: np.ndarray | None = None,
        keep: np.ndarray | None = None,
    ) -> None:
        """Save the blocks of block row ``row`` of image ``item`` that ``keep`` keeps (all without),
        cut from ``padded`` ``(C, rows, *padded_size[1:])``, the padded image's rows from ``top``;
        ``counts`` are their foreground pixels."""
        volume = self.geometry.kernel_volume
        for column, rest in enumerate(self.rest):
            if keep is not None and not keep[column]:
                continue
            index = (row, *rest)
            name = tile_name(self.stems[item], index, self.fmt)
            tile = np.array(_cut(padded, self.geometry, index, top))  # a copy: the band may go
            while len(self.pending) >= TILE_WRITERS * _QUEUED_PER_WRITER:
                self.pending.popleft().result()
            self.pending.append(self.pool.submit(_save_tile, self.staging / name, tile, self.fmt))
            fraction = None if counts is None else float(counts[column] / volume)
            self.records[item].append(_tile_record(name, item, index, self.geometry, fraction))

    def __enter__(self) -> _TileWriter:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if kind is None:
                while self.pending:
                    self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _cut(padded: np.ndarray, geometry: Geometry, index: Sequence[int], top: int = 0) -> np.ndarray:
    """The block at ``index`` of a padded ``(C, *padded_size)`` image, or of its rows from padded
    row ``top`` on: ``(C, *kernel_size)``."""
    window = [
        slice(start + p, stop + p, d)
        for (start, stop), (p, _), d in zip(geometry.block_box(index), geometry.pad_widths, geometry.dilation)
    ]
    window[0] = slice(window[0].start - top, window[0].stop - top, window[0].step)
    return padded[(slice(None), *window)]


def _tile_record(
    name: str, item: int, index: Sequence[int], geometry: Geometry, fraction: float | None = None
) -> dict[str, Any]:
    box = geometry.block_box(index)
    record = {
        "file": name,
        "image": item,
        "index": list(index),
        "start": [b[0] for b in box],
        "stop": [b[1] for b in box],
    }
    if fraction is not None:
        record["foreground"] = fraction
    return record


def _write_csv(path: Path, tiles: list[dict[str, Any]], ndim: int, foreground: bool = False) -> None:
    axes = ["row", "col"] if ndim == 2 else [f"block_{d}" for d in range(ndim)]
    box = (
        ["y0", "x0", "y1", "x1"]
        if ndim == 2
        else [f"start_{d}" for d in range(ndim)] + [f"stop_{d}" for d in range(ndim)]
    )
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "image", *axes, *box, *(["foreground"] if foreground else [])])
        for tile in tiles:
            extra = [tile["foreground"]] if foreground else []
            writer.writerow([tile["file"], tile["image"], *tile["index"], *tile["start"], *tile["stop"], *extra])


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
        options = {}
        if tile.ndim == 3 and tile.shape[0] > 1:  # say how the samples are laid out (tifffile would guess)
            options = {"photometric": "rgb" if tile.shape[0] in (3, 4) else "minisblack", "planarconfig": "contig"}
        tifffile.imwrite(path, np.ascontiguousarray(pages), **options)
    elif deep_png(tile, path):
        deep_png_writer(tile, path)(path)
    else:
        from PIL import Image

        Image.fromarray(to_image_array(np.ascontiguousarray(tile), path)).save(path, format="PNG")


@contextlib.contextmanager
def _atomic_directory(directory: Path, replace: bool = False) -> Iterator[Path]:
    """Stage files in a hidden sibling directory and move it into place at the end (with
    ``replace``, in place of the directory there, which is kept until the new one is complete)."""
    if not replace and directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise PatchfoldError(f"output directory '{directory}' already exists and is not empty")
    check_parent(directory, "output directory's parent")
    with made_parents(directory), _staged(directory, replace) as staging:
        yield staging


def tiles_present(directory: Path) -> bool:
    """Whether ``directory`` is a finished tile directory: its manifest reads and every tile file
    it lists is there (a run that finds one missing redoes the directory)."""
    try:
        listed = read_tile_manifest(directory).tiles
    except PatchfoldError:
        return False
    return all(os.path.isfile(directory / tile["file"]) for tile in listed)


#: The name of a replaced tile directory inside its ``.bak`` temporary, while the new one moves in.
_ASIDE = "old"


@contextlib.contextmanager
def _staged(directory: Path, replace: bool = False) -> Iterator[Path]:
    parent = directory.parent
    remove_stale_temporaries(parent)
    staging = Path(tempfile.mkdtemp(prefix=temporary_prefix(directory), suffix=".part", dir=parent))
    old: Path | None = None
    try:
        try:
            yield staging
        except OSError as error:
            raise PatchfoldError(f"cannot write tiles into '{directory}': {error.strerror or error}") from None
        try:
            if replace and directory.is_dir() and any(directory.iterdir()):
                if _exchanged(staging, directory):  # one step: never a moment without the directory
                    return  # staging now holds the old files: deleted below
                # two steps: the old one moved aside first (put back by the next batch run, see
                # restore_moved_aside, if this one dies in between)
                old = Path(tempfile.mkdtemp(prefix=temporary_prefix(directory), suffix=".bak", dir=parent))
                os.replace(directory, old / _ASIDE)
            elif directory.exists():
                directory.rmdir()
            os.replace(staging, directory)
        except OSError as error:  # the old directory goes back below
            raise PatchfoldError(f"cannot put '{directory}' in place: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:  # failed or interrupted (Ctrl-C) between the two steps: the old one goes back
            if not os.path.lexists(directory):
                with contextlib.suppress(OSError):
                    os.replace(old / _ASIDE, directory)
            shutil.rmtree(old, ignore_errors=True)


def _exchanged(first: Path, second: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or file system cannot (nothing is then changed)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2``, looked up once; None off Linux or where libc lacks it (glibc < 2.28, musl)."""
    import ctypes

    arguments = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return libc_function("renameat2", arguments, ctypes.c_int)


def restore_moved_aside(directory: Path) -> None:
    """Put back a directory a killed run moved aside to replace it and died before the new one
    was in place (its ``.bak`` temporary holds it as ``old``): to be called before anything in
    its parent clears stale temporaries."""
    if os.path.lexists(directory):
        return
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory.parent):
            aside = stale_temporary(entry.name)  # a live run's is its own business
            if aside == (directory.name, ".bak") and os.path.isdir(os.path.join(entry.path, _ASIDE)):
                os.replace(os.path.join(entry.path, _ASIDE), directory)
                return


def read_tiles(directory: Path) -> Iterator[Progress | TileSet]:
    """Read a tile directory back into a patch matrix ``(N, C·∏k, L)`` (ncl), yielding progress
    and finally the :class:`TileSet`. Each tile goes to the block its manifest entry records
    (``image`` and ``index``), whatever the order of the entries; every block needs exactly one
    tile, except where the manifest records keep rules: there a block has at most one, and the
    columns of the blocks without one are zeros. Tiles may have been rewritten by other programs,
    in another dtype than the original, but all in one dtype and each of its original shape. Only
    regular files inside ``directory`` are read (a symbolic link must point inside it too)."""
    manifest = read_tile_manifest(directory)
    geometry = manifest.geometry
    batch, channels = manifest.input_shape[:2]
    expected = (channels, *geometry.kernel_size)
    where = f"manifest '{directory / 'manifest.json'}'"
    columns = [_tile_position(tile, batch, geometry, where) for tile in manifest.tiles]
    if len(set(columns)) != len(columns):
        duplicate = next(c for c in columns if columns.count(c) > 1)
        raise PatchfoldError(f"{where} lists block {duplicate[1]} of image {duplicate[0]} more than once")
    if len(columns) != batch * geometry.num_blocks and manifest.keep is None:
        raise PatchfoldError(
            f"{where} lists {len(columns)} tiles but {batch} image(s) × {geometry.num_blocks} blocks are expected"
        )
    shape = (batch, channels * geometry.kernel_volume, geometry.num_blocks)
    cols: np.ndarray | None = None
    present = np.zeros((batch, geometry.num_blocks), dtype=bool)
    first_path = None
    inside = directory.resolve()
    for done, (tile, (item, column)) in enumerate(zip(manifest.tiles, columns), start=1):
        path = _tile_path(directory, inside, tile["file"])
        pixels = _load_tile(path, len(expected) - 1)
        if pixels.shape != expected:
            raise PatchfoldError(f"tile '{path}' has shape {list(pixels.shape)}; expected {list(expected)}")
        if cols is None:  # zeros: the columns of skipped blocks stay so
            cols = np.zeros(shape, dtype=pixels.dtype)
            first_path = path
        elif pixels.dtype != cols.dtype:
            raise PatchfoldError(
                f"tile '{path}' holds {pixels.dtype} pixels but '{first_path}' holds {cols.dtype}: "
                "tiles must share one dtype to be folded together"
            )
        cols[item, :, column] = pixels.reshape(-1)
        present[item, column] = True
        if done % geometry.num_blocks == 0 or done == len(columns):
            yield Progress(min(batch, -(-done // geometry.num_blocks)), batch, done, len(columns))
    yield TileSet(cols if cols is not None else np.zeros(shape, dtype=manifest.dtype), manifest, present)


def _tile_position(tile: dict[str, Any], batch: int, geometry: Geometry, where: str) -> tuple[int, int]:
    """(image, block column) of a manifest entry, from its recorded image and block index."""
    image, index = tile.get("image"), tile.get("index")
    valid_index = (
        isinstance(index, list)
        and len(index) == geometry.ndim
        and all(type(i) is int and 0 <= i < n for i, n in zip(index, geometry.blocks_per_dim))
    )
    if type(image) is not int or not 0 <= image < batch or not valid_index:
        raise PatchfoldError(
            f"{where}: tile {tile.get('file')!r} must record its image (0..{batch - 1}) and block index "
            f"(one int per dim below {list(geometry.blocks_per_dim)}), got image={image!r} index={index!r}"[:400]
        )
    return image, int(np.ravel_multi_index(tuple(index), geometry.blocks_per_dim))


def _tile_path(directory: Path, inside: Path, name: str) -> Path:
    """The tile file ``name`` of ``directory``: a plain name, a regular file, inside it."""
    path = directory / Path(name).name
    if Path(name).name != name or name in ("", ".", ".."):
        raise PatchfoldError(f"tile {name!r} in the manifest of '{directory}' is not a file name inside it")
    if not path.exists():
        raise PatchfoldError(f"tile '{path}' listed in the manifest is missing")
    resolved = path.resolve()
    if resolved.parent != inside or not resolved.is_file():
        raise PatchfoldError(f"tile '{path}' is not a regular file inside '{directory}' (links may not leave it)")
    return path


def _load_tile(path: Path, ndim: int) -> np.ndarray:
    if path.suffix == ".npy":
        return read_npy(path, spatial_dims=ndim)[0]
    if path.suffix in (".tif", ".tiff"):
        pixels = read_tiff(path)
        if pixels is not None:
            return pixels
    return read_image(path)


@dataclass(frozen=True)
class TilesResult:
    output: Path
    geometry: Geometry
    images: int
    channels: int
    tile_format: str
    seconds: float
    #: the manifest's ``"keep"`` record (rules and counts) where keep rules chose the tiles
    keep: dict[str, Any] | None = None
    #: the level read of a region source (``RegionSource.describe()``), where one was
    source_level: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        blocks = self.images * self.geometry.num_blocks
        return {
            "output": str(self.output),
            "tiles": self.keep["kept"] if self.keep is not None else blocks,
            **({"keep": self.keep} if self.keep is not None else {}),
            "images": self.images,
            **({"source_level": self.source_level} if self.source_level is not None else {}),
            "format": self.tile_format,
            "tile_shape": [self.channels, *self.geometry.kernel_size],
            "blocks_per_dim": list(self.geometry.blocks_per_dim),
            "manifest": [str(self.output / "manifest.json"), str(self.output / "manifest.csv")],
            "seconds": round(self.seconds, 4),
        }


def tiles_file(
    inputs: Sequence[str | Path],
    output: str | Path,
    blocks: Blocks,
    *,
    tile_format: str = "png",
    spatial_dims: int | None = None,
    stack: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    level: Level = None,
    keep: KeepRules | None = None,
) -> Iterator[Progress | TilesResult]:
    """Write every block of ``inputs`` as its own file in the new directory ``output`` (see
    :func:`write_tiles`); yields :class:`Progress` per image or band of block rows, then the
    :class:`TilesResult`. ``level`` picks the resolution of pyramidal TIFF and Zarr inputs. A
    single Zarr, pyramid level or tiled TIFF input is read band by band of block rows, never whole
    (:mod:`patchfold.jobs.tile_rows`, which also says where the keep rules' threshold comes from);
    other inputs are read whole. Where a level was asked for, or the input is a level of a
    pyramid, the tile names carry it (``slide_L1_r000_c003.png``) and the manifest records the
    level read (``source_level``: level, levels, micrometres per pixel)."""
    started = time.perf_counter()
    output = Path(output)
    batch = load_inputs(
        inputs, spatial_dims, max_pixels, stack, level=tile_rows.read_level(inputs, level, stack), regions=True
    )
    source = batch.array
    geometry = blocks.at(batch.spatial_size)
    named = name_level(source, level)
    described = source.describe() if isinstance(source, RegionSource) and named is not None else None
    job = write_tiles(source, geometry, output, batch.sources, tile_format, keep, level=named, source_level=described)
    record = yield from job
    shape = source.shape
    seconds = time.perf_counter() - started
    yield TilesResult(output, geometry, shape[0], shape[1], tile_format, seconds, record, described)


def name_level(source: np.ndarray | RegionSource, level: Any) -> int | None:
    """The level tile names carry: a region source's where one was asked for or it has several,
    else a level number asked for (inputs read whole), else none."""
    if isinstance(source, RegionSource):
        return source.level if level is not None or source.levels > 1 else None
    return level if isinstance(level, int) and not isinstance(level, bool) else None


@dataclass(frozen=True)
class UntileResult(FoldResult):
    """What :func:`untile_dir` wrote (``source`` is the tile directory; ``missing``: blocks without
    a tile, skipped by keep rules)."""

    missing: int = 0

    def summary(self) -> dict[str, Any]:
        summary = super().summary()
        return {
            "output": summary["output"],
            "tiles": self.source_shape[0] * self.source_shape[2] - self.missing,
            "missing_blocks": self.missing,
            **{key: summary[key] for key in ("output_shape", "output_dtype", "window", "normalize", "seconds")},
        }


def untile_dir(
    directory: str | Path, output: str | Path, *, normalize: bool = True, window: str | None = None
) -> Iterator[Progress | UntileResult]:
    """Fold a tile directory (see :func:`read_tiles`) back into images at ``output`` (as
    :func:`patchfold.jobs.fold.fold_file` writes them); yields :class:`Progress`, then the result.
    Where keep rules skipped blocks, the kept tiles are folded alone: normalised by the (weighted)
    count of kept blocks over each pixel, and pixels no kept block covers are 0."""
    started = time.perf_counter()
    directory, output = Path(directory), Path(output)
    tileset: TileSet | None = None
    for event in read_tiles(directory):
        if isinstance(event, TileSet):
            tileset = event
        else:
            yield event
    assert tileset is not None
    targets = image_targets(output, tileset.cols.shape[0], tileset.manifest.sources)
    if tileset.missing and normalize:
        images = fold_kept(tileset.cols, tileset.present, tileset.geometry, window)
    else:  # a plain sum needs no divisor: skipped blocks' zero columns add nothing
        images = fold_with(tileset.cols, tileset.geometry, normalize, window=window)
    write_images(output, targets, images)
    yield UntileResult(
        targets if targets is not None else output, directory, tuple(tileset.cols.shape), tuple(images.shape),
        images.dtype, tileset.geometry, "ncl", normalize, window, "cpu", "cpu", 1, time.perf_counter() - started,
        tileset.missing,
    )  # fmt: skip


def fold_kept(cols: np.ndarray, present: np.ndarray, geometry: Geometry, window: str | None = None) -> np.ndarray:
    """The normalised fold of the blocks ``present`` ``(N, L)`` marks, the others left out: each
    pixel is the (weighted) mean of the kept blocks over it, 0 where none is. The columns of
    absent blocks must be zeros (as :func:`read_tiles` leaves them).

    Args:
        cols: ``(N, C·∏k, L)`` patch matrix.
        present: ``(N, L)`` bool.
        geometry: the blocks.
        window: a blending window, as :func:`patchfold.fold` takes it.
    Returns:
        ``(N, C, *spatial_size)`` in the dtype a normalised fold of ``cols`` gives.
    """
    summed = fold_with(cols, geometry, window=window)
    ones = np.broadcast_to(present[:, None, :], (present.shape[0], geometry.kernel_volume, present.shape[1]))
    kept = fold_with(np.ascontiguousarray(ones, dtype=np.uint8), geometry, window=window)  # (N, 1, *spatial)
    return finish_fold(summed, kept, cols.dtype, window_weights(geometry, window) is not None)
