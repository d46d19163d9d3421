"""Coverage: how many blocks touch each pixel, computed per axis.

The divisor map ``fold(unfold(ones))`` is separable: it is the outer product of one 1-D coverage
vector per spatial dim. So is a window's weighted divisor, since window weights are products of
per-dim weights. Everything here costs O(sum of sizes), not O(pixels·∏k).
"""

from __future__ import annotations

import math
from collections import Counter
from functools import reduce

import numpy as np
from patchfold.geometry import Geometry
from patchfold.memory import check_fits

#: numpy's names for the padding modes that repeat image content.
NUMPY_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def source_index(size: int, pad: int | tuple[int, int], padding_mode: str) -> np.ndarray | None:
    """Index of the input pixel each padded position repeats (``pad`` on both sides, or
    ``(before, after)``), or None for zero padding."""
    if padding_mode == "zeros":
        return None
    widths = (pad, pad) if isinstance(pad, int) else pad
    return np.pad(np.arange(size), widths, mode=NUMPY_PAD_MODE[padding_mode])  # type: ignore[call-overload]


def unpad_adjoint(padded: np.ndarray, geometry: Geometry, axis_offset: int, first_dim: int = 0) -> np.ndarray:
    """Map an array over padded coordinates back to the input: crop, or for non-zero modes add
    each padded position onto the input pixel it repeated (the adjoint of padding).

    ``axis_offset`` is the axis of the first spatial dim (2 for ``(N, C, *spatial)``). Works on
    numpy arrays and torch tensors alike (slicing and in-place adds only); may reuse ``padded``.
    Dims before ``first_dim`` are left alone (a band of rows that the caller crops itself).
    """
    result = padded
    for dim, (size, pad) in enumerate(zip(geometry.spatial_size, geometry.pad_widths)):
        if dim >= first_dim:
            result = _unpad_axis(result, axis_offset + dim, size, pad, geometry.padding_mode)
    return result


def _unpad_axis(padded: np.ndarray, axis: int, size: int, pad: tuple[int, int], padding_mode: str) -> np.ndarray:
    """:func:`unpad_adjoint` along one axis, padded by ``pad`` (before, after)."""
    before, after = pad
    if before == after == 0:
        return padded
    lead = (slice(None),) * axis
    inner = padded[(*lead, slice(before, before + size))]
    index = source_index(size, pad, padding_mode)
    if index is not None:
        for position in (*range(before), *range(before + size, size + before + after)):
            inner[(*lead, int(index[position]))] += padded[(*lead, position)]
    return inner


def padded_coverage(geometry: Geometry, dim: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Blocks (or summed weights) touching each padded position along one dim.

    ``weights`` has shape ``(blocks_per_dim[dim], kernel_size[dim])`` for a windowed fold.
    """
    check_fits(geometry.padded_size[dim] * 8 * 3, f"the coverage vector of a dim of {geometry.padded_size[dim]}")
    if weights is None and geometry.is_regular:
        return _block_counts(
            geometry.padded_size[dim],
            geometry.blocks_per_dim[dim],
            geometry.kernel_size[dim],
            geometry.stride[dim],
            geometry.dilation[dim],
        )
    if weights is None:  # a cover grid: the evenly spaced blocks, then the one moved inward
        count, moved = geometry.even_grid[dim]
        coverage = _block_counts(
            geometry.padded_size[dim], count, geometry.kernel_size[dim], geometry.stride[dim], geometry.dilation[dim]
        )
        if moved is not None:
            coverage[moved : moved + geometry.span[dim] : geometry.dilation[dim]] += 1
        return coverage
    coverage = np.zeros(geometry.padded_size[dim], dtype=np.float64)
    for offset in range(geometry.kernel_size[dim]):  # weights already hold (L, k) values: O(L·k) anyway
        coverage[geometry.positions(dim, offset)] += weights[:, offset]  # distinct positions: no np.add.at
    return coverage


def _block_counts(size: int, blocks: int, kernel: int, stride: int, dilation: int) -> np.ndarray:
    """How many kernel points of ``blocks`` blocks land on each of ``size`` positions, in
    O(size + blocks) whatever the kernel size: block ``i`` covers ``i·stride + j·dilation`` for
    ``j < kernel``, a run of ``kernel`` consecutive positions of the residue class
    ``i·stride mod dilation``; each run is a +1/−1 pair in that class's difference array."""
    starts = np.arange(blocks, dtype=np.int64) * stride
    residue, first = np.divmod(starts, dilation)[::-1]
    # every block ends inside the padded size, so first + kernel <= ceil(size / dilation)
    steps = np.zeros((dilation, -(-size // dilation) + 1), dtype=np.int64)
    np.add.at(steps, (residue, first), 1)
    np.add.at(steps, (residue, first + kernel), -1)
    np.cumsum(steps, axis=1, out=steps)  # steps[r, m]: coverage of position r + m·dilation
    return steps.T.reshape(-1)[:size].copy()


def coverage_vectors(geometry: Geometry, weights: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """One coverage vector per spatial dim, in input coordinates (padding mapped back)."""
    vectors = []
    for dim in range(geometry.ndim):
        padded = padded_coverage(geometry, dim, None if weights is None else weights[dim])
        size, pad = geometry.spatial_size[dim], geometry.pad_widths[dim]
        vectors.append(_unpad_axis(padded, 0, size, pad, geometry.padding_mode))
    return vectors


def max_coverage(geometry: Geometry) -> int:
    """The most blocks covering any one pixel (the divisor map's maximum, from its factors)."""
    return math.prod(int(v.max()) for v in coverage_vectors(geometry))


def outer(vectors: list[np.ndarray]) -> np.ndarray:
    """Outer product of per-dim vectors: the full N-d map."""
    return reduce(np.multiply.outer, vectors)


def divisor_map(geometry: Geometry, weights: list[np.ndarray] | None = None) -> np.ndarray:
    """``fold(unfold(ones))`` for one channel, shape ``spatial_size`` (int64; float64 if weighted)."""
    check_fits(geometry.pixels * 8, f"the divisor map of {list(geometry.spatial_size)} pixels")
    return outer(coverage_vectors(geometry, weights))


def coverage_histogram(geometry: Geometry) -> dict[int, int]:
    """Exact ``{blocks covering a pixel: pixel count}`` from the per-dim histograms."""
    histogram: Counter[int] = Counter({1: 1})
    for vector in coverage_vectors(geometry):
        per_value = np.bincount(vector)  # counts are small non-negative ints: no sort needed
        values = np.flatnonzero(per_value)
        counts = per_value[values]
        combined: Counter[int] = Counter()
        for value, count in zip(values.tolist(), counts.tolist()):
            for previous, pixels in histogram.items():
                combined[previous * value] += pixels * count
        histogram = combined
    return dict(sorted(histogram.items()))


def coverage_summary(geometry: Geometry) -> dict[str, object]:
    """Min, max, mean and histogram of coverage over all input pixels."""
    histogram = coverage_histogram(geometry)
    pixels = geometry.pixels
    total = sum(value * count for value, count in histogram.items())
    uncovered = histogram.get(0, 0)
    return {
        "min": min(histogram),
        "max": max(histogram),
        "mean": total / pixels,
        "histogram": {str(value): count for value, count in histogram.items()},
        "uncovered_pixels": uncovered,
        "uncovered_fraction": uncovered / pixels,
    }
