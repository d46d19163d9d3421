"""DataLoader throughput of a patch dataset: `patchfold.load_dataset` against the same rows read from
one plain memory-mapped `.npy` through the trivial Dataset anyone would write.

    python bench/dataset.py [--images 48] [--shard-size 10000000] [--batch-size 256] [--repeats 5] [--dir DIR]

The dataset is `batch unfold` of generated RGB PNGs (384², -k 16 -s 8: 2,209 patches of 3×16×16
uint8 each; 81 MB in shards of at most 10 MB, so shuffled batches span shards). The plain `.npy`
holds the same rows in the same order, so both loaders read the same bytes in the same shuffled
order (one seeded permutation per round). Each measurement is one shuffled epoch with
`DataLoader(batch_size, shuffle=True, num_workers=W)`, workers 0 and 2 (fork, started inside the
measurement); the contenders run interleaved (the order alternating), `repeats` rounds after a
warm-up epoch each, and the table gives the medians. Two cases: the stored uint8 patches, and
floats in [0, 1] (`to_float=True` against the plain dataset dividing by 255).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import patchfold
import torch
from patchfold.datasets.build import unfold_dataset
from PIL import Image


class PlainDataset(torch.utils.data.Dataset):
    """The reference: rows of one memory-mapped ``(N, C, k, k)`` array, copied out one by one (a
    writable copy, as ``default_collate`` needs to take it without a warning)."""

    def __init__(self, path: Path, to_float: bool = False) -> None:
        self.array = np.load(path, mmap_mode="r")
        self.to_float = to_float

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.to_float:
            return self.array[i].astype(np.float32) / np.float32(255)
        return np.array(self.array[i])


def make_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:04d}.png", compress_level=1)


def epoch(dataset: torch.utils.data.Dataset, batch_size: int, workers: int, seed: int) -> float:
    """Rows per second of one shuffled epoch (workers started inside the measurement)."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    rows = 0
    started = time.perf_counter()
    for batch in loader:
        rows += batch.shape[0]
    seconds = time.perf_counter() - started
    assert rows == len(dataset)
    return rows / seconds


def check_same_rows(patches: torch.utils.data.Dataset, plain: torch.utils.data.Dataset) -> None:
    for i in (0, len(plain) // 3, len(plain) - 1):
        assert np.array_equal(patches[i], plain[i]), i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=10**7, help="bytes per shard at most")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="patchfold-bench-dataset-"))
    images, directory, plain_path = work / "images", work / "dataset", work / "plain.npy"
    if not images.exists():
        make_images(images, args.images)
    if not (directory / "manifest.json").exists():
        for _ in unfold_dataset(
            [str(images)], directory, patchfold.Blocks(16, stride=8), workers=2, shard_size=args.shard_size
        ):
            pass
    dataset = patchfold.load_dataset(directory)
    if not plain_path.exists():
        np.save(plain_path, dataset[:])
    size = sum((directory / s["file"]).stat().st_size for s in dataset.manifest["shards"])
    print(
        f"{len(dataset)} patches {dataset.patch_shape} uint8 in {len(dataset.manifest['shards'])} shard(s), "
        f"{size / 1e6:.0f} MB; batch {args.batch_size}; {args.repeats} rounds; {os.cpu_count()} cores; "
        f"torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}",
        flush=True,
    )
    cases: list[tuple[str, Callable[[], torch.utils.data.Dataset], Callable[[], torch.utils.data.Dataset]]] = [
        ("uint8 patches", lambda: patchfold.load_dataset(directory), lambda: PlainDataset(plain_path)),
        (
            "to_float (float32 in [0, 1])",
            lambda: patchfold.load_dataset(directory, to_float=True),
            lambda: PlainDataset(plain_path, to_float=True),
        ),
    ]
    print("\n| case | workers | plain .npy Dataset | PatchDataset | PatchDataset ÷ plain |")
    print("|---|---|---|---|---|")
    for name, make_patches, make_plain in cases:
        patches, plain = make_patches(), make_plain()
        check_same_rows(patches, plain)
        for workers in (0, 2):
            times: dict[str, list[float]] = {"plain": [], "patches": []}
            for contender in (plain, patches):  # warm-up: page cache, first forks
                epoch(contender, args.batch_size, workers, 0)
            for round_ in range(args.repeats):
                order = [("plain", plain), ("patches", patches)]
                for label, contender in order if round_ % 2 == 0 else order[::-1]:
                    times[label].append(epoch(contender, args.batch_size, workers, round_ + 1))
            plain_rate, patch_rate = (statistics.median(times[k]) for k in ("plain", "patches"))
            print(
                f"| {name} | {workers} | {plain_rate / 1e3:,.0f} k rows/s | {patch_rate / 1e3:,.0f} k rows/s | "
                f"{100 * patch_rate / plain_rate:.0f} % |",
                flush=True,
            )
    print(f"\n{datetime.date.today().isoformat()}; work directory {work}")


if __name__ == "__main__":
    main()
