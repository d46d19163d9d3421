"""Tiles written one file per patch, read back, and folded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import patchfold
import pytest
from patchfold.geometry import Geometry
from patchfold.jobs.tiles import TileSet, read_tiles, tile_name, write_tiles
from PIL import Image


def collect(events) -> TileSet:
    *_, last = events
    return last


@pytest.mark.parametrize("fmt", ["png", "tif", "npy"])
def test_tiles_round_trip_exactly(tmp_path: Path, fmt: str) -> None:
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 20, 26), dtype=np.uint8)
    geometry = Geometry.create((20, 26), (8, 6), stride=(6, 4), padding=(1, 0))
    list(write_tiles(x, geometry, tmp_path / "t", ["a.png", "b.png"], fmt))
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert len(manifest["tiles"]) == 2 * geometry.num_blocks
    first = manifest["tiles"][0]
    assert first["file"] == f"a_r000_c000.{fmt}" and first["start"] == [-1, 0] and first["stop"] == [7, 6]
    files = {p.name for p in (tmp_path / "t").iterdir()} - {"manifest.json", "manifest.csv"}
    assert files == {t["file"] for t in manifest["tiles"]}
    with open(tmp_path / "t" / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1] == {
        "file": f"a_r000_c001.{fmt}",
        "image": "0",
        "row": "0",
        "col": "1",
        "y0": "-1",
        "x0": "4",
        "y1": "7",
        "x1": "10",
    }
    tileset = collect(read_tiles(tmp_path / "t"))
    np.testing.assert_array_equal(tileset.cols, patchfold.unfold(x, (8, 6), 1, (1, 0), (6, 4)))


def test_tile_contents_are_direct_slices(tmp_path: Path) -> None:
    x = np.arange(3 * 12 * 14, dtype=np.uint8).reshape(1, 3, 12, 14)
    list(write_tiles(x, Geometry.create((12, 14), 4, stride=3), tmp_path / "t", ["img.png"], "png"))
    tile = np.asarray(Image.open(tmp_path / "t" / "img_r002_c001.png"))
    np.testing.assert_array_equal(tile, np.moveaxis(x[0, :, 6:10, 3:7], 0, -1))


def test_tile_names_by_rank() -> None:
    assert tile_name("s", (12,), "npy") == "s_c012.npy"
    assert tile_name("v", (1, 2, 3), "npy") == "v_z001_r002_c003.npy"


def test_processed_tiles_blend_back(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, (1, 1, 30, 30), dtype=np.uint8)
    list(write_tiles(x, Geometry.create((30, 30), 10, stride=5), tmp_path / "t", ["g.png"], "png"))
    for path in (tmp_path / "t").glob("*.png"):  # "any other program": invert every tile
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    tileset = collect(read_tiles(tmp_path / "t"))
    back = patchfold.fold(tileset.cols, (30, 30), 10, stride=5, normalize=True, window="hann")
    np.testing.assert_array_equal(back, 255 - x)


def test_tiles_refuse_non_empty_directory_and_bad_format(tmp_path: Path) -> None:
    x = np.zeros((1, 3, 8, 8), dtype=np.float64)
    geometry = Geometry.create((8, 8), 4, stride=4)
    with pytest.raises(patchfold.PatchfoldError, match="cannot be written as png"):
        list(write_tiles(x, geometry, tmp_path / "t", ["x.npy"], "png"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(patchfold.PatchfoldError, match="not empty"):
        list(write_tiles(x, geometry, tmp_path / "full", ["x.npy"], "npy"))
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_read_tiles_errors(tmp_path: Path) -> None:
    x = np.zeros((1, 1, 8, 8), dtype=np.uint8)
    list(write_tiles(x, Geometry.create((8, 8), 4, stride=4), tmp_path / "t", ["x.png"], "png"))
    (tmp_path / "t" / "x_r001_c001.png").unlink()
    with pytest.raises(patchfold.PatchfoldError, match="missing"):
        collect(read_tiles(tmp_path / "t"))
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "t" / "x_r001_c001.png")
    with pytest.raises(patchfold.PatchfoldError, match=r"shape \[1, 3, 4\]; expected \[1, 4, 4\]"):
        collect(read_tiles(tmp_path / "t"))
    with pytest.raises(patchfold.PatchfoldError, match=r"no manifest\.json"):
        collect(read_tiles(tmp_path))


def test_manifest_paths_never_leave_the_directory(tmp_path: Path) -> None:
    x = np.zeros((1, 1, 4, 4), dtype=np.uint8)
    list(write_tiles(x, Geometry.create((4, 4), 4), tmp_path / "t", ["x.png"], "png"))
    outside = tmp_path / "secret.png"
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(outside)
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    manifest["tiles"][0]["file"] = "../secret.png"
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "t" / "x_r000_c000.png").unlink()
    with pytest.raises(patchfold.PatchfoldError, match="not a file name inside"):
        collect(read_tiles(tmp_path / "t"))
