"""``show grid`` and ``show divisor`` of large images (issue #17): drawn at every n-th pixel,
a region source (pyramid level, Zarr store, tiled TIFF) read band by band and never whole, its
pixels taken from a coarser level of its pyramid where there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from patchfold import render
from patchfold.blocks import Blocks
from patchfold.geometry import Geometry
from patchfold.io.sources import RegionSource, open_pyramid_tiff
from patchfold.jobs.pictures import picture_pixels

from tests.cli_fixtures import ok, pixels
from tests.test_sources import write_pyramid, write_zarr

tifffile = pytest.importorskip("tifffile")

RNG = np.random.default_rng(23)


def never_whole(self: RegionSource) -> np.ndarray:
    raise AssertionError(f"'{self.path}' was read whole")


def test_a_large_array_is_drawn_at_every_step_th_pixel() -> None:
    image = RNG.integers(0, 256, (1, 3, 301, 205), dtype=np.uint8)
    drawn, step = picture_pixels(image, most=80 * 52)
    assert step == 4
    np.testing.assert_array_equal(drawn, image[0, :, ::4, ::4])
    geometry = Geometry.create((301, 205), 40, stride=30, padding=6)
    picture = render.grid_picture(drawn, geometry, step=step)
    canvas = (-(-313 // 4), -(-217 // 4))  # the padded image at every 4th pixel
    assert picture.shape[:2] == (canvas[0] * (512 // canvas[0]), canvas[1] * (512 // canvas[0]))  # zoomed again
    beside = render.divisor_beside_image(drawn, geometry, step=step)
    assert beside.shape[1] > 2 * drawn.shape[2]


@pytest.mark.parametrize("command", ["grid", "divisor"])
@pytest.mark.parametrize("options", [["-k", "24", "-s", "20", "-p", "3"], ["-k", "24", "-s", "20", "--cover"]])
def test_a_tiled_level_is_drawn_band_by_band_as_its_pixels_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, options: list[str]
) -> None:
    image = RNG.integers(0, 256, (190, 150, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(32, 32), photometric="rgb")
    np.save(tmp_path / "same.npy", np.moveaxis(image, -1, 0)[None])
    monkeypatch.setattr(render, "PICTURE_PIXELS", 60 * 50)  # step 4
    monkeypatch.setattr(RegionSource, "load", never_whole)
    ok("show", command, tmp_path / "tiled.tif", *options, "-o", tmp_path / "region.png")
    ok("show", command, tmp_path / "same.npy", *options, "-o", tmp_path / "memory.png")
    np.testing.assert_array_equal(pixels(tmp_path / "region.png"), pixels(tmp_path / "memory.png"))


def test_a_pyramid_level_is_drawn_from_a_coarser_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = RNG.integers(0, 256, (256, 192, 3), dtype=np.uint8)
    write_pyramid(tmp_path / "slide.tif", image, levels=3)  # levels [::2**i, ::2**i]
    monkeypatch.setattr(RegionSource, "load", never_whole)
    read: list[int] = []
    rows = RegionSource.rows
    monkeypatch.setattr(RegionSource, "rows", lambda self, lo, hi: read.append(self.level) or rows(self, lo, hi))
    drawn, step = picture_pixels(open_pyramid_tiff(tmp_path / "slide.tif", 0), most=64 * 48)
    assert step == 4 and set(read) == {2}  # the smallest level with 64x48 pixels, none of level 0
    np.testing.assert_array_equal(drawn, np.moveaxis(image, -1, 0)[:, ::4, ::4])
    ok("show", "grid", tmp_path / "slide.tif", "--level", "0", "-k", "64", "-o", tmp_path / "grid.png")
    assert pixels(tmp_path / "grid.png").shape[0] == 256 * 2  # small enough to draw every pixel, zoomed


def test_a_zarr_store_is_drawn_without_reading_it_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = RNG.integers(0, 256, (3, 97, 83), dtype=np.uint8)
    write_zarr(tmp_path / "in.zarr", image)
    monkeypatch.setattr(render, "PICTURE_PIXELS", 40 * 30)
    monkeypatch.setattr(RegionSource, "load", never_whole)
    ok("show", "grid", tmp_path / "in.zarr", "-k", "16", "-o", tmp_path / "grid.png")
    np.save(tmp_path / "same.npy", image[None])
    ok("show", "grid", tmp_path / "same.npy", "-k", "16", "-o", tmp_path / "memory.png")
    np.testing.assert_array_equal(pixels(tmp_path / "grid.png"), pixels(tmp_path / "memory.png"))


def test_the_grid_outlines_fall_on_the_sampled_block_edges() -> None:
    geometry = Blocks(10, stride=10).at((40, 40))
    picture = render.grid_picture(np.zeros((1, 20, 20), np.uint8), geometry, step=2)
    zoom = picture.shape[0] // 20
    first = (picture == (0, 220, 255)).all(axis=-1)  # block (0, 0): pixels 0..9, drawn 0..4
    assert first[0, : 5 * zoom].all() and not first[0, 5 * zoom :].any()


def test_a_volume_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.cli_fixtures import assert_runtime_error, invoke

    write_zarr(tmp_path / "v.zarr", RNG.integers(0, 9, (1, 1, 6, 20, 20), dtype=np.uint8), chunks=(1, 1, 2, 8, 8))
    monkeypatch.setattr(RegionSource, "load", never_whole)
    monkeypatch.setattr(RegionSource, "rows", never_whole)
    for command in ("grid", "divisor"):
        result = invoke("show", command, tmp_path / "v.zarr", "-k", "4", "-o", tmp_path / "v.png")
        assert_runtime_error(result, "3-D image; pictures are drawn of 2-D images only")
        assert not (tmp_path / "v.png").exists()
