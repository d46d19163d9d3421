"""Reading a patch dataset written by ``batch unfold`` (light: numpy and json only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from patchfold.blocks import to_tuple
from patchfold.errors import PatchfoldError
from patchfold.io.formats import DATASET_FORMAT


class PatchDataset:
    """A patch dataset opened for reading: memory-mapped shards and the index.

    ``dataset[i]`` is patch ``i`` as ``(C, *kernel_size)``; ``dataset.index[i]`` says where it
    came from (image id, block index, shard, row).
    """

    def __init__(self, directory: str | Path, allow_incomplete: bool = False) -> None:
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.exists():
            raise PatchfoldError(f"'{self.directory}' is not a patchfold dataset (no manifest.json)")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        if self.manifest.get("format") != DATASET_FORMAT:
            raise PatchfoldError(f"'{path}' is not a patchfold dataset manifest")
        if not self.manifest.get("complete") and not allow_incomplete:
            raise PatchfoldError(
                f"dataset '{self.directory}' is incomplete (a run failed or was stopped); "
                "re-run the same command to finish it"
            )
        self.index = np.load(self.directory / "index.npy", allow_pickle=False)
        self.shards = [
            np.load(self.directory / s["file"], mmap_mode="r", allow_pickle=False) for s in self.manifest["shards"]
        ]
        kernel = self.manifest["kernel_size"]
        ndim = len(self.manifest["index_columns"]) - 3
        self.patch_shape = (self.manifest["channels"], *to_tuple(kernel, ndim, "kernel_size"))

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
