"""Reading a patch dataset written by ``batch unfold`` (light: numpy and json only)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from patchfold.blocks import to_tuple
from patchfold.errors import PatchfoldError
from patchfold.io.formats import read_dataset_manifest
from patchfold.io.read import require_file


class PatchDataset:
    """A patch dataset opened for reading: memory-mapped shards and the index.

    ``dataset[i]`` is patch ``i`` as ``(C, *kernel_size)``; ``dataset.index[i]`` says where it
    came from (image id, block index, shard, row).
    """

    def __init__(self, directory: str | Path, allow_incomplete: bool = False) -> None:
        if not isinstance(directory, str | os.PathLike):
            raise PatchfoldError(f"a dataset is opened from a directory path, got {directory!r}")
        self.directory = Path(directory)
        self.manifest = read_dataset_manifest(self.directory)
        if not self.manifest.get("complete") and not allow_incomplete:
            raise PatchfoldError(
                f"dataset '{self.directory}' is incomplete (a run failed or was stopped); "
                "re-run the same command to finish it"
            )
        columns = len(self.manifest["index_columns"])
        dtype = np.dtype(self.manifest["dtype"])
        kernel = to_tuple(self.manifest["kernel_size"], columns - 3, "kernel_size")
        self.patch_shape = (self.manifest["channels"], *kernel)
        length = math.prod(self.patch_shape)
        self.shards = [
            _open_npy(self.directory / s["file"], (s["rows"], length), dtype) for s in self.manifest["shards"]
        ]
        self.index = np.asarray(_open_npy(self.directory / "index.npy", None, np.dtype(np.int64)))
        if self.index.ndim != 2 or self.index.shape[1] != columns:
            raise PatchfoldError(
                f"'{self.directory / 'index.npy'}' has shape {list(self.index.shape)}; expected (rows, {columns})"
            )
        shard, row = self.index[:, -2], self.index[:, -1]
        rows = np.array([s["rows"] for s in self.manifest["shards"]], dtype=np.int64)
        if len(self.index) and (
            shard.min() < 0 or shard.max() >= len(rows) or row.min() < 0 or (row >= rows[shard]).any()
        ):
            raise PatchfoldError(f"'{self.directory / 'index.npy'}' points at rows its shards do not have")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        shard, row = self.index[i, -2], self.index[i, -1]
        return np.asarray(self.shards[shard][row]).reshape(self.patch_shape)

    def image_rows(self, image_id: int) -> np.ndarray:
        """Dataset indices of one image's patches, in block order."""
        return np.flatnonzero(self.index[:, 0] == image_id)


def load_dataset(directory: str | Path, allow_incomplete: bool = False) -> PatchDataset:
    """Open a dataset written by ``patchfold batch unfold`` (memory-mapped; nothing is read yet)."""
    return PatchDataset(directory, allow_incomplete)


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
