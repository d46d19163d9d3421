"""The Zarr layout of a patch dataset: ``batch unfold ... -o dataset.zarr`` writes one Zarr v3 group::

    dataset.zarr/      its attributes hold the manifest, under "patchfold"
      patches          (rows, C·∏k): one patch per row (the ``nlc`` layout), chunked by rows
      index            (rows, 3 + ndim) int64: image id, block index per dim, shard (always 0), row
      done             (images, 16) uint8: each finished image's source digest (zeros: not done)

The manifest is the shard format's (parameters; every image's source, size, dtype maximum, first
row and rows) plus ``"store": "zarr"``, the codec and the chunk rows. Its one "shard" is the
``patches`` array, so the index's columns keep their meaning (shard 0, row in ``patches``) and a
:class:`~patchfold.datasets.reader.PatchDataset` reads both layouts alike. ``zarr.open`` and
``dask.array.from_zarr(path, component="patches")`` read it with no patchfold code.

Who writes what. Rows are planned from the images' headers before any work, as for shards. But
Zarr stores a chunk whole: two processes storing rows of one chunk at once would each read it, add
their rows and write it back, and the second would erase the first's. So every chunk has one
writer. A worker stores the chunks that hold rows of its image alone, and sends back with its
result the rows that fall in chunks shared with another image (at most two partial chunks per
image); this process, the only writer of shared chunks, gathers them and writes each once all the
images it holds are in (:class:`SharedChunks`). No rows are left out and none are padded, so
``patches`` is the shard dataset's rows, in order, and images of any size can be written by any
number of workers. An image is recorded in ``done`` only once all its rows are stored: a killed run
leaves a store whose recorded images are whole, and the next run redoes the others.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.blocks import Blocks
from patchfold.datasets.build import (
    ImageTask,
    Preparation,
    plan_dataset,
    run_tasks,
    skipped_results,
)
from patchfold.datasets.images import ImagePart, fingerprint, patch_bands
from patchfold.errors import PatchfoldError
from patchfold.io import read
from patchfold.io.formats import ZARR_SIDECAR_KEY, check_dataset_manifest, dataset_identity, identity_difference
from patchfold.io.levels import Level
from patchfold.io.sources import zarr_module
from patchfold.io.write import atomic_directory, check_store_apart, check_store_path
from patchfold.io.zarr_out import ZARR_CHUNK_BYTES, compressors
from patchfold.keep import KeepRules
from patchfold.scheduling import IMAGE_ERRORS, ImageResult, failure

#: Chunks of ``patches`` are about this many bytes (whole rows: at least one).
DATASET_CHUNK_BYTES = ZARR_CHUNK_BYTES

#: Shared chunks held in memory at most, in bytes, before the oldest is stored as it is.
SHARED_BYTES = 256 << 20

#: Decoded chunks a reader keeps, in bytes (at least one chunk).
READ_CACHE_BYTES = 64 << 20

#: The length of a source digest (:func:`patchfold.datasets.images.fingerprint`) in ``done``.
DIGEST_BYTES = 16

#: Every chunk is stored, all-zero ones too (Zarr skips those by default): a missing chunk file of
#: a finished image then means damage, and its images are redone.
WRITE_CONFIG = {"write_empty_chunks": True}


@dataclass(frozen=True, kw_only=True)
class ZarrTask(ImagePart):
    """One image's rows of ``patches``: the array's directory, its chunk rows and total rows."""

    store: str  # the ``patches`` array's directory
    chunk_rows: int
    total_rows: int

    @property
    def stop(self) -> int:
        return self.first_row + self.rows

    def owned(self) -> tuple[int, int]:
        """Rows ``[start, end)`` of the chunks that hold this image's rows alone (start >= end: none)."""
        size = self.chunk_rows
        start = -(-self.first_row // size) * size
        end = self.stop if self.stop == self.total_rows else self.stop // size * size  # the last chunk may be short
        return start, max(start, end)

    def chunks(self) -> range:
        """The chunks of ``patches`` holding rows of this image."""
        if not self.rows:
            return range(0)
        return range(self.first_row // self.chunk_rows, -(-self.stop // self.chunk_rows))

    def end_chunks(self) -> set[int]:
        """Its first and last chunk: the only ones it can share with another image (rows are contiguous)."""
        chunks = self.chunks()
        return {chunks[0], chunks[-1]} if chunks else set()


@dataclass
class StoredImage(ImageResult):
    """A worker's result: its source's digest, and its rows in shared chunks (first row, values)."""

    digest: str = ""
    edges: list[tuple[int, np.ndarray]] = field(default_factory=list)


@dataclass
class StorePlan:
    path: Path
    manifest: dict[str, Any]
    tasks: list[ZarrTask]
    failed: list[ImageResult]
    index: np.ndarray
    chunk_rows: int
    #: the run adds its images to the store's (see :func:`appended_sources`)
    append: bool = False

    @property
    def total_rows(self) -> int:
        return int(self.manifest["shards"][0]["rows"])

    @property
    def compression(self) -> str:
        return str(self.manifest["compression"])

    def summary(self) -> dict[str, Any]:
        """What a run reports besides its counts (the shard format reports its shards instead)."""
        return {
            "patches": self.total_rows,
            "chunks": -(-self.total_rows // self.chunk_rows),
            "patch_length": self.manifest["patch_length"],
            "dtype": self.manifest["dtype"],
            "compression": self.compression,
        }


def plan_store(
    sources: Sequence[Path],
    path: Path,
    blocks: Blocks,
    *,
    dtype: str = "keep",
    channels: int | None = None,
    compression: str = "default",
    chunk_size: int | None = None,
    max_pixels: int = read.DEFAULT_MAX_PIXELS,
    level: Level = None,
    keep: KeepRules | None = None,
    append: bool = False,
) -> StorePlan:
    """Plan the store as the shard format plans its shards (from the headers), in one run of rows.
    With ``append``, the images of the store at ``path`` come first, then those of ``sources`` it
    does not hold (:func:`appended_sources`)."""
    zarr_module()
    compressors(compression)
    chunk_bytes = DATASET_CHUNK_BYTES if chunk_size is None else chunk_size
    if type(chunk_bytes) is not int or chunk_bytes < 1:
        raise PatchfoldError(f"chunk_size must be a positive number of bytes, got {chunk_size!r}", param="chunk_size")
    check_store_path(path)
    check_store_apart(path, [p for p in sources if p.exists()])
    if append:
        sources = appended_sources(path, sources)
    base = plan_dataset(
        sources, path, blocks, dtype=dtype, channels=channels, shard_size=1 << 62, max_pixels=max_pixels,
        level=level, keep=keep,
    )  # fmt: skip  # one shard: every image's rows in one run
    manifest = base.manifest
    total = base.total_rows
    chunk_rows = max(1, chunk_bytes // (manifest["patch_length"] * np.dtype(manifest["dtype"]).itemsize))
    complete = manifest.pop("complete")
    manifest.update(
        shards=[{"array": "patches", "rows": total}],
        store="zarr",
        compression=compression,
        chunk_rows=chunk_rows,
        complete=complete,
    )
    store = str(path / "patches")
    tasks = [_task(t, store, chunk_rows, total) for t in base.tasks]
    return StorePlan(path, manifest, tasks, base.failed, base.index, chunk_rows, append)


def appended_sources(path: Path, sources: Sequence[Path]) -> list[Path]:
    """The images of an append run: those the store at ``path`` holds, in its order (their rows
    stay where they are), then those of ``sources`` it does not hold; ``sources`` alone where
    there is no store yet."""
    if not os.path.lexists(path):
        return list(sources)
    held = [Path(image["source"]) for image in read_store_manifest(path, "output")["images"]]
    gone = [p for p in held if not os.path.lexists(p)]
    if gone:
        raise PatchfoldError(
            f"'{gone[0]}', an image of the dataset store '{path}', is gone ({len(gone)} of {len(held)} images); "
            "appending checks every image the store holds, as a resumed run does"
        )
    known = {str(p) for p in held}
    return held + [p for p in sources if str(p) not in known]


def _task(task: ImageTask, store: str, chunk_rows: int, total_rows: int) -> ZarrTask:
    """The shard planner's task as the store's: the same rows, in one array."""
    return ZarrTask(**task.part(), store=store, chunk_rows=chunk_rows, total_rows=total_rows)


# ----- creating and resuming a store -----------------------------------------------------------------
def store_identity(manifest: dict[str, Any]) -> str:
    """What two runs must share to write the same store: the shard format's identity, the codec and
    the chunk rows (the chunks already stored are kept as they are, so these cannot change)."""
    return json.dumps([dataset_identity(manifest), manifest.get("compression"), manifest.get("chunk_rows")])


def _store_difference(existing: dict[str, Any], planned: dict[str, Any]) -> str:
    """Why ``planned`` is not the store ``existing`` describes, in words."""
    for key in ("compression", "chunk_rows"):
        if existing.get(key) != planned.get(key):
            return f"other {key.replace('_', ' ')} ({existing.get(key)} -> {planned.get(key)})"
    return identity_difference(existing, planned)


def extends(existing: dict[str, Any], planned: dict[str, Any]) -> bool:
    """Whether ``planned`` is ``existing`` with more images after its own: the same parameters,
    codec and chunking, and its first images planned as ``existing`` holds them (the same rows)."""
    count = len(existing["images"])
    if len(planned["images"]) <= count:
        return False

    def shared(manifest: dict[str, Any], images: list[Any]) -> str:
        keep = manifest.get("keep")
        rules = None if keep is None else {k: v for k, v in keep.items() if k not in ("kept", "skipped")}
        return store_identity({**manifest, "images": images, "shards": None, "keep": rules})

    return shared(existing, existing["images"]) == shared(planned, planned["images"][:count])


def prepare_store(plan: StorePlan) -> Preparation:
    """Create the store, or check the one an earlier run left: same parameters (else refused, with
    nothing touched), each array's metadata and the index (a damaged one is made again and the
    images it held are redone), each finished image's chunk files and source fingerprint."""
    if not os.path.lexists(plan.path):
        _create(plan)
        return Preparation(list(plan.tasks))
    existing = read_store_manifest(plan.path, "output")
    zarr = zarr_module()
    group = zarr.open_group(str(plan.path), mode="r+")
    if store_identity(existing) != store_identity(plan.manifest):
        if not (plan.append and extends(existing, plan.manifest)):
            difference = _store_difference(existing, plan.manifest)
            more = difference == "other images" and not plan.append
            hint = ", or add images to it with append (--append)" if more else ""
            raise PatchfoldError(f"'{plan.path}' holds a different dataset: {difference}; write to a new store{hint}")
        # the manifest first: a run stopped before the arrays have grown grows them when re-run
        existing = {**plan.manifest, "complete": False}
        group.attrs.put({ZARR_SIDECAR_KEY: existing})
    patches, rebuilt = _sound_array(plan, "patches"), []
    if patches is None:
        patches = _new_array(group, plan, "patches")
        rebuilt.append("patches")
    done = _sound_array(plan, "done")
    if done is None:
        done = _new_array(group, plan, "done")
        rebuilt.append("done")
    index_sound = _index_is_sound(plan)
    digests = _digests(done, len(plan.manifest["images"]))
    todo = [
        task
        for task in plan.tasks
        if not digests.get(task.image_id)
        or not _chunks_present(plan.path / "patches", patches, task)
        or digests[task.image_id] != fingerprint(task.source)
    ]
    if existing.get("complete") and not todo and not rebuilt and index_sound and not plan.failed:
        return Preparation([], unchanged=True)
    for task in todo:  # not done until written again: an interrupted redo is never taken as finished
        done[task.image_id] = 0
    if not index_sound:
        _new_array(group, plan, "index")[...] = plan.index
    if existing.get("complete"):
        group.attrs.put({ZARR_SIDECAR_KEY: {**existing, "complete": False}})
    return Preparation(todo, rebuilt=rebuilt)


def _create(plan: StorePlan) -> None:
    """A new store, set up in a temporary directory that becomes ``plan.path`` once whole: a store
    exists only with all its arrays and the manifest, so a failed setup leaves nothing."""
    zarr = zarr_module()
    with atomic_directory(plan.path) as temporary:
        group = zarr.create_group(store=str(temporary), zarr_format=3, attributes={ZARR_SIDECAR_KEY: plan.manifest})
        _new_array(group, plan, "patches")
        _new_array(group, plan, "done")
        _new_array(group, plan, "index")[...] = plan.index


def _layout(plan: StorePlan, name: str) -> tuple[tuple[int, ...], tuple[int, ...], np.dtype]:
    """Shape, chunks and dtype of one of the store's arrays."""
    if name == "patches":
        rows = (plan.total_rows, plan.manifest["patch_length"])
        return rows, (plan.chunk_rows, rows[1]), np.dtype(plan.manifest["dtype"])
    if name == "done":  # one chunk per image: each is recorded on its own
        return (len(plan.manifest["images"]), DIGEST_BYTES), (1, DIGEST_BYTES), np.dtype(np.uint8)
    columns = plan.index.shape[1]
    return (len(plan.index), columns), (max(1, DATASET_CHUNK_BYTES // (8 * columns)), columns), np.dtype(np.int64)


def _new_array(group: Any, plan: StorePlan, name: str) -> Any:
    """Create (or replace) one of the store's arrays; ``patches`` with the plan's codec, the others
    with Zarr's default."""
    shape, chunks, dtype = _layout(plan, name)
    codecs = compressors(plan.compression) if name == "patches" else "default"
    extra: dict[str, Any] = {} if codecs == "default" else {"compressors": codecs}
    return group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, overwrite=True, config=WRITE_CONFIG, **extra
    )


def _sound_array(plan: StorePlan, name: str) -> Any:
    """The array ``name`` opened for writing if its metadata is what the plan gives it, else None."""
    shape, chunks, dtype = _layout(plan, name)
    try:
        array = open_array(plan.path / name, "r+")
    except PatchfoldError:
        return None
    if tuple(array.chunks) != chunks or np.dtype(array.dtype) != dtype or tuple(array.shape[1:]) != shape[1:]:
        return None
    if array.shape[0] < shape[0]:  # an appended store's: grown, its chunks kept as they are
        array.resize(shape)
    return array if tuple(array.shape) == shape else None


def _index_is_sound(plan: StorePlan) -> bool:
    array = _sound_array(plan, "index")
    if array is None:
        return False
    try:
        return bool(np.array_equal(array[...], plan.index))
    except Exception:  # a damaged chunk: zarr's decoders raise their own errors
        return False


def _digests(done: Any, count: int) -> dict[int, str]:
    """The digest recorded for each finished image (unreadable records count as not done)."""
    try:
        values = np.asarray(done[...])
    except Exception:  # a damaged chunk: zarr's decoders raise their own errors
        values = np.zeros((count, DIGEST_BYTES), np.uint8)
    return {i: bytes(row).hex() for i, row in enumerate(values) if row.any()}


def _chunks_present(directory: Path, patches: Any, task: ZarrTask) -> bool:
    """Whether every chunk file holding the image's rows is there (all are written, empty ones too)."""
    return all((directory / patches.metadata.encode_chunk_key((k, 0))).is_file() for k in task.chunks())


def open_array(path: Path, mode: str = "r") -> Any:
    """One array of a store, or one error line naming it."""
    zarr = zarr_module()
    try:
        return zarr.open_array(str(path), mode=mode, **({"config": WRITE_CONFIG} if mode != "r" else {}))
    except Exception as error:  # zarr raises many kinds (missing, not an array, bad metadata)
        raise PatchfoldError(f"dataset array '{path}' cannot be opened: {error}"[:400]) from None


def read_store_manifest(path: Path, what: str = "dataset") -> dict[str, Any]:
    """The manifest in a Zarr dataset's attributes, validated as a shard directory's is."""
    zarr = zarr_module()
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as error:  # an array, broken metadata, ...: zarr's own exceptions
        message = f"{what} '{path}' is a Zarr store that holds no patchfold dataset ({error})"
        raise PatchfoldError(message[:400]) from None
    data = group.attrs.get(ZARR_SIDECAR_KEY)
    if not isinstance(data, dict) or "index_columns" not in data:
        raise PatchfoldError(
            f"{what} '{path}' is a Zarr store that holds no patchfold dataset (no dataset manifest in its attributes)"
        )
    return check_dataset_manifest(json.loads(json.dumps(data)), f"the dataset manifest of '{path}'", zarr=True)


# ----- the work -----------------------------------------------------------------------------------------
def process_store_image(task: ZarrTask) -> ImageResult:
    """Unfold one image band by band (in a worker process): store the chunks it owns as they fill,
    return its other rows (those in chunks it shares with its neighbours)."""
    try:
        start, end = task.owned()
        owned = _OwnedChunks(open_array(Path(task.store), "r+") if end > start else None, start, task.chunk_rows)
        edges: list[tuple[int, np.ndarray]] = []
        for done, values in patch_bands(task):
            first = task.first_row + done
            last = first + len(values)
            for lo, hi in ((first, min(last, start)), (max(first, end), last)):
                if hi > lo:  # rows in a shared chunk: copied, not views of the band
                    edges.append((lo, values[lo - first : hi - first].copy()))
            if min(last, end) > max(first, start):
                owned.add(values[max(first, start) - first : min(last, end) - first])
        owned.close()
        # the digest of the bytes as read now: a later run redoes the image if its source changes
        return StoredImage(task.image_id, task.source, task.rows, digest=fingerprint(task.source), edges=edges)
    except IMAGE_ERRORS as error:
        return failure(task.image_id, task.source, error)


class _OwnedChunks:
    """The rows of the chunks an image owns, from row ``start`` on (chunk-aligned) in order: each
    chunk stored once whole (the last one at the store's end may be short)."""

    def __init__(self, patches: Any, start: int, size: int) -> None:
        self.patches, self.next, self.size = patches, start, size
        self.held: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        self.held.append(values)
        count = sum(len(part) for part in self.held)
        whole = count // self.size * self.size
        if whole:
            rows = self.held[0] if len(self.held) == 1 else np.concatenate(self.held)
            self.patches[self.next : self.next + whole] = rows[:whole]
            self.next += whole
            self.held = [rows[whole:]] if whole < count else []

    def close(self) -> None:
        if self.held:
            rows = np.concatenate(self.held)
            self.patches[self.next : self.next + len(rows)] = rows
            self.next += len(rows)
            self.held = []


class SharedChunks:
    """The chunks of ``patches`` holding rows of more than one image, written by this process alone.

    Each is gathered in memory from the results of its images and stored once they are all in (or
    when more than :data:`SHARED_BYTES` are held: then the oldest is stored as it is, and rows
    coming later are stored into it, which only this process does). An image is recorded in
    ``done`` once its worker has reported and its rows in shared chunks are stored.
    """

    def __init__(self, plan: StorePlan, patches: Any, done: Any, todo: set[int]) -> None:
        self.patches, self.done, self.todo = patches, done, todo
        self.size, self.total = plan.chunk_rows, plan.total_rows
        self.tasks = {task.image_id: task for task in plan.tasks}
        holders: dict[int, set[int]] = defaultdict(set)
        for task in plan.tasks:
            for chunk in task.end_chunks():
                holders[chunk].add(task.image_id)
        self.holders = {chunk: ids for chunk, ids in holders.items() if len(ids) > 1}
        self.pending = {chunk: ids & todo for chunk, ids in self.holders.items()}
        self.buffers: OrderedDict[int, np.ndarray] = OrderedDict()
        self.in_buffer: dict[int, set[int]] = defaultdict(set)  # chunk -> images whose rows it holds
        self.stored: set[int] = set()  # shared chunks written in this run
        self.waiting: dict[int, set[int]] = {}  # image -> held chunks with its rows
        self.digests: dict[int, str] = {}  # images reported whole, until recorded
        row_bytes = plan.manifest["patch_length"] * np.dtype(plan.manifest["dtype"]).itemsize
        self.most = max(2, SHARED_BYTES // max(1, self.size * row_bytes))

    def take(self, result: ImageResult) -> None:
        """One image's result: its shared rows placed, finished chunks stored, finished images recorded."""
        image = result.image_id
        if isinstance(result, StoredImage) and result.ok:
            self.waiting[image] = set()
            for first, values in result.edges:
                self._place(image, first, values)
            self.digests[image] = result.digest
        for chunk in self.tasks[image].end_chunks():
            if chunk in self.pending:
                self.pending[chunk].discard(image)
                if not self.pending[chunk] and chunk in self.buffers:
                    self._store(chunk)
        while len(self.buffers) > self.most:
            self._store(next(iter(self.buffers)))
        self._record(image)

    def close(self) -> None:
        """Store every chunk still held (a run that ends, or is stopped, keeps what it finished)."""
        while self.buffers:
            self._store(next(iter(self.buffers)))

    def _place(self, image: int, first: int, values: np.ndarray) -> None:
        while len(values):
            chunk = first // self.size
            top = chunk * self.size
            count = min(len(values), top + self.size - first)
            if chunk in self.stored:  # stored already (held too long): only this process writes it
                self.patches[first : first + count] = values[:count]
            else:
                self._buffer(chunk)[first - top : first - top + count] = values[:count]
                self.in_buffer[chunk].add(image)
                self.waiting[image].add(chunk)
            first, values = first + count, values[count:]

    def _buffer(self, chunk: int) -> np.ndarray:
        if chunk not in self.buffers:
            top, bottom = chunk * self.size, min((chunk + 1) * self.size, self.total)
            if self.holders[chunk] - self.todo:  # rows of images kept from an earlier run are in it
                self.buffers[chunk] = np.array(self.patches[top:bottom])
            else:
                self.buffers[chunk] = np.zeros((bottom - top, self.patches.shape[1]), self.patches.dtype)
        return self.buffers[chunk]

    def _store(self, chunk: int) -> None:
        top = chunk * self.size
        self.patches[top : top + self.size] = self.buffers.pop(chunk)
        self.stored.add(chunk)
        for image in self.in_buffer.pop(chunk, set()):
            self.waiting[image].discard(chunk)
            self._record(image)

    def _record(self, image: int) -> None:
        if image in self.digests and not self.waiting.get(image):
            digest = self.digests.pop(image)
            self.waiting.pop(image, None)
            if digest:  # empty: the source could not be read again, so it stays to do
                self.done[image] = np.frombuffer(bytes.fromhex(digest), np.uint8)


def finish_store(plan: StorePlan, failures: Sequence[ImageResult]) -> dict[str, Any]:
    """Record the outcome in the manifest: complete only when every planned image is recorded in
    ``done`` and none failed (at the header stage included), with each image's source fingerprint."""
    manifest = json.loads(json.dumps(plan.manifest))
    errors = {f.image_id: f.error for f in [*plan.failed, *failures]}
    digests = _digests(open_array(plan.path / "done"), len(manifest["images"]))
    for image in manifest["images"]:
        if image["id"] in errors:
            image["error"] = errors[image["id"]]
    manifest["complete"] = not errors and all(task.image_id in digests for task in plan.tasks)
    if manifest["complete"]:
        for image in manifest["images"]:
            image["fingerprint"] = digests[image["id"]]
    zarr_module().open_group(str(plan.path), mode="r+").attrs.put({ZARR_SIDECAR_KEY: manifest})
    return manifest


def run_store(
    plan: StorePlan, *, workers: int = 1, scheduler: str | None = None, fail_fast: bool = False
) -> Iterator[ImageResult]:
    """Prepare the store, run what is left, and record the outcome. Yields one result per image
    (skipped ones first, marked ``skipped``)."""
    preparation = prepare_store(plan)
    todo = {task.image_id for task in preparation.tasks}
    yield from skipped_results(plan.tasks, preparation.tasks)
    if preparation.unchanged:  # complete and sound: leave every byte as it is
        return
    shared = SharedChunks(plan, open_array(plan.path / "patches", "r+"), open_array(plan.path / "done", "r+"), todo)
    runner = run_tasks(preparation.tasks, process_store_image, workers, scheduler, fail_fast)
    failures: list[ImageResult] = []
    try:
        for result in runner:
            if not result.ok:
                failures.append(result)
            shared.take(result)
            yield ImageResult(result.image_id, result.source, result.rows, result.error)  # without its rows
    except GeneratorExit:  # stopped by the caller (Ctrl-C in the command): keep what finished
        _stop(runner, shared)
        raise
    else:
        _stop(runner, shared)
    finally:
        finish_store(plan, failures)


def _stop(runner: Iterator[ImageResult], shared: SharedChunks) -> None:
    """End the workers, then store the shared chunks held (their images are then recorded)."""
    runner.close()  # type: ignore[attr-defined]
    shared.close()


# ----- reading ------------------------------------------------------------------------------------------
def open_store(path: Path, shape: tuple[int, int], dtype: np.dtype) -> tuple[Any, np.ndarray]:
    """The ``patches`` array (checked against ``shape`` and ``dtype``) and the index (read whole)."""
    patches = open_array(path / "patches")
    if tuple(patches.shape) != shape or np.dtype(patches.dtype) != dtype:
        raise PatchfoldError(
            f"dataset array '{path / 'patches'}' holds {patches.dtype} {list(patches.shape)}; its manifest says "
            f"{dtype} {list(shape)}"
        )
    array = open_array(path / "index")
    try:
        index = np.asarray(array[...])
    except Exception as error:  # a damaged chunk: zarr's decoders raise their own errors
        raise PatchfoldError(f"dataset array '{path / 'index'}' cannot be read: {error}"[:400]) from None
    if index.dtype != np.int64:
        raise PatchfoldError(f"dataset array '{path / 'index'}' holds {index.dtype}; expected int64")
    return patches, index


class ChunkedRows:
    """The ``patches`` array of a store read as numpy rows (as a memory-mapped shard is indexed).

    Zarr decodes a whole chunk to give any row of it, so the last chunks decoded are kept, read-only,
    for the rows that follow: reading in order decodes each chunk once. An int gives a row (a view
    of the kept chunk), a slice or an array of ints a ``(k, C·∏k)`` array (a view when it lies in
    one chunk, else fresh).
    """

    def __init__(self, array: Any, path: Path, cache_bytes: int = READ_CACHE_BYTES) -> None:
        self.array, self.path = array, path
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = int(array.chunks[0])
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._most = max(1, cache_bytes // max(1, self.chunk_rows * self.shape[1] * self.dtype.itemsize))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, int | np.integer):
            chunk, row = divmod(int(key), self.chunk_rows)
            return self._chunk(chunk)[row]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1 and stop > start and start // self.chunk_rows == (stop - 1) // self.chunk_rows:
                top = start // self.chunk_rows * self.chunk_rows
                return self._chunk(start // self.chunk_rows)[start - top : stop - top]
            key = np.arange(start, stop, step)
        return self._take(np.asarray(key, dtype=np.int64))

    def _take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        chunks = rows // self.chunk_rows
        for chunk in np.unique(chunks):
            chosen = chunks == chunk
            out[chosen] = self._chunk(int(chunk))[rows[chosen] - chunk * self.chunk_rows]
        return out

    def _chunk(self, chunk: int) -> np.ndarray:
        values = self._chunks.get(chunk)
        if values is not None:
            self._chunks.move_to_end(chunk)
            return values
        top = chunk * self.chunk_rows
        try:
            values = np.asarray(self.array[top : top + self.chunk_rows])
        except Exception as error:  # a damaged chunk: zarr's decoders raise their own errors
            message = f"chunk {chunk} of dataset array '{self.path}' cannot be read: {error}"
            raise PatchfoldError(message[:400]) from None
        values.flags.writeable = False
        self._chunks[chunk] = values
        if len(self._chunks) > self._most:
            self._chunks.popitem(last=False)
        return values
