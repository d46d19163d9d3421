"""Dataset scale: unfold thousands of images of different sizes into a sharded patch dataset, in
parallel on a local process pool or a Dask cluster, resumably.

Layout of a dataset directory::

    manifest.json        parameters, images (source, shape, max_value, rows, shard, status), shards
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
import stat
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from patchfold import dtypes
from patchfold.blocks import Blocks, to_tuple
from patchfold.datasets.images import ImagePart, choose_blocks, fingerprint, open_source, patch_bands
from patchfold.engines.cpu import cpu_count
from patchfold.errors import PatchfoldError
from patchfold.io import read
from patchfold.io.formats import (
    DATASET_FORMAT,
    DATASET_VERSION,
    TILE_DATASET_FORMAT,
    dataset_identity,
    identity_difference,
    read_dataset_manifest,
    read_json,
    source_max_value,
    write_json,
)
from patchfold.io.levels import Level
from patchfold.io.sources import RegionSource
from patchfold.io.write import allocate_npy, check_free_space, save_npy, write_at, write_npy_header
from patchfold.jobs.plan import Progress
from patchfold.keep import KeepRules, Selection, keep_record
from patchfold.scheduling import IMAGE_ERRORS, ImageResult, failure, run_dask, run_local

DONE_DIR = ".done"


DEFAULT_SHARD_SIZE = 10**9


@dataclass(frozen=True, kw_only=True)
class ImageTask(ImagePart):
    """One image's rows of its shard: the shard file, its header's size and the image's marker."""

    shard_path: str
    header: int
    marker: str


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
    level: Level = None,
    keep: KeepRules | None = None,
) -> DatasetPlan:
    """Read every image's header, check geometry and channels, and assign rows in shards
    (``level``: the pyramid level, or resolution, of each image that is read). With ``keep``,
    each image's pixels are read here once to choose its blocks (its rows are the kept ones)."""
    shapes: list[tuple[Path, tuple[int, ...], np.dtype]] = []
    failed: list[ImageResult] = []
    for image_id, path in enumerate(sources):
        try:
            shape, image_dtype = read.probe_shape([path], None, max_pixels, level=level)
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
    ndim = next((len(s) - 2 for _, s, _ in shapes if s), 2)  # the first readable image decides
    patch_length = channel_count * math.prod(to_tuple(blocks.kernel_size, ndim, "kernel_size"))
    row_bytes = patch_length * out_dtype.itemsize
    capacity = max(1, shard_size // row_bytes)

    images: list[dict[str, Any]] = []
    shard_rows: list[int] = []
    index_parts: list[np.ndarray] = []
    placements: list[tuple[int, int, int, Path, np.ndarray | None]] = []  # id, shard, first row, path, kept
    selections: list[Selection] = []
    failed_ids = {f.image_id for f in failed}
    for image_id, (path, shape, image_dtype) in enumerate(shapes):
        record: dict[str, Any] = {"id": image_id, "source": str(path), "shape": list(shape[1:]) if shape else None}
        if shape:  # its own dtype's maximum, for PatchDataset(to_float=True): the shards share one dtype
            record["max_value"] = source_max_value(image_dtype)
        images.append(record)
        if image_id in failed_ids:
            continue
        try:
            if len(shape) - 2 != ndim:
                raise PatchfoldError(
                    f"'{path}' has {len(shape) - 2} spatial dim(s) but the dataset's first image has {ndim}"
                )
            geometry = blocks.at(shape[2:])
        except PatchfoldError as error:
            failed.append(ImageResult(image_id, str(path), 0, str(error)))
            failed_ids.add(image_id)
            continue
        chosen = None
        if keep is not None:
            try:
                chosen, sampled = choose_blocks(path, geometry, keep, channels, max_pixels, level)
            except IMAGE_ERRORS as error:
                failed.append(failure(image_id, str(path), error))
                failed_ids.add(image_id)
                continue
            selections.append(chosen)
            record["keep"] = chosen.summary() | ({} if sampled is None else {"sampled_level": sampled})
        kept_blocks = None if chosen is None else np.flatnonzero(chosen.keep)
        rows = geometry.num_blocks if kept_blocks is None else len(kept_blocks)
        if not shard_rows or (shard_rows[-1] and shard_rows[-1] + rows > capacity):
            shard_rows.append(0)
        shard, first = len(shard_rows) - 1, shard_rows[-1]
        shard_rows[-1] += rows
        record.update(blocks_per_dim=list(geometry.blocks_per_dim), shard=shard, first_row=first, rows=rows)
        placements.append((image_id, shard, first, path, kept_blocks))
        positions = np.indices(geometry.blocks_per_dim).reshape(geometry.ndim, -1).T
        if kept_blocks is not None:  # the index lists the kept blocks only
            positions = positions[kept_blocks]
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
        **({} if level is None else {"level": describe_level(level)}),
        **({} if keep is None else {"keep": keep_record(keep, selections)}),
        "layout": "nlc",
        "index_columns": ["image", *(f"block_{d}" for d in range(ndim)), "shard", "row"],
        "images": images,
        "shards": shards,
        "complete": False,
    }
    headers = {i: _header_size((s["rows"], patch_length), out_dtype) for i, s in enumerate(shards)}
    tasks = [
        ImageTask(
            image_id=image_id,
            source=str(path),
            first_row=first,
            rows=images[image_id]["rows"],
            patch_length=patch_length,
            dtype=str(out_dtype),
            scale=scale,
            channels=channels,
            blocks=blocks,
            max_pixels=max_pixels,
            level=level,
            kept=kept,
            shard_path=str(directory / shards[shard]["file"]),
            header=headers[shard],
            marker=str(directory / DONE_DIR / f"{image_id:08d}"),
        )
        for image_id, shard, first, path, kept in placements
    ]
    columns = 3 + ndim
    index = np.concatenate(index_parts) if index_parts else np.empty((0, columns), np.int64)
    return DatasetPlan(directory, manifest, tasks, failed, index)


def _header_size(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return write_npy_header(BytesIO(), shape, dtype)


@dataclass
class Preparation:
    """What a run has to do in a dataset directory: the tasks left, whether the dataset was already
    complete and sound (then nothing is written), and the shards rebuilt because they were damaged."""

    tasks: list[ImageTask]
    unchanged: bool = False
    rebuilt: list[str] = field(default_factory=list)


def prepare_directory(plan: DatasetPlan) -> Preparation:
    """Create the dataset files, or check those of an earlier run with the same parameters: every
    shard's header and size, the index, and each finished image's source against the fingerprint
    recorded for it. Damaged shards are rebuilt (their images redone); changed sources are redone."""
    directory = plan.directory
    if os.path.lexists(directory / "manifest.json"):
        return _resume(plan, read_dataset_manifest(directory))
    if directory.exists() and any(directory.iterdir()):
        raise PatchfoldError(f"output directory '{directory}' exists, is not empty and holds no patchfold dataset")
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / DONE_DIR).mkdir(exist_ok=True)
        check_free_space(directory / "x", sum(s["rows"] for s in plan.manifest["shards"]) * _row_bytes(plan))
        for shard in plan.manifest["shards"]:
            _allocate_shard(plan, shard)
        save_npy(directory / "index.npy", plan.index)
        write_json(directory / "manifest.json", plan.manifest)  # last: a dataset exists once this does
    except BaseException:
        _remove_partial(directory, created)
        raise
    return Preparation(list(plan.tasks))


def _resume(plan: DatasetPlan, existing: dict[str, Any]) -> Preparation:
    directory = plan.directory
    if dataset_identity(existing) != dataset_identity(plan.manifest):
        raise PatchfoldError(
            f"'{directory}' holds a different dataset: {identity_difference(existing, plan.manifest)}; "
            "write to a new directory"
        )
    recorded = {image["id"]: image.get("fingerprint") for image in existing["images"]} if existing["complete"] else {}
    done = directory / DONE_DIR
    if done.is_dir():
        recorded.update({task.image_id: _marker(task) for task in plan.tasks if os.path.exists(task.marker)})
    damaged = [shard for shard in plan.manifest["shards"] if not _shard_is_sound(plan, shard)]
    damaged_files = {shard["file"] for shard in damaged}
    todo = [
        task
        for task in plan.tasks
        if Path(task.shard_path).name in damaged_files
        or recorded.get(task.image_id) is None
        or recorded[task.image_id] != fingerprint(task.source)
    ]
    index_sound = _index_is_sound(plan)
    if existing["complete"] and not todo and not damaged and index_sound and not plan.failed:
        return Preparation([], unchanged=True)
    done.mkdir(exist_ok=True)
    redo = {task.image_id for task in todo}
    for task in plan.tasks:  # markers for what is kept, so the outcome is decided from them alone
        marker = Path(task.marker)
        if task.image_id in redo:
            marker.unlink(missing_ok=True)
        elif not marker.exists():
            marker.write_text(recorded[task.image_id], encoding="ascii")
    for shard in damaged:
        _allocate_shard(plan, shard)
    if not index_sound:
        save_npy(directory / "index.npy", plan.index)
    if existing["complete"]:  # incomplete again until the redone images are written
        write_json(directory / "manifest.json", {**existing, "complete": False})
    return Preparation(todo, rebuilt=[shard["file"] for shard in damaged])


def _row_bytes(plan: DatasetPlan) -> int:
    return plan.manifest["patch_length"] * np.dtype(plan.manifest["dtype"]).itemsize


def _allocate_shard(plan: DatasetPlan, shard: dict[str, Any]) -> None:
    dtype = np.dtype(plan.manifest["dtype"])
    path = plan.directory / shard["file"]
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        os.unlink(path)  # a link, FIFO or device in the shard's place: opening it could block or leave
    with open(path, "wb") as handle:
        allocate_npy(handle, (shard["rows"], plan.manifest["patch_length"]), dtype)


def _shard_is_sound(plan: DatasetPlan, shard: dict[str, Any]) -> bool:
    """Whether a shard file is a regular ``.npy`` with the header and the size the plan gives it."""
    path = plan.directory / shard["file"]
    shape = (shard["rows"], plan.manifest["patch_length"])
    dtype = np.dtype(plan.manifest["dtype"])
    start = _header_size(shape, dtype)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.path.getsize(path) != start + shape[0] * _row_bytes(plan):
            return False
        return read.npy_header(path) == (shape, dtype, start, False)
    except (OSError, PatchfoldError):
        return False


def _index_is_sound(plan: DatasetPlan) -> bool:
    try:
        index = np.load(plan.directory / "index.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return isinstance(index, np.ndarray) and index.dtype == plan.index.dtype and np.array_equal(index, plan.index)


def _remove_partial(directory: Path, created: bool) -> None:
    """Undo a dataset directory that could not be set up, so a retry starts from nothing."""
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    shutil.rmtree(directory / DONE_DIR, ignore_errors=True)
    for path in [directory / "index.npy", directory / "manifest.json", *directory.glob("shard-*.npy")]:
        path.unlink(missing_ok=True)


def _marker(task: ImageTask) -> str | None:
    try:
        return Path(task.marker).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def process_image(task: ImageTask) -> ImageResult:
    """Unfold one image into its rows of its shard, band by band (runs in a worker process)."""
    try:
        row_bytes = task.patch_length * np.dtype(task.dtype).itemsize
        # O_BINARY: Windows opens descriptors in text mode by default, turning \n bytes into \r\n
        descriptor = os.open(task.shard_path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        try:
            for done, patches in patch_bands(task):
                write_at(descriptor, patches, task.header + (task.first_row + done) * row_bytes)
        finally:
            os.close(descriptor)
        # the digest of the bytes as read now: a later run redoes the image if its source changes
        Path(task.marker).write_text(fingerprint(task.source), encoding="ascii")
        return ImageResult(task.image_id, task.source, task.rows)
    except IMAGE_ERRORS as error:
        return failure(task.image_id, task.source, error)


def finish(plan: DatasetPlan, failures: Sequence[ImageResult]) -> dict[str, Any]:
    """Record the outcome in the manifest: complete only when every planned image is written and
    none failed (at the header stage included), with each image's source fingerprint."""
    manifest = json.loads(json.dumps(plan.manifest))
    errors = {f.image_id: f.error for f in [*plan.failed, *failures]}
    marks = {task.image_id: _marker(task) for task in plan.tasks}
    for image in manifest["images"]:
        if image["id"] in errors:
            image["error"] = errors[image["id"]]
    manifest["complete"] = not errors and all(marks.values())
    if manifest["complete"]:
        for image in manifest["images"]:
            image["fingerprint"] = marks[image["id"]]
    write_json(plan.directory / "manifest.json", manifest)
    if manifest["complete"]:
        shutil.rmtree(plan.directory / DONE_DIR, ignore_errors=True)
    return manifest


def skipped_results(tasks: Sequence[Any], remaining: Sequence[Any]) -> Iterator[ImageResult]:
    """One ``skipped`` result for each task an earlier run finished (those not ``remaining``)."""
    todo = {task.image_id for task in remaining}
    for task in tasks:
        if task.image_id not in todo:
            yield ImageResult(task.image_id, task.source, task.rows, skipped=True)


def run_tasks(
    tasks: Sequence[Any], process: Any, workers: int, scheduler: str | None, fail_fast: bool
) -> Iterator[ImageResult]:
    """``process`` over ``tasks`` on a Dask ``scheduler`` where one is named, else local workers."""
    if scheduler:
        return run_dask(tasks, process, scheduler, fail_fast)
    return run_local(tasks, process, workers, fail_fast)


def run_dataset(
    plan: DatasetPlan, *, workers: int = 1, scheduler: str | None = None, fail_fast: bool = False
) -> Iterator[ImageResult]:
    """Prepare the directory, run what is left, and record the outcome. Yields one result per image
    (skipped ones first, marked ``skipped``)."""
    preparation = prepare_directory(plan)
    remaining = preparation.tasks
    yield from skipped_results(plan.tasks, remaining)
    failures: list[ImageResult] = []
    runner = run_tasks(remaining, process_image, workers, scheduler, fail_fast)
    if preparation.unchanged:  # complete and sound: leave every byte as it is
        return
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
    keep: KeepRules | None = None
    level: Level = None


def plan_tiles(
    sources: Sequence[Path],
    directory: Path,
    blocks: Blocks,
    fmt: str,
    channels: int | None,
    max_pixels: int,
    keep: KeepRules | None = None,
    level: Level = None,
) -> list[TilesTask]:
    stems = [f"{i:06d}_{path.stem}" for i, path in enumerate(sources)]
    return [
        TilesTask(i, str(path), str(directory / stem), fmt, channels, blocks, max_pixels, keep, level)
        for i, (path, stem) in enumerate(zip(sources, stems))
    ]


def describe_level(level: Level) -> Any:
    """What a manifest records of a level request: the number, or the resolution asked for."""
    return level if isinstance(level, int) else level.to_dict()


def process_tiles(task: TilesTask) -> ImageResult:
    """Write one image's tiles (runs in a worker process); an existing complete directory is kept,
    one whose manifest is unreadable or lists a tile that is not there is written again and
    replaces it. A region source is read band by band, never whole, and its tile names carry its
    level (as ``patchfold tiles`` names them)."""
    from patchfold.jobs.tiles import name_level, tiles_present, write_tiles

    target = Path(task.directory)
    finished = (target / "manifest.json").exists()
    if finished and tiles_present(target):
        return ImageResult(task.image_id, task.source, 0, skipped=True)
    try:
        array = open_source(task.source, task.max_pixels, task.level, task.channels)
        geometry = task.blocks.at(array.shape[2:])
        named = name_level(array, task.level)
        described = array.describe() if isinstance(array, RegionSource) and named is not None else None
        job = write_tiles(
            array, geometry, target, [task.source], task.fmt, task.keep, level=named, source_level=described,
            replace=finished,
        )  # fmt: skip
        record = _returned(job)
        return ImageResult(task.image_id, task.source, geometry.num_blocks if record is None else record["kept"])
    except IMAGE_ERRORS as error:
        return failure(task.image_id, task.source, error)


def _returned(job: Generator[Any, None, Any]) -> Any:
    """Run a job's generator to its end, passing over its progress; what it returns."""
    while True:
        try:
            next(job)
        except StopIteration as finished:
            return finished.value


def run_tiles(
    tasks: Sequence[TilesTask],
    directory: Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    fail_fast: bool = False,
) -> Iterator[ImageResult]:
    """Write every image's tile directory under ``directory`` and a top-level manifest, which
    records the request (:func:`tiles_request`): a resumed run must make the same one, or it is
    refused before anything is written (its finished images would otherwise be skipped as done)."""
    top = directory / "manifest.json"
    request = tiles_request(tasks)
    if os.path.lexists(top):
        _check_tiles_resume(top, read_json(top, "manifest"), request)
    directory.mkdir(parents=True, exist_ok=True)
    from patchfold.jobs.tiles import restore_moved_aside, tiles_present

    for task in tasks:  # a killed run's moved-aside directories, before any worker clears temporaries
        restore_moved_aside(Path(task.directory))
    results: dict[int, ImageResult] = {}
    runner = run_tasks(tasks, process_tiles, workers, scheduler, fail_fast)
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
        # every directory whole and no image failed (a damaged one whose redo failed keeps its old
        # manifest): an image this run finished or skipped was found whole, the others are looked at
        complete = all(r.ok for r in results.values()) and all(
            t.image_id in results or tiles_present(Path(t.directory)) for t in tasks
        )
        manifest = {
            "format": TILE_DATASET_FORMAT,
            "version": TILE_DATASET_VERSION,
            "request": request,
            "images": images,
            "complete": complete,
        }
        if tasks and tasks[0].keep is not None:  # the rules; each image's directory has its counts
            manifest["keep"] = tasks[0].keep.to_dict()
        write_json(directory / "manifest.json", manifest)


#: Version 2 records the request; a version-1 manifest (which did not) is not resumed.
TILE_DATASET_VERSION = 2


def tiles_request(tasks: Sequence[TilesTask]) -> dict[str, Any] | None:
    """What every image of a tile dataset is made with, as its manifest records it (JSON-ready)."""
    if not tasks:
        return None
    task = tasks[0]
    return {
        **_uniform(task.blocks.to_dict()),
        "format": task.fmt,
        "channels": task.channels,
        "level": None if task.level is None else describe_level(task.level),
        "keep": None if task.keep is None else task.keep.to_dict(),
    }


def _uniform(recorded: dict[str, Any]) -> dict[str, Any]:
    """Block parameters with a per-dim list of one value written as that value alone: ``-k 64``
    and ``-k 64,64`` make the same blocks wherever both apply, so a resume must not tell them apart."""
    return {
        key: value[:1] if isinstance(value, list) and value and all(v == value[0] for v in value) else value
        for key, value in recorded.items()
    }


def _check_tiles_resume(top: Path, existing: dict[str, Any], request: dict[str, Any] | None) -> None:
    """Refuse to resume a tile dataset made with another request (naming what differs), or one
    that is not a tile dataset's, or one from before requests were recorded."""
    if existing.get("format") != TILE_DATASET_FORMAT:
        raise PatchfoldError(f"'{top}' is not a patchfold tile dataset's manifest; write to a new directory")
    if existing.get("version") != TILE_DATASET_VERSION or "request" not in existing:
        raise PatchfoldError(
            f"'{top}' was written by an earlier patchfold, which did not record how its tiles were made; "
            "write to a new directory"
        )
    recorded, asked = _uniform(existing["request"] or {}), json.loads(json.dumps(request)) or {}
    differ = [key for key in sorted({*recorded, *asked}) if recorded.get(key) != asked.get(key)]
    if differ:
        changes = ", ".join(f"{key} {recorded.get(key)} -> {asked.get(key)}" for key in differ)
        raise PatchfoldError(
            f"'{top.parent}' holds tiles made with other parameters ({changes}); write to a new directory, "
            "or give the same ones to resume"
        )


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
    shard_size: int | None = None,
    compression: str = "default",
    chunk_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    fail_fast: bool = False,
    max_pixels: int = read.DEFAULT_MAX_PIXELS,
    level: Level = None,
    keep: KeepRules | None = None,
    append: bool = False,
) -> Iterator[Progress | ImageResult | DatasetResult]:
    """Unfold every image of ``sources`` (files, directories, globs) into the dataset ``output``:
    a directory of ``.npy`` shards of at most ``shard_size`` bytes (default 1 GB), or, for a
    ``.zarr`` path, one Zarr v3 store (see :mod:`patchfold.datasets.zarr_store`) whose chunks of
    rows are about ``chunk_size`` bytes (default 8 MiB), compressed as ``compression`` says; on
    ``workers`` local processes (default: the cores) or a Dask ``scheduler``.
    With ``append`` (a ``.zarr`` store only), the images are added to those the store holds, whose
    rows stay as they are (the same parameters are needed; the images it holds must still be
    there: they are checked as a resumed run checks them, and redone only where they changed).
    Yields :class:`Progress` once the work is planned (its ``total`` is the images to do), one
    :class:`ImageResult` per image as it finishes, then the :class:`DatasetResult`."""
    started = time.perf_counter()
    output = Path(output)
    to_zarr = _check_layout(output, shard_size, compression, chunk_size)
    if append and not to_zarr:
        raise PatchfoldError(
            f"append adds images to a .zarr dataset store; '{output}' is a directory of shards, which is not "
            "appended to (write a new dataset, or use NAME.zarr)",
            param="append",
        )
    paths = read.find_inputs(sources, recursive=recursive, unique=True)
    if to_zarr:
        from patchfold.datasets import zarr_store

        store = zarr_store.plan_store(
            paths, output, blocks, dtype=dtype, channels=channels, compression=compression,
            chunk_size=chunk_size, max_pixels=max_pixels, level=level, keep=keep, append=append,
        )  # fmt: skip
        tasks, failed, extra = store.tasks, store.failed, store.summary()
        paths = [Path(image["source"]) for image in store.manifest["images"]]
        workers = _workers(workers, len(tasks))
        runner = zarr_store.run_store(store, workers=workers, scheduler=scheduler, fail_fast=fail_fast)
    else:
        size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
        plan = plan_dataset(
            paths, output, blocks, dtype=dtype, channels=channels, shard_size=size, max_pixels=max_pixels,
            level=level, keep=keep,
        )  # fmt: skip
        tasks, failed = plan.tasks, plan.failed
        extra = {
            "patches": plan.total_rows,
            "shards": len(plan.manifest["shards"]),
            "patch_length": plan.manifest["patch_length"],
            "dtype": plan.manifest["dtype"],
        }
        workers = _workers(workers, len(tasks))
        runner = run_dataset(plan, workers=workers, scheduler=scheduler, fail_fast=fail_fast)
    yield from _run(output, len(paths), len(tasks), runner, extra, failed, scheduler or workers, started)


def _check_layout(output: Path, shard_size: int | None, compression: str, chunk_size: int | None) -> bool:
    """Whether ``output`` is a Zarr store; the options of the other layout are refused, not ignored."""
    from patchfold.io.zarr_out import check_compression, is_zarr_output

    check_compression(output, compression)
    to_zarr = is_zarr_output(output)
    if to_zarr and shard_size is not None:
        raise PatchfoldError(
            f"shard_size is for a directory of .npy shards; '{output}' is a .zarr store, chunked by rows "
            "(drop shard_size, or give a directory)",
            param="shard_size",
        )
    if not to_zarr and chunk_size is not None:
        raise PatchfoldError(f"chunk_size is for a .zarr store; '{output}' is not one", param="chunk_size")
    return to_zarr


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
    keep: KeepRules | None = None,
    level: Level = None,
) -> Iterator[Progress | ImageResult | DatasetResult]:
    """Write the tiles of every image of ``sources`` into its own directory under ``output`` (as
    :func:`patchfold.jobs.tiles.tiles_file` does for one), with a top-level manifest; resumable.
    ``keep`` writes only the blocks its rules keep, each image with its own threshold (the
    summary's ``tiles`` counts those written)."""
    started = time.perf_counter()
    output = Path(output)
    paths = read.find_inputs(sources, recursive=recursive, unique=True)
    tasks = plan_tiles(paths, output, blocks, tile_format, channels, max_pixels, keep, level)
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
    """Local worker processes: as asked (default: the cores), never more than the cores or the work."""
    return max(1, min(requested or cpu_count(), cpu_count(), tasks))
