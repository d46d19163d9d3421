"""File-to-file jobs: unfold an array into a ``.npy`` patch matrix band by band, with bounded
memory, and fold one back.

Each job is a generator of :class:`Progress` events so a caller can show progress (the command line
wraps it in a progress bar; the library never prints). Outputs appear atomically when the generator
finishes; closing it early (Ctrl-C included) leaves no file behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from patchfold import cpu
from patchfold.coverage import coverage_vectors, outer, unpad_adjoint
from patchfold.cpu import pad_input
from patchfold.geometry import Geometry, check_layout
from patchfold.io import atomic_paths, check_free_space, check_output_path, restore_dtype, sidecar_path
from patchfold.ops import finish_fold
from patchfold.windows import window_weights

#: Share of available memory a job may use when no budget is given, and a cap on it: bands larger
#: than this write no faster, and smaller ones keep a gigapixel job's footprint modest.
DEFAULT_MEMORY_FRACTION = 0.25
DEFAULT_MEMORY_CAP = 512 * 2**20


@dataclass(frozen=True)
class Progress:
    """One finished band: ``done`` of ``total`` bands, ``bytes_done`` of ``bytes_total`` written."""

    done: int
    total: int
    bytes_done: int
    bytes_total: int


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable), or 4 GB when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 10**9


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
    plan = UnfoldPlan(geometry, geometry.unfold_shape(shape[0], shape[1], layout), np.dtype(dtype), 1, budget)
    rows = max(1, min(plan.total_rows, budget // max(1, plan.row_bytes)))
    if rows < plan.total_rows:  # streaming: two band buffers share the budget
        rows = max(1, rows // 2)
    return replace(plan, band_rows=rows)


def unfold_to_npy(
    array: np.ndarray,
    plan: UnfoldPlan,
    path: Path,
    layout: str = "ncl",
    *,
    scale: float = 1.0,
    sidecar: str | None = None,
    device: str = "cpu",
    engine: str = "auto",
    threads: int | None = None,
) -> Iterator[Progress]:
    """Unfold ``array`` ``(N, C, *spatial)`` into the ``.npy`` at ``path``, one band at a time.

    Bands are computed into two reused buffers and written with positioned writes, so memory stays
    near one band whatever the output size. Values are cast to ``plan.dtype`` and multiplied by
    ``scale`` band by band (never a converted copy of the whole input). ``sidecar`` (JSON text) is
    written beside it, and both files appear together only when every band is written.
    """
    check_output_path(path)
    check_free_space(path, plan.output_bytes)
    geometry = plan.geometry
    factor = plan.dtype.type(scale) if scale != 1.0 else None
    direct = device == "cpu" and engine != "torch" and array.flags.c_contiguous and array.dtype == plan.dtype
    if direct and factor is None:  # blocks straight from the input (padded once if it must be)
        source, source_geometry = cpu.prepare_input(array, geometry)
    else:  # via contiguous slabs in the output dtype
        source, source_geometry = pad_input(array, geometry), None
    band = _band_computer(source, source_geometry, plan, layout, device, engine, threads, factor)
    targets = [path] + ([sidecar_path(path)] if sidecar is not None else [])
    with atomic_paths(*targets) as temporaries:
        with open(temporaries[0], "r+b") as handle:
            header = allocate_npy(handle, plan.output_shape, plan.dtype)
            written = 0
            # Double buffering: band k is written by a second thread while band k+1 is computed.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchfold-writer") as writer:
                pending: Future[None] | None = None
                for index, (first, last) in enumerate(plan.band_ranges()):
                    values = band(first, last, index % 2)
                    if pending is not None:
                        pending.result()
                        yield Progress(index, plan.bands, written, plan.output_bytes)
                    pending = writer.submit(write_band, handle.fileno(), header, values, plan, first, layout)
                    written += values.nbytes
                    _release(source)
                if pending is not None:
                    pending.result()
                    yield Progress(plan.bands, plan.bands, written, plan.output_bytes)
        if sidecar is not None:
            temporaries[1].write_text(sidecar, encoding="utf-8")


def _band_computer(
    padded: np.ndarray,
    direct_geometry: Geometry | None,
    plan: UnfoldPlan,
    layout: str,
    device: str,
    engine: str,
    threads: int | None,
    factor: Any,
) -> Any:
    """A function ``(first, last, slot) -> band`` that unfolds block rows into a contiguous array,
    alternating between two buffers (``slot`` 0 or 1) so one can be written while the other fills.

    With ``direct_geometry`` blocks are cut from ``padded`` (the input as :func:`cpu.prepare_input`
    gave it) directly; without, ``padded`` is the padded input, cut into slabs of the output dtype.
    """
    geometry = plan.geometry
    per_row = geometry.blocks_per_row
    size = plan.band_rows * plan.row_bytes // plan.dtype.itemsize
    buffers = [np.empty(size, dtype=plan.dtype), np.empty(size if plan.bands > 1 else 0, dtype=plan.dtype)]

    def shape_of(rows: int) -> tuple[int, int, int]:
        n, a, b = plan.output_shape
        return (n, a, rows * per_row) if layout == "ncl" else (n, rows * per_row, b)

    if device == "cpu" and engine != "torch":

        def compute(first: int, last: int, slot: int) -> np.ndarray:
            shape = shape_of(last - first)
            out = buffers[slot][: math.prod(shape)].reshape(shape)
            if direct_geometry is not None:
                cpu.unfold_into(padded, direct_geometry, out, layout, rows=(first, last), threads=threads)
            else:  # a contiguous slab in the output dtype first: strided or casting copies are slow
                slab, slab_geometry = slab_for_rows(padded, geometry, first, last)
                slab = np.ascontiguousarray(slab, dtype=plan.dtype)
                if factor is not None:
                    slab *= factor
                cpu.unfold_into(slab, slab_geometry, out, layout, threads=threads)
            return out

        return compute

    import torch
    from patchfold import torch_engine

    target = torch_engine.resolve_device(device)

    def compute_torch(first: int, last: int, slot: int) -> np.ndarray:
        slab, slab_geometry = slab_for_rows(padded, geometry, first, last)
        result = torch_engine.unfold(torch.from_numpy(np.ascontiguousarray(slab)).to(target), slab_geometry, layout)
        shape = shape_of(last - first)
        out = buffers[slot][: math.prod(shape)].reshape(shape)
        out[...] = result.cpu().numpy()
        if factor is not None:
            out *= factor
        return out

    return compute_torch


def slab_for_rows(padded: np.ndarray, geometry: Geometry, first: int, last: int) -> tuple[np.ndarray, Geometry]:
    """The slab of a padded input that block rows ``[first, last)`` read, and its own geometry."""
    top = first * geometry.stride[0]
    height = (last - first - 1) * geometry.stride[0] + geometry.span[0]
    slab = padded[:, :, top : top + height]
    slab_geometry = Geometry.create(
        (height, *geometry.padded_size[1:]), geometry.kernel_size, geometry.stride, 0, geometry.dilation
    )
    return slab, slab_geometry


def write_npy_header(handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Write a ``.npy`` header for a C-ordered array; return where the data starts."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    handle.seek(0)
    np.lib.format.write_array_header_2_0(handle, header) if _needs_v2(header) else np.lib.format.write_array_header_1_0(
        handle, header
    )
    return handle.tell()


def allocate_npy(handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Write the header of a C-ordered ``.npy`` and size the file for all its data (sparse where
    the file system allows, so bands can be written in place); return where the data starts."""
    header = write_npy_header(handle, shape, dtype)
    handle.truncate(header + math.prod(shape) * np.dtype(dtype).itemsize)
    return header


def _needs_v2(header: dict[str, Any]) -> bool:
    return len(repr(header)) > 65000


def write_band(fd: int, header: int, values: np.ndarray, plan: UnfoldPlan, first: int, layout: str) -> None:
    """Write one band of block columns to its place in the file (one write per contiguous run)."""
    n, a, b = plan.output_shape
    itemsize = plan.dtype.itemsize
    start = first * plan.geometry.blocks_per_row
    if layout == "nlc":
        for item in range(n):
            write_at(fd, values[item], header + (item * a + start) * b * itemsize)
        return
    for item in range(n):
        for row in range(a):
            write_at(fd, values[item, row], header + ((item * a + row) * b + start) * itemsize)


def write_at(fd: int, values: np.ndarray, offset: int) -> None:
    """Write all of ``values`` at byte ``offset`` of the open file ``fd`` (positioned writes may be short)."""
    view = memoryview(np.ascontiguousarray(values)).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


_FOLD_BYTES_PER_VALUE = 40


@dataclass(frozen=True)
class FoldPlan(BandPlan):
    """How a fold to ``.npy`` runs, in bands of output rows along the first spatial dim."""

    @property
    def total_rows(self) -> int:
        return self.geometry.spatial_size[0]


def plan_fold(
    cols_shape: tuple[int, ...], channels: int, geometry: Geometry, dtype: Any, budget: int | None = None
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
    return FoldPlan(geometry, output_shape, dtype, min(rows, geometry.spatial_size[0]), budget)


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


def _release(array: np.ndarray) -> None:
    """Drop a memory-mapped array's pages from this process (they stay in the page cache)."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise"):
        import mmap

        mapping.madvise(mmap.MADV_DONTNEED)
