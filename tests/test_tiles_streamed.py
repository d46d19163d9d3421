"""Tiles of a region source (a pyramid level, a Zarr store, a tiled TIFF) read band by band of
block rows, never whole (issue #17): the same directory as the image read whole, keep counts equal
to ``block_counts`` on the whole image, thresholds from a subsample read without loading the
level (of a coarser level on a pyramid), and tile names that carry the level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import patchfold
import pytest
import tifffile
import zarr
from cli_fixtures import ok_json
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from patchfold.blocks import Blocks
from patchfold.geometry import Geometry
from patchfold.io.read import open_region
from patchfold.io.sources import RegionSource
from patchfold.jobs import tile_rows
from patchfold.jobs.tiles import tiles_file, write_tiles
from patchfold.keep import (
    KeepRules,
    Threshold,
    block_counts,
    find_threshold,
    foreground_mask,
    grey_levels,
    select_blocks,
    subsample,
)

PROPERTY = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def tissue(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(3, H, W)`` uint8: dark noisy blobs on light noisy glass."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    blob = np.zeros((height, width), bool)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.1, 0.3) * min(height, width)
        blob |= (y - cy) ** 2 + (x - cx) ** 2 < r * r
    glass = rng.integers(215, 256, (3, height, width))
    cells = rng.integers(60, 200, (3, height, width))
    return np.where(blob, cells, glass).astype(np.uint8)


def tiled_tiff(path: Path, image: np.ndarray, tile: int = 16) -> Path:
    """A one-level tiled RGB TIFF of ``image`` ``(3, H, W)``."""
    tifffile.imwrite(path, np.ascontiguousarray(np.moveaxis(image, 0, -1)), tile=(tile, tile), photometric="rgb")
    return path


def pyramid(path: Path, image: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    """A tiled pyramidal RGB TIFF (SubIFDs, 0.25 µm pixels at level 0); its levels ``(3, h, w)``."""
    steps = [np.ascontiguousarray(np.moveaxis(image, 0, -1)[:: 2**i, :: 2**i]) for i in range(levels)]
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            steps[0], tile=(16, 16), subifds=levels - 1, photometric="rgb", resolution=(4e4, 4e4), resolutionunit=3
        )
        for step in steps[1:]:
            tif.write(step, tile=(16, 16), subfiletype=1, photometric="rgb")
    return [np.moveaxis(s, -1, 0) for s in steps]


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record every ``RegionSource.rows(lo, hi)`` read, and fail any ``load`` of a whole source."""
    reads: list[tuple[int, int]] = []
    rows = RegionSource.rows

    def recorded(self: RegionSource, lo: int, hi: int) -> np.ndarray:
        reads.append((lo, hi))
        return rows(self, lo, hi)

    def refused(self: RegionSource) -> np.ndarray:
        raise AssertionError("a streamed job loaded the whole source")

    monkeypatch.setattr(RegionSource, "rows", recorded)
    monkeypatch.setattr(RegionSource, "load", refused)
    return reads


GEOMETRIES = [
    {"kernel_size": 16, "stride": 16},
    {"kernel_size": (12, 10), "stride": (7, 9), "padding": (3, 2)},
    {"kernel_size": (12, 10), "stride": (7, 9), "padding": (5, 4), "padding_mode": "reflect"},
    {"kernel_size": 9, "stride": 8, "padding": 4, "padding_mode": "replicate"},
    {"kernel_size": 9, "stride": 11, "padding": 6, "padding_mode": "circular"},
    {"kernel_size": 5, "stride": 6, "padding": 2, "dilation": 3},
    {"kernel_size": 20, "stride": 14, "cover": True},
    {"kernel_size": (80, 24), "stride": 10, "cover": True},  # taller than the image: cover pads dim 0
]


@pytest.mark.parametrize("blocks", GEOMETRIES, ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items()))
@pytest.mark.parametrize("rules", [None, {"min_foreground": 0.3}, {"max_blank": 0.6, "background": 250}])
def test_a_streamed_tiled_tiff_gives_the_directory_it_gives_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocks: dict, rules: dict | None
) -> None:
    image = tissue(70, 90)
    source = open_region(tiled_tiff(tmp_path / "slide.tif", image), 0)
    geometry = Blocks(**blocks).at(source.shape[2:])
    keep = KeepRules(**rules) if rules is not None else None
    whole = source.load()
    np.testing.assert_array_equal(whole[0], image)
    list(write_tiles(whole, geometry, tmp_path / "whole", [source.path], "png", keep, level=0))
    monkeypatch.setattr(tile_rows, "BAND_BYTES", 3 * 90 * 3 * 14)  # bands of a few block rows
    reads = counting_reads(monkeypatch)
    list(write_tiles(source, geometry, tmp_path / "streamed", [source.path], "png", keep, level=0))
    assert contents(tmp_path / "streamed") == contents(tmp_path / "whole")
    bands = tile_rows.row_bands(geometry, 3 * geometry.padded_size[1], tile_rows.BAND_BYTES)
    tallest = max(geometry.band_extent(*band)[1] for band in bands)
    assert len(bands) > 1 or geometry.span[0] >= 70
    band_reads = reads[1:] if keep is not None else reads  # with rules, the threshold's sample first
    assert len(band_reads) >= len(bands) and max(hi - lo for lo, hi in band_reads) <= min(70, tallest)
    manifest = json.loads((tmp_path / "streamed" / "manifest.json").read_text())
    assert all(tile["file"].startswith("slide_L0_r") for tile in manifest["tiles"])
    if keep is not None:
        assert len(manifest["tiles"]) == select_blocks(image, geometry, keep).kept > 0


@pytest.mark.parametrize("fmt", ["png", "tif", "npy"])
def test_tiles_of_a_tiled_tiff_stream_and_match_the_same_pixels_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    image = tissue(64, 80, seed=3)
    (tmp_path / "tiled").mkdir()
    (tmp_path / "strips").mkdir()
    tiled_tiff(tmp_path / "tiled" / "scan.tif", image)
    tifffile.imwrite(tmp_path / "strips" / "scan.tif", np.moveaxis(image, 0, -1), photometric="rgb")
    blocks, keep = Blocks(24, stride=20, padding=4, padding_mode="reflect"), KeepRules(min_foreground=0.2)
    monkeypatch.chdir(tmp_path / "strips")  # the same relative source name in both manifests
    *_, whole = tiles_file(["scan.tif"], "out", blocks, tile_format=fmt, keep=keep)
    monkeypatch.chdir(tmp_path / "tiled")
    reads = counting_reads(monkeypatch)
    *_, streamed = tiles_file(["scan.tif"], "out", blocks, tile_format=fmt, keep=keep)
    assert reads and contents(tmp_path / "tiled" / "out") == contents(tmp_path / "strips" / "out")
    assert streamed.summary()["keep"] == whole.summary()["keep"] and streamed.source_level is None
    assert (tmp_path / "tiled" / "out" / f"scan_r000_c000.{fmt}").exists() or whole.keep["kept"] < 16


# ----- keep rules band by band --------------------------------------------------------------------------


@st.composite
def image_and_geometry(draw: st.DrawFn) -> tuple[np.ndarray, Geometry, Threshold, int]:
    ndim = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(2, 14 if ndim < 3 else 6)) for _ in range(ndim))

    def per_dim(low: int, high: int) -> tuple[int, ...]:
        return tuple(draw(st.integers(low, high)) for _ in range(ndim))

    kernel, stride, padding, dilation = per_dim(1, 4), per_dim(1, 4), per_dim(0, 3), per_dim(1, 3)
    cover = draw(st.booleans())
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    try:
        geometry = Geometry.create(
            size, kernel, stride=stride, padding=(0,) * ndim if cover else padding, dilation=dilation,
            padding_mode=mode, cover=cover,
        )  # fmt: skip
    except patchfold.PatchfoldError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    channels = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32", "bool"]))
    if dtype == "float32":
        image = rng.random((channels, *size)).astype(np.float32)
        image[rng.random(image.shape) < 0.1] = np.nan
    elif dtype == "bool":
        image = rng.random((channels, *size)) < 0.5
    else:
        image = rng.integers(0, 4 if draw(st.booleans()) else np.iinfo(dtype).max, (channels, *size)).astype(dtype)
    grey = grey_levels(image)
    level = draw(st.sampled_from([float(np.nanmedian(grey)) if np.isfinite(grey).any() else 0.5, 1.5, 2.0 / 3]))
    return image, geometry, Threshold(level, draw(st.booleans())), draw(st.integers(1, 400))


@PROPERTY
@given(image_and_geometry())
def test_counts_band_by_band_equal_block_counts_of_the_whole_image(case) -> None:
    image, geometry, threshold, budget = case
    axes = "C" + "ZYX"[-geometry.ndim :]
    source = RegionSource(image.view(np.uint8) if image.dtype == bool else image, axes, "memory")
    expected = block_counts(foreground_mask(image, threshold), geometry)
    row_bytes = source.nbytes // source.shape[2]
    parts = []
    for first, last in tile_rows.row_bands(geometry, row_bytes, budget):
        band = tile_rows.read_counted(source, geometry, first, last, [threshold])
        assert band.pixels.shape[2] == geometry.band_extent(first, last)[1]
        parts.append(band.counts[0])
    np.testing.assert_array_equal(np.concatenate(parts), expected)


@PROPERTY
@given(
    st.sampled_from([np.uint8, np.uint16, np.bool_]),
    st.integers(1, 5),
    st.floats(-2, 70000, allow_nan=False),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_the_looked_up_mask_is_the_mask_of_the_grey_levels(dtype, channels, level, light, seed) -> None:
    rng = np.random.default_rng(seed)
    high = 2 if dtype == np.bool_ else np.iinfo(dtype).max + 1
    image = rng.integers(0, high, (channels, 9, 11)).astype(dtype)
    level = float(np.round(level * channels) / channels) if seed % 2 else level  # often exactly on a grey level
    threshold = Threshold(level, light)
    np.testing.assert_array_equal(foreground_mask(image, threshold), threshold.foreground(grey_levels(image)))


# ----- the threshold without loading the level ------------------------------------------------------------


@pytest.mark.parametrize("chunks", [(3, 8, 8), (3, 64, 64), None])
def test_the_threshold_sample_is_the_subsample_of_the_image_read_in_bands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: tuple[int, ...] | None
) -> None:
    image = tissue(150, 130, seed=5)
    if chunks is None:  # no chunks (an array in memory): bands by bytes
        source = RegionSource(image, "CYX", "memory")
    else:
        store = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=image.shape, chunks=chunks, dtype=np.uint8)
        store[...] = image
        source = open_region(tmp_path / "s.zarr")
    monkeypatch.setattr(tile_rows, "SAMPLE_BAND_BYTES", 3 * 130 * 20)
    reads = counting_reads(monkeypatch)
    for most in (500, 2000, 150 * 130):  # steps 7, 4 and 1: the row-by-row and the banded reads
        reads.clear()
        sample = tile_rows.sample_source(source, most)
        np.testing.assert_array_equal(sample[0], subsample(image, most))
        assert sum(hi - lo for lo, hi in reads) <= 150 and max(hi - lo for lo, hi in reads) < 150
        if chunks == (3, 64, 64):  # whole chunk rows, each read once
            assert all(lo % 64 == 0 and (hi % 64 == 0 or hi == 150) for lo, hi in reads)
    assert tile_rows.source_thresholds(source, None)[0] == [find_threshold(image)]


def test_a_pyramid_threshold_is_sampled_from_its_smallest_large_enough_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    levels = pyramid(tmp_path / "slide.tif", tissue(96, 80, seed=2))  # 7680, 1920 and 480 pixels
    source = open_region(tmp_path / "slide.tif", 0)
    assert [tile_rows.threshold_level(source, most).level for most in (400, 1000, 1920, 5000, 10**6)] == [2, 1, 1, 0, 0]
    assert tile_rows.threshold_level(open_region(tmp_path / "slide.tif", 2), 10).level == 2
    monkeypatch.setattr(tile_rows, "OTSU_SAMPLES", 1000)  # level 1 is the smallest with 1000 pixels
    monkeypatch.setattr(tile_rows, "BAND_BYTES", 3 * 80 * 32)  # two block rows a band
    expected = find_threshold(subsample(levels[1], 1000))
    reads = counting_reads(monkeypatch)
    *_, result = tiles_file([tmp_path / "slide.tif"], tmp_path / "t", Blocks(16, stride=16), level=0,
                            keep=KeepRules(min_foreground=0.4))  # fmt: skip
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    image = manifest["images"][0]
    assert image["keep"]["threshold"] == expected.level and image["keep"]["sampled_level"] == 1
    counts = block_counts(foreground_mask(levels[0], expected), Blocks(16, stride=16).at((96, 80)))
    assert result.keep["kept"] == len(manifest["tiles"]) == int((counts >= 0.4 * 256).sum())
    assert reads[0] == (0, 48) and all(hi - lo <= 32 for lo, hi in reads[1:])  # level 1's rows, then bands


# ----- names and manifests carry the level ------------------------------------------------------------------


def test_tile_names_and_the_manifest_carry_the_level(tmp_path: Path) -> None:
    levels = pyramid(tmp_path / "slide.tif", tissue(96, 80, seed=1))
    blocks = Blocks(16, stride=16)
    *_, result = tiles_file([tmp_path / "slide.tif"], tmp_path / "l1", blocks, level=1, tile_format="npy")
    names = sorted(p.name for p in (tmp_path / "l1").glob("*.npy"))
    assert names[0] == "slide_L1_r000_c000.npy" and len(names) == blocks.at((48, 40)).num_blocks
    np.testing.assert_array_equal(np.load(tmp_path / "l1" / "slide_L1_r002_c001.npy"), levels[1][:, 32:48, 16:32])
    manifest = json.loads((tmp_path / "l1" / "manifest.json").read_text())
    described = {"path": str(tmp_path / "slide.tif"), "level": 1, "levels": 3, "mpp": [0.5, 0.5]}
    assert manifest["source_level"] == described == result.summary()["source_level"]
    assert manifest["images"][0]["stem"] == "slide_L1"
    # a pyramid's level 0 without --level is a level too; a tiled TIFF of one level is not
    *_, result = tiles_file([tmp_path / "slide.tif"], tmp_path / "l0", blocks)
    assert (tmp_path / "l0" / "slide_L0_r000_c000.png").exists() and result.source_level["level"] == 0
    tiled_tiff(tmp_path / "plain.tif", levels[0])
    *_, result = tiles_file([tmp_path / "plain.tif"], tmp_path / "plain", blocks)
    assert (tmp_path / "plain" / "plain_r000_c000.png").exists() and result.source_level is None
    assert "source_level" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())


def test_zarr_and_several_inputs_name_the_level_only_where_one_is_read(tmp_path: Path) -> None:
    image = tissue(32, 48)
    store = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=image.shape, chunks=(3, 16, 16), dtype=np.uint8)
    store[...] = image
    blocks = Blocks(16, stride=16)
    list(tiles_file([tmp_path / "a.zarr"], tmp_path / "plain", blocks))
    assert (tmp_path / "plain" / "a_r000_c000.png").exists()
    list(tiles_file([tmp_path / "a.zarr"], tmp_path / "level", blocks, level=0))
    assert (tmp_path / "level" / "a_L0_r001_c002.png").exists()
    for name in ("p.tif", "q.tif"):
        pyramid(tmp_path / name, image, levels=2)
    list(tiles_file([tmp_path / "p.tif", tmp_path / "q.tif"], tmp_path / "two", Blocks(8, stride=8), level=1))
    assert {p.name for p in (tmp_path / "two").glob("*_r000_c000.png")} == {"p_L1_r000_c000.png", "q_L1_r000_c000.png"}


def test_stats_counts_what_tiles_keep_of_a_pyramid_level_without_loading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyramid(tmp_path / "slide.tif", tissue(96, 80, seed=4))
    counting_reads(monkeypatch)
    options = ["-k", "16", "-s", "8", "--min-foreground", "0.3"]
    stats = ok_json("stats", tmp_path / "slide.tif", "--level", "0", *options)
    tiles = ok_json("tiles", tmp_path / "slide.tif", "--level", "0", *options, "-o", tmp_path / "t")
    assert stats["keep"]["kept"] == tiles["keep"]["kept"] == tiles["tiles"] > 0
