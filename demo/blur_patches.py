"""Stand-in for any per-patch processing: blur every patch of a patch matrix on its own.

    python demo/blur_patches.py IN.npy OUT.npy [--sigma 2.5]

Reads IN.npy with its sidecar IN.json (from `patchfold unfold`), blurs each patch with a Gaussian
that sees only that patch (edges clamped), and writes OUT.npy with a copy of the sidecar, ready for
`patchfold fold`. Blurring patch by patch is what leaves seams where plain averaging meets them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def blur_axis(patches: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    radius = len(taps) // 2
    widths = [(0, 0)] * patches.ndim
    widths[axis] = (radius, radius)
    padded = np.pad(patches, widths, mode="edge")
    out = np.zeros_like(patches, dtype=np.float32)
    for offset, weight in enumerate(taps):
        out += weight * np.take(padded, np.arange(offset, offset + patches.shape[axis]), axis=axis)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--sigma", type=float, default=2.5)
    args = parser.parse_args()
    sidecar = json.loads(args.source.with_suffix(".json").read_text())
    cols = np.load(args.source)
    n, c = sidecar["input_shape"][:2]
    kh, kw = sidecar["kernel_size"]
    nlc = sidecar["layout"] == "nlc"
    patches = (cols if nlc else cols.transpose(0, 2, 1)).reshape(n, -1, c, kh, kw).astype(np.float32)
    taps = gaussian_kernel(args.sigma)
    blurred = blur_axis(blur_axis(patches, taps, 3), taps, 4).reshape(n, -1, c * kh * kw)
    np.save(args.target, (blurred if nlc else blurred.transpose(0, 2, 1)).astype(cols.dtype))
    shutil.copyfile(args.source.with_suffix(".json"), args.target.with_suffix(".json"))


if __name__ == "__main__":
    main()
