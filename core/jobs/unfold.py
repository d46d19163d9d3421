"""The unfold job: inputs to a ``.npy`` patch matrix and its sidecar, band by band, with bounded
memory.

Each job is a generator of :class:`Progress` events so a caller can show progress (the command line
wraps it in a progress bar; the library never prints). Outputs appear atomically when the generator
finishes; closing it early (Ctrl-C included) leaves no file behind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.blocks import Blocks
from patchfold.dtypes import target_dtype
from patchfold.engines import resolve
from patchfold.engines.cpu import pad_input, prepare_input, unfold_into
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.io.formats import Sidecar, sidecar_path
from patchfold.io.read import DEFAULT_MAX_PIXELS, find_inputs, load_inputs
from patchfold.io.write import (
    _release,
    allocate_npy,
    atomic_paths,
    check_free_space,
    check_not_an_input,
    check_output_path,
    write_at,
)
from patchfold.jobs.plan import Progress, UnfoldPlan, plan_unfold


def unfold_to_npy(
    array: np.ndarray,
    plan: UnfoldPlan,
    path: Path,
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
        source, source_geometry = prepare_input(array, geometry)
    else:  # via contiguous slabs in the output dtype
        source, source_geometry = pad_input(array, geometry), None
    band = _band_computer(source, source_geometry, plan, device, engine, threads, factor)
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
                    pending = writer.submit(write_band, handle.fileno(), header, values, plan, first)
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
    device: str,
    engine: str,
    threads: int | None,
    factor: Any,
) -> Any:
    """A function ``(first, last, slot) -> band`` that unfolds block rows into a contiguous array,
    alternating between two buffers (``slot`` 0 or 1) so one can be written while the other fills.

    With ``direct_geometry`` blocks are cut from ``padded`` (the input as :func:`prepare_input`
    gave it) directly; without, ``padded`` is the padded input, cut into slabs of the output dtype.
    """
    geometry, layout = plan.geometry, plan.layout
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
                unfold_into(padded, direct_geometry, out, layout, rows=(first, last), threads=threads)
            else:  # a contiguous slab in the output dtype first: strided or casting copies are slow
                slab, slab_geometry = slab_for_rows(padded, geometry, first, last)
                slab = np.ascontiguousarray(slab, dtype=plan.dtype)
                if factor is not None:
                    slab *= factor
                unfold_into(slab, slab_geometry, out, layout, threads=threads)
            return out

        return compute

    from patchfold.engines import torch_engine

    torch_engine.resolve_device(device)
    torch_engine.check_dtype(padded.dtype)

    def compute_torch(first: int, last: int, slot: int) -> np.ndarray:
        slab, slab_geometry = slab_for_rows(padded, geometry, first, last)
        result = torch_engine.unfold(torch_engine.take(np.ascontiguousarray(slab), device), slab_geometry, layout)
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
    return slab, geometry.over_padded((height, *geometry.padded_size[1:]))


def write_band(fd: int, header: int, values: np.ndarray, plan: UnfoldPlan, first: int) -> None:
    """Write one band of block columns to its place in the file (one write per contiguous run)."""
    n, a, b = plan.output_shape
    itemsize = plan.dtype.itemsize
    start = first * plan.geometry.blocks_per_row
    if plan.layout == "nlc":
        for item in range(n):
            write_at(fd, values[item], header + (item * a + start) * b * itemsize)
        return
    for item in range(n):
        for row in range(a):
            write_at(fd, values[item, row], header + ((item * a + row) * b + start) * itemsize)


@dataclass(frozen=True)
class UnfoldResult:
    """What an :func:`unfold_file` job wrote."""

    output: Path
    sidecar: Sidecar
    plan: UnfoldPlan
    inputs: int
    device: str
    engine: str
    seconds: float

    def summary(self) -> dict[str, Any]:
        geometry, sidecar = self.plan.geometry, self.sidecar
        return {
            "output": str(self.output),
            "sidecar": str(sidecar_path(self.output)),
            "inputs": self.inputs,
            "input_shape": list(sidecar.input_shape),
            "input_dtype": sidecar.input_dtype,
            "output_dtype": sidecar.output_dtype,
            **geometry.blocks.to_dict(),
            "layout": self.plan.layout,
            "blocks_per_dim": list(geometry.blocks_per_dim),
            "num_blocks": geometry.num_blocks,
            "output_shape": list(self.plan.output_shape),
            "output_bytes": self.plan.output_bytes,
            "device": self.device,
            "engine": self.engine,
            "streamed": self.plan.streaming,
            "bands": self.plan.bands,
            "seconds": round(self.seconds, 4),
        }


def unfold_file(
    inputs: Sequence[str | Path],
    output: str | Path,
    blocks: Blocks,
    *,
    dtype: str = "keep",
    layout: str = "ncl",
    device: str = "auto",
    engine: str = "auto",
    spatial_dims: int | None = None,
    stack: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_memory: int | None = None,
    threads: int | None = None,
) -> Iterator[Progress | UnfoldResult]:
    """Unfold image files, directories or ``.npy`` arrays into the patch matrix ``output`` (``.npy``)
    with its sidecar beside it, in bands that fit ``max_memory``.

    A generator: it yields :class:`Progress` per band and finally the :class:`UnfoldResult`.
    Nothing is written until the inputs and parameters have been checked; both files appear only
    when complete (closing the generator early leaves nothing).
    """
    started = time.perf_counter()
    output = Path(output)
    if output.suffix.lower() != ".npy":
        raise PatchfoldError(f"the patch matrix is written as .npy, got '{output}'", param="output")
    check_output_path(output)
    check_output_path(sidecar_path(output), "sidecar")
    paths = find_inputs(inputs)
    check_not_an_input([output, sidecar_path(output)], paths)
    batch = load_inputs(paths, spatial_dims, max_pixels, stack)
    array = batch.array
    out_dtype, scale = target_dtype(array.dtype, dtype)
    geometry = blocks.at(batch.spatial_size)
    device, engine = resolve(device, engine)
    plan = plan_unfold(array.shape, out_dtype, geometry, layout, max_memory)
    sidecar = Sidecar(
        blocks=geometry.blocks,
        input_shape=tuple(array.shape),
        input_dtype=str(array.dtype),
        output_dtype=str(out_dtype),
        scale=scale,
        layout=layout,
        sources=tuple(str(Path(s).resolve()) for s in batch.sources),
    )
    yield from unfold_to_npy(
        array, plan, output, scale=scale, sidecar=sidecar.to_json(), device=device, engine=engine, threads=threads
    )
    inputs_count = len(set(batch.sources))
    yield UnfoldResult(output, sidecar, plan, inputs_count, device, engine, time.perf_counter() - started)
