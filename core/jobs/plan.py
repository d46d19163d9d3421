"""Memory budgets and band plans: how a file job splits its output into bands that fit the budget."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from patchfold.cover import needs_parts
from patchfold.geometry import Geometry, check_layout
from patchfold.jobs.progress import Progress as Progress  # re-exported: the jobs import it from here
from patchfold.memory import available_memory

#: Share of available memory a job may use when no budget is given, and a cap on it: bands larger
#: than this write no faster, and smaller ones keep a gigapixel job's footprint modest.
DEFAULT_MEMORY_FRACTION = 0.25


DEFAULT_MEMORY_CAP = 512 * 2**20


def default_budget() -> int:
    return min(DEFAULT_MEMORY_CAP, int(available_memory() * DEFAULT_MEMORY_FRACTION))


@dataclass(frozen=True)
class BandPlan:
    """A job's output (shape, dtype) and the bands of ``band_rows`` rows it is computed in, out of
    ``total_rows`` (block rows for unfold, output rows for fold)."""

    geometry: Geometry
    output_shape: tuple[int, ...]
    dtype: np.dtype
    band_rows: int
    budget: int
    layout: str = "ncl"

    @property
    def total_rows(self) -> int:
        raise NotImplementedError

    @property
    def output_bytes(self) -> int:
        return math.prod(self.output_shape) * self.dtype.itemsize

    @property
    def bands(self) -> int:
        return -(-self.total_rows // self.band_rows)

    @property
    def streaming(self) -> bool:
        return self.bands > 1

    def band_ranges(self) -> Iterator[tuple[int, int]]:
        for first in range(0, self.total_rows, self.band_rows):
            yield first, min(self.total_rows, first + self.band_rows)


@dataclass(frozen=True)
class UnfoldPlan(BandPlan):
    """How an unfold job will run, in bands of block rows along the first spatial dim."""

    @property
    def total_rows(self) -> int:
        return self.geometry.blocks_per_dim[0]

    @property
    def row_bytes(self) -> int:
        """Output bytes of one row of blocks along the first spatial dim."""
        return self.output_bytes // self.geometry.blocks_per_dim[0]

    def peak_memory(self, input_bytes: int) -> int:
        """Estimated peak: the input, its padded copy when padded, and the band buffers (two when
        streaming: one is written while the other fills)."""
        padded = input_bytes * math.prod(self.geometry.padded_size) // math.prod(self.geometry.spatial_size)
        buffers = 2 if self.streaming else 1
        return input_bytes + (padded if any(self.geometry.padding) else 0) + buffers * self.band_rows * self.row_bytes


def plan_unfold(
    shape: tuple[int, ...], dtype: Any, geometry: Geometry, layout: str = "ncl", budget: int | None = None
) -> UnfoldPlan:
    """Choose band sizes so one band of output fits in ``budget`` bytes (default: a share of RAM)."""
    check_layout(layout)
    budget = default_budget() if budget is None else budget
    plan = UnfoldPlan(geometry, geometry.unfold_shape(shape[0], shape[1], layout), np.dtype(dtype), 1, budget, layout)
    rows = max(1, min(plan.total_rows, budget // max(1, plan.row_bytes)))
    if rows < plan.total_rows:  # streaming: two band buffers share the budget
        rows = max(1, rows // 2)
    return replace(plan, band_rows=rows)


_FOLD_BYTES_PER_VALUE = 40


@dataclass(frozen=True)
class FoldPlan(BandPlan):
    """How a fold to ``.npy`` runs, in bands of output rows along the first spatial dim."""

    @property
    def total_rows(self) -> int:
        return self.geometry.spatial_size[0]


def plan_fold(
    cols_shape: tuple[int, ...],
    channels: int,
    geometry: Geometry,
    dtype: Any,
    budget: int | None = None,
    layout: str = "ncl",
) -> FoldPlan:
    """Bands of output rows whose accumulator (8 bytes a value) and output fit in ``budget``."""
    budget = default_budget() if budget is None else budget
    dtype = np.dtype(dtype)
    output_shape = geometry.fold_shape(cols_shape[0], channels)
    row_values = cols_shape[0] * channels * math.prod(geometry.padded_size[1:])
    # per output value: the accumulator, float64 temporaries of normalising, and the output itself
    rows = max(1, budget // max(1, row_values * (_FOLD_BYTES_PER_VALUE + dtype.itemsize)))
    if geometry.padding_mode != "zeros" and geometry.padding[0] > 0:
        rows = geometry.spatial_size[0]  # padding folds back across the first dim: one band
    if needs_parts(geometry):
        rows = geometry.spatial_size[0]  # a cover grid with a moved block is folded whole, part by part
    return FoldPlan(geometry, output_shape, dtype, min(rows, geometry.spatial_size[0]), budget, check_layout(layout))
