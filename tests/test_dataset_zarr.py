"""Datasets as one Zarr v3 store (issue #17): ``batch unfold ... -o dataset.zarr`` holds the shard
dataset's rows, reads back with zarr and dask alone, resumes after a stop or a kill, and
``load_dataset`` gives the same rows and behaviour for both layouts."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import patchfold
import pytest
from cli_fixtures import COMMAND, describe, invoke, ok
from dataset_helpers import dataloader_batches, kill_and_resume_command, python, snapshot, stop_after
from patchfold import Blocks
from patchfold.datasets import build, zarr_store
from patchfold.io.zarr_out import ZARR_COMPRESSIONS
from PIL import Image

zarr = pytest.importorskip("zarr")

BLOCKS = Blocks(8, stride=4)

#: Chunks of a few rows, so images share chunks and some own whole ones (192-byte rows: 26 a chunk).
SMALL_CHUNKS = 5000


def make_images(directory: Path, count: int = 6, seed: int = 0) -> list[Path]:
    """RGB images of different sizes (and one grey one, converted by channels=3)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        shape = (20 + 7 * i, 24 + 5 * (i % 3)) + (() if i == 3 else (3,))
        paths.append(directory / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    return paths


def unfold(paths: list[Path], out: Path, **options: Any) -> build.DatasetResult:
    """One run of the dataset job, as ``batch unfold`` makes it; its result."""
    options = {"workers": 1, "channels": 3, **options}
    if out.suffix == ".zarr":
        options.setdefault("chunk_size", SMALL_CHUNKS)
    else:
        options.setdefault("shard_size", 2000)
    events = list(build.unfold_dataset([str(p) for p in paths], out, options.pop("blocks", BLOCKS), **options))
    assert isinstance(events[-1], build.DatasetResult)
    return events[-1]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path, Path]:
    """The same images as a shard directory (several shards) and as a Zarr store (shared chunks)."""
    tmp = tmp_path_factory.mktemp("both")
    paths = make_images(tmp / "in")
    assert not unfold(paths, tmp / "shards").failed
    assert not unfold(paths, tmp / "ds.zarr").failed
    return paths, tmp / "shards", tmp / "ds.zarr"


# ----- the layout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("chunk_size", [700, SMALL_CHUNKS, 1 << 20])
def test_store_holds_the_shard_datasets_rows_in_order(
    both: tuple[list[Path], Path, Path], tmp_path: Path, workers: int, chunk_size: int
) -> None:
    """Chunks of 3 rows (every image owns some), of 26 (most are shared) and one for all."""
    paths, shards, _ = both
    result = unfold(paths, tmp_path / "ds.zarr", workers=workers, chunk_size=chunk_size)
    assert not result.failed and result.summary()["done"] == len(paths)
    reference = patchfold.load_dataset(shards)
    assert len(reference.manifest["shards"]) > 1
    store = zarr.open_group(str(tmp_path / "ds.zarr"), mode="r")
    patches, index = store["patches"], store["index"][...]
    assert patches.shape == (len(reference), 192) and patches.chunks == (max(1, chunk_size // 192), 192)
    rows = np.stack([reference.shards[s][r] for s, r in reference.index[:, -2:]])
    np.testing.assert_array_equal(patches[...], rows)
    np.testing.assert_array_equal(index[:, :-2], reference.index[:, :-2])  # image id, block index per dim
    assert (index[:, -2] == 0).all() and (index[:, -1] == np.arange(len(index))).all()  # shard 0, row in patches
    manifest = store.attrs["patchfold"]
    assert (
        manifest["store"] == "zarr"
        and manifest["complete"]
        and manifest["shards"] == [{"array": "patches", "rows": len(reference)}]
    )
    assert manifest["index_columns"] == reference.manifest["index_columns"]
    for mine, theirs in zip(manifest["images"], reference.manifest["images"]):
        for key in ("source", "shape", "max_value", "blocks_per_dim", "rows", "fingerprint"):
            assert mine[key] == theirs[key]
    first_rows = [image["first_row"] for image in manifest["images"]]
    assert first_rows == [int(np.flatnonzero(index[:, 0] == i)[0]) for i in range(len(paths))]


def test_any_worker_count_and_result_order_give_the_same_bytes(
    both: tuple[list[Path], Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers; and results in an order that holds many shared chunks at once (every other
    image first), with at most two held: the oldest are stored early and completed in place."""
    paths, _, store = both
    unfold(paths, tmp_path / "two.zarr", workers=2)
    assert snapshot(tmp_path / "two.zarr") == snapshot(store)

    def evens_then_odds(tasks, function, workers, fail_fast=False):
        results = [function(task) for task in tasks]
        yield from results[::2] + results[1::2]

    early: list[int] = []
    store_chunk = zarr_store.SharedChunks._store

    def counted(self, chunk):
        early.extend([chunk] if self.pending.get(chunk) else [])
        store_chunk(self, chunk)

    from patchfold.datasets import build

    monkeypatch.setattr(build, "run_local", evens_then_odds)  # run_tasks, which both layouts share, calls it
    monkeypatch.setattr(zarr_store, "SHARED_BYTES", 1)
    monkeypatch.setattr(zarr_store.SharedChunks, "_store", counted)
    unfold(paths, tmp_path / "early.zarr")
    assert early, "some shared chunk should have been stored before all its images were in"
    assert snapshot(tmp_path / "early.zarr") == snapshot(store)


def test_zarr_and_dask_read_the_store_without_patchfold(both: tuple[list[Path], Path, Path]) -> None:
    _, shards, store = both
    manifest = json.loads((shards / "manifest.json").read_text())
    expected = np.concatenate([np.load(shards / shard["file"]) for shard in manifest["shards"]])
    np.save(store.parent / "expected.npy", expected)
    out = python(
        f"""
        import sys
        import numpy as np, zarr, dask.array as da
        group = zarr.open({str(store)!r}, mode="r")
        patches = da.from_zarr({str(store)!r}, component="patches")
        assert (patches.compute() == np.load({str(store.parent / "expected.npy")!r})).all()
        assert (group["patches"][...] == patches.compute()).all()
        print(sorted(group.array_keys()), group["index"].shape, group.attrs["patchfold"]["kernel_size"])
        print(da.from_zarr({str(store)!r}, component="index")[:, 0].max().compute())
        assert not [m for m in sys.modules if m.startswith("patchfold")]
        """
    )
    kernel = manifest["kernel_size"]
    assert out.split("\n")[:2] == [f"['done', 'index', 'patches'] ({len(expected)}, 5) {kernel}", "5"]


@pytest.mark.parametrize("compression", ZARR_COMPRESSIONS)
def test_every_compression_round_trips_through_the_command(tmp_path: Path, compression: str) -> None:
    paths = make_images(tmp_path / "in", 3)
    out = tmp_path / "ds.zarr"
    ok("batch", "unfold", *paths, "-k", "8", "-s", "4", "--channels", "3", "-o", out, "--compression", compression,
       "--workers", "1", "--no-progress")  # fmt: skip
    codecs = [codec.to_dict()["name"] for codec in zarr.open_array(str(out / "patches"), mode="r").compressors]
    assert (
        codecs == {"default": ["zstd"], "none": [], "zstd": ["zstd"], "blosc": ["blosc"], "gzip": ["gzip"]}[compression]
    )
    dataset = patchfold.load_dataset(out)
    assert dataset.manifest["compression"] == compression
    unfold(paths, tmp_path / "shards")
    np.testing.assert_array_equal(dataset[:], patchfold.load_dataset(tmp_path / "shards")[:])


def test_the_command_refuses_options_of_the_other_layout(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 1)
    common = ("batch", "unfold", paths[0], "-k", "8", "--no-progress")
    result = invoke(*common, "-o", tmp_path / "ds.zarr", "--shard-size", "1MB")
    assert result.exit_code == 2 and "'--shard-size'" in result.stderr and "is a .zarr store" in result.stderr, (
        describe(result)
    )
    result = invoke(*common, "-o", tmp_path / "ds", "--compression", "zstd")
    assert result.exit_code == 2 and "'--compression'" in result.stderr and "for a .zarr output" in result.stderr, (
        describe(result)
    )
    assert not (tmp_path / "ds.zarr").exists() and not (tmp_path / "ds").exists()
    with pytest.raises(patchfold.PatchfoldError, match=r"chunk_size is for a \.zarr store"):
        unfold(paths, tmp_path / "ds", chunk_size=100)


# ----- re-runs, stops and kills ---------------------------------------------------------------------------
def test_rerun_of_a_finished_store_changes_nothing(both: tuple[list[Path], Path, Path]) -> None:
    paths, _, store = both
    before = snapshot(store)
    times = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    result = unfold(paths, store)
    assert not result.failed and result.summary()["skipped"] == len(paths) and result.summary()["done"] == 0
    assert snapshot(store) == before and {p: p.stat().st_mtime_ns for p in store.rglob("*")} == times


def test_stopped_run_resumes_to_the_same_store(both: tuple[list[Path], Path, Path], tmp_path: Path) -> None:
    """Stopped after two images (as Ctrl-C stops it): what finished is kept, the rest is redone."""
    paths, _, fresh = both
    out = tmp_path / "ds.zarr"
    events = build.unfold_dataset([str(p) for p in paths], out, BLOCKS, workers=1, channels=3, chunk_size=SMALL_CHUNKS)
    stop_after(events, 2)
    assert not zarr.open_group(str(out), mode="r").attrs["patchfold"]["complete"]
    with pytest.raises(patchfold.PatchfoldError, match="incomplete"):
        patchfold.load_dataset(out)
    assert len(patchfold.load_dataset(out, allow_incomplete=True)) == len(patchfold.load_dataset(fresh))
    result = unfold(paths, out)
    assert result.summary()["skipped"] == 2 and result.summary()["done"] == len(paths) - 2
    assert snapshot(out) == snapshot(fresh)


def test_killed_run_keeps_only_whole_images_and_resumes(
    both: tuple[list[Path], Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As kill -9 leaves a store: chunks the workers stored, shared chunks never written, no manifest
    update. Images whose rows are not all stored are not recorded, and are redone."""
    paths, _, fresh = both
    out = tmp_path / "ds.zarr"
    monkeypatch.setattr(zarr_store.SharedChunks, "close", lambda self: None)  # nothing held is written
    monkeypatch.setattr(zarr_store, "finish_store", lambda plan, failures: None)
    events = build.unfold_dataset([str(p) for p in paths], out, BLOCKS, workers=1, channels=3, chunk_size=SMALL_CHUNKS)
    stop_after(events, 4)
    monkeypatch.undo()
    done = zarr.open_array(str(out / "done"), mode="r")[...]
    recorded = int(done.any(axis=1).sum())
    assert 0 < recorded < 4  # the last images' shared rows were still held
    result = unfold(paths, out)
    assert result.summary()["skipped"] == recorded and result.summary()["done"] == len(paths) - recorded
    assert snapshot(out) == snapshot(fresh)


def test_killed_command_resumes_and_ends_identical(tmp_path: Path) -> None:
    if not COMMAND.exists():
        pytest.skip("the patchfold command is not installed")
    paths = make_images(tmp_path / "in", 24, seed=1)
    for path in paths:  # larger images, so the run lasts long enough to be killed part-way
        Image.open(path).resize((360, 300)).convert("RGB").save(path)
    args = [str(COMMAND), "batch", "unfold", str(tmp_path / "in"), "-k", "8", "-s", "2", "--workers", "1"]
    args.append("--no-progress")
    killed, fresh = tmp_path / "killed.zarr", tmp_path / "fresh.zarr"
    kill_and_resume_command(args, killed, fresh, killed / "done" / "c", len(paths))
    assert snapshot(killed) == snapshot(fresh)


def test_changed_source_and_missing_chunk_are_redone(both: tuple[list[Path], Path, Path], tmp_path: Path) -> None:
    paths, _, fresh = both
    sources = sorted(Path(shutil.copytree(paths[0].parent, tmp_path / "in")).iterdir())
    out = tmp_path / "ds.zarr"
    unfold(sources, out)
    original = sources[1].read_bytes()
    Image.fromarray(np.asarray(Image.open(sources[1]))[::-1].copy()).save(sources[1])  # same size, other pixels
    result = unfold(sources, out)
    assert result.summary()["done"] == 1 and result.summary()["skipped"] == len(sources) - 1
    dataset = patchfold.load_dataset(out)
    flipped = patchfold.load_dataset(unfold(sources, tmp_path / "flipped.zarr").output)
    np.testing.assert_array_equal(dataset[:], flipped[:])
    sources[1].write_bytes(original)
    assert unfold(sources, out).summary()["done"] == 1
    reference = patchfold.load_dataset(fresh)
    np.testing.assert_array_equal(patchfold.load_dataset(out)[:], reference[:])
    (out / "patches" / "c" / "3" / "0").unlink()  # rows of one image or two
    result = unfold(sources, out)
    assert 1 <= result.summary()["done"] <= 2 and not result.failed
    np.testing.assert_array_equal(patchfold.load_dataset(out)[:], reference[:])


@pytest.mark.parametrize(
    "change",
    [{"blocks": Blocks(4, stride=4)}, {"compression": "gzip"}, {"chunk_size": 3000}, {"channels": 1}],
    ids=["kernel", "compression", "chunks", "channels"],
)
def test_other_parameters_are_refused_without_touching_anything(
    both: tuple[list[Path], Path, Path], change: dict[str, Any]
) -> None:
    paths, _, store = both
    before = snapshot(store)
    with pytest.raises(patchfold.PatchfoldError, match="holds a different dataset"):
        unfold(paths, store, **change)
    with pytest.raises(patchfold.PatchfoldError, match="holds a different dataset"):
        unfold(paths[:-1], store)  # not appended to: other images are another dataset, as for shards
    assert snapshot(store) == before


def test_a_store_that_is_no_dataset_is_never_replaced(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 2)
    other = tmp_path / "patches.zarr"
    ok("unfold", paths[0], "-k", "8", "-o", other, "--no-progress")
    before = snapshot(other)
    with pytest.raises(patchfold.PatchfoldError, match="holds no patchfold dataset"):
        unfold(paths, other)
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(patchfold.PatchfoldError, match="is a file"):
        unfold(paths, tmp_path / "file.zarr")
    assert snapshot(other) == before and (tmp_path / "file.zarr").read_text() == "x"
    with pytest.raises(patchfold.PatchfoldError, match="holds no patchfold dataset"):
        patchfold.load_dataset(other)


def test_failed_image_keeps_the_store_incomplete(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 4)
    paths[2].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = unfold(paths, tmp_path / "ds.zarr")
    assert len(result.failed) == 1
    manifest = zarr.open_group(str(tmp_path / "ds.zarr"), mode="r").attrs["patchfold"]
    assert not manifest["complete"] and "error" in manifest["images"][2]
    with pytest.raises(patchfold.PatchfoldError, match="incomplete"):
        patchfold.load_dataset(tmp_path / "ds.zarr")
    dataset = patchfold.load_dataset(tmp_path / "ds.zarr", allow_incomplete=True)
    assert set(np.unique(dataset.index[:, 0])) == {0, 1, 3}


def test_dask_cluster_writes_the_same_store(both: tuple[list[Path], Path, Path], tmp_path: Path) -> None:
    distributed = pytest.importorskip("dask.distributed")
    paths, _, store = both
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        result = unfold(paths, tmp_path / "dask.zarr", scheduler=cluster.scheduler_address)
    assert not result.failed and result.summary()["workers"].startswith("dask")
    assert snapshot(tmp_path / "dask.zarr") == snapshot(store)


# ----- reading: load_dataset on both layouts --------------------------------------------------------------
@pytest.mark.parametrize(
    "options", [{}, {"to_float": True}, {"with_position": True}, {"to_float": True, "with_position": True}]
)
def test_load_dataset_gives_equal_rows_on_both_layouts(
    both: tuple[list[Path], Path, Path], options: dict[str, bool]
) -> None:
    _, shards, store = both
    a, b = patchfold.load_dataset(shards, **options), patchfold.load_dataset(store, **options)
    assert len(a) == len(b) and a.patch_shape == b.patch_shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a.index[:, :-2], b.index[:, :-2])
    n = len(a)
    keys = [0, 7, n - 1, -1, slice(None), slice(3, 90, 7), slice(None, None, -1), [100, 0, -1, 26, 27, 26]]
    keys += [np.arange(n) % 3 == 0, []]
    for key in keys:
        for got, want in zip(*(x if isinstance(x, tuple) else (x,) for x in (b[key], a[key]))):
            np.testing.assert_array_equal(got, want)
    for image in range(len(a.manifest["images"])):
        np.testing.assert_array_equal(a.image_rows(image), b.image_rows(image))
    for got, want in zip(b, a):
        for x, y in zip(*(v if isinstance(v, tuple) else (v,) for v in (got, want))):
            np.testing.assert_array_equal(x, y)
    assert "ds.zarr" in repr(b)


def test_items_are_writable_copies_and_pickles_reopen(both: tuple[list[Path], Path, Path]) -> None:
    _, _, store = both
    dataset = patchfold.load_dataset(store)
    before = dataset[3].copy()
    for value in (dataset[3], dataset[2:5], dataset[[3, 60]], dataset.__getitems__([3, 4])[0], next(iter(dataset))):
        assert value.flags.writeable
        value[...] = 0
    np.testing.assert_array_equal(dataset[3], before)
    data = pickle.dumps(dataset)
    assert len(data) < 16 * 1024
    np.testing.assert_array_equal(pickle.loads(data)[[3, -1]], dataset[[3, -1]])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_every_row_once(both: tuple[list[Path], Path, Path], context: str) -> None:
    pytest.importorskip("torch")
    _, shards, store = both
    dataset = patchfold.load_dataset(store, with_position=True)
    reference = patchfold.load_dataset(shards)
    seen = []
    for patches, rows in dataloader_batches(dataset, context):
        for patch, i in zip(patches, rows):
            np.testing.assert_array_equal(patch.numpy(), reference[i])
        seen += rows
    assert sorted(seen) == list(range(len(dataset)))


def test_damaged_arrays_are_named(both: tuple[list[Path], Path, Path], tmp_path: Path) -> None:
    _, _, store = both
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    (copy / "patches" / "c" / "2" / "0").write_bytes(b"not zstd")
    dataset = patchfold.load_dataset(copy)
    with pytest.raises(patchfold.PatchfoldError, match=r"chunk 2 of dataset array '.*copy\.zarr/patches'"):
        dataset[2 * 26]
    shutil.rmtree(copy / "index")
    with pytest.raises(patchfold.PatchfoldError, match=r"dataset array '.*copy\.zarr/index' cannot be opened"):
        patchfold.load_dataset(copy)
