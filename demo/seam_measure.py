"""Seam measure: mean absolute gradient across tile borders divided by the mean elsewhere.

    python demo/seam_measure.py IMAGE [IMAGE...] -k 48 -s 32

Borders are the rows and columns where a block starts or ends. A value near 1 means borders look
like the rest of the image; a seam shows as a ratio well above 1.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image


def border_mask(size: int, kernel: int, stride: int) -> np.ndarray:
    """True at positions p where the gradient p-1 → p crosses a block edge."""
    mask = np.zeros(size, dtype=bool)
    count = (size - kernel) // stride + 1
    for start in range(0, count * stride, stride):
        for edge in (start, start + kernel):
            if 0 < edge < size:
                mask[edge] = True
    return mask


def seam_ratio(path: str, kernel: int, stride: int) -> float:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    dx = np.abs(np.diff(pixels, axis=1)).mean(axis=(0, 2))  # gradient between column x-1 and x, x = 1..W-1
    dy = np.abs(np.diff(pixels, axis=0)).mean(axis=(1, 2))
    across = np.concatenate(
        [dx[border_mask(pixels.shape[1], kernel, stride)[1:]], dy[border_mask(pixels.shape[0], kernel, stride)[1:]]]
    )
    elsewhere = np.concatenate(
        [dx[~border_mask(pixels.shape[1], kernel, stride)[1:]], dy[~border_mask(pixels.shape[0], kernel, stride)[1:]]]
    )
    return float(across.mean() / elsewhere.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+")
    parser.add_argument("-k", "--kernel", type=int, required=True)
    parser.add_argument("-s", "--stride", type=int, required=True)
    args = parser.parse_args()
    for path in args.images:
        print(f"{path}: seam ratio {seam_ratio(path, args.kernel, args.stride):.3f}")


if __name__ == "__main__":
    main()
