"""Streaming ``apply``: a SIZE×SIZE RGB uint8 tiled TIFF through a 1×1-convolution TorchScript model
to ``.npy``, as a real ``patchfold apply`` command under ``/usr/bin/time -v`` (issue #15's target:
16384², peak RSS ≤ 1.5 GB).

    python bench/apply_stream.py [--size 16384] [--dir DIR]

Needs about 5 × SIZE² bytes of free disk in DIR (the TIFF and the float32 output). Prints wall time
and peak RSS, and checks sampled rows of the output against the model on those rows of the image
(a 1×1 convolution is pointwise, so the blended result equals it wherever blocks overlap).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).parent))
from stream import timed


def make_tiled_tiff(path: Path, size: int, tile: int = 512) -> None:
    """An uncompressed RGB tiled TIFF written tile row by tile row (never whole in memory)."""
    columns = np.arange(size, dtype=np.uint32)

    def tiles():
        for top in range(0, size, tile):
            rows = np.arange(top, min(size, top + tile), dtype=np.uint32)[:, None]
            band = np.stack([((rows * 7 + columns * (c + 3)) % 251).astype(np.uint8) for c in range(3)], axis=-1)
            band = np.pad(band, ((0, tile - len(rows)), (0, 0), (0, 0)))
            for left in range(0, size, tile):
                yield np.ascontiguousarray(band[:, left : left + tile])

    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="apply-stream-", dir=args.dir or Path(__file__).parent))
    try:
        image, model, out = work / "big.tif", work / "conv1.pt", work / "out.npy"
        make_tiled_tiff(image, args.size)
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 3, 1).eval()
        torch.jit.save(torch.jit.script(conv), str(model))
        command = [sys.executable, "-m", "patchfold", "apply", str(image), "--model", str(model), "-k", "128",
                   "-s", "96", "--cover", "--window", "gaussian", "--batch-size", "64", "-o", str(out),
                   "--no-progress", "-q"]  # fmt: skip
        seconds, peak, _ = timed(command)
        result = np.load(out, mmap_mode="r")
        import zarr

        source = zarr.open(tifffile.imread(image, aszarr=True), mode="r")
        worst = 0.0
        for row in np.random.default_rng(0).integers(0, args.size, 8):
            line = torch.from_numpy(np.moveaxis(source[int(row)], -1, 0)[None, :, None].astype(np.float32) / 255)
            with torch.no_grad():
                expected = conv(line)[0, :, 0].numpy()
            worst = max(worst, float(np.abs(result[0, :, int(row)] - expected).max()))
        print(f"apply {args.size}² RGB tiled TIFF -> {out.stat().st_size / 1e9:.2f} GB float32 .npy: "
              f"{seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB ({peak / 1e9:.2f} GB); "
              f"max |Δ| vs the model on 8 sampled rows {worst:.2e}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
