"""Zarr (v3) outputs: the codec ``compression=`` names, the checks made before any work, and images
(what ``fold`` and ``apply`` write) stored band by band of rows into a temporary store that
replaces the target only when complete.

An image store is one array at the store's root (so ``zarr.open`` and ``dask.array.from_zarr``
read it as it is): ``(C, *spatial)`` for one image, ``(N, C, *spatial)`` for several, its axes
named in the array's ``dimension_names`` (``i``, ``c``, then ``z``, ``y``, ``x``), chunked by
bands of rows of the first spatial dim (every channel and the whole width in each chunk, about
:data:`ZARR_CHUNK_BYTES`), with what made it in the attributes under ``"patchfold"``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.errors import PatchfoldError
from patchfold.io.formats import ZARR_SIDECAR_KEY
from patchfold.io.sources import zarr_module
from patchfold.io.write import atomic_directory, check_not_an_input, check_store_apart, check_store_path

#: ``compression=`` of a Zarr output: the Zarr default (Zstandard), none, or a named codec.
ZARR_COMPRESSIONS = ("default", "none", "zstd", "blosc", "gzip")

#: Zarr outputs are chunked to about this many bytes a chunk (readers fetch a chunk at a time: a
#: few MiB keeps both the chunk count and a random read small).
ZARR_CHUNK_BYTES = 8 << 20

#: The ``"format"`` of an image store's ``"patchfold"`` attributes (a patch matrix's are its sidecar).
IMAGE_FORMAT = "patchfold-image"
IMAGE_VERSION = 1


def is_zarr_output(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".zarr"


def compressors(compression: str) -> Any:
    """What ``zarr.create_array`` takes as ``compressors`` for ``compression`` ("default": Zarr's own)."""
    if compression not in ZARR_COMPRESSIONS:
        raise PatchfoldError(
            f"compression must be one of {', '.join(ZARR_COMPRESSIONS)}, got {compression!r}", param="compression"
        )
    if compression == "default":
        return "default"
    if compression == "none":
        return None
    from zarr import codecs

    return {"zstd": codecs.ZstdCodec, "blosc": codecs.BloscCodec, "gzip": codecs.GzipCodec}[compression]()


def check_compression(output: str | Path, compression: str) -> None:
    """A codec only means something for a ``.zarr`` output: asked of another, it would be ignored."""
    if compression != "default" and not is_zarr_output(output):
        raise PatchfoldError(
            f"compression is for a .zarr output; '{output}' is not one (give -o NAME.zarr, or drop compression)",
            param="compression",
        )


def check_zarr_output(path: Path, compression: str, inputs: Sequence[Path]) -> None:
    """Fail before any work if the store ``path`` cannot be written from ``inputs``."""
    zarr_module()
    compressors(compression)
    if "{i}" in str(path):  # one store holds every image: a per-image name would make one store named '{i}'
        raise PatchfoldError(
            f"output '{path}': one .zarr holds all the images (N, C, ...); drop {{i}} from its name", param="output"
        )
    check_store_path(path)
    check_not_an_input([path], inputs)
    check_store_apart(path, [p for p in inputs if p.exists()])


def create_array(
    store: Path,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    attributes: Mapping[str, Any],
    compression: str,
    dimension_names: Sequence[str] | None = None,
) -> Any:
    """A new Zarr v3 array at ``store`` (a directory), compressed as ``compression`` says."""
    zarr = zarr_module()
    codecs = compressors(compression)
    extra: dict[str, Any] = {} if codecs == "default" else {"compressors": codecs}
    if dimension_names is not None:
        extra["dimension_names"] = list(dimension_names)
    return zarr.create_array(
        store=str(store), shape=shape, chunks=chunks, dtype=dtype, attributes=dict(attributes), zarr_format=3, **extra
    )


def image_attributes(made_by: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The ``"patchfold"`` attributes of an image store: its format, the command, its parameters."""
    return {ZARR_SIDECAR_KEY: {"format": IMAGE_FORMAT, "version": IMAGE_VERSION, "made_by": made_by, **parameters}}


def image_axes(batched: bool, spatial: int) -> tuple[str, ...]:
    """Axis names of an image store: ``i`` (items) when batched, ``c``, then the spatial ones."""
    return (*(("i",) if batched else ()), "c", *"zyx"[3 - spatial :])


class ZarrImages:
    """The images ``(count, C, *spatial)`` of one store, written band by band of rows.

    :meth:`allocate` creates the array once the shape and dtype are known; :meth:`write` stores
    rows of several items at once (fold's bands, or whole images); :meth:`rows` takes one image's
    finished rows as ``apply`` sends them (any number at a time) and holds them until a band of
    whole chunks is complete, so every chunk is encoded once; :meth:`finish` stores what is held.
    """

    def __init__(self, store: Path, count: int, attributes: Mapping[str, Any], compression: str) -> None:
        self.store, self.count, self.attributes, self.compression = store, count, attributes, compression
        self.array: Any = None
        self.item_shape: tuple[int, ...] = ()
        self.dtype = np.dtype(np.float32)
        self.chunk_rows = 1
        self._held: list[np.ndarray] = []
        self._item = self._top = self._rows_held = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """The stored array's shape: ``(C, *spatial)`` for one image, ``(N, C, *spatial)`` for several."""
        return self.item_shape if self.count == 1 else (self.count, *self.item_shape)

    def allocate(self, item_shape: tuple[int, ...], dtype: Any, most_rows: int | None = None) -> None:
        """Create the array for images of ``item_shape`` ``(C, *spatial)``: chunks of one item, all
        channels and a band of rows (at most ``most_rows``) of about :data:`ZARR_CHUNK_BYTES`."""
        if self.array is not None:
            return
        self.item_shape, self.dtype = tuple(int(n) for n in item_shape), np.dtype(dtype)
        height = self.item_shape[1]
        row_bytes = math.prod(self.item_shape) // height * self.dtype.itemsize
        self.chunk_rows = max(1, min(height, most_rows or height, ZARR_CHUNK_BYTES // row_bytes))
        chunk = (self.item_shape[0], self.chunk_rows, *self.item_shape[2:])
        chunks = chunk if self.count == 1 else (1, *chunk)
        names = image_axes(self.count > 1, len(self.item_shape) - 1)
        self.array = create_array(self.store, self.shape, chunks, self.dtype, self.attributes, self.compression, names)

    def write(self, values: np.ndarray, top: int, item: int = 0) -> None:
        """Store ``values`` ``(n, C, r, ...)``: rows ``[top, top + r)`` of items ``[item, item + n)``."""
        rows = slice(top, top + values.shape[2])
        values = values.astype(self.dtype, copy=False)
        if self.count == 1:
            self.array[:, rows] = values[0]
        else:
            self.array[item : item + values.shape[0], :, rows] = values

    def rows(self, item: int, first: int, values: np.ndarray, item_shape: tuple[int, ...]) -> None:
        """Image ``item``'s finished rows ``[first, first + r)`` (``values`` ``(C, r, ...)``, a
        buffer the caller reuses: copied), held until they complete a band of chunks."""
        self.allocate(item_shape, values.dtype)
        if item != self._item or first != self._top + self._rows_held:  # not where the last rows ended
            self._flush()
            self._item, self._top = item, first
        while values.shape[1]:
            end = min(self.item_shape[1], (self._top // self.chunk_rows + 1) * self.chunk_rows)
            take = end - self._top - self._rows_held
            self._held.append(np.array(values[:, :take], dtype=self.dtype))
            self._rows_held += self._held[-1].shape[1]
            values = values[:, take:]
            if self._top + self._rows_held == end:
                self._flush()

    def _flush(self) -> None:
        if self._rows_held:
            self.write(np.concatenate(self._held, axis=1)[None], self._top, self._item)
            self._top += self._rows_held
        self._held, self._rows_held = [], 0

    def finish(self) -> None:
        self._flush()
        if self.array is None:
            raise PatchfoldError(f"'{self.store}': no image was written")  # a job always writes one


@contextlib.contextmanager
def zarr_images(path: Path, count: int, attributes: Mapping[str, Any], compression: str) -> Iterator[ZarrImages]:
    """A :class:`ZarrImages` for ``count`` images in a temporary store that replaces ``path`` when
    the block ends without error (and is deleted when it fails, leaving ``path`` as it was)."""
    compressors(compression)
    with atomic_directory(path) as temporary:
        images = ZarrImages(temporary, count, attributes, compression)
        yield images
        images.finish()


def save_zarr_images(path: Path, images: np.ndarray, attributes: Mapping[str, Any], compression: str) -> None:
    """Write the images ``(N, C, *spatial)`` held in memory as the store ``path``."""
    with zarr_images(path, images.shape[0], attributes, compression) as store:
        store.allocate(images.shape[1:], images.dtype)
        for top in range(0, images.shape[2], store.chunk_rows):  # a band of chunks at a time: no whole copy
            store.write(images[:, :, top : top + store.chunk_rows], top)
