"""A region source walked block row by block row, for ``tiles`` and the keep rules: never the
whole level in memory.

The block rows along the first spatial dim are read in **bands** (:func:`row_bands`): the padded
rows a few consecutive block rows reach (:func:`~patchfold.io.sources.padded_slab`), at most
about :data:`BAND_BYTES` (always at least one block row). Their tiles are cut from the band and
the band is dropped.

Keep rules need each image's threshold before its first block is judged. It comes from a strided
subsample read without loading the level (:func:`sample_source`): the pixels at multiples of
:func:`~patchfold.keep.subsample_step` along every axis, the same pixels
:func:`~patchfold.keep.find_threshold` takes of the image in memory, read in bands of whole
chunk rows (or, where the step is longer than a chunk row, row by row), so each chunk is decoded
once. On a **pyramid** that subsample is taken of the smallest level that still holds at least
:data:`~patchfold.keep.OTSU_SAMPLES` pixels (:func:`threshold_level`; the level read where no
coarser one does), which reads a small fraction of the level instead of decoding all of it once
more. Either way the threshold is deterministic; the manifest records it and, where it came from
a coarser level, that level (``sampled_level``). The foreground counts are then taken band by
band (:func:`~patchfold.keep.band_counts`), the same exact counts
:func:`~patchfold.keep.block_counts` gives on the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.io.read import is_tiled_image_tiff, open_region
from patchfold.io.sources import RegionSource, padded_slab
from patchfold.keep import (
    OTSU_SAMPLES,
    KeepRules,
    Selection,
    Threshold,
    band_counts,
    band_mask,
    find_threshold,
    subsample_step,
)

#: Bytes of padded rows read at a time (a band of block rows); a single block row may take more.
BAND_BYTES = 64 * 2**20

#: Bytes of rows read at a time for the threshold's subsample where the source has no chunks.
SAMPLE_BAND_BYTES = 64 * 2**20


def read_level(inputs: Sequence[str | Path], level: Any, stack: bool = False) -> Any:
    """The level to read ``inputs`` at: the one asked for, or 0 of a single tiled TIFF (which is
    then a region source, read tile row by tile row)."""
    if level is None and not stack and len(inputs) == 1 and is_tiled_image_tiff(Path(inputs[0])):
        return 0
    return level


def row_bands(geometry: Geometry, row_bytes: int, budget: int | None = None) -> list[tuple[int, int]]:
    """Block rows ``[first, last)`` per band: consecutive block rows whose padded rows (``row_bytes``
    each) take at most ``budget`` (:data:`BAND_BYTES`) together, at least one block row per band."""
    budget = BAND_BYTES if budget is None else budget
    starts, span = geometry.block_starts(0), geometry.span[0]
    bands, first = [], 0
    while first < len(starts):
        last = first + 1
        while last < len(starts) and (starts[last] + span - starts[first]) * row_bytes <= budget:
            last += 1
        bands.append((first, last))
        first = last
    return bands


def read_band(source: RegionSource, geometry: Geometry, first: int, last: int) -> tuple[np.ndarray, int]:
    """The padded rows block rows ``[first, last)`` read, ``(N, C, height, *padded_size[1:])``,
    and the first of them (in padded coordinates). The padding rows and the image's rows are read
    as separate pieces, so a band that reaches circular padding reads the few rows it wraps to,
    not every row between."""
    top, height = geometry.band_extent(first, last)
    before, size = geometry.pad_widths[0][0], geometry.spatial_size[0]
    cuts = sorted({top, top + height, *(c for c in (before, before + size) if top < c < top + height)})
    pieces = [padded_slab(source, geometry.pad_widths, geometry.padding_mode, a, b - a) for a, b in pairwise(cuts)]
    return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=2)), top


# ----- the threshold ---------------------------------------------------------------------------


def chunk_rows(source: RegionSource) -> int:
    """Rows of the first spatial dim per chunk of the source's array (0 where it has no chunks)."""
    chunks, shape, axes = getattr(source.array, "chunks", None), source.array.shape, source.axes.upper()
    first = next((i for i, a in enumerate(axes) if a in "ZYX" and shape[i] == source.shape[2]), None)
    if not chunks or first is None or len(chunks) != len(shape):
        return 0
    return int(chunks[first])


def sample_source(source: RegionSource, most: int | None = None) -> np.ndarray:
    """The strided subsample of :func:`~patchfold.keep.subsample` (at most ``most`` pixels,
    :data:`~patchfold.keep.OTSU_SAMPLES` by default) of every item, read band by band:
    ``(N, C, *sampled)``."""
    most = OTSU_SAMPLES if most is None else most
    size, rest = source.shape[2], len(source.shape) - 3
    step = subsample_step(source.shape[2:], most)
    chunk = chunk_rows(source)
    strided = (slice(None), slice(None), slice(None), *[slice(None, None, step)] * rest)
    if chunk and step >= chunk:  # one row per chunk row at most: read the sampled rows alone
        return np.concatenate([source.rows(r, r + 1)[strided] for r in range(0, size, step)], axis=2)
    band = max(1, SAMPLE_BAND_BYTES // max(1, source.nbytes // size))
    band = max(chunk, band - band % chunk) if chunk else band
    parts = []
    for lo in range(0, size, band):
        first = lo + (-lo) % step
        if first < min(size, lo + band):
            rows = source.rows(lo, min(size, lo + band))
            parts.append(np.ascontiguousarray(rows[:, :, first - lo :: step][strided]))
    return np.concatenate(parts, axis=2)


def threshold_level(source: RegionSource, most: int | None = None) -> RegionSource:
    """The level the threshold is sampled from: the smallest level of the source's pyramid that
    holds at least ``most`` pixels (:data:`~patchfold.keep.OTSU_SAMPLES` by default) and has the
    source's items, channels (converted as the source's are), rank and dtype, or the source
    itself (a single level, or no coarser level large enough)."""
    most = OTSU_SAMPLES if most is None else most
    for level in range(source.levels - 1, source.level, -1):
        try:
            candidate = open_region(Path(source.path), level)
            if candidate is not None and source.channels is not None:  # read as the source is
                candidate = replace(candidate, channels=source.channels)
        except PatchfoldError:
            continue
        same = candidate is not None and candidate.shape[:2] == source.shape[:2] and candidate.ndim == source.ndim
        if same and candidate.dtype == source.dtype and math.prod(candidate.shape[2:]) >= most:
            return candidate
    return source


def source_thresholds(source: RegionSource, background: float | None) -> tuple[list[Threshold], int]:
    """Each item's threshold (see the module's text) and the level it was sampled from."""
    sampled = threshold_level(source)
    return [find_threshold(item, background) for item in sample_source(sampled)], sampled.level


# ----- walking the block rows ------------------------------------------------------------------


@dataclass
class Band:
    """Block rows ``[first, last)`` of every item: their padded rows from ``top`` and, with keep
    rules, each item's foreground counts ``(last - first, *blocks_per_dim[1:])``."""

    first: int
    last: int
    top: int
    pixels: np.ndarray
    counts: list[np.ndarray] | None = None


def read_counted(
    source: RegionSource, geometry: Geometry, first: int, last: int, thresholds: list[Threshold] | None
) -> Band:
    """Band ``[first, last)`` of ``source`` with its counts under ``thresholds`` (one per item)."""
    pixels, top = read_band(source, geometry, first, last)
    counts = None
    if thresholds is not None:
        counts = [
            band_counts(band_mask(item, geometry, top, threshold), geometry, top, first, last)
            for item, threshold in zip(pixels, thresholds)
        ]
    return Band(first, last, top, pixels, counts)


def walk_bands(
    source: RegionSource, geometry: Geometry, thresholds: list[Threshold] | None, prefetch: bool = True
) -> Iterator[Band]:
    """Every band of block rows of ``source`` in order, each read (and counted) while the caller
    works on the one before (one band ahead, on a second thread, with ``prefetch``)."""
    row_bytes = source.nbytes // source.shape[2] * math.prod(geometry.padded_size[1:]) // math.prod(source.shape[3:])
    bands = row_bands(geometry, max(1, row_bytes))
    if not prefetch:
        for first, last in bands:
            yield read_counted(source, geometry, first, last, thresholds)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchfold-reader") as reader:
        pending = reader.submit(read_counted, source, geometry, *bands[0], thresholds)
        try:
            for following in [*bands[1:], None]:
                band = pending.result()
                if following is not None:
                    pending = reader.submit(read_counted, source, geometry, *following, thresholds)
                yield band
                del band
        finally:
            pending.cancel()


def streamed_selections(source: RegionSource, geometry: Geometry, rules: KeepRules) -> tuple[list[Selection], int]:
    """The blocks the rules keep of every item of ``source``, counted band by band (what
    :func:`~patchfold.keep.select_blocks` gives in memory, with the threshold of
    :func:`source_thresholds`), and the level the threshold was sampled from."""
    thresholds, level = source_thresholds(source, rules.background)
    rows: list[list[np.ndarray]] = [[] for _ in thresholds]
    for band in walk_bands(source, geometry, thresholds):
        for item, counts in enumerate(band.counts or []):
            rows[item].append(counts.reshape(band.last - band.first, -1))
    return [selection(rules, t, np.concatenate(r).reshape(-1), geometry) for t, r in zip(thresholds, rows)], level


def selection(rules: KeepRules, threshold: Threshold, counts: np.ndarray, geometry: Geometry) -> Selection:
    """The :class:`~patchfold.keep.Selection` of one image's counts ``(L,)``."""
    volume = geometry.kernel_volume
    return Selection(rules, threshold, counts, rules.keeps(counts, volume), volume)
