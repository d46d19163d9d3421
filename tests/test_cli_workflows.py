"""Command-line workflows beyond unfold/fold: tiles → untile, show pictures, batch, stats streaming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import patchfold
import pytest
from cli_fixtures import SAMPLES, assert_runtime_error, invoke, ok, ok_json, pixels
from PIL import Image


def test_tiles_then_untile_gives_the_image_back(tmp_path: Path) -> None:
    image = SAMPLES / "scene_rgb.png"
    summary = ok_json("tiles", image, "-k", "40", "-s", "20", "-o", tmp_path / "t")
    assert summary["tiles"] == 11 * 15 and summary["tile_shape"] == [3, 40, 40]
    assert (tmp_path / "t" / "scene_rgb_r010_c014.png").exists()
    for window in ("none", "hann", "gaussian:0.2"):
        ok("untile", tmp_path / "t", "--window", window, "-o", tmp_path / f"back_{window}.png")
        np.testing.assert_array_equal(pixels(tmp_path / f"back_{window}.png"), pixels(image))


def test_untile_of_processed_tiles(tmp_path: Path) -> None:
    ok("tiles", SAMPLES / "scene_gray.png", "-k", "16", "-s", "8", "--format", "npy", "-o", tmp_path / "t")
    for path in (tmp_path / "t").glob("*.npy"):
        np.save(path, np.load(path) // 2)
    ok("untile", tmp_path / "t", "-o", tmp_path / "half.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "half.npy")[0, 0], pixels(SAMPLES / "scene_gray.png") // 2)


@pytest.mark.parametrize("kind", ["grid", "divisor"])
def test_show_pictures(tmp_path: Path, kind: str) -> None:
    ok("show", kind, SAMPLES / "scene_rgb.png", "-k", "40", "-s", "20", "-p", "4", "-o", tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as picture:
        assert picture.mode == "RGB" and picture.width >= 320


def test_show_mosaic(tmp_path: Path) -> None:
    ok("unfold", SAMPLES / "badge_rgba.png", "-k", "16", "-s", "16", "-o", tmp_path / "p.npy")
    ok("show", "mosaic", tmp_path / "p.npy", "--count", "9", "-o", tmp_path / "m.png")
    sheet = pixels(tmp_path / "m.png")
    zoom = sheet.shape[0] // (3 * 17 + 1)
    first = sheet[zoom : zoom * 17 : zoom, zoom : zoom * 17 : zoom]
    np.testing.assert_array_equal(first, pixels(SAMPLES / "badge_rgba.png")[:16, :16, :3])


def test_stats_reports_streaming(tmp_path: Path) -> None:
    result = ok("stats", "--size", "4096,4096", "--channels", "3", "-k", "32", "-s", "4", "--max-memory", "100MB")
    assert "unfold would stream" in result.stderr and "yes:" in result.stderr
    result = ok("stats", "--size", "64,64", "-k", "8", "--max-memory", "100MB")
    assert "no: the whole output fits" in result.stderr


def test_batch_unfold_and_load(tmp_path: Path) -> None:
    images = [SAMPLES / "scene_rgb.png", SAMPLES / "scene_gray.png", SAMPLES / "badge_rgba.png"]
    summary = ok_json(
        "batch", "unfold", *images, "-k", "16", "-s", "16", "--channels", "3", "--workers", "1", "-o", tmp_path / "ds"
    )
    assert summary["done"] == 3 and summary["failed"] == 0
    dataset = patchfold.load_dataset(tmp_path / "ds")
    assert len(dataset) == summary["patches"] == 15 * 20 + 7 * 10 + 8 * 8
    np.testing.assert_array_equal(dataset[0], np.moveaxis(pixels(images[0])[:16, :16], -1, 0))
    again = ok_json("batch", "unfold", *images, "-k", "16", "-s", "16", "--channels", "3", "-o", tmp_path / "ds")
    assert again["skipped"] == 3 and again["done"] == 0


def test_batch_unfold_reports_failures_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = invoke("batch", "unfold", SAMPLES / "scene_gray.png", bad, "-k", "8", "-o", tmp_path / "ds", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["failed"] == 1 and str(bad) in summary["errors"]
    assert result.stderr.strip().splitlines()[-1].startswith("Error: 1 of 2 image(s) failed")


def test_batch_needs_channels_to_agree(tmp_path: Path) -> None:
    result = invoke(
        "batch", "unfold", SAMPLES / "scene_gray.png", SAMPLES / "scene_rgb.png", "-k", "8", "-o", tmp_path / "ds"
    )
    assert_runtime_error(result, "--channels")
    assert not (tmp_path / "ds").exists()
