"""``fold -o x.zarr`` and ``apply -o x.zarr`` (issue #17, "Zarr in and out"): the images as one Zarr v3
array, equal to the ``.npy`` and image outputs of the same run, read by zarr and dask alike, written
into a temporary store that replaces the target only when complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import assert_runtime_error, describe, invoke, ok, pixels, sample
from patchfold.io import zarr_out
from patchfold.io.zarr_out import ZARR_COMPRESSIONS, ZarrImages
from patchfold.jobs.fold import fold_file

zarr = pytest.importorskip("zarr")
dask_array = pytest.importorskip("dask.array")

RNG = np.random.default_rng(23)
RGB = sample("rgb")


def identity(patches: np.ndarray) -> np.ndarray:
    return patches


def channel_means(patches: np.ndarray) -> np.ndarray:
    """One vector per patch: the block grid of channel means."""
    return patches.reshape(len(patches), patches.shape[1], -1).mean(axis=-1)


class FailsLater:
    """Identity for a few calls, then an error: a model that breaks once rows have been stored."""

    calls = 0

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > 12:
            raise ValueError("this model is broken")
        return patches


fails_later = FailsLater()


def read_both(store: Path) -> np.ndarray:
    """The store's array as zarr reads it, checked against dask's reading of it."""
    opened = zarr.open(str(store), mode="r")
    values = opened[...]
    np.testing.assert_array_equal(dask_array.from_zarr(str(store)).compute(), values)
    return values


def leftovers(directory: Path) -> list[str]:
    """Temporary stores and files a run left beside its output (``.name.PID-xxx.part``/``.bak``)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def spy_on_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """``(item, first row, rows)`` of every band a :class:`ZarrImages` stores from now on."""
    stored: list[tuple[int, int, int]] = []
    write = ZarrImages.write

    def spy(self: ZarrImages, values: np.ndarray, top: int, item: int = 0) -> None:
        stored.append((item, top, values.shape[2]))
        write(self, values, top, item)

    monkeypatch.setattr(ZarrImages, "write", spy)
    return stored


def unfolded(tmp_path: Path, kind: str, count: int, *options: str) -> Path:
    """RGB unfolded into a ``.npy`` or ``.zarr`` patch matrix of ``count`` items."""
    out = tmp_path / f"patches.{kind}"
    ok("unfold", *[RGB] * count, "-k", "16", "-s", "8", *options, "-o", out)
    return out


# ----- fold -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "zarr"])
@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("memory", [None, "1MB"], ids=["whole", "streamed"])
def test_fold_to_zarr_equals_the_npy_fold(tmp_path: Path, kind: str, count: int, memory: str | None) -> None:
    patches = unfolded(tmp_path, kind, count)
    budget = ["--max-memory", memory] if memory else []
    ok("fold", patches, *budget, "-o", tmp_path / "back.npy")
    result = ok("fold", patches, *budget, "-o", tmp_path / "back.zarr", "--json")
    expected = np.load(tmp_path / "back.npy")
    values = read_both(tmp_path / "back.zarr")
    assert values.dtype == np.uint8  # integer pixels restored, as every fold output is
    np.testing.assert_array_equal(values, expected[0] if count == 1 else expected)
    opened = zarr.open(str(tmp_path / "back.zarr"), mode="r")
    assert opened.metadata.dimension_names == (("c", "y", "x") if count == 1 else ("i", "c", "y", "x"))
    item_chunk = opened.chunks if count == 1 else opened.chunks[1:]
    assert opened.chunks[: 2 - (count == 1)] == ((3,) if count == 1 else (1, 3)) and item_chunk[-1] == 320
    made = opened.attrs["patchfold"]
    assert made["format"] == "patchfold-image" and made["made_by"] == "fold"
    assert made["kernel_size"] == [16, 16] and made["stride"] == [8, 8] and made["output_size"] == [240, 320]
    assert leftovers(tmp_path) == []
    bands = json.loads(result.stdout)["bands"]
    if memory:  # streamed: one chunk of rows per band, so each chunk is written once
        assert 1 < item_chunk[1] < 240 and bands == -(-240 // item_chunk[1])
    else:
        assert bands == 1 and item_chunk[1] == 240


def test_fold_to_zarr_equals_the_png_fold(tmp_path: Path) -> None:
    patches = unfolded(tmp_path, "npy", 1)
    ok("fold", patches, "-o", tmp_path / "back.png")
    ok("fold", patches, "--window", "hann", "-o", tmp_path / "back.zarr")
    np.testing.assert_array_equal(np.moveaxis(read_both(tmp_path / "back.zarr"), 0, -1), pixels(RGB))
    np.testing.assert_array_equal(pixels(tmp_path / "back.png"), pixels(RGB))


@pytest.mark.parametrize("extra", [["--no-normalize"], ["--engine", "torch"], ["--window", "hann", "--no-normalize"]])
def test_sums_and_the_torch_engine_equal_the_npy_fold(tmp_path: Path, extra: list[str]) -> None:
    patches = unfolded(tmp_path, "npy", 2, "--dtype", "float32")
    ok("fold", patches, *extra, "-o", tmp_path / "back.npy")
    ok("fold", patches, *extra, "-o", tmp_path / "back.zarr")
    expected = np.load(tmp_path / "back.npy")
    values = read_both(tmp_path / "back.zarr")
    assert values.dtype == expected.dtype
    np.testing.assert_array_equal(values, expected)


def test_a_folded_volume_names_its_axes_and_unfolds_again(tmp_path: Path) -> None:
    volume = RNG.random((2, 10, 8, 12)).astype(np.float32)  # (C, D, H, W), covered by the blocks
    np.save(tmp_path / "volume.npy", volume)
    ok("unfold", tmp_path / "volume.npy", "--spatial-dims", "3", "-k", "4", "-s", "2", "-o", tmp_path / "p.npy")
    ok("fold", tmp_path / "p.npy", "-o", tmp_path / "v.zarr", "--max-memory", "20KB")
    np.testing.assert_array_equal(read_both(tmp_path / "v.zarr"), volume)
    assert zarr.open(str(tmp_path / "v.zarr"), mode="r").metadata.dimension_names == ("c", "z", "y", "x")
    ok("unfold", tmp_path / "v.zarr", "-k", "4", "-s", "2", "-o", tmp_path / "again.npy")  # axes from the store
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), np.load(tmp_path / "p.npy"))


# ----- apply ----------------------------------------------------------------------------------------


def test_apply_identity_to_zarr_equals_the_input(tmp_path: Path) -> None:
    images = RNG.random((2, 3, 37, 29)).astype(np.float32)
    np.save(tmp_path / "in.npy", images)
    ok("apply", tmp_path / "in.npy", "--function", "test_zarr_out:identity", "-k", 8, "-s", 5, "--cover",
       "--margin", 1, "--window", "hann", "-o", tmp_path / "out.zarr")  # fmt: skip
    np.testing.assert_array_equal(read_both(tmp_path / "out.zarr"), images)
    opened = zarr.open(str(tmp_path / "out.zarr"), mode="r")
    assert opened.metadata.dimension_names == ("i", "c", "y", "x") and opened.chunks[:2] == (1, 3)
    made = opened.attrs["patchfold"]
    assert made["made_by"] == "apply" and made["function"] == "function test_zarr_out:identity"
    assert made["kernel_size"] == [8] and made["cover"] is True and made["dtype"] == "float32"


@pytest.mark.parametrize(
    "extra",
    [[], ["--reduce", "argmax"], ["--reduce", "max"], ["--dtype", "float64"]],
    ids=["plain", "argmax", "max", "float64"],
)
def test_apply_to_zarr_equals_the_npy_apply(tmp_path: Path, extra: list[str]) -> None:
    args = ["apply", RGB, "--function", "test_zarr_out:identity", "-k", 32, "-s", 24, "--cover", *extra]
    ok(*args, "-o", tmp_path / "out.npy")
    ok(*args, "-o", tmp_path / "out.zarr")
    expected = np.load(tmp_path / "out.npy")[0]
    values = read_both(tmp_path / "out.zarr")
    assert values.dtype == expected.dtype  # --dtype's floats; argmax labels in the smallest uint
    np.testing.assert_array_equal(values, expected)
    assert values.dtype == (np.uint8 if "argmax" in extra else np.float64 if "float64" in extra else np.float32)


def test_apply_block_grids_to_zarr(tmp_path: Path) -> None:
    args = ["apply", RGB, RGB, "--function", "test_zarr_out:channel_means", "-k", 16, "-s", 16]
    ok(*args, "-o", tmp_path / "grid.npy")
    ok(*args, "-o", tmp_path / "grid.zarr")
    np.testing.assert_array_equal(read_both(tmp_path / "grid.zarr"), np.load(tmp_path / "grid.npy"))
    assert read_both(tmp_path / "grid.zarr").shape == (2, 3, 15, 20)


def test_apply_rows_are_gathered_into_whole_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows arrive a few at a time; each chunk band is stored once, whole, in order."""
    monkeypatch.setattr(zarr_out, "ZARR_CHUNK_BYTES", 3 * 320 * 4 * 7)  # 7 rows of float32 RGB a chunk
    stored = spy_on_writes(monkeypatch)
    args = ["apply", RGB, RGB, "--function", "test_zarr_out:identity", "-k", 10, "-s", 6, "--cover", "--batch-size", 3]
    ok(*args, "-o", tmp_path / "out.zarr")
    monkeypatch.undo()
    ok(*args, "-o", tmp_path / "out.npy")
    np.testing.assert_array_equal(read_both(tmp_path / "out.zarr"), np.load(tmp_path / "out.npy"))
    assert zarr.open(str(tmp_path / "out.zarr"), mode="r").chunks == (1, 3, 7, 320)
    bands = [(item, top, min(7, 240 - top)) for item in range(2) for top in range(0, 240, 7)]
    assert stored == bands


# ----- compression ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ZARR_COMPRESSIONS)
def test_every_compression_round_trips(tmp_path: Path, compression: str) -> None:
    patches = unfolded(tmp_path, "npy", 1)
    ok("fold", patches, "--compression", compression, "-o", tmp_path / "back.zarr")
    np.testing.assert_array_equal(np.moveaxis(read_both(tmp_path / "back.zarr"), 0, -1), pixels(RGB))
    args = ["apply", RGB, "--function", "test_zarr_out:identity", "-k", 32, "-s", 32, "--cover"]
    ok(*args, "--compression", compression, "-o", tmp_path / "apply.zarr")
    ok(*args, "-o", tmp_path / "apply.npy")
    np.testing.assert_array_equal(read_both(tmp_path / "apply.zarr"), np.load(tmp_path / "apply.npy")[0])
    codecs = [type(c).__name__ for c in zarr.open(str(tmp_path / "back.zarr"), mode="r").compressors]
    named = {"default": ["ZstdCodec"], "none": [], "zstd": ["ZstdCodec"], "blosc": ["BloscCodec"]}
    assert codecs == named.get(compression, ["GzipCodec"])


@pytest.mark.parametrize("command", ["fold", "apply", "unfold"])
def test_compression_without_a_zarr_output_is_refused(tmp_path: Path, command: str) -> None:
    patches = unfolded(tmp_path, "npy", 1)
    args = {
        "fold": ["fold", patches],
        "apply": ["apply", RGB, "--function", "test_zarr_out:identity", "-k", 32],
        "unfold": ["unfold", RGB, "-k", 16],
    }[command]
    result = invoke(*args, "--compression", "zstd", "-o", tmp_path / "out.npy")
    assert result.exit_code == 2 and "'--compression'" in result.stderr and ".zarr" in result.stderr, describe(result)
    assert not (tmp_path / "out.npy").exists()


# ----- failures leave nothing behind -----------------------------------------------------------------


def test_a_bad_patch_matrix_leaves_the_old_store_and_no_temporary(tmp_path: Path) -> None:
    patches = unfolded(tmp_path, "npy", 1)
    ok("fold", patches, "-o", tmp_path / "back.zarr")
    before = read_both(tmp_path / "back.zarr")
    np.save(patches, np.zeros((1, 768, 1000), dtype=np.uint8))  # no longer what its sidecar describes
    assert_runtime_error(invoke("fold", patches, "-o", tmp_path / "back.zarr"), "patches.npy")
    assert_runtime_error(invoke("fold", patches, "-o", tmp_path / "new.zarr"), "patches.npy")
    np.testing.assert_array_equal(read_both(tmp_path / "back.zarr"), before)
    assert not (tmp_path / "new.zarr").exists() and leftovers(tmp_path) == []


def test_a_function_failing_midway_leaves_the_old_store_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["apply", RGB, "-k", 32, "-s", 32, "--batch-size", 4, "-o", tmp_path / "out.zarr"]
    ok(*args, "--function", "test_zarr_out:identity")
    before = read_both(tmp_path / "out.zarr")
    monkeypatch.setattr(zarr_out, "ZARR_CHUNK_BYTES", 3 * 320 * 4 * 16)  # 16 rows a chunk: rows stored early
    stored = spy_on_writes(monkeypatch)
    fails_later.calls = 0
    result = invoke(*args, "--function", "test_zarr_out:fails_later")
    assert stored, "the run failed before any rows were stored"
    assert result.exit_code == 1 and "this model is broken" in result.stderr, describe(result)
    np.testing.assert_array_equal(read_both(tmp_path / "out.zarr"), before)
    assert leftovers(tmp_path) == []


def test_an_interrupted_streamed_fold_leaves_the_old_store(tmp_path: Path) -> None:
    patches = unfolded(tmp_path, "npy", 2)
    ok("fold", patches, "-o", tmp_path / "back.zarr")
    before = read_both(tmp_path / "back.zarr")
    job = fold_file(patches, tmp_path / "back.zarr", max_memory=100_000)
    next(job)  # one band written into the temporary store
    assert len(leftovers(tmp_path)) == 1
    job.close()  # as Ctrl-C would
    np.testing.assert_array_equal(read_both(tmp_path / "back.zarr"), before)
    assert leftovers(tmp_path) == []


def test_outputs_that_are_not_stores_are_refused_before_any_work(tmp_path: Path) -> None:
    patches = unfolded(tmp_path, "npy", 2)
    (tmp_path / "file.zarr").write_text("mine")
    assert_runtime_error(invoke("fold", patches, "-o", tmp_path / "file.zarr"), "is a file")
    assert (tmp_path / "file.zarr").read_text() == "mine"
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "folder.zarr" / "notes.txt").write_text("mine")
    assert_runtime_error(invoke("fold", patches, "-o", tmp_path / "folder.zarr"), "not a Zarr store")
    assert (tmp_path / "folder.zarr" / "notes.txt").read_text() == "mine"
    result = invoke("fold", patches, "-o", tmp_path / "out_{i}.zarr")
    assert result.exit_code == 2 and "drop {i}" in result.stderr, describe(result)
    zarr_patches = unfolded(tmp_path, "zarr", 1)
    result = invoke("fold", zarr_patches, "-o", zarr_patches / "inside.zarr")
    assert result.exit_code == 2 and "overlaps the input" in result.stderr, describe(result)
    assert leftovers(tmp_path) == [] and sorted(p.name for p in zarr_patches.iterdir()) == ["c", "zarr.json"]
