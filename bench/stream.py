"""Streaming benchmark: unfold a 16384×16384 RGB uint8 TIFF (k=32, s=16, --dtype float32, ≈12.9 GB
of patches) and fold it back, each as a real `patchfold` command under `/usr/bin/time -v`, and compare
the unfold's write rate with a plain sequential write of the same number of bytes to the same disk.

    python bench/stream.py [--size 16384] [--dir DIR]

Needs about 2 × the output size of free disk in DIR (default: a temporary folder under bench/).
Prints peak RSS, wall time and throughput, and checks sampled blocks and rows of the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_timed


def make_tiff(path: Path, size: int) -> None:
    """An uncompressed RGB TIFF written in row chunks (never the whole image in memory)."""
    image = tifffile.memmap(path, shape=(size, size, 3), dtype=np.uint8, photometric="rgb")
    columns = np.arange(size, dtype=np.uint32)
    for top in range(0, size, 1024):
        rows = np.arange(top, min(size, top + 1024), dtype=np.uint32)[:, None]
        for channel in range(3):
            image[top : top + len(rows), :, channel] = ((rows * 7 + columns * (channel + 3)) % 251).astype(np.uint8)
    image.flush()
    del image


def timed(argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes and stdout of one command under /usr/bin/time -v."""
    seconds, peak, done = run_timed(argv)
    return seconds, peak, done.stdout


def sequential_write(path: Path, nbytes: int) -> float:
    """Seconds to write ``nbytes`` sequentially in 64 MiB chunks (the disk's plain write rate)."""
    chunk = np.ones(64 * 2**20, dtype=np.uint8)
    started = time.perf_counter()
    with open(path, "wb") as handle:
        left = nbytes
        while left > 0:
            handle.write(memoryview(chunk)[: min(left, len(chunk))])
            left -= len(chunk)
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def check_blocks(tiff: Path, patches: Path, size: int, samples: int = 20) -> None:
    """Sampled blocks of the streamed matrix equal direct slices of the image (scaled to float32)."""
    image = tifffile.memmap(tiff, mode="r")
    cols = np.load(patches, mmap_mode="r")
    per_row = (size - 32) // 16 + 1
    rng = np.random.default_rng(0)
    for index in rng.integers(0, per_row * per_row, samples):
        i, j = divmod(int(index), per_row)
        block = np.moveaxis(image[i * 16 : i * 16 + 32, j * 16 : j * 16 + 32], -1, 0).astype(np.float32)
        expected = (block * np.float32(1 / 255)).reshape(-1)
        assert np.array_equal(cols[0, :, index], expected), f"block {index} differs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    exe = shutil.which("patchfold") or str(Path(sys.executable).parent / "patchfold")
    base = args.dir or Path(__file__).parent
    with tempfile.TemporaryDirectory(dir=base, prefix="stream-") as tmp:
        work = Path(tmp)
        tiff, patches, back = work / "big.tif", work / "patches.npy", work / "back.npy"
        make_tiff(tiff, args.size)
        unfold = [exe, "unfold", str(tiff), "-k", "32", "-s", "16", "--dtype", "float32", "-o", str(patches)]
        seconds, peak, out = timed([*unfold, "--no-progress", "--json"])
        summary = json.loads(out)
        nbytes = summary["output_bytes"]
        plain = sequential_write(work / "plain.bin", nbytes)
        check_blocks(tiff, patches, args.size)
        print(
            f"input {args.size}x{args.size} RGB uint8 TIFF, output {nbytes / 1e9:.2f} GB float32 in "
            f"{summary['bands']} bands"
        )
        print(f"unfold: {seconds:.1f} s wall, peak RSS {peak / 2**30:.2f} GiB, {nbytes / seconds / 1e9:.2f} GB/s")
        print(f"plain sequential write of the same bytes: {plain:.1f} s, {nbytes / plain / 1e9:.2f} GB/s")
        print(f"unfold throughput / plain write: {plain / seconds:.0%}")
        seconds, peak, out = timed([exe, "fold", str(patches), "-o", str(back), "--no-progress", "--json"])
        print(
            f"fold back: {seconds:.1f} s wall, peak RSS {peak / 2**30:.2f} GiB, {nbytes / seconds / 1e9:.2f} GB/s "
            f"read, {json.loads(out)['bands']} bands"
        )
        image = tifffile.memmap(tiff, mode="r")
        restored = np.load(back, mmap_mode="r")
        for row in np.random.default_rng(1).integers(0, args.size, 16):
            assert np.array_equal(restored[0, :, row], np.moveaxis(image[row], -1, 0)), f"row {row} differs"
        print("sampled blocks and rows match the image exactly")
        os.sync()


if __name__ == "__main__":
    main()
