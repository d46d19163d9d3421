"""Dataset scale: unfold thousands of images of different sizes into a sharded patch dataset, in
parallel on a local process pool or a Dask cluster, resumably.

Layout of a dataset directory::

    manifest.json        parameters, images (source, shape, rows, shard, status), shards
    index.npy            one row per patch: image id, block index per dim, shard, row in shard
    shard-00000.npy ...  patches, one per row: (rows, C·∏k), the ``nlc`` layout

Everything is planned up front from the images' headers: which shard and rows each image gets.
Workers then write their image's rows in place, so any scheduler produces byte-identical files and a
killed job resumes by skipping the images whose rows are already complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from patchfold import dtypes
from patchfold.blocks import to_tuple
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.io import read
from patchfold.io.formats import DATASET_FORMAT, DATASET_VERSION, _identity, _write_manifest
from patchfold.io.read import convert_channels
from patchfold.io.write import allocate_npy, check_free_space, save_npy, write_at, write_npy_header
from patchfold.ops import unfold
from patchfold.scheduling import IMAGE_ERRORS, ImageResult, failure, run_dask, run_local

DONE_DIR = ".done"


DEFAULT_SHARD_SIZE = 10**9


@dataclass(frozen=True)
class ImageTask:
    """One image's share of the work: where its patches go. Picklable, sent to workers."""

    image_id: int
    source: str
    shard_path: str
    header: int
    first_row: int
    rows: int
    patch_length: int
    dtype: str
    scale: float
    channels: int | None
    params: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], str]
    marker: str
    max_pixels: int


@dataclass
class DatasetPlan:
    directory: Path
    manifest: dict[str, Any]
    tasks: list[ImageTask]
    failed: list[ImageResult]
    index: np.ndarray

    @property
    def total_rows(self) -> int:
        return sum(task.rows for task in self.tasks)


def plan_dataset(
    sources: Sequence[Path],
    directory: Path,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    padding_mode: str = "zeros",
    *,
    dtype: str = "keep",
    channels: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int = read.DEFAULT_MAX_PIXELS,
) -> DatasetPlan:
    """Read every image's header, check geometry and channels, and assign rows in shards."""
    shapes: list[tuple[Path, tuple[int, ...], np.dtype]] = []
    failed: list[ImageResult] = []
    for image_id, path in enumerate(sources):
        try:
            shape, image_dtype = read.probe_shape([path], None, max_pixels)
            shapes.append((path, shape, image_dtype))
        except PatchfoldError as error:
            failed.append(ImageResult(image_id, str(path), 0, str(error)))
            shapes.append((path, (), np.dtype(np.uint8)))
    counts = sorted({shape[1] for _, shape, _ in shapes if shape})
    if channels is None and len(counts) > 1:
        listing = ", ".join(f"{c}: {sum(1 for _, s, _ in shapes if s and s[1] == c)} image(s)" for c in counts)
        raise PatchfoldError(f"images differ in channel count ({listing}); convert them with --channels C")
    channel_count = channels or (counts[0] if counts else 1)
    image_dtypes = [d for _, s, d in shapes if s]
    source_dtype = np.result_type(*image_dtypes) if image_dtypes else np.dtype(np.uint8)
    out_dtype, scale = dtypes.target_dtype(source_dtype, dtype)
    ndim = len(shapes[0][1]) - 2 if shapes and shapes[0][1] else 2
    geometry_args = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    patch_length = channel_count * math.prod(to_tuple(kernel_size, ndim, "kernel_size"))
    row_bytes = patch_length * out_dtype.itemsize
    capacity = max(1, shard_size // row_bytes)

    images: list[dict[str, Any]] = []
    shard_rows: list[int] = []
    index_parts: list[np.ndarray] = []
    placements: list[tuple[int, int, int, Path]] = []  # image id, shard, first row, path
    failed_ids = {f.image_id for f in failed}
    for image_id, (path, shape, _) in enumerate(shapes):
        record: dict[str, Any] = {"id": image_id, "source": str(path), "shape": list(shape[1:]) if shape else None}
        images.append(record)
        if image_id in failed_ids:
            continue
        try:
            geometry = Geometry.create(shape[2:], *geometry_args, padding_mode)
        except PatchfoldError as error:
            failed.append(ImageResult(image_id, str(path), 0, str(error)))
            failed_ids.add(image_id)
            continue
        rows = geometry.num_blocks
        if not shard_rows or (shard_rows[-1] and shard_rows[-1] + rows > capacity):
            shard_rows.append(0)
        shard, first = len(shard_rows) - 1, shard_rows[-1]
        shard_rows[-1] += rows
        record.update(blocks_per_dim=list(geometry.blocks_per_dim), shard=shard, first_row=first, rows=rows)
        placements.append((image_id, shard, first, path))
        blocks = np.indices(geometry.blocks_per_dim).reshape(geometry.ndim, -1).T
        index_parts.append(
            np.column_stack(
                [np.full(rows, image_id), blocks, np.full(rows, shard), np.arange(first, first + rows)]
            ).astype(np.int64)
        )
    failed.sort(key=lambda f: f.image_id)
    for result in failed:
        images[result.image_id]["error"] = result.error
    shards = [{"file": f"shard-{i:05d}.npy", "rows": rows} for i, rows in enumerate(shard_rows)]
    manifest = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "kernel_size": list(geometry_args[0]),
        "stride": list(geometry_args[1]),
        "padding": list(geometry_args[2]),
        "dilation": list(geometry_args[3]),
        "padding_mode": padding_mode,
        "channels": channel_count,
        "dtype": str(out_dtype),
        "scale": scale,
        "patch_length": patch_length,
        "layout": "nlc",
        "index_columns": ["image", *(f"block_{d}" for d in range(ndim)), "shard", "row"],
        "images": images,
        "shards": shards,
        "complete": False,
    }
    headers = {i: _header_size((s["rows"], patch_length), out_dtype) for i, s in enumerate(shards)}
    tasks = [
        ImageTask(
            image_id,
            str(path),
            str(directory / shards[shard]["file"]),
            headers[shard],
            first,
            images[image_id]["rows"],
            patch_length,
            str(out_dtype),
            scale,
            channels,
            (*geometry_args, padding_mode),
            str(directory / DONE_DIR / f"{image_id:08d}"),
            max_pixels,
        )
        for image_id, shard, first, path in placements
    ]
    columns = 3 + ndim
    index = np.concatenate(index_parts) if index_parts else np.empty((0, columns), np.int64)
    return DatasetPlan(directory, manifest, tasks, failed, index)


def _header_size(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return write_npy_header(BytesIO(), shape, dtype)


def prepare_directory(plan: DatasetPlan) -> list[ImageTask]:
    """Create (or check, for a resumed run) the dataset files; return the tasks still to do."""
    directory = plan.directory
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text(encoding="utf-8"))
        if _identity(existing) != _identity(plan.manifest):
            raise PatchfoldError(
                f"'{directory}' holds a different dataset (other parameters or images); write to a new directory"
            )
        if existing.get("complete"):
            return []
        done = directory / DONE_DIR
        return [task for task in plan.tasks if not (done / f"{task.image_id:08d}").exists()]
    if directory.exists() and any(directory.iterdir()):
        raise PatchfoldError(f"output directory '{directory}' exists, is not empty and holds no patchfold dataset")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DONE_DIR).mkdir(exist_ok=True)
    dtype, patch_length = np.dtype(plan.manifest["dtype"]), plan.manifest["patch_length"]
    shards = plan.manifest["shards"]
    check_free_space(directory / "x", sum(s["rows"] for s in shards) * patch_length * dtype.itemsize)
    for shard in shards:
        with open(directory / shard["file"], "wb") as handle:
            allocate_npy(handle, (shard["rows"], patch_length), dtype)
    save_npy(directory / "index.npy", plan.index)
    _write_manifest(directory, plan.manifest)
    return list(plan.tasks)


def process_image(task: ImageTask) -> ImageResult:
    """Unfold one image into its rows of its shard (runs in a worker process)."""

    try:
        array = read.read_input(Path(task.source), None, task.max_pixels)
        array = convert_channels(array, task.channels, task.source)
        # the dataset's one scale (from the common dtype of all its images), as the manifest records
        values = dtypes.cast_scaled(array, np.dtype(task.dtype), task.scale)
        kernel, stride, padding, dilation, mode = task.params
        patches = unfold(
            np.ascontiguousarray(values), kernel, dilation, padding, stride, padding_mode=mode, layout="nlc", threads=1
        )[0]
        if patches.shape != (task.rows, task.patch_length):
            raise PatchfoldError(
                f"'{task.source}' changed since the dataset was planned: {patches.shape[0]} "
                f"patches of {patches.shape[1]} values, expected {task.rows} of {task.patch_length}"
            )
        offset = task.header + task.first_row * task.patch_length * patches.itemsize
        descriptor = os.open(task.shard_path, os.O_WRONLY)
        try:
            write_at(descriptor, patches, offset)
        finally:
            os.close(descriptor)
        Path(task.marker).touch()
        return ImageResult(task.image_id, task.source, task.rows)
    except IMAGE_ERRORS as error:
        return failure(task.image_id, task.source, error)


def finish(plan: DatasetPlan, failures: Sequence[ImageResult]) -> dict[str, Any]:
    """Record the outcome in the manifest; a run with no failure marks the dataset complete."""
    manifest = json.loads(json.dumps(plan.manifest))
    errors = {f.image_id: f.error for f in [*plan.failed, *failures]}
    for image in manifest["images"]:
        if image["id"] in errors:
            image["error"] = errors[image["id"]]
    done = plan.directory / DONE_DIR
    pending = [t for t in plan.tasks if not (done / f"{t.image_id:08d}").exists()]
    manifest["complete"] = not pending
    _write_manifest(plan.directory, manifest)
    if manifest["complete"]:
        shutil.rmtree(done, ignore_errors=True)
    return manifest


def run_dataset(
    plan: DatasetPlan, *, workers: int = 1, scheduler: str | None = None, fail_fast: bool = False
) -> Iterator[ImageResult]:
    """Prepare the directory, run what is left, and record the outcome. Yields one result per image
    (skipped ones first, marked ``skipped``)."""
    remaining = prepare_directory(plan)
    todo = {task.image_id for task in remaining}
    for task in plan.tasks:
        if task.image_id not in todo:
            yield ImageResult(task.image_id, task.source, task.rows, skipped=True)
    failures: list[ImageResult] = []
    runner = (
        run_dask(remaining, process_image, scheduler, fail_fast)
        if scheduler
        else run_local(remaining, process_image, workers, fail_fast)
    )
    try:
        for result in runner:
            if not result.ok:
                failures.append(result)
            yield result
    finally:
        finish(plan, failures)


@dataclass(frozen=True)
class TilesTask:
    """One image's tiles: written to their own directory (atomic, so a finished one is skipped)."""

    image_id: int
    source: str
    directory: str
    fmt: str
    channels: int | None
    params: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], str]
    max_pixels: int


def plan_tiles(
    sources: Sequence[Path], directory: Path, params: tuple, fmt: str, channels: int | None, max_pixels: int
) -> list[TilesTask]:
    stems = [f"{i:06d}_{path.stem}" for i, path in enumerate(sources)]
    return [
        TilesTask(i, str(path), str(directory / stem), fmt, channels, params, max_pixels)
        for i, (path, stem) in enumerate(zip(sources, stems))
    ]


def process_tiles(task: TilesTask) -> ImageResult:
    """Write one image's tiles (runs in a worker process); an existing complete directory is kept."""
    from patchfold.jobs.tiles import write_tiles

    target = Path(task.directory)
    if (target / "manifest.json").exists():
        return ImageResult(task.image_id, task.source, 0, skipped=True)
    try:
        array = convert_channels(read.read_input(Path(task.source), None, task.max_pixels), task.channels, task.source)
        kernel, stride, padding, dilation, mode = task.params
        geometry = Geometry.create(array.shape[2:], kernel, stride, padding, dilation, mode)
        for _ in write_tiles(array, geometry, target, [task.source], task.fmt):
            pass
        return ImageResult(task.image_id, task.source, geometry.num_blocks)
    except IMAGE_ERRORS as error:
        return failure(task.image_id, task.source, error)


def run_tiles(
    tasks: Sequence[TilesTask],
    directory: Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    fail_fast: bool = False,
) -> Iterator[ImageResult]:
    """Write every image's tile directory under ``directory`` and a top-level manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    results: dict[int, ImageResult] = {}
    runner = (
        run_dask(tasks, process_tiles, scheduler, fail_fast)
        if scheduler
        else run_local(tasks, process_tiles, workers, fail_fast)
    )
    try:
        for result in runner:
            results[result.image_id] = result
            yield result
    finally:
        images = [
            {
                "id": t.image_id,
                "source": t.source,
                "directory": Path(t.directory).name,
                **(
                    {"error": results[t.image_id].error} if t.image_id in results and not results[t.image_id].ok else {}
                ),
            }
            for t in tasks
        ]
        complete = all((Path(t.directory) / "manifest.json").exists() for t in tasks)
        manifest = {"format": "patchfold-tile-dataset", "version": 1, "images": images, "complete": complete}
        _write_manifest(directory, manifest)
