"""Blocks that cover every pixel (``cover=True``), run on the engines' evenly spaced loops.

A ``cover`` grid is evenly spaced along each dim except, where the blocks stop short of the dim's
end, for one last block moved inward to end at the border. So along each dim the blocks form at
most two evenly spaced runs (the regular ones, and the moved one), and the whole grid is the
product of those runs: at most ``2**ndim`` parts, each an ordinary unpadded geometry over a region
of the (cover-)padded input. Unfold cuts every part with the engine's own loop and places its
columns; fold overlap-adds every part's columns at its region. Every pixel a part reads belongs
to the image (or to the padding of a dim shorter than one block), so the results equal the slow
definition block by block; the tests compare against that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from typing import Any

import numpy as np
from patchfold.geometry import Geometry


@dataclass(frozen=True)
class Part:
    """Blocks ``blocks`` (a range per dim of the cover grid) read padded ``region`` (per dim),
    as the unpadded ``geometry`` over that region places them. The regular part (the first
    blocks of every dim, its region starting at 0) also has ``whole``: the unpadded geometry over
    the whole padded input, which places those same blocks there (None for the other parts)."""

    blocks: tuple[slice, ...]
    region: tuple[slice, ...]
    geometry: Geometry
    whole: Geometry | None = None


def _runs(geometry: Geometry, dim: int) -> list[tuple[slice, slice]]:
    """``(blocks, region)`` of the evenly spaced runs along ``dim``."""
    count, moved = geometry.even_grid[dim]
    span, stride = geometry.span[dim], geometry.stride[dim]
    runs = [(slice(0, count), slice(0, (count - 1) * stride + span))]
    if moved is not None:
        runs.append((slice(count, count + 1), slice(moved, moved + span)))
    return runs


@lru_cache(maxsize=64)
def parts(geometry: Geometry) -> tuple[Part, ...]:
    """The parts of a cover geometry, in no particular order (they are disjoint in blocks)."""
    plain = geometry.blocks.replace(padding=(0,), padding_mode="zeros", cover=False)
    result = []
    for runs in product(*(_runs(geometry, d) for d in range(geometry.ndim))):
        blocks = tuple(b for b, _ in runs)
        region = tuple(r for _, r in runs)
        sub = plain.at(tuple(r.stop - r.start for r in region))
        assert sub.blocks_per_dim == tuple(b.stop - b.start for b in blocks)
        whole = None
        if all(r.start == 0 for r in region):  # every dim's count = (padded - span) // stride + 1
            whole = plain.at(geometry.padded_size)
            assert whole.blocks_per_dim == sub.blocks_per_dim
        result.append(Part(blocks, region, sub, whole))
    return tuple(result)


def needs_parts(geometry: Geometry) -> bool:
    """Whether a geometry must be run part by part (a cover grid with a moved block or padding)."""
    return geometry.cover and (not geometry.is_regular or any(a or b for a, b in geometry.pad_widths))


def plain(geometry: Geometry) -> Geometry:
    """The same blocks as an ordinary geometry, for a cover grid that needed no moved block and no
    padding (the engines' fast paths then serve it as it is)."""
    return geometry.blocks.replace(cover=False).at(geometry.spatial_size) if geometry.cover else geometry


def _grid_shape(geometry: Geometry, shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """A patch matrix's shape with its block axis split into the grid's dims."""
    n, a, b = shape
    return (n, a, *geometry.blocks_per_dim) if layout == "ncl" else (n, *geometry.blocks_per_dim, b)


def _select(part: Part, layout: str) -> tuple[slice, ...]:
    return (slice(None), slice(None), *part.blocks) if layout == "ncl" else (slice(None), *part.blocks)


def unfold_parts(
    padded: Any,
    geometry: Geometry,
    out: Any,
    layout: str,
    unfold_part: Callable[[Any, Geometry], Any],
) -> Any:
    """Fill ``out`` (the whole patch matrix, numpy or torch) from ``padded`` (the input padded by
    ``geometry.pad_widths``), ``unfold_part(region, geometry)`` cutting each part."""
    grid = out.reshape(_grid_shape(geometry, tuple(out.shape), layout))
    for part in parts(geometry):
        if part.whole is not None:
            # The regular part, cut from the padded input as it is rather than from the slice of
            # its region (not contiguous, so the compiled loop would first have copied it whole).
            piece = unfold_part(padded, part.whole)
        else:
            piece = unfold_part(padded[(slice(None), slice(None), *part.region)], part.geometry)
        grid[_select(part, layout)] = piece.reshape(_grid_shape(part.geometry, tuple(piece.shape), layout))
    return out


def fold_parts(
    cols: Any,
    geometry: Geometry,
    layout: str,
    weights: list[np.ndarray] | None,
    fold_part: Callable[[Any, Geometry, list[np.ndarray] | None], Any],
) -> Any:
    """The padded overlap-add sums ``(N, C, *padded_size)`` of ``cols``, ``fold_part(columns,
    geometry, weights)`` giving each part's sums over its region."""
    grid = cols.reshape(_grid_shape(geometry, tuple(cols.shape), layout))
    total = None
    for part in parts(geometry):
        sub = grid[_select(part, layout)]
        rows = part.geometry.num_blocks
        sub = sub.reshape((sub.shape[0], -1, rows) if layout == "ncl" else (sub.shape[0], rows, -1))
        part_weights = None if weights is None else [w[b] for w, b in zip(weights, part.blocks)]
        piece = fold_part(sub, part.geometry, part_weights)
        if total is None:
            shape = (*piece.shape[:2], *geometry.padded_size)
            total = np.zeros(shape, dtype=piece.dtype) if isinstance(piece, np.ndarray) else piece.new_zeros(shape)
        total[(slice(None), slice(None), *part.region)] += piece
    return total
