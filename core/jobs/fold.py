"""The fold job: a patch matrix file back into images, in memory or band by band of output rows."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from patchfold import engines
from patchfold.blocks import Blocks
from patchfold.coverage import coverage_vectors, max_coverage, outer, unpad_adjoint
from patchfold.dtypes import (
    canonical_bool,
    check_integer_sum,
    finish_fold,
    fold_output_dtype,
    restore_dtype,
)
from patchfold.engines import cpu, resolve
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry, check_layout, matrix_dims
from patchfold.io.formats import Sidecar, check_against_sidecar, read_sidecar, sidecar_path
from patchfold.io.read import patch_matrix_items, read_patch_matrix
from patchfold.io.streams import STDIO, input_path, is_stdio, source_name, stdout_file
from patchfold.io.write import (
    _release,
    allocate_npy,
    atomic_paths,
    check_free_space,
    check_not_an_input,
    check_output_path,
    image_targets,
    write_images,
    write_rows,
)
from patchfold.io.zarr_out import (
    check_compression,
    check_zarr_output,
    image_attributes,
    is_zarr_output,
    save_zarr_images,
    zarr_images,
)
from patchfold.jobs.plan import FoldPlan, Progress, plan_fold
from patchfold.ops import finish_normalised, fold_with
from patchfold.windows import window_weights


def fold_to_npy(
    cols: np.ndarray,
    plan: FoldPlan,
    path: Path,
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
    with atomic_paths(path) as (temporary,), open(temporary, "r+b") as handle:
        header = allocate_npy(handle, plan.output_shape, plan.dtype)
        for band, values in _fold_bands(cols, plan, normalize, window, restore, threads):
            write_rows(handle.fileno(), header, plan.output_shape, values, band[0])
            yield _progress(plan, band)


def fold_to_zarr(
    cols: np.ndarray,
    plan: FoldPlan,
    path: Path,
    attributes: Mapping[str, Any],
    *,
    normalize: bool = True,
    window: str | None = None,
    restore: tuple[str, float] | None = None,
    threads: int | None = None,
    compression: str = "default",
) -> Generator[Progress, None, FoldPlan]:
    """:func:`fold_to_npy` into the Zarr image store ``path`` (:mod:`patchfold.io.zarr_out`):
    ``(C, *spatial)`` for one image, ``(N, C, *spatial)`` for several, with ``attributes``.
    Streamed bands are one chunk of rows each, so every chunk is written once, whole; returns the
    plan it ran (its bands)."""
    if compression == "none":
        check_free_space(path, plan.output_bytes)
    with zarr_images(path, plan.output_shape[0], attributes, compression) as store:
        store.allocate(plan.output_shape[1:], plan.dtype, plan.band_rows if plan.streaming else None)
        if plan.streaming:
            plan = replace(plan, band_rows=store.chunk_rows)
        for band, values in _fold_bands(cols, plan, normalize, window, restore, threads):
            store.write(values, band[0])
            yield _progress(plan, band)
    return plan


def _fold_bands(
    cols: np.ndarray,
    plan: FoldPlan,
    normalize: bool,
    window: str | None,
    restore: tuple[str, float] | None,
    threads: int | None,
) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Each band of output rows of ``plan`` and its values ``(N, C, rows, ...)`` in ``plan.dtype``;
    pages of a memory-mapped ``cols`` are released after each band."""
    geometry = plan.geometry
    weights = window_weights(geometry, window)
    cols = canonical_bool(cols)
    most = max_coverage(geometry)
    check_integer_sum(cols, most, weights is not None)
    vectors = coverage_vectors(geometry, weights) if normalize else None
    for band in plan.band_ranges():
        values = _band_values(cols, plan, weights, vectors, most, band, threads)
        if restore is not None:
            values = restore_dtype(values, *restore)
        yield band, values.astype(plan.dtype, copy=False)
        _release(cols)


def _progress(plan: FoldPlan, band: tuple[int, int]) -> Progress:
    """Progress after the band ``band``: bands and bytes done (the bands before it are as tall)."""
    done = -(-band[1] // plan.band_rows)
    return Progress(done, plan.bands, plan.output_bytes * band[1] // plan.total_rows, plan.output_bytes)


def _band_values(
    cols: np.ndarray,
    plan: FoldPlan,
    weights: list[np.ndarray] | None,
    vectors: list[np.ndarray] | None,
    most: int,
    band: tuple[int, int],
    threads: int | None,
) -> np.ndarray:
    """Output rows ``band`` of the fold, normalised by the per-dim divisor ``vectors`` when given:
    summed and divided in one pass where the compiled loop serves, else summed, then finished."""
    geometry, (top, bottom) = plan.geometry, band
    if vectors is not None:
        fused = cpu.fold_normalised(cols, geometry, plan.layout, weights, rows=band, threads=threads)
        if fused is not None:
            return fused
    pad = geometry.padding[0]
    rows = None if plan.bands == 1 else (top + pad, bottom + pad)

    def sum_with(weights: list[np.ndarray] | None) -> np.ndarray:
        return _band_sum(cols, geometry, plan.layout, weights, rows, threads, vectors is not None)

    with np.errstate(over="ignore"):  # an overflowing sum is summed again, not reported
        summed = sum_with(weights)
    if vectors is None:
        return finish_fold(summed, None, cols.dtype, weights is not None)
    divisor_band = outer([vectors[0][top:bottom], *vectors[1:]])
    return finish_normalised(summed, sum_with, divisor_band, cols.dtype, geometry, weights, most)


def _band_sum(
    cols: np.ndarray,
    geometry: Geometry,
    layout: str,
    weights: list[np.ndarray] | None,
    rows: tuple[int, int] | None,
    threads: int | None,
    exact: bool,
) -> np.ndarray:
    """The overlap-add sums of padded output rows ``rows`` (all when None), padding folded back."""
    summed = cpu.fold_padded(cols, geometry, layout, weights, rows=rows, threads=threads, exact=exact)
    return unpad_adjoint(summed, geometry, axis_offset=2, first_dim=0 if rows is None else 1)


@dataclass(frozen=True)
class FoldResult:
    """What a :func:`fold_file` (or :func:`patchfold.jobs.tiles.untile_dir`) job wrote."""

    written: list[Path] | Path
    source: Path
    source_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    output_dtype: np.dtype
    geometry: Geometry
    layout: str
    normalize: bool
    window: str | None
    device: str
    engine: str
    bands: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "output": [str(p) for p in self.written] if isinstance(self.written, list) else str(self.written),
            "patches": str(self.source),
            "patches_shape": list(self.source_shape),
            "output_shape": list(self.output_shape),
            "output_dtype": str(self.output_dtype),
            **self.geometry.blocks.to_dict(),
            "layout": self.layout,
            "normalize": self.normalize,
            "window": self.window or "none",
            "device": self.device,
            "engine": self.engine,
            "bands": self.bands,
            "seconds": round(self.seconds, 4),
        }


#: What ``fold -o -`` can send to standard output: the ``.npy`` array or one image file.
STREAM_FORMATS = ("npy", "png", "tif", "jpg", "bmp", "webp")


def fold_file(
    patches: str | Path,
    output: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    stdout: BinaryIO | None = None,
    output_format: str | None = None,
    **options: Any,
) -> Iterator[Progress | FoldResult]:
    """:func:`fold_to_file`, with ``-`` as ``patches`` read from standard input (no sidecar then:
    give ``kernel_size`` and ``output_size``) and ``-`` as ``output`` the result in
    ``output_format`` (:data:`STREAM_FORMATS`: ``.npy`` by default, or one image) sent to ``stdout``
    once it is complete. The options are :func:`fold_to_file`'s."""
    check_compression(output, options.get("compression", "default"))
    from_stdin = is_stdio(patches)
    patches = input_path(patches)
    if from_stdin and patches.suffix != ".npy":
        kind = patches.suffix.lstrip(".").upper()
        raise PatchfoldError(f"patches '-' (standard input) must be a .npy patch matrix, got a {kind} image")
    if from_stdin and (options.get("output_size") is None or not (overrides or {}).get("kernel_size")):
        raise PatchfoldError(
            "patches from '-' (standard input) have no sidecar: give kernel_size= and output_size=",
            param="kernel_size" if not (overrides or {}).get("kernel_size") else "output_size",
        )
    if not is_stdio(output):
        if output_format is not None:  # a file's type is its suffix: a second say would be ignored
            raise PatchfoldError(f"format is for output '-' only; '{output}' is written by its suffix", param="format")
        result = yield from fold_to_file(patches, output, overrides, **options)
        yield replace(result, source=Path(STDIO)) if from_stdin else result
        return
    output_format = output_format or "npy"
    if output_format not in STREAM_FORMATS:
        raise PatchfoldError(
            f"format must be one of {', '.join(STREAM_FORMATS)} for standard output, got {output_format!r}",
            param="format",
        )
    count = patch_matrix_items(patches)  # its header only
    if output_format != "npy" and count > 1:
        raise PatchfoldError(
            f"standard output takes one {output_format} image, but the patch matrix holds {count}: "
            "give format npy, or write image files with {i} in the name",
            param="format",
        )
    with stdout_file(stdout, f".{output_format}") as target:
        result = yield from fold_to_file(patches, target, overrides, **options)
    result = replace(result, written=Path(STDIO))
    yield replace(result, source=Path(STDIO)) if from_stdin else result


def fold_to_file(
    patches: str | Path,
    output: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    output_size: Any = None,
    layout: str | None = None,
    normalize: bool = True,
    window: str | None = None,
    device: str = "auto",
    engine: str = "auto",
    max_memory: int | None = None,
    compression: str = "default",
) -> Generator[Progress, None, FoldResult]:
    """Fold the patch matrix file ``patches`` back into images at ``output`` (``.npy``, an image
    file, ``{i}``-numbered image files, a directory, or a ``.zarr`` store compressed as
    ``compression`` says: ``(C, *spatial)`` for one image, ``(N, C, *spatial)`` for several).

    Parameters come from the sidecar beside ``patches``; ``overrides`` (block parameters by name),
    ``output_size`` and ``layout`` replace what it records. Without a sidecar, ``kernel_size`` (in
    ``overrides``) and ``output_size`` are required. A ``.npy`` or ``.zarr`` output on the CPU is
    written band by band within ``max_memory``; images are folded in memory. Yields
    :class:`Progress` and returns the :class:`FoldResult`.
    """
    started = time.perf_counter()
    patches, output = Path(patches), Path(output)
    check_compression(output, compression)
    to_zarr = is_zarr_output(output)
    inputs = [patches, sidecar_path(patches)]
    if to_zarr:  # before a .zarr matrix is read whole
        check_zarr_output(output, compression, inputs)
    cols = read_patch_matrix(patches)
    sidecar = read_sidecar(patches)
    geometry, layout = _fold_geometry(patches, sidecar, dict(overrides or {}), output_size, layout)
    if sidecar is not None and geometry == sidecar.geometry and layout == sidecar.layout:
        check_against_sidecar(cols, sidecar, patches)
    channels = geometry.check_fold_input(*matrix_dims(cols.shape, layout))
    targets = None if to_zarr else image_targets(output, cols.shape[0], sidecar.sources if sidecar else ())
    if not to_zarr:
        check_not_an_input(targets or [output], inputs)
    device, engine = resolve(device, engine)
    restore = (sidecar.input_dtype, sidecar.scale) if normalize and sidecar is not None else None
    weighted = window not in (None, "none")
    attributes = image_attributes("fold", _made_by(patches, sidecar, geometry, layout, normalize, window))
    bands = 1
    if targets is None and engine == "cpu":
        dtype = fold_output_dtype(cols.dtype, normalize, weighted, restore)
        plan = plan_fold(cols.shape, channels, geometry, dtype, max_memory, layout)
        options = {"normalize": normalize, "window": window, "restore": restore}
        if to_zarr:
            plan = yield from fold_to_zarr(cols, plan, output, attributes, compression=compression, **options)
        else:
            yield from fold_to_npy(cols, plan, output, **options)
        output_shape, output_dtype, bands = plan.output_shape, dtype, plan.bands
    else:
        images = _fold_whole(cols, geometry, layout, normalize, window, restore, device, engine)
        if to_zarr:
            save_zarr_images(output, images, attributes, compression)
        else:
            write_images(output, targets, images)
        output_shape, output_dtype = images.shape, images.dtype
    if to_zarr and output_shape[0] == 1:
        output_shape = output_shape[1:]  # one image is stored as (C, *spatial)
    written = targets if targets is not None else output
    seconds = time.perf_counter() - started
    return FoldResult(
        written, patches, tuple(cols.shape), tuple(output_shape), np.dtype(output_dtype), geometry, layout,
        normalize, window, device, engine, bands, seconds,
    )  # fmt: skip


def _fold_whole(
    cols: np.ndarray,
    geometry: Geometry,
    layout: str,
    normalize: bool,
    window: str | None,
    restore: tuple[str, float] | None,
    device: str,
    engine: str,
) -> np.ndarray:
    """The fold of all of ``cols`` in memory, on ``device`` with ``engine``, as a numpy array."""
    data = engines.load(engine).take(cols, device=device)
    images = fold_with(data, geometry, normalize, layout=layout, window=window, engine=engine)
    images = engines.give_back(images, cols)
    return restore_dtype(images, *restore) if restore is not None else images


def _made_by(
    patches: Path, sidecar: Sidecar | None, geometry: Geometry, layout: str, normalize: bool, window: str | None
) -> dict[str, Any]:
    """What a Zarr output records of the fold that made it (the block parameters as a sidecar has them)."""
    return {
        "patches": source_name(patches),
        "sources": list(sidecar.sources) if sidecar is not None else [],
        **geometry.blocks.to_dict(),
        "output_size": list(geometry.spatial_size),
        "layout": layout,
        "normalize": normalize,
        "window": window or "none",
    }


def _fold_geometry(
    patches: Path, sidecar: Sidecar | None, overrides: dict[str, Any], output_size: Any, layout: str | None
) -> tuple[Geometry, str]:
    """The geometry and layout to fold with: the sidecar's, with what was given instead."""
    if sidecar is None:
        if overrides.get("kernel_size") is None:
            raise PatchfoldError(
                f"no sidecar '{sidecar_path(patches)}' found: give kernel_size= (and output_size=)", param="kernel_size"
            )
        if output_size is None:
            raise PatchfoldError(f"no sidecar '{sidecar_path(patches)}' found: give output_size=", param="output_size")
        blocks = Blocks(**{k: v for k, v in overrides.items() if v is not None})
    else:
        blocks = sidecar.blocks.merged(overrides)
    layout = check_layout(layout or (sidecar.layout if sidecar else "ncl"))
    size = output_size if output_size is not None else sidecar.spatial_size  # type: ignore[union-attr]
    return blocks.at(size, f"patch matrix '{patches}'"), layout
