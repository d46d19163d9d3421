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
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from patchfold import dtypes
from patchfold.blocks import Blocks, to_tuple
from patchfold.engines.cpu import cpu_count
from patchfold.errors import PatchfoldError
from patchfold.io import read
from patchfold.io.formats import (
    DATASET_FORMAT,
    DATASET_VERSION,
    TILE_DATASET_FORMAT,
    dataset_identity,
    read_json,
    write_json,
)
from patchfold.io.read import convert_channels
from patchfold.io.write import allocate_npy, check_free_space, save_npy, write_at, write_npy_header
from patchfold.jobs.plan import Progress
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
    blocks: Blocks
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
    blocks: Blocks,
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
        raise PatchfoldError(f"images differ in channel count ({listing}); convert them with channels=C")
    channel_count = channels or (counts[0] if counts else 1)
    image_dtypes = [d for _, s, d in shapes if s]
    source_dtype = np.result_type(*image_dtypes) if image_dtypes else np.dtype(np.uint8)
    out_dtype, scale = dtypes.target_dtype(source_dtype, dtype)
    ndim = len(shapes[0][1]) - 2 if shapes and shapes[0][1] else 2
    patch_length = channel_count * math.prod(to_tuple(blocks.kernel_size, ndim, "kernel_size"))
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
            geometry = blocks.at(shape[2:])
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
        positions = np.indices(geometry.blocks_per_dim).reshape(geometry.ndim, -1).T
        index_parts.append(
            np.column_stack(
                [np.full(rows, image_id), positions, np.full(rows, shard), np.arange(first, first + rows)]
            ).astype(np.int64)
        )
    failed.sort(key=lambda f: f.image_id)
    for result in failed:
        images[result.image_id]["error"] = result.error
    shards = [{"file": f"shard-{i:05d}.npy", "rows": rows} for i, rows in enumerate(shard_rows)]
    manifest = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        **blocks.to_dict(),
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
            blocks,
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
        existing = read_json(manifest_path, "dataset manifest")
        if dataset_identity(existing) != dataset_identity(plan.manifest):
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
    write_json(directory / "manifest.json", plan.manifest)
    return list(plan.tasks)


def process_image(task: ImageTask) -> ImageResult:
    """Unfold one image into its rows of its shard (runs in a worker process)."""

    try:
        array = read.read_input(Path(task.source), None, task.max_pixels)
        array = convert_channels(array, task.channels, task.source)
        # the dataset's one scale (from the common dtype of all its images), as the manifest records
        values = dtypes.cast_scaled(array, np.dtype(task.dtype), task.scale)
        patches = unfold(np.ascontiguousarray(values), task.blocks, layout="nlc", threads=1)[0]
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
    write_json(plan.directory / "manifest.json", manifest)
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
    blocks: Blocks
    max_pixels: int


def plan_tiles(
    sources: Sequence[Path], directory: Path, blocks: Blocks, fmt: str, channels: int | None, max_pixels: int
) -> list[TilesTask]:
    stems = [f"{i:06d}_{path.stem}" for i, path in enumerate(sources)]
    return [
        TilesTask(i, str(path), str(directory / stem), fmt, channels, blocks, max_pixels)
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
        geometry = task.blocks.at(array.shape[2:])
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
        manifest = {"format": TILE_DATASET_FORMAT, "version": 1, "images": images, "complete": complete}
        write_json(directory / "manifest.json", manifest)


@dataclass(frozen=True)
class DatasetResult:
    """The outcome of a :func:`unfold_dataset` or :func:`tile_dataset` run."""

    output: Path
    images: int
    results: list[ImageResult]
    failed: list[ImageResult]
    extra: dict[str, Any]
    workers: str | int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "images": self.images,
            "done": sum(1 for r in self.results if r.ok and not r.skipped),
            "skipped": sum(1 for r in self.results if r.skipped),
            "failed": len(self.failed),
            **self.extra,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "errors": {r.source: r.error for r in self.failed},
        }


def unfold_dataset(
    sources: Sequence[str],
    output: str | Path,
    blocks: Blocks,
    *,
    recursive: bool = False,
    dtype: str = "keep",
    channels: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    scheduler: str | None = None,
    fail_fast: bool = False,
    max_pixels: int = read.DEFAULT_MAX_PIXELS,
) -> Iterator[Progress | ImageResult | DatasetResult]:
    """Unfold every image of ``sources`` (files, directories, globs) into the sharded dataset
    ``output``, on ``workers`` local processes (default: the cores) or a Dask ``scheduler``.
    Yields :class:`Progress` once the work is planned (its ``total`` is the images to do), one
    :class:`ImageResult` per image as it finishes, then the :class:`DatasetResult`."""
    started = time.perf_counter()
    output = Path(output)
    paths = read.find_inputs(sources, recursive=recursive, unique=True)
    plan = plan_dataset(
        paths, output, blocks, dtype=dtype, channels=channels, shard_size=shard_size, max_pixels=max_pixels
    )
    extra = {
        "patches": plan.total_rows,
        "shards": len(plan.manifest["shards"]),
        "patch_length": plan.manifest["patch_length"],
        "dtype": plan.manifest["dtype"],
    }
    workers = _workers(workers, len(plan.tasks))
    runner = run_dataset(plan, workers=workers, scheduler=scheduler, fail_fast=fail_fast)
    yield from _run(output, len(paths), len(plan.tasks), runner, extra, plan.failed, scheduler or workers, started)


def tile_dataset(
    sources: Sequence[str],
    output: str | Path,
    blocks: Blocks,
    *,
    recursive: bool = False,
    tile_format: str = "png",
    channels: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    fail_fast: bool = False,
    max_pixels: int = read.DEFAULT_MAX_PIXELS,
) -> Iterator[Progress | ImageResult | DatasetResult]:
    """Write the tiles of every image of ``sources`` into its own directory under ``output`` (as
    :func:`patchfold.jobs.tiles.tiles_file` does for one), with a top-level manifest; resumable."""
    started = time.perf_counter()
    output = Path(output)
    paths = read.find_inputs(sources, recursive=recursive, unique=True)
    tasks = plan_tiles(paths, output, blocks, tile_format, channels, max_pixels)
    workers = _workers(workers, len(tasks))
    runner = run_tiles(tasks, output, workers=workers, scheduler=scheduler, fail_fast=fail_fast)
    yield from _run(output, len(paths), len(tasks), runner, {"tiles": None}, [], scheduler or workers, started)


def _run(
    output: Path,
    images: int,
    tasks: int,
    runner: Iterator[ImageResult],
    extra: dict[str, Any],
    failed_early: list[ImageResult],
    where: str | int,
    started: float,
) -> Iterator[Progress | ImageResult | DatasetResult]:
    """Report the planned work, pass each image's result on as it finishes, then the outcome.
    ``extra`` values that are None are summed from the results' rows (tiles written)."""
    yield Progress(0, tasks, 0, 0)
    results: list[ImageResult] = []
    try:
        for result in runner:
            results.append(result)
            yield result
    finally:
        runner.close()  # type: ignore[attr-defined]
    failed = [*failed_early, *(r for r in results if not r.ok)]
    extra = {key: sum(r.rows for r in results) if value is None else value for key, value in extra.items()}
    workers = f"dask {where}" if isinstance(where, str) else where
    yield DatasetResult(output, images, results, failed, extra, workers, time.perf_counter() - started)


def _workers(requested: int | None, tasks: int) -> int:
    """Local worker processes: as asked (default: the cores), never more than there is work."""
    return max(1, min(requested or cpu_count(), max(1, tasks)))
