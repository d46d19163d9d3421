"""Datasets at scale: sharding, local pool vs Dask, resume after a kill, reading back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import patchfold
import pytest
from cli_fixtures import COMMAND
from dataset_helpers import kill_and_resume_command
from patchfold.blocks import Blocks
from patchfold.datasets.build import DONE_DIR, DatasetPlan, plan_dataset, plan_tiles, run_dataset, run_tiles
from patchfold.io.read import read_input
from patchfold.io.sources import convert_channels
from PIL import Image


def make_images(folder: Path, count: int = 12, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        height, width = rng.integers(20, 70, 2)
        mode_gray = i % 5 == 4
        shape = (height, width) if mode_gray else (height, width, 3)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def plan(paths: list[Path], out: Path, shard_size: int = 40_000, **kwargs) -> DatasetPlan:
    return plan_dataset(paths, out, Blocks(8, stride=4), channels=3, shard_size=shard_size, **kwargs)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_mixed_bit_depths_share_the_manifest_scale(tmp_path: Path) -> None:
    """8- and 16-bit images into one float dataset: every image is cast to the common dtype and
    scaled by the one scale the manifest records, so value / scale gives back the pixels."""
    rng = np.random.default_rng(3)
    eight = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    sixteen = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    Image.fromarray(eight).save(tmp_path / "a.png")
    Image.fromarray(sixteen).save(tmp_path / "b.png")
    the_plan = plan_dataset(
        [tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "ds", Blocks(8, stride=8), dtype="float32"
    )
    assert all(r.ok for r in run_dataset(the_plan, workers=1))
    dataset = patchfold.load_dataset(tmp_path / "ds")
    scale = dataset.manifest["scale"]
    assert scale == 1 / 65535 and dataset.manifest["dtype"] == "float32"
    for image_id, pixels in enumerate((eight, sixteen)):
        rows = dataset.image_rows(image_id)
        got = np.stack([dataset[i].reshape(-1) for i in rows])
        expected = patchfold.unfold(
            pixels[None, None].astype(np.float32) * np.float32(scale), 8, stride=8, layout="nlc"
        )[0]
        np.testing.assert_array_equal(got, expected)


def test_dataset_matches_per_image_unfold(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in")
    the_plan = plan(paths, tmp_path / "ds")
    results = list(run_dataset(the_plan, workers=2))
    assert all(r.ok for r in results) and len(results) == len(paths)
    dataset = patchfold.load_dataset(tmp_path / "ds")
    manifest = dataset.manifest
    assert manifest["complete"] and len(manifest["shards"]) > 1
    assert all(s["rows"] * 192 <= 40_000 or s["rows"] == manifest["images"][0]["rows"] for s in manifest["shards"])
    assert not (tmp_path / "ds" / DONE_DIR).exists()
    for image in manifest["images"]:
        x = convert_channels(read_input(Path(image["source"])), 3, "")
        expected = patchfold.unfold(x, 8, stride=4, layout="nlc")[0]
        rows = dataset.image_rows(image["id"])
        got = np.stack([dataset[i].reshape(-1) for i in rows])
        np.testing.assert_array_equal(got, expected)
        blocks = dataset.index[rows, 1:3]
        assert blocks[0].tolist() == [0, 0] and blocks[-1].tolist() == [b - 1 for b in image["blocks_per_dim"]]
    assert len(dataset) == sum(image["rows"] for image in manifest["images"])


def test_channels_must_agree_without_conversion(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in")
    with pytest.raises(patchfold.PatchfoldError, match=r"differ in channel count \(1: 2 image\(s\), 3: 10"):
        plan_dataset(paths, tmp_path / "ds", Blocks(8, stride=4))


def test_failed_image_is_reported_and_others_finish(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 5)
    paths[2].write_bytes(b"not an image")
    the_plan = plan(paths, tmp_path / "ds")
    results = list(run_dataset(the_plan, workers=1))
    assert len(the_plan.failed) == 1 and "not an image" in the_plan.failed[0].error
    assert all(r.ok for r in results) and len(results) == 4
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    # an image that failed, even at the header stage, keeps the dataset incomplete
    assert not manifest["complete"] and "error" in manifest["images"][2]
    assert len(patchfold.load_dataset(tmp_path / "ds", allow_incomplete=True)) == the_plan.total_rows


def test_dataset_from_different_parameters_is_refused(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 3)
    list(run_dataset(plan(paths, tmp_path / "ds"), workers=1))
    other = plan_dataset(paths, tmp_path / "ds", Blocks(4, stride=4), channels=3)
    with pytest.raises(patchfold.PatchfoldError, match="different dataset"):
        list(run_dataset(other, workers=1))


def test_torch_dataset_feeds_a_dataloader(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    paths = make_images(tmp_path / "in", 4)
    list(run_dataset(plan(paths, tmp_path / "ds"), workers=1))
    patches = patchfold.load_dataset(tmp_path / "ds")

    class Patches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(patches)

        def __getitem__(self, i: int):
            return torch.from_numpy(patches[i].astype(np.float32) / 255), int(patches.index[i, 0])

    loader = torch.utils.data.DataLoader(Patches(), batch_size=16, shuffle=False)
    images, ids = next(iter(loader))
    assert images.shape == (16, 3, 8, 8) and ids.tolist() == [0] * min(16, patches.manifest["images"][0]["rows"]) + [
        1
    ] * max(0, 16 - patches.manifest["images"][0]["rows"])
    assert sum(len(b[0]) for b in loader) == len(patches)


def test_dask_cluster_gives_byte_identical_dataset(tmp_path: Path) -> None:
    distributed = pytest.importorskip("dask.distributed")
    paths = make_images(tmp_path / "in")
    list(run_dataset(plan(paths, tmp_path / "local"), workers=2))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        results = list(run_dataset(plan(paths, tmp_path / "dask"), scheduler=cluster.scheduler_address))
    assert all(r.ok for r in results)
    assert files(tmp_path / "local") == files(tmp_path / "dask")


def test_killed_run_resumes_and_ends_identical(tmp_path: Path) -> None:
    if not COMMAND.exists():
        pytest.skip("the patchfold command is not installed")
    paths = make_images(tmp_path / "in", 40, seed=1)
    for path in paths:  # larger images so the run lasts long enough to be killed mid-way
        Image.open(path).resize((400, 300)).convert("RGB").save(path)
    args = [
        str(COMMAND),
        "batch",
        "unfold",
        str(tmp_path / "in"),
        "-k",
        "8",
        "-s",
        "2",
        "--workers",
        "1",
        "--shard-size",
        "20MB",
        "--no-progress",
    ]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    kill_and_resume_command(args, killed, fresh, killed / DONE_DIR, len(paths))
    assert files(killed) == files(fresh)


def test_batch_tiles_writes_one_directory_per_image(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "in", 4)
    tasks = plan_tiles(paths, tmp_path / "t", Blocks(8, stride=8), "png", 3, 10**9)
    results = list(run_tiles(tasks, tmp_path / "t", workers=2))
    assert all(r.ok for r in results)
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["images"][0]["directory"] == "000000_img_000"
    again = list(run_tiles(tasks, tmp_path / "t", workers=1))
    assert all(r.skipped for r in again)
