"""Zarr output benchmark (issue #17): `patchfold unfold big.tif -k 32 -s 16 -o x.zarr` against the
same command with `-o x.npy`, as real processes under `/usr/bin/time -v`, interleaved, medians.

    python bench/zarr_out.py [--size 16384] [--rounds 3] [--dir DIR] [--compression default]

The input is the uncompressed RGB uint8 TIFF of bench/stream.py; the output keeps uint8 (about
3 × 1024 × ((size - 16) / 16)² bytes). Prints wall time, throughput (uncompressed bytes per
second), peak RSS and the Zarr store's size on disk, and checks that both outputs hold the same
patches (sampled columns).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import make_tiff, timed


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--compression", default="default")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="patchfold-zarr-bench-"))
    try:
        tiff = work / "big.tif"
        make_tiff(tiff, args.size)
        base = [sys.executable, "-m", "patchfold", "unfold", str(tiff), "-k", "32", "-s", "16", "--no-progress"]
        runs: dict[str, list[tuple[float, int]]] = {"npy": [], "zarr": []}
        for _ in range(args.rounds):
            for kind in runs:
                out = work / f"x.{kind}"
                extra = ["--compression", args.compression] if kind == "zarr" else []
                seconds, rss, _ = timed([*base, "-o", str(out), *extra])
                runs[kind].append((seconds, rss))
        npy = np.load(work / "x.npy", mmap_mode="r")
        import zarr

        store = zarr.open(str(work / "x.zarr"), mode="r")
        columns = np.linspace(0, npy.shape[2] - 1, 64).astype(int)
        for column in columns:
            assert np.array_equal(store[0, :, int(column)], npy[0, :, column]), column
        nbytes = npy.nbytes
        print(f"{args.size}² RGB uint8, k32 s16: {nbytes / 1e9:.2f} GB of patches, medians of {args.rounds} rounds")
        print("| output | wall | throughput | peak RSS | on disk |")
        print("|---|---|---|---|---|")
        medians = {}
        for kind, values in runs.items():
            seconds = statistics.median(v[0] for v in values)
            rss = max(v[1] for v in values)
            medians[kind] = seconds
            size = disk_bytes(work / "x.zarr") if kind == "zarr" else (work / "x.npy").stat().st_size
            print(f"| .{kind} | {seconds:.2f} s | {nbytes / seconds / 1e9:.2f} GB/s | {rss / 2**30:.2f} GiB | "
                  f"{size / 1e6:.1f} MB |")  # fmt: skip
        print(f"**zarr throughput as a share of npy's: {medians['npy'] / medians['zarr']:.0%}** (target ≥ 70 %)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
