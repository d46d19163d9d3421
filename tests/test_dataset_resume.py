"""Datasets that re-running, killing, damage and changed sources cannot break (issue #13)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import patchfold
import pytest
from dataset_helpers import snapshot, stop_after
from patchfold import Blocks
from patchfold.datasets import build
from PIL import Image

BLOCKS = Blocks(8, stride=4)


def make_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = directory / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + 4 * i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run(paths: list[Path], out: Path, blocks: Blocks = BLOCKS) -> list:
    """One run of the dataset job (as ``batch unfold`` makes it), returning its events."""
    return list(build.unfold_dataset([str(p) for p in paths], out, blocks, workers=1, shard_size=2000))


def outcome(events: list) -> build.DatasetResult:
    result = events[-1]
    assert isinstance(result, build.DatasetResult)
    return result


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[list[Path], Path]:
    paths = make_images(tmp_path / "in", 4)
    out = tmp_path / "ds"
    assert not outcome(run(paths, out)).failed
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) > 1
    return paths, out


def test_rerun_of_a_finished_dataset_changes_no_byte(dataset: tuple[list[Path], Path]) -> None:
    paths, out = dataset
    before = snapshot(out)
    for _ in range(2):
        result = outcome(run(paths, out))
        assert not result.failed and result.summary()["skipped"] == len(paths)
        assert snapshot(out) == before
    assert len(patchfold.load_dataset(out)) == result.extra["patches"]


@pytest.mark.parametrize("damage", ["truncate", "delete", "header_byte", "grow"])
def test_damaged_shard_is_rebuilt_and_never_counted_as_done(dataset: tuple[list[Path], Path], damage: str) -> None:
    paths, out = dataset
    before = snapshot(out)
    shard = out / "shard-00001.npy"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        shard.unlink()
    elif damage == "header_byte":
        shard.write_bytes(data[:20] + b"!" + data[21:])
    else:
        shard.write_bytes(data + b"\0" * 64)
    with pytest.raises(patchfold.PatchfoldError, match="shard-00001"):
        patchfold.load_dataset(out)[0]  # the reader names the damaged file
    result = outcome(run(paths, out))
    assert not result.failed and 0 < result.summary()["done"] < len(paths)  # only that shard's images
    assert snapshot(out) == before


def test_changed_source_of_the_same_size_is_redone(dataset: tuple[list[Path], Path], tmp_path: Path) -> None:
    paths, out = dataset
    other = np.asarray(Image.open(paths[1]))[::-1].copy()  # same size, other pixels
    Image.fromarray(other).save(paths[1])
    result = outcome(run(paths, out))
    assert result.summary()["done"] == 1 and result.summary()["skipped"] == len(paths) - 1
    fresh = tmp_path / "fresh"
    run(paths, fresh)
    assert snapshot(out) == snapshot(fresh)


def test_other_parameters_are_refused_without_touching_anything(dataset: tuple[list[Path], Path]) -> None:
    paths, out = dataset
    before = snapshot(out)
    with pytest.raises(patchfold.PatchfoldError, match="different dataset"):
        run(paths, out, Blocks(4, stride=4))
    assert snapshot(out) == before


def test_killed_run_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    """A run stopped after two images (as kill -9 leaves it: markers for those, no final manifest)."""
    paths = make_images(tmp_path / "in", 4)
    events = build.unfold_dataset([str(p) for p in paths], tmp_path / "ds", BLOCKS, workers=1, shard_size=2000)
    stop_after(events, 2)  # what an interrupted run records: incomplete
    assert not json.loads((tmp_path / "ds" / "manifest.json").read_text())["complete"]
    result = outcome(run(paths, tmp_path / "ds"))
    assert result.summary()["skipped"] == 2 and result.summary()["done"] == 2
    run(paths, tmp_path / "fresh")
    assert snapshot(tmp_path / "ds") == snapshot(tmp_path / "fresh")


def test_setup_failing_on_a_full_disk_leaves_nothing_and_a_retry_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_images(tmp_path / "in", 3)
    real = build.save_npy

    def disk_full(*args, **kwargs):
        raise patchfold.PatchfoldError("cannot write 'index.npy': No space left on device")

    monkeypatch.setattr(build, "save_npy", disk_full)
    with pytest.raises(patchfold.PatchfoldError, match="No space left"):
        run(paths, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    monkeypatch.setattr(build, "save_npy", real)
    assert not outcome(run(paths, tmp_path / "ds")).failed


def test_image_failing_at_the_header_keeps_the_dataset_incomplete(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 3)
    paths[1].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = outcome(run(paths, tmp_path / "ds"))
    assert len(result.failed) == 1
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert not manifest["complete"] and "error" in manifest["images"][1]
    with pytest.raises(patchfold.PatchfoldError, match="incomplete"):
        patchfold.load_dataset(tmp_path / "ds")


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(images=[1]),
        lambda m: m.update(shards=[{"file": "../outside.npy", "rows": 3}]),
        lambda m: m.update(kernel_size="8"),
        lambda m: m.update(channels=True),
        lambda m: m.update(index_columns="image"),
        lambda m: m.pop("dtype"),
    ],
)
def test_load_dataset_validates_the_manifest(dataset: tuple[list[Path], Path], edit) -> None:
    _, out = dataset
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(patchfold.PatchfoldError, match="manifest"):
        patchfold.load_dataset(out)


def test_load_dataset_refuses_a_corrupt_manifest_and_index(dataset: tuple[list[Path], Path]) -> None:
    _, out = dataset
    index = out / "index.npy"
    index.write_bytes(index.read_bytes()[:-8])
    with pytest.raises(patchfold.PatchfoldError, match=r"index\.npy"):
        patchfold.load_dataset(out)
    (out / "manifest.json").write_bytes(b"[" * 100000)
    with pytest.raises(patchfold.PatchfoldError, match="manifest"):
        patchfold.load_dataset(out)
    os.remove(out / "manifest.json")
    with pytest.raises(patchfold.PatchfoldError, match="not a patchfold dataset"):
        patchfold.load_dataset(out)
