"""Region-by-region sources (issue #17): Zarr (v2, v3, OME-Zarr) and pyramidal TIFF inputs read
band by band, and ``unfold -o x.zarr``, checked against the in-memory unfold of the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import patchfold
import pytest
from patchfold.blocks import PADDING_MODES, Blocks
from patchfold.io.sources import open_pyramid_tiff, open_zarr
from patchfold.io.zarr_out import ZARR_COMPRESSIONS
from patchfold.jobs.unfold import unfold_file

from tests.cli_fixtures import assert_runtime_error, invoke, ok, part_files, pixels, sample

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

RNG = np.random.default_rng(17)
IMAGE = RNG.integers(0, 256, (3, 61, 47), dtype=np.uint8)  # (C, H, W), sizes no chunk divides


def run(*args, **kwargs):
    """The unfold job to its result (the last thing it yields)."""
    return list(unfold_file(*args, **kwargs))[-1]


def reference(image: np.ndarray, blocks: Blocks, layout: str = "ncl") -> np.ndarray:
    return patchfold.unfold(image[None], **blocks.to_dict(), layout=layout)


def write_zarr(path: Path, image: np.ndarray, zarr_format: int = 3, chunks=(3, 16, 16)) -> Path:
    array = zarr.create_array(
        store=str(path), shape=image.shape, chunks=chunks, dtype=image.dtype, zarr_format=zarr_format
    )
    array[...] = image
    return path


def write_pyramid(path: Path, image_hwc: np.ndarray, levels: int = 3, mpp: float = 0.25) -> list[np.ndarray]:
    """A tiled pyramidal RGB TIFF (SubIFDs) with its resolution recorded; returns its levels."""
    pyramid = [image_hwc[:: 2**i, :: 2**i] for i in range(levels)]
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            pyramid[0], tile=(32, 32), subifds=levels - 1, photometric="rgb",
            resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit=3,
        )  # fmt: skip
        for level in pyramid[1:]:
            tif.write(np.ascontiguousarray(level), tile=(32, 32), subfiletype=1, photometric="rgb")
    return pyramid


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_a_zarr_input_streams_to_the_in_memory_unfold(tmp_path: Path, zarr_format: int, mode: str, layout: str) -> None:
    source = write_zarr(tmp_path / "in.zarr", IMAGE, zarr_format)
    blocks = Blocks((7, 5), stride=(3, 2), padding=(4, 2), dilation=(1, 2), padding_mode=mode)
    result = run([source], tmp_path / "out.npy", blocks, layout=layout, max_memory=8000)
    assert result.plan.bands > 3  # streamed: each band read only the rows it needs
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), reference(IMAGE, blocks, layout))
    assert result.sidecar.source_level == {"path": str(source), "level": 0, "levels": 1}


def test_ome_zarr_levels_and_resolution(tmp_path: Path) -> None:
    store = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(store), mode="w")
    levels = [IMAGE, IMAGE[:, ::2, ::2]]
    for index, level in enumerate(levels):
        array = group.create_array(str(index), shape=(1, *level.shape), chunks=(1, 3, 16, 16), dtype=level.dtype)
        array[...] = level[None]
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    axes += [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.5 * 2**i, 0.5 * 2**i]}]}
        for i in range(2)
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    source = open_zarr(store, level=1)
    assert source.shape == (1, 3, 31, 24) and source.resolution == (1.0, 1.0) and source.levels == 2
    blocks = Blocks(8, stride=4)
    run([store], tmp_path / "out.npy", blocks, level=1, max_memory=4000)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), reference(np.ascontiguousarray(levels[1]), blocks))


def test_a_pyramid_level_is_read_tile_by_tile_with_its_resolution(tmp_path: Path) -> None:
    image = RNG.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    pyramid = write_pyramid(tmp_path / "slide.tif", image)
    blocks = Blocks(16, stride=8, padding=4, padding_mode="reflect")
    for level, pixels_hwc in enumerate(pyramid):
        result = run([tmp_path / "slide.tif"], tmp_path / "out.npy", blocks, level=level, max_memory=20000)
        expected = reference(np.ascontiguousarray(pixels_hwc.transpose(2, 0, 1)), blocks)
        np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
        assert result.sidecar.source_level["level"] == level
        # the level's pixel size from the base resolution and the size ratio (odd sizes round up)
        ratios = (image.shape[0] / pixels_hwc.shape[0], image.shape[1] / pixels_hwc.shape[1])
        assert result.sidecar.source_level["mpp"] == pytest.approx([0.25 * r for r in ratios], abs=1e-6)
    assert open_pyramid_tiff(tmp_path / "slide.tif", 0).levels == 3


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_unfold_to_zarr_is_read_by_zarr_and_dask_and_folds_back(tmp_path: Path, layout: str) -> None:
    dask_array = pytest.importorskip("dask.array")
    out = tmp_path / "patches.zarr"
    ok("unfold", sample("rgb"), "-k", "16", "-s", "8", "--layout", layout, "-o", out, "--max-memory", "200KB")
    expected = patchfold.unfold(np.moveaxis(pixels(sample("rgb")), -1, 0)[None], 16, stride=8, layout=layout)
    opened = zarr.open(str(out), mode="r")
    np.testing.assert_array_equal(opened[...], expected)
    np.testing.assert_array_equal(dask_array.from_zarr(str(out)).compute(), expected)
    assert opened.attrs["patchfold"]["layout"] == layout
    assert opened.chunks[0] == 1  # one item per chunk, whole rows of blocks
    ok("fold", out, "-o", tmp_path / "back.png")
    np.testing.assert_array_equal(pixels(tmp_path / "back.png"), pixels(sample("rgb")))


def test_a_rerun_replaces_the_store_and_an_interrupted_one_leaves_it(tmp_path: Path) -> None:
    source = write_zarr(tmp_path / "in.zarr", IMAGE)
    out = tmp_path / "out.zarr"
    run([source], out, Blocks(4, stride=4))
    run([source], out, Blocks(8, stride=4))
    assert zarr.open(str(out), mode="r").attrs["patchfold"]["kernel_size"] == [8, 8]
    job = unfold_file([source], out, Blocks(6, stride=1), max_memory=3000)
    next(job)
    job.close()  # as Ctrl-C would: the old store stays whole, no temporary is left
    assert zarr.open(str(out), mode="r").attrs["patchfold"]["kernel_size"] == [8, 8]
    assert part_files(tmp_path) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("compression", ZARR_COMPRESSIONS)
def test_every_compression_gives_the_same_patches(tmp_path: Path, compression: str) -> None:
    source = write_zarr(tmp_path / "in.zarr", IMAGE)
    run([source], tmp_path / "out.zarr", Blocks(5, stride=3), compression=compression)
    np.testing.assert_array_equal(
        zarr.open(str(tmp_path / "out.zarr"), mode="r")[...], reference(IMAGE, Blocks(5, stride=3))
    )


def test_the_cli_offers_the_jobs_compressions() -> None:
    from patchfold.cli import options

    assert options.ZARR_COMPRESSIONS == ZARR_COMPRESSIONS


def test_bad_levels_and_stores_give_one_error_line_and_write_nothing(tmp_path: Path) -> None:
    write_pyramid(tmp_path / "slide.tif", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), levels=2)
    line = assert_runtime_error(
        invoke("unfold", tmp_path / "slide.tif", "--level", "2", "-k", "8", "-o", tmp_path / "o.npy")
    )
    assert "2 resolution level(s)" in line
    line = assert_runtime_error(invoke("unfold", sample("rgb"), "--level", "1", "-k", "8", "-o", tmp_path / "o.npy"))
    assert "--level applies to pyramidal TIFF and Zarr" in line
    (tmp_path / "file.zarr").write_text("mine")
    assert_runtime_error(invoke("unfold", sample("rgb"), "-k", "8", "-o", tmp_path / "file.zarr"), "is a file")
    assert (tmp_path / "file.zarr").read_text() == "mine"
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    for name in ("a", "b"):
        group.create_array(name, shape=(8, 8), dtype="uint8")
    assert_runtime_error(invoke("unfold", tmp_path / "two.zarr", "-k", "4", "-o", tmp_path / "o.npy"), "2 arrays")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.zarr", "slide.tif", "two.zarr"]


def test_a_zarr_component_path_and_an_in_memory_command(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("a", shape=IMAGE.shape, dtype=IMAGE.dtype)[...] = IMAGE
    group.create_array("b", shape=(8, 8), dtype="uint8")
    blocks = Blocks(6, stride=5)
    run([tmp_path / "g.zarr" / "a"], tmp_path / "out.npy", blocks)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), reference(IMAGE, blocks))
    # commands that need the whole image read it whole (within the budget)
    stats = invoke("stats", tmp_path / "g.zarr" / "a", "-k", "6", "-s", "5", "--json")
    assert stats.exit_code == 0, stats.output


def test_stats_divisor_and_tiles_take_a_level(tmp_path: Path) -> None:
    from tests.cli_fixtures import ok_json

    image = RNG.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    pyramid = write_pyramid(tmp_path / "slide.tif", image, levels=2)
    level1 = np.ascontiguousarray(pyramid[1].transpose(2, 0, 1))
    stats = ok_json("stats", tmp_path / "slide.tif", "--level", "1", "-k", "8", "-s", "4")
    expected = patchfold.overlap_stats(level1.shape[1:], 8, stride=4)
    assert stats["num_blocks"] == expected["num_blocks"] == Blocks(8, stride=4).at((48, 40)).num_blocks
    ok("divisor", tmp_path / "slide.tif", "--level", "1", "-k", "8", "-s", "4", "--npy", tmp_path / "d.npy")
    assert np.load(tmp_path / "d.npy").shape == (48, 40)
    ok("tiles", tmp_path / "slide.tif", "--level", "1", "-k", "16", "-s", "16", "--format", "npy", "-o", tmp_path / "t")
    tiles = sorted((tmp_path / "t").glob("*.npy"))
    assert len(tiles) == Blocks(16, stride=16).at((48, 40)).num_blocks
    first = np.load(tiles[0])
    np.testing.assert_array_equal(first.reshape(level1[:, :16, :16].shape), level1[:, :16, :16])


def test_zarr_dtypes_as_a_npy_is_read(tmp_path: Path) -> None:
    flags = zarr.create_array(store=str(tmp_path / "b.zarr"), shape=(9, 7), dtype=bool)
    flags[...] = np.eye(9, 7, dtype=bool)
    run([tmp_path / "b.zarr"], tmp_path / "out.npy", Blocks(3))
    np.testing.assert_array_equal(
        np.load(tmp_path / "out.npy"), reference(np.eye(9, 7, dtype=np.uint8)[None], Blocks(3))
    )
    zarr.create_array(store=str(tmp_path / "c.zarr"), shape=(4, 4), dtype="complex64")
    assert_runtime_error(invoke("unfold", tmp_path / "c.zarr", "-k", "2", "-o", tmp_path / "c.npy"), "real numbers")
    assert not (tmp_path / "c.npy").exists()


def test_show_and_apply_take_a_level(tmp_path: Path) -> None:
    image = RNG.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    pyramid = write_pyramid(tmp_path / "slide.tif", image, levels=2)
    ok("show", "grid", tmp_path / "slide.tif", "--level", "1", "-k", "8", "-o", tmp_path / "grid.png")
    ok("show", "divisor", tmp_path / "slide.tif", "--level", "1", "-k", "8", "-s", "4", "-o", tmp_path / "d.png")
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(pyramid[1])).save(tmp_path / "level1.png")
    ok("show", "grid", tmp_path / "level1.png", "-k", "8", "-o", tmp_path / "grid_png.png")
    np.testing.assert_array_equal(pixels(tmp_path / "grid.png"), pixels(tmp_path / "grid_png.png"))
    # an identity 1x1 linear map on the level gives the level back
    np.save(tmp_path / "w.npy", np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1))
    ok(
        "apply",
        tmp_path / "slide.tif",
        "--level",
        "1",
        "--linear",
        tmp_path / "w.npy",
        "-k",
        "1",
        "-o",
        tmp_path / "a.png",
    )
    np.testing.assert_array_equal(pixels(tmp_path / "a.png"), pyramid[1])


def test_a_streamed_zarr_input_is_read_band_by_band_in_bounded_memory(tmp_path: Path, monkeypatch) -> None:
    import tracemalloc

    from patchfold.io.sources import RegionSource

    image = RNG.integers(0, 256, (3, 2048, 2048), dtype=np.uint8)
    write_zarr(tmp_path / "in.zarr", image, chunks=(3, 256, 256))
    input_bytes = image.nbytes
    del image
    blocks = Blocks(8, stride=8, padding=2, padding_mode="reflect")
    spans = []
    rows = RegionSource.rows
    monkeypatch.setattr(RegionSource, "rows", lambda self, lo, hi: spans.append(hi - lo) or rows(self, lo, hi))
    tracemalloc.start()
    try:
        result = run([tmp_path / "in.zarr"], tmp_path / "out.npy", blocks, max_memory=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.plan.bands > 10 and len(spans) == result.plan.bands
    # each band reads only the rows its blocks cover (its rows of blocks times the stride, plus the kernel)
    assert max(spans) <= result.plan.band_rows * 8 + 8
    assert peak < input_bytes / 2, f"peak {peak} bytes for a {input_bytes}-byte input"


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda g: g.attrs.update(multiscales=[{"axes": [], "datasets": [{"path": "missing"}]}]), "does not hold"),
        (lambda g: g.attrs.update(multiscales=[{"datasets": [{"nopath": 1}]}]), "OME-Zarr layout"),
        (lambda g: g.attrs.update(multiscales="bad"), "OME-Zarr layout"),
        (lambda g: (g.create_group("0"), g.attrs.update(multiscales=[{"datasets": [{"path": "0"}]}])), "is a group"),
    ],
)
def test_broken_ome_metadata_gives_one_error_line(tmp_path: Path, make, fragment: str) -> None:
    make(zarr.open_group(str(tmp_path / "image.zarr"), mode="w"))
    assert_runtime_error(invoke("unfold", tmp_path / "image.zarr", "-k", "4", "-o", tmp_path / "o.npy"), fragment)
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "o.json").exists()


def test_a_zarr_output_never_replaces_or_nests_in_its_input(tmp_path: Path) -> None:
    """Found by a hostile pass: a group's array unfolded to the group's own path deleted the input."""
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("arr", shape=IMAGE.shape, dtype=IMAGE.dtype)[...] = IMAGE
    write_zarr(tmp_path / "v3.zarr", IMAGE)
    for source, out in [("g.zarr/arr", "g.zarr"), ("v3.zarr", "v3.zarr/inner.zarr")]:
        result = invoke("unfold", tmp_path / source, "-k", "4", "-o", tmp_path / out)
        assert result.exit_code == 2 and "overlaps the input" in result.stderr, result.stderr
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "g.zarr" / "arr"), mode="r")[...], IMAGE)
    assert not (tmp_path / "v3.zarr" / "inner.zarr").exists()


def test_fold_of_a_damaged_zarr_matrix_gives_one_error_line(tmp_path: Path) -> None:
    ok("unfold", sample("rgb"), "-k", "16", "-s", "8", "-o", tmp_path / "p.zarr")
    chunk = next(p for p in sorted((tmp_path / "p.zarr" / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(b"junk")
    assert_runtime_error(invoke("fold", tmp_path / "p.zarr", "-o", tmp_path / "back.png"), "cannot read patch matrix")
    assert not (tmp_path / "back.png").exists()
