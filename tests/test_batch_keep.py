"""``batch unfold`` with keep rules: only the blocks the rules keep become rows, the index lists
exactly those blocks, and their patches are the unfold's columns of those blocks (shards and
Zarr stores alike); the manifest records the rules and each image's choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import patchfold
import pytest
from patchfold.keep import KeepRules, select_blocks
from PIL import Image

from tests.cli_fixtures import ok


def tissue(seed: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8: a white slide with a few dark blobs of tissue."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    image = np.full((*size, 3), 245, np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(0, size[0]), rng.integers(0, size[1]), rng.integers(8, 20)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(40, 120, 3)
    return image


@pytest.mark.parametrize("store", ["dataset", "dataset.zarr"])
def test_only_the_kept_blocks_become_rows(tmp_path: Path, store: str) -> None:
    images = [tissue(i, size) for i, size in enumerate([(64, 80), (48, 96)])]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"s{i}.png")
    out = tmp_path / store
    args = ["-k", "16", "-s", "8", "--min-foreground", "0.3", "-o", out, "--workers", "2", "--no-progress"]
    if store.endswith(".zarr"):
        pytest.importorskip("zarr")
    ok("batch", "unfold", tmp_path / "s0.png", tmp_path / "s1.png", *args)
    dataset = patchfold.load_dataset(out)
    rules, rows, index_rows = KeepRules(min_foreground=0.3), [], []
    for image_id, image in enumerate(images):
        x = np.moveaxis(image, -1, 0)
        geometry = patchfold.Geometry.create(x.shape[1:], 16, stride=8)
        keep = select_blocks(x, geometry, rules).keep
        assert 0 < keep.sum() < keep.size  # the test images have both tissue and glass
        rows.append(patchfold.unfold(x[None], 16, stride=8, layout="nlc")[0][keep])
        positions = np.indices(geometry.blocks_per_dim).reshape(2, -1).T[keep]
        index_rows.append(np.column_stack([np.full(len(positions), image_id), positions]))
    expected = np.concatenate(rows)
    assert len(dataset) == len(expected)
    np.testing.assert_array_equal(np.stack([np.asarray(dataset[i]).reshape(-1) for i in range(len(dataset))]), expected)
    if store.endswith(".zarr"):
        import zarr

        group = zarr.open_group(str(out), mode="r")
        index, manifest = group["index"][...], dict(group.attrs)["patchfold"]
    else:
        index, manifest = np.load(out / "index.npy"), json.loads((out / "manifest.json").read_text())
    np.testing.assert_array_equal(index[:, :3], np.concatenate(index_rows))
    assert manifest["keep"]["min_foreground"] == 0.3 and manifest["keep"]["kept"] == len(expected)
    assert [image["keep"]["kept"] for image in manifest["images"]] == [len(r) for r in rows]
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    ok("batch", "unfold", tmp_path / "s0.png", tmp_path / "s1.png", *args)  # a re-run changes nothing
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
