"""Reading a patch dataset written by ``batch unfold``: :class:`PatchDataset`, ready for training.

Torch or not, one class. When torch is installed, :class:`PatchDataset` subclasses
``torch.utils.data.Dataset`` (a real map-style dataset: ``isinstance`` holds, ``+`` concatenates,
``DataLoader``, ``Subset`` and ``random_split`` take it), so this module imports torch when it is
loaded. Without torch it is a plain sequence with the same behaviour (``len``, indexing, iteration,
pickling). ``import patchfold`` stays free of torch all the same: the package exposes
``PatchDataset`` and ``load_dataset`` lazily (a module ``__getattr__``), so torch is imported on the
first use of a dataset, never for unfold, fold or the command line. Picking the base class from
whether torch happens to be imported already would make ``isinstance`` depend on import order;
subclassing on first use costs torch's import once, and only to those who read datasets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.blocks import to_tuple
from patchfold.errors import PatchfoldError
from patchfold.io.formats import read_dataset_manifest, source_max_value
from patchfold.io.read import require_file
from patchfold.io.sources import is_zarr

try:
    import torch
    from torch.utils.data import Dataset as _Base
except ImportError:  # numpy only: a plain sequence
    torch = None
    _Base = object

#: Rows read per step when a dataset is iterated.
ITER_CHUNK = 1024

_OPTIONS = ("allow_incomplete", "to_float", "with_position", "as_tensor")


class PatchDataset(_Base):  # type: ignore[misc,valid-type]
    """A patch dataset opened for reading: memory-mapped shards and the index, or the arrays of a
    ``.zarr`` store (see :mod:`patchfold.datasets.zarr_store`), with the same items and options.

    Items. ``dataset[i]`` is patch ``i``, an array ``(C, *kernel_size)``; ``i`` may be negative,
    and ``i >= len(dataset)`` raises ``IndexError`` (so ``for patch in dataset`` works). A slice, a
    list or 1-D array of ints (negative too) or a boolean mask of ``len(dataset)`` gives a batch
    ``(k, C, *kernel_size)`` in that order, read with one gather per shard. Floats, strings,
    tuples (multi-dimensional indexing) and other types raise ``TypeError``; a 2-D index array
    raises :class:`PatchfoldError`. Every array returned is a fresh, writable copy, never a view of
    the read-only shards (so ``torch.from_numpy`` takes it without a warning, and writing to it
    changes no file). ``dataset.index[i]`` says where patch ``i`` came from: the columns
    ``manifest["index_columns"]`` names (image id, block index per spatial dim, shard, row).

    Output options (given to :func:`load_dataset`):

    - ``to_float``: patches as floats in [0, 1] (float32; float64 for a float64 dataset), each
      divided by *its own source's* maximum, which the manifest records per image as
      ``"max_value"`` (255 for an 8-bit image, 65535 for a 16-bit one, 1.0 for float sources),
      taking into account the dataset's one ``"scale"`` (a float dataset of integer sources is
      already multiplied by it). So 8- and 16-bit sources in one dataset (stored as uint16) both
      give [0, 1]. A dataset written before ``max_value`` was recorded falls back to the stored
      dtype: integer patches divided by that dtype's maximum, float patches as they are (right
      unless it mixed bit depths).
    - ``with_position``: each item is ``(patch, image_id, block_index)``: ``image_id`` an int (the
      manifest's image ``"id"``), ``block_index`` an int64 array ``(ndim,)``, the block's position
      in its image's block grid. A batch is ``(patches (k, C, ...), image_ids (k,), block_index
      (k, ndim))``.
    - ``as_tensor``: torch tensors instead of numpy arrays (patches, block indices, a batch's
      image ids; a single item's image id stays an int). Not needed for a ``DataLoader``: its
      default collate turns numpy arrays into tensors; with it, ``dataset[rows]`` is a tensor.

    ``DataLoader`` fetches each batch through :meth:`__getitems__` (one gather per shard, not one
    read per patch). A dataset pickles as its directory, options and manifest (about 100 bytes per
    image, never the patch data), and an unpickled one maps and checks its files again, so
    ``spawn`` workers start without copying shards.

    Attributes:
        directory: The dataset's directory (a shard directory or a ``.zarr`` store).
        manifest: Its ``manifest.json`` (a store's: in its attributes), validated.
        index: ``(len, columns)`` int64, memory-mapped (a store's: read whole): one row per patch
            (``manifest["index_columns"]``).
        shards: The memory-mapped shards, ``(rows, C·∏k)`` each (read-only); a store's one
            ``patches`` Zarr array.
        patch_shape: ``(C, *kernel_size)``.
        dtype: What patches come back as (the stored dtype, or float32 / float64 with ``to_float``).
    """

    def __init__(
        self,
        directory: str | Path,
        allow_incomplete: bool = False,
        *,
        to_float: bool = False,
        with_position: bool = False,
        as_tensor: bool = False,
    ) -> None:
        """Open (memory-map) the dataset in ``directory``; nothing is read yet (but a store's index).

        Args:
            directory: A dataset written by ``patchfold batch unfold``: a shard directory or a ``.zarr`` store.
            allow_incomplete: Open a dataset a failed or stopped run left (its images written so far).
            to_float: Patches as floats in [0, 1], each scaled by its source's maximum.
            with_position: Items ``(patch, image_id, block_index)`` instead of the patch alone.
            as_tensor: Torch tensors instead of numpy arrays (needs torch).

        Raises:
            PatchfoldError: The directory is no dataset, one of its files is damaged or does not
                agree with its manifest, the dataset is incomplete, or an option is not a bool.
        """
        if not isinstance(directory, str | os.PathLike):
            raise PatchfoldError(f"a dataset is opened from a directory path, got {directory!r}")
        options = {
            "allow_incomplete": allow_incomplete,
            "to_float": to_float,
            "with_position": with_position,
            "as_tensor": as_tensor,
        }
        for name, value in options.items():
            if not isinstance(value, bool | np.bool_):
                raise PatchfoldError(f"{name} must be True or False, got {value!r}", param=name)
        if as_tensor and torch is None:
            raise PatchfoldError("as_tensor=True needs torch, which is not installed", param="as_tensor")
        self.directory = Path(directory)
        self.allow_incomplete = bool(allow_incomplete)
        self.to_float = bool(to_float)
        self.with_position = bool(with_position)
        self.as_tensor = bool(as_tensor)
        self.manifest = _read_manifest(self.directory)
        self._open()

    # ----- opening, and pickling for worker processes -----------------------------------------------
    def _open(self) -> None:
        """Map the shards and the index that ``self.manifest`` describes, and check them."""
        manifest = self.manifest
        if not manifest.get("complete") and not self.allow_incomplete:
            raise PatchfoldError(
                f"dataset '{self.directory}' is incomplete (a run failed or was stopped); "
                "re-run the same command to finish it"
            )
        columns = len(manifest["index_columns"])
        stored = np.dtype(manifest["dtype"])
        kernel = to_tuple(manifest["kernel_size"], columns - 3, "kernel_size")
        self.patch_shape = (manifest["channels"], *kernel)
        length = math.prod(self.patch_shape)
        if manifest.get("store") == "zarr":  # one `patches` array, read a chunk at a time
            from patchfold.datasets.zarr_store import ChunkedRows, open_store

            patches, self.index = open_store(self.directory, (manifest["shards"][0]["rows"], length), stored)
            self.shards = [patches]
            self._arrays = [ChunkedRows(patches, self.directory / "patches")]
            index_name = self.directory / "index"
        else:
            self.shards = [
                _open_npy(self.directory / s["file"], (s["rows"], length), stored) for s in manifest["shards"]
            ]
            self._arrays = [np.asarray(shard) for shard in self.shards]  # plain views: no memmap overhead per read
            index_name = self.directory / "index.npy"
            self.index = np.asarray(_open_npy(index_name, None, np.dtype(np.int64)))
        if self.index.ndim != 2 or self.index.shape[1] != columns:
            raise PatchfoldError(f"'{index_name}' has shape {list(self.index.shape)}; expected (rows, {columns})")
        shard, row = self.index[:, -2], self.index[:, -1]
        rows = np.array([s["rows"] for s in manifest["shards"]], dtype=np.int64)
        if len(self.index) and (
            shard.min() < 0 or shard.max() >= len(rows) or row.min() < 0 or (row >= rows[shard]).any()
        ):
            raise PatchfoldError(f"'{index_name}' points at rows its shards do not have")
        self._length = len(self.index)
        floats = np.dtype(np.float64 if stored == np.float64 else np.float32)
        self.dtype = floats if self.to_float else stored  # what patches come back as
        self._divisor, self._divisors, self._image_ids = self._scaling(stored) if self.to_float else (None, None, None)

    def _scaling(self, stored: np.dtype) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
        """What ``to_float`` divides by: one value for every patch, or a table by image id.

        Returns ``(divisor, None, None)`` when every image shares one divisor (None: no division),
        else ``(None, divisors, ids)``: ``divisors`` by sorted image ``ids`` (``ids`` None when the
        ids are 0, 1, ... so the table is indexed by id directly).
        """
        scale = float(self.manifest.get("scale", 1.0))
        fallback = source_max_value(stored) if stored.kind in "biu" else 1.0 / scale
        images = self.manifest["images"]
        where = f"the manifest of dataset '{self.directory}'"
        if any(not -(2**63) <= image["id"] < 2**63 for image in images):
            raise PatchfoldError(f"{where} has an image id outside the int64 range")
        ids = np.array([image["id"] for image in images], dtype=np.int64)
        divisors = np.array([float(image.get("max_value", fallback)) * scale for image in images], dtype=self.dtype)
        if not (np.isfinite(divisors) & (divisors > 0)).all():
            raise PatchfoldError(f"{where}: max_value × scale must be a positive {self.dtype} for every image")
        if len(np.unique(divisors)) <= 1:
            value = divisors[0] if len(divisors) else self.dtype.type(1)
            return (None if value == 1 else value), None, None
        order = np.argsort(ids, kind="stable")
        ids, divisors = ids[order], divisors[order]
        repeated = ids[1:][np.diff(ids) == 0]
        if len(repeated):
            raise PatchfoldError(f"{where} lists image id {repeated[0]} twice")
        column = self.index[:, 0]
        if np.array_equal(ids, np.arange(len(ids))):
            known = len(column) == 0 or (column.min() >= 0 and column.max() < len(ids))
            ids_or_none = None
        else:
            found = np.minimum(np.searchsorted(ids, column), len(ids) - 1)
            known = bool((ids[found] == column).all())
            ids_or_none = ids
        if not known:
            raise PatchfoldError(
                f"'{self.directory / 'index.npy'}' names images its manifest does not list (to_float needs each one's "
                "max_value)"
            )
        return None, divisors, ids_or_none

    def __getstate__(self) -> dict[str, Any]:
        """The directory, the options and the manifest: no maps, no index (they reopen)."""
        return {
            "directory": str(self.directory),
            "manifest": self.manifest,
            **{name: getattr(self, name) for name in _OPTIONS},
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Reopen the files in a worker process, checking them against the manifest again."""
        self.directory = Path(state["directory"])
        self.manifest = state["manifest"]
        for name in _OPTIONS:
            setattr(self, name, state[name])
        if self.as_tensor and torch is None:
            raise PatchfoldError("as_tensor=True needs torch, which is not installed here", param="as_tensor")
        self._open()

    # ----- the sequence -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: Any) -> Any:
        """Patch ``key`` (an int), or a batch of them (a slice, ints or a boolean mask); see the class."""
        rows = self._rows(key)
        if isinstance(rows, int):
            return self._item(rows)
        return self._batch(rows)

    def __getitems__(self, indices: Any) -> list[Any]:
        """The items at ``indices`` as a list, read as one batch: what ``DataLoader`` calls.

        Args:
            indices: A list of ints (what a batch sampler gives), or anything ``dataset[...]`` takes.

        Returns:
            One item per index, as ``dataset[i]`` gives it (views of one fresh batch array).
        """
        rows = self._rows(indices)
        return self._unstack(self._item(rows) if isinstance(rows, int) else self._batch(rows), isinstance(rows, int))

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, self._length, ITER_CHUNK):
            rows = np.arange(start, min(start + ITER_CHUNK, self._length), dtype=np.int64)
            yield from self._unstack(self._batch(rows), False)

    def __repr__(self) -> str:
        options = "".join(f", {name}=True" for name in _OPTIONS if getattr(self, name))
        return (
            f"PatchDataset('{self.directory}', {self._length} patches of {self.patch_shape} "
            f"{self.manifest['dtype']}{options})"
        )

    def image_rows(self, image_id: int) -> np.ndarray:
        """Dataset indices of one image's patches, in block order.

        Args:
            image_id: The image's ``"id"`` in ``manifest["images"]``.

        Returns:
            An int64 array of the rows of ``dataset`` (and of ``dataset.index``) that hold its patches.
        """
        return np.flatnonzero(self.index[:, 0] == image_id)

    # ----- reading ----------------------------------------------------------------------------------
    def _rows(self, key: Any) -> int | np.ndarray:
        """``key`` as one row (an int in range) or an int64 array of rows in range."""
        n = self._length
        if isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_):
            return _in_range(int(key), n)
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64)
        if key is None or isinstance(key, str | bytes | tuple | dict | set | float | bool | np.bool_):
            raise TypeError(_index_types(key))
        try:
            array = np.asarray(key)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(_index_types(key)) from None
        if array.ndim == 0:
            if array.dtype.kind not in "iu":
                raise TypeError(_index_types(key))
            return _in_range(int(array), n)
        if array.size == 0 and array.dtype.kind in "fiub":  # an empty list is float64 to numpy
            if array.ndim != 1:
                raise PatchfoldError(f"a patch index array must be 1-D, got shape {list(array.shape)}")
            return np.empty(0, dtype=np.int64)
        if array.dtype.kind == "b":
            if array.shape != (n,):
                raise IndexError(f"a boolean mask of patches must have shape ({n},), got {list(array.shape)}")
            return np.flatnonzero(array)
        if array.dtype.kind not in "iu":
            raise TypeError(_index_types(key))
        if array.ndim != 1:
            raise PatchfoldError(f"a patch index array must be 1-D, got shape {list(array.shape)}")
        low, high = array.min(), array.max()
        if low < -n or high >= n:
            bad = high if high >= n else low
            raise IndexError(f"patch index {bad} is out of range for a dataset of {n} patches")
        rows = array.astype(np.int64)
        if low < 0:
            rows = np.where(rows < 0, rows + n, rows)
        return rows

    def _item(self, i: int) -> Any:
        """Patch ``i`` (in range) as the options ask."""
        location = self.index[i]
        values = self._arrays[location[-2]][location[-1]]
        if self.to_float:
            patch = values.astype(self.dtype)
            divisor = self._divisor if self._divisors is None else self._divisors[self._table_row(location[0])]
            if divisor is not None:
                patch /= divisor
        else:
            patch = values.copy()
        patch = patch.reshape(self.patch_shape)
        if self.as_tensor:
            patch = torch.from_numpy(patch)
        if not self.with_position:
            return patch
        block = np.array(location[1:-2])
        return patch, int(location[0]), torch.from_numpy(block) if self.as_tensor else block

    def _batch(self, rows: np.ndarray) -> Any:
        """Patches ``rows`` (in range) as one array ``(k, C, *kernel)``, as the options ask."""
        located = self.index[rows]
        values = self._gather(located[:, -2], located[:, -1])
        if self.to_float:
            values = values.astype(self.dtype, copy=False)  # already a fresh array
            if self._divisors is not None:
                values /= self._divisors[self._table_row(located[:, 0])][:, None]
            elif self._divisor is not None:
                values /= self._divisor
        patches = values.reshape(len(rows), *self.patch_shape)
        if not self.with_position:
            return torch.from_numpy(patches) if self.as_tensor else patches
        ids, blocks = located[:, 0].copy(), np.ascontiguousarray(located[:, 1:-2])
        if self.as_tensor:
            return torch.from_numpy(patches), torch.from_numpy(ids), torch.from_numpy(blocks)
        return patches, ids, blocks

    def _gather(self, shards: np.ndarray, within: np.ndarray) -> np.ndarray:
        """Rows ``within`` of shards ``shards`` as one fresh array ``(k, C·∏k)``: a copy of a
        contiguous run, else one fancy index per shard."""
        count = len(within)
        if count == 0:
            return np.empty((0, self._row_length), dtype=np.dtype(self.manifest["dtype"]))
        first = shards[0]
        if (shards == first).all():
            array = self._arrays[first]
            start = int(within[0])
            if within[-1] - start == count - 1 and (count == 1 or (np.diff(within) == 1).all()):
                return array[start : start + count].copy()
            return array[within]
        out = np.empty((count, self._row_length), dtype=self._arrays[first].dtype)
        for shard in np.unique(shards):
            chosen = shards == shard
            out[chosen] = self._arrays[shard][within[chosen]]
        return out

    @property
    def _row_length(self) -> int:
        return math.prod(self.patch_shape)

    def _table_row(self, image_ids: Any) -> Any:
        """Where image ids sit in the divisor table (the ids themselves when they are 0, 1, ...)."""
        return image_ids if self._image_ids is None else np.searchsorted(self._image_ids, image_ids)

    def _unstack(self, batch: Any, single: bool) -> list[Any]:
        """A batch (or one item, when ``single``) as a list of items."""
        if single:
            return [batch]
        if not self.with_position:
            return list(batch)
        patches, ids, blocks = batch
        return list(zip(patches, ids.tolist(), blocks))


def load_dataset(
    directory: str | Path,
    allow_incomplete: bool = False,
    *,
    to_float: bool = False,
    with_position: bool = False,
    as_tensor: bool = False,
) -> PatchDataset:
    """Open a dataset written by ``patchfold batch unfold`` (memory-mapped; nothing is read yet).

    Args:
        directory: The dataset's directory (its ``manifest.json``, ``index.npy`` and shards), or
            its ``.zarr`` store (``patches``, ``index``, ``done``; the manifest in its attributes).
        allow_incomplete: Open a dataset a failed or stopped run left.
        to_float: Patches as floats in [0, 1], each scaled by its own source's maximum.
        with_position: Items ``(patch, image_id, block_index)``.
        as_tensor: Torch tensors instead of numpy arrays.

    Returns:
        A :class:`PatchDataset` (a ``torch.utils.data.Dataset`` when torch is installed).
    """
    return PatchDataset(
        directory, allow_incomplete, to_float=to_float, with_position=with_position, as_tensor=as_tensor
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a dataset: a Zarr store's attributes, or a shard directory's manifest.json."""
    if is_zarr(path):
        from patchfold.datasets.zarr_store import read_store_manifest

        return read_store_manifest(path)
    return read_dataset_manifest(path)


def _in_range(i: int, n: int) -> int:
    """Index ``i`` (negative counts from the end) of a dataset of ``n`` patches."""
    if not -n <= i < n:
        raise IndexError(f"patch index {i} is out of range for a dataset of {n} patches")
    return i + n if i < 0 else i


def _index_types(key: Any) -> str:
    return (
        f"a PatchDataset is indexed by an int, a slice, a list or 1-D array of ints or a boolean mask, "
        f"got {type(key).__name__} {key!r}"[:300]
    )


def _open_npy(path: Path, shape: tuple[int, ...] | None, dtype: np.dtype) -> np.ndarray:
    """A dataset file memory-mapped, with the shape (when given) and dtype its manifest records."""
    require_file(path, "dataset file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise PatchfoldError(f"dataset file '{path}' is missing") from None
    except (OSError, ValueError, EOFError) as error:
        raise PatchfoldError(f"dataset file '{path}' is not a valid .npy: {error}") from None
    if isinstance(array, np.memmap) and os.path.getsize(path) != array.offset + array.nbytes:
        raise PatchfoldError(
            f"dataset file '{path}' is {os.path.getsize(path)} bytes; its header describes "
            f"{array.offset + array.nbytes}"
        )
    if not isinstance(array, np.ndarray) or array.dtype != dtype or (shape is not None and array.shape != shape):
        got = f"{array.dtype} {list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
        expected = f"{dtype} {list(shape)}" if shape is not None else str(dtype)
        raise PatchfoldError(f"dataset file '{path}' holds {got}; its manifest says {expected}")
    return array
