"""Estimates without unfolding: the overlap statistics of an input (from its header) or of a size,
the memory an unfold would take, and the divisor map as files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.about import cpu_engine, engine_line
from patchfold.blocks import Blocks, as_int
from patchfold.coverage import divisor_map
from patchfold.dtypes import target_dtype
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.io.levels import Level
from patchfold.io.read import DEFAULT_MAX_PIXELS, load_inputs, probe_shape
from patchfold.io.sources import RegionSource
from patchfold.io.write import check_output_path, save_npy
from patchfold.jobs.plan import UnfoldPlan, plan_unfold
from patchfold.keep import KeepRules, keep_record, select_blocks
from patchfold.ops import stats_with


def input_shape(
    inputs: Sequence[str | Path],
    size: Any,
    blocks: Blocks,
    *,
    spatial_dims: int | None = None,
    stack: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    level: Level = None,
) -> tuple[tuple[int, ...], np.dtype | None]:
    """``(N, C, *spatial)`` and dtype of ``inputs`` (headers only where the format allows), or
    ``(1, 1, *size)`` and None for a bare ``size`` (one value: every dim of the parameters)."""
    if bool(inputs) == (size is not None):
        raise PatchfoldError("give either inputs or a spatial_size (exactly one)", param="spatial_size")
    if inputs and stack:  # volumes are assembled from their slices: read them
        array = load_inputs(inputs, spatial_dims, max_pixels, stack=True, level=level, regions=True).array
        return tuple(array.shape), array.dtype
    if inputs:
        return probe_shape(inputs, spatial_dims, max_pixels, level)
    return (1, 1, *blocks.at(size).spatial_size), None


@dataclass(frozen=True)
class Estimate:
    """Overlap statistics of one geometry and what an unfold of it would take."""

    geometry: Geometry
    stats: dict[str, Any]
    plan: UnfoldPlan
    input_bytes: int
    #: with keep rules: the rules and how many blocks they would keep (:func:`patchfold.keep.keep_record`)
    keep: dict[str, Any] | None = None

    @property
    def peak_memory(self) -> int:
        return self.plan.peak_memory(self.input_bytes)

    def summary(self) -> dict[str, Any]:
        """The statistics, ``keep`` where keep rules were given, and ``cpu_engine``: the CPU engine
        an unfold here would run on (compiled loops or numpy fallback, and why)."""
        keep = {"keep": self.keep} if self.keep is not None else {}
        return {**self.stats, **keep, "cpu_engine": engine_line(cpu_engine())}


def estimate(
    inputs: Sequence[str | Path] = (),
    blocks: Blocks | None = None,
    *,
    size: Any = None,
    channels: int | None = None,
    batch: int | None = None,
    dtype: str = "keep",
    layout: str = "ncl",
    spatial_dims: int | None = None,
    stack: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_memory: int | None = None,
    level: Level = None,
    keep: KeepRules | None = None,
) -> Estimate:
    """The overlap statistics (:func:`patchfold.overlap_stats`) of ``inputs`` or ``size``, and how an
    unfold to ``dtype`` would run within ``max_memory`` (bands, peak memory). ``channels`` and
    ``batch`` replace the inputs' (default 1 with a bare size); ``dtype`` ``keep`` is the input's
    dtype (float32 for a bare size). ``level`` picks the resolution of pyramidal TIFF and Zarr
    inputs (only their metadata is read). ``keep`` also counts the blocks of the inputs that its
    rules would keep (as ``tiles`` would write them): that reads the pixels."""
    if blocks is None:
        raise PatchfoldError("give the block parameters (kernel_size)", param="kernel_size")
    if keep is not None and size is not None:
        raise PatchfoldError(
            "keep rules measure the pixels of inputs: give inputs instead of spatial_size=", param="spatial_size"
        )
    shape, input_dtype = input_shape(
        inputs, size, blocks, spatial_dims=spatial_dims, stack=stack, max_pixels=max_pixels, level=level
    )
    count = as_int(batch, "batch") if batch is not None else shape[0]
    channel_count = as_int(channels, "channels") if channels is not None else shape[1]
    shape = (count, channel_count, *shape[2:])
    out_dtype = target_dtype(input_dtype if input_dtype is not None else np.dtype(np.float32), dtype)[0]
    geometry = blocks.at(shape[2:], f"input shape {list(shape)}")
    stats = stats_with(geometry, channels=shape[1], batch=shape[0], dtype=out_dtype, layout=layout)
    plan = plan_unfold(shape, out_dtype, geometry, layout, max_memory)
    counted = None if keep is None else kept_blocks(inputs, blocks, keep, spatial_dims, stack, max_pixels, level)
    return Estimate(geometry, stats, plan, math.prod(shape) * (input_dtype or out_dtype).itemsize, counted)


def kept_blocks(
    inputs: Sequence[str | Path],
    blocks: Blocks,
    keep: KeepRules,
    spatial_dims: int | None,
    stack: bool,
    max_pixels: int,
    level: Level,
) -> dict[str, Any]:
    """How many blocks of ``inputs`` (read as ``tiles`` reads them: a single Zarr, pyramid level or
    tiled TIFF band by band, never whole) the rules ``keep`` keep."""
    from patchfold.jobs import tile_rows  # here: only stats with keep rules reads the pixels

    batch = load_inputs(
        inputs, spatial_dims, max_pixels, stack, level=tile_rows.read_level(inputs, level, stack), regions=True
    )
    geometry = blocks.at(batch.spatial_size)
    if isinstance(batch.array, RegionSource):
        return keep_record(keep, tile_rows.streamed_selections(batch.array, geometry, keep)[0])
    return keep_record(keep, [select_blocks(np.asarray(image), geometry, keep) for image in batch.array])


@dataclass(frozen=True)
class DivisorResult:
    estimate: Estimate
    written: list[Path]

    def summary(self) -> dict[str, Any]:
        return {**self.estimate.stats, "written": [str(p) for p in self.written]}


def divisor_files(
    inputs: Sequence[str | Path] = (),
    blocks: Blocks | None = None,
    *,
    size: Any = None,
    npy: str | Path | None = None,
    png: str | Path | None = None,
    spatial_dims: int | None = None,
    stack: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    level: Level = None,
    outputs: Sequence[str | Path] = (),
) -> DivisorResult:
    """The divisor map ``fold(unfold(ones))`` of ``inputs``' size (or ``size``) written as ``npy``
    (int64 ``(H, W)``) and/or a heatmap ``png``, with the overlap statistics. ``outputs`` gives
    the same by suffix: each a ``.npy`` or a ``.png`` path, at most one of each."""
    named = {"npy": npy, "png": png}
    for given in map(Path, outputs):
        kind = given.suffix.lower().lstrip(".")
        if kind not in named:
            raise PatchfoldError(f"the divisor map is written as .npy or .png, got '{given}'", param="output")
        if named[kind] is not None:
            raise PatchfoldError(f"two .{kind} outputs given: '{named[kind]}' and '{given}'", param="output")
        named[kind] = given
    outputs = {name: None if path is None else Path(path) for name, path in named.items()}
    for name, path in outputs.items():
        if path is not None:
            if path.suffix.lower() != f".{name}":
                raise PatchfoldError(f"expected a .{name} path, got '{path}'", param=name)
            check_output_path(path)
    result = estimate(
        inputs,
        blocks,
        size=size,
        dtype="float32",
        spatial_dims=spatial_dims,
        stack=stack,
        max_pixels=max_pixels,
        level=level,
    )
    if outputs["npy"] is not None:
        save_npy(outputs["npy"], divisor_map(result.geometry))
    if outputs["png"] is not None:
        from patchfold.render import write_divisor_png

        write_divisor_png(outputs["png"], result.geometry)
    return DivisorResult(result, [p for p in outputs.values() if p is not None])
