"""Fold a patch matrix file back into images, band by band of output rows."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from patchfold.coverage import coverage_vectors, outer, unpad_adjoint
from patchfold.dtypes import finish_fold, restore_dtype
from patchfold.engines import cpu
from patchfold.io.write import _release, allocate_npy, atomic_paths, check_free_space, check_output_path, write_at
from patchfold.jobs.plan import FoldPlan, Progress
from patchfold.windows import window_weights


def fold_to_npy(
    cols: np.ndarray,
    plan: FoldPlan,
    path: Path,
    layout: str = "ncl",
    *,
    normalize: bool = True,
    window: str | None = None,
    restore: tuple[str, float] | None = None,
    threads: int | None = None,
) -> Iterator[Progress]:
    """Overlap-add ``cols`` into the ``.npy`` at ``path`` band by band of output rows.

    Gives the same values as :func:`patchfold.fold` (then :func:`patchfold.io.restore_dtype` with
    ``restore=(input_dtype, scale)``), holding only one band of the image at a time; pages of a
    memory-mapped ``cols`` are released after each band.
    """

    check_output_path(path)
    check_free_space(path, plan.output_bytes)
    geometry = plan.geometry
    weights = window_weights(geometry, window)
    vectors = coverage_vectors(geometry, weights) if normalize else None
    single_band = plan.bands == 1
    with atomic_paths(path) as (temporary,), open(temporary, "r+b") as handle:
        header = allocate_npy(handle, plan.output_shape, plan.dtype)
        written = 0
        for index, (top, bottom) in enumerate(plan.band_ranges()):
            pad = geometry.padding[0]
            rows = None if single_band else (top + pad, bottom + pad)
            summed = cpu.fold_padded(cols, geometry, layout, weights, rows=rows, threads=threads, exact=normalize)
            summed = unpad_adjoint(summed, geometry, axis_offset=2, first_dim=0 if single_band else 1)
            divisor_band = None
            if vectors is not None:
                divisor_band = outer([vectors[0][top:bottom], *vectors[1:]])
            values = finish_fold(summed, divisor_band, cols.dtype, weights is not None)
            if restore is not None:
                values = restore_dtype(values, *restore)
            _write_rows(handle.fileno(), header, values.astype(plan.dtype, copy=False), plan, top)
            written += values.nbytes
            _release(cols)
            yield Progress(index + 1, plan.bands, written, plan.output_bytes)


def _write_rows(fd: int, header: int, values: np.ndarray, plan: FoldPlan, top: int) -> None:
    """Write output rows ``[top, top + band)`` of every (item, channel) plane."""
    n, c = plan.output_shape[:2]
    plane = math.prod(plan.output_shape[2:])
    row = plane // plan.output_shape[2]
    for item in range(n):
        for channel in range(c):
            offset = header + ((item * c + channel) * plane + top * row) * plan.dtype.itemsize
            write_at(fd, values[item, channel], offset)
