"""The unfold job: inputs to a ``.npy`` patch matrix and its sidecar, band by band, with bounded
memory.

Each job is a generator of :class:`Progress` events so a caller can show progress (the command line
wraps it in a progress bar; the library never prints). Outputs appear atomically when the generator
finishes; closing it early (Ctrl-C included) leaves no file behind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from patchfold import cover
from patchfold.blocks import Blocks
from patchfold.dtypes import cast_scaled, target_dtype
from patchfold.engines import resolve
from patchfold.engines.cpu import pad_input, prepare_input, unfold_into
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.io.formats import ZARR_SIDECAR_KEY, Sidecar, sidecar_path
from patchfold.io.levels import Level
from patchfold.io.read import DEFAULT_MAX_PIXELS, find_inputs, load_inputs
from patchfold.io.sources import RegionSource, padded_slab, zarr_module
from patchfold.io.streams import STDIO, is_stdio, source_name, stdout_file
from patchfold.io.write import (
    _release,
    allocate_npy,
    atomic_directory,
    atomic_paths,
    check_free_space,
    check_not_an_input,
    check_output_path,
    check_store_apart,
    check_store_path,
    write_at,
)
from patchfold.io.zarr_out import (
    ZARR_CHUNK_BYTES,
    check_compression,
    compressors,
    create_array,
)
from patchfold.jobs.pieces import unfold_pieces
from patchfold.jobs.plan import Progress, UnfoldPlan, plan_unfold

#: How many chunks (of every item) one band of a Zarr patch matrix holds.
ZARR_CHUNKS_PER_BAND = 4


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
    in_pieces = _in_pieces(array, plan, device, engine)
    if in_pieces:
        padded = np.ascontiguousarray(cast_scaled(pad_input(array, plan.geometry), plan.dtype, scale))
    else:
        band, source = _bands_of(array, plan, scale, device, engine, threads)
    targets = [path] + ([sidecar_path(path)] if sidecar is not None else [])
    with atomic_paths(*targets) as temporaries:
        with open(temporaries[0], "r+b") as handle:
            header = allocate_npy(handle, plan.output_shape, plan.dtype)
            fd = handle.fileno()
            if in_pieces:
                yield from unfold_pieces(padded, plan.geometry.over_padded(), plan, fd, header, threads)
            else:
                yield from _write_bands(
                    band, plan, source, lambda values, first: write_band(fd, header, values, plan, first)
                )
        if sidecar is not None:
            temporaries[1].write_text(sidecar, encoding="utf-8")


def _in_pieces(array: Any, plan: UnfoldPlan, device: str, engine: str) -> bool:
    """Whether :func:`~patchfold.jobs.pieces.unfold_pieces` writes this job: a patch matrix within
    the budget in one band, of an array in memory, on the CPU engine, of plain blocks."""
    in_memory = isinstance(array, np.ndarray) and not isinstance(array, np.memmap)
    cpu = device == "cpu" and engine != "torch"
    return plan.bands == 1 and in_memory and cpu and not cover.needs_parts(plan.geometry)


def unfold_to_zarr(
    array: np.ndarray | RegionSource,
    plan: UnfoldPlan,
    path: Path,
    *,
    scale: float = 1.0,
    sidecar: dict[str, Any] | None = None,
    device: str = "cpu",
    engine: str = "auto",
    threads: int | None = None,
    compression: str = "default",
) -> Iterator[Progress]:
    """Unfold ``array`` into a Zarr (v3) array at ``path``: the patch matrix, chunked by whole rows
    of blocks (one item per chunk), with ``sidecar`` in its attributes under ``"patchfold"``.
    Written band by band into a temporary store that replaces ``path`` only when complete."""
    n, a, b = plan.output_shape
    per_row = plan.geometry.blocks_per_row
    chunk_rows = max(1, min(plan.band_rows, ZARR_CHUNK_BYTES // max(1, plan.row_bytes // n)))
    # ZARR_CHUNKS_PER_BAND chunks per band and item, within the band the memory budget allows: zarr
    # encodes and stores the chunks of one write concurrently (8192² RGB k32 s16: 66 -> 78 % of the
    # .npy output's throughput, against one chunk a band)
    per_band = max(1, min(ZARR_CHUNKS_PER_BAND, plan.band_rows // chunk_rows))
    plan = replace(plan, band_rows=chunk_rows * per_band)
    chunks = (1, a, chunk_rows * per_row) if plan.layout == "ncl" else (1, chunk_rows * per_row, b)
    band, source = _bands_of(array, plan, scale, device, engine, threads)
    with atomic_directory(path) as temporary:
        attributes = {ZARR_SIDECAR_KEY: sidecar} if sidecar is not None else {}
        out = create_array(temporary, plan.output_shape, chunks, plan.dtype, attributes, compression)

        def store(values: np.ndarray, first: int) -> None:
            blocks = slice(first * per_row, first * per_row + values.shape[2 if plan.layout == "ncl" else 1])
            out[(slice(None), slice(None), blocks) if plan.layout == "ncl" else (slice(None), blocks)] = values

        yield from _write_bands(band, plan, source, store)


def _write_bands(band: Any, plan: UnfoldPlan, source: Any, store: Any) -> Iterator[Progress]:
    """Compute every band of ``plan`` with ``band`` and ``store(values, first_block_row)`` it,
    double-buffered: band k is stored by a second thread while band k+1 is computed. ``source``
    (a memory-mapped input, or None) has its pages released after each band."""
    written = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchfold-writer") as writer:
        pending: Future[None] | None = None
        for index, (first, last) in enumerate(plan.band_ranges()):
            values = band(first, last, index % 2)
            if pending is not None:
                pending.result()
                yield Progress(index, plan.bands, written, plan.output_bytes)
            pending = writer.submit(store, values, first)
            written += values.nbytes
            if source is not None:
                _release(source)
        if pending is not None:
            pending.result()
            yield Progress(plan.bands, plan.bands, written, plan.output_bytes)


def _bands_of(
    array: np.ndarray | RegionSource, plan: UnfoldPlan, scale: float, device: str, engine: str, threads: int | None
) -> tuple[Any, Any]:
    """The band function of an unfold job over ``array``, and the array its pages come from."""
    geometry = plan.geometry
    if isinstance(array, RegionSource):  # read band by band: only the rows each band needs

        def read_rows(first: int, last: int) -> tuple[np.ndarray, Geometry]:
            top, height = geometry.band_extent(first, last)
            slab = padded_slab(array, geometry.pad_widths, geometry.padding_mode, top, height)
            return slab, geometry.over_padded((height, *geometry.padded_size[1:]))

        return _band_computer(None, None, plan, device, engine, threads, scale, read_rows), None
    direct = device == "cpu" and engine != "torch" and array.flags.c_contiguous and array.dtype == plan.dtype
    direct = direct and not cover.needs_parts(geometry)  # a cover grid's bands are cut from their slabs
    if direct and scale == 1.0:  # blocks straight from the input (padded once if it must be)
        source, source_geometry = prepare_input(array, geometry)
    else:  # via contiguous slabs in the output dtype
        source, source_geometry = pad_input(array, geometry), None
    return _band_computer(source, source_geometry, plan, device, engine, threads, scale), source


def _band_computer(
    padded: np.ndarray | None,
    direct_geometry: Geometry | None,
    plan: UnfoldPlan,
    device: str,
    engine: str,
    threads: int | None,
    scale: float,
    read_rows: Any = None,
) -> Any:
    """A function ``(first, last, slot) -> band`` that unfolds block rows into a contiguous array,
    alternating between two buffers (``slot`` 0 or 1) so one can be written while the other fills.

    With ``direct_geometry`` blocks are cut from ``padded`` (the input as :func:`prepare_input`
    gave it) directly; without, ``padded`` is the padded input, cut into slabs of the output dtype
    (times ``scale``, as :func:`~patchfold.dtypes.cast_scaled` makes them), or, with
    ``read_rows(first, last) -> (slab, its geometry)``, each band's slab is read from a region
    source.
    """
    geometry, layout = plan.geometry, plan.layout
    if read_rows is None:

        def read_rows(first: int, last: int) -> tuple[np.ndarray, Geometry]:
            return slab_for_rows(padded, geometry, first, last)

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
                slab, slab_geometry = read_rows(first, last)
                slab = np.ascontiguousarray(cast_scaled(slab, plan.dtype, scale))
                unfold_into(slab, slab_geometry, out, layout, threads=threads)
            return out

        return compute

    from patchfold.engines import torch_engine

    torch_engine.resolve_device(device)
    torch_engine.check_dtype(plan.dtype if padded is None else padded.dtype)

    def compute_torch(first: int, last: int, slot: int) -> np.ndarray:
        slab, slab_geometry = read_rows(first, last)
        result = torch_engine.unfold(torch_engine.take(np.ascontiguousarray(slab), device), slab_geometry, layout)
        shape = shape_of(last - first)
        out = buffers[slot][: math.prod(shape)].reshape(shape)
        out[...] = cast_scaled(result.cpu().numpy(), plan.dtype, scale)
        return out

    return compute_torch


def slab_for_rows(padded: np.ndarray, geometry: Geometry, first: int, last: int) -> tuple[np.ndarray, Geometry]:
    """The slab of a padded input that block rows ``[first, last)`` read, and its own geometry."""
    top, height = geometry.band_extent(first, last)
    slab = padded[:, :, top : top + height]
    return slab, geometry.over_padded((height, *geometry.padded_size[1:]))


def write_band(fd: int, header: int, values: np.ndarray, plan: UnfoldPlan, first: int) -> None:
    """Write one band of block columns to its place in the file (one write per contiguous run)."""
    n, a, b = plan.output_shape
    itemsize = plan.dtype.itemsize
    start = first * plan.geometry.blocks_per_row
    if start == 0 and values.shape == plan.output_shape:  # the whole matrix: one write
        write_at(fd, values, header)
        return
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
    inputs: int  # the input files given (directories expanded), a file given twice counted twice
    device: str
    engine: str
    seconds: float

    def fold_parameters(self) -> dict[str, Any]:
        """What ``fold`` needs of a patch matrix that has no sidecar (one sent to standard output):
        the block parameters, the output size and the layout."""
        return {
            **self.plan.geometry.blocks.to_dict(),
            "output_size": list(self.plan.geometry.spatial_size),
            "layout": self.plan.layout,
        }

    def summary(self) -> dict[str, Any]:
        geometry, sidecar = self.plan.geometry, self.sidecar
        if is_stdio(self.output):
            where = "none: standard output has no file beside it (see fold_parameters)"
        elif self.output.suffix.lower() == ".zarr":
            where = f"{self.output} (attribute '{ZARR_SIDECAR_KEY}')"
        else:
            where = str(sidecar_path(self.output))
        extra = {"fold_parameters": self.fold_parameters()} if is_stdio(self.output) else {}
        return {
            "output": str(self.output),
            "sidecar": where,
            **extra,
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
    stdout: BinaryIO | None = None,
    **options: Any,
) -> Iterator[Progress | UnfoldResult]:
    """:func:`unfold_to_file`, and with ``output`` ``-`` the ``.npy`` stream to ``stdout`` (a
    binary stream), written only once it is complete; no sidecar goes with it (the result's
    :meth:`UnfoldResult.fold_parameters` say what ``fold`` then needs). ``-`` among ``inputs`` is
    standard input. The options are :func:`unfold_to_file`'s."""
    check_compression(output, options.get("compression", "default"))
    if not is_stdio(output):
        yield (yield from unfold_to_file(inputs, output, blocks, **options))
        return
    with stdout_file(stdout, ".npy") as target:
        result = yield from unfold_to_file(inputs, target, blocks, **options)
    yield replace(result, output=Path(STDIO))


def unfold_to_file(
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
    level: Level = None,
    compression: str = "default",
) -> Generator[Progress, None, UnfoldResult]:
    """Unfold image files, directories, ``.npy`` arrays or Zarr stores into the patch matrix
    ``output``: a ``.npy`` with its sidecar beside it, or a ``.zarr`` array (chunked by rows of
    blocks, ``compression`` as :data:`~patchfold.io.zarr_out.ZARR_COMPRESSIONS`) with the sidecar in its attributes; in
    bands that fit ``max_memory``. ``level`` picks the resolution of pyramidal TIFF and Zarr
    inputs, which are read band by band (a level larger than memory streams through).

    A generator: it yields :class:`Progress` per band and returns the :class:`UnfoldResult`.
    Nothing is written until the inputs and parameters have been checked; the outputs appear only
    when complete (closing the generator early leaves nothing).
    """
    started = time.perf_counter()
    output = Path(output)
    to_zarr = output.suffix.lower() == ".zarr"
    if output.suffix.lower() != ".npy" and not to_zarr:
        raise PatchfoldError(f"the patch matrix is written as .npy or .zarr, got '{output}'", param="output")
    check_compression(output, compression)
    if to_zarr:
        zarr_module()
        compressors(compression)
        check_store_path(output)
    else:
        check_output_path(output)
        check_output_path(sidecar_path(output), "sidecar")
    paths = find_inputs(inputs)
    check_not_an_input([output] if to_zarr else [output, sidecar_path(output)], paths)
    if to_zarr:
        check_store_apart(output, paths)
    batch = load_inputs(paths, spatial_dims, max_pixels, stack, level=level, regions=True)
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
        sources=tuple(source_name(s) for s in batch.sources),
        source_level=array.describe() if isinstance(array, RegionSource) else None,
    )
    if to_zarr:
        yield from unfold_to_zarr(
            array,
            plan,
            output,
            scale=scale,
            sidecar=sidecar.to_dict(),
            device=device,
            engine=engine,
            threads=threads,
            compression=compression,
        )
    else:
        yield from unfold_to_npy(
            array, plan, output, scale=scale, sidecar=sidecar.to_json(), device=device, engine=engine, threads=threads
        )
    # every input file given counts, a file given twice twice (it is two images of the batch)
    return UnfoldResult(output, sidecar, plan, len(paths), device, engine, time.perf_counter() - started)
