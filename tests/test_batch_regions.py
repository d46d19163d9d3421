"""``batch unfold`` and ``batch tiles`` read region sources band by band (issue #17): a pyramid
level, a Zarr store or a single tiled TIFF is never read whole by a worker; the dataset is the one
built from the same pixels in memory, the keep rules choose what ``tiles`` chooses, and a
resumed run knows a finished Zarr input by the digest of its files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import patchfold
import pytest
from patchfold.blocks import Blocks
from patchfold.datasets import images as images_module
from patchfold.datasets.build import tile_dataset, unfold_dataset
from patchfold.io.sources import RegionSource
from patchfold.jobs import tile_rows
from patchfold.jobs.tiles import tiles_file
from patchfold.keep import KeepRules

from tests.test_batch_levels import pyramid
from tests.test_sources import write_zarr

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

RNG = np.random.default_rng(31)


def never_whole(self: RegionSource) -> np.ndarray:
    raise AssertionError(f"'{self.path}' was read whole")


def finish(job) -> patchfold.datasets.build.DatasetResult:  # type: ignore[name-defined]
    return list(job)[-1]


def region_inputs(tmp_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    """A Zarr store, a single-level tiled TIFF and a PNG; their pixels ``(C, H, W)``."""
    from PIL import Image

    images = [RNG.integers(0, 256, (3, h, w), dtype=np.uint8) for h, w in [(70, 53), (45, 66), (38, 41)]]
    write_zarr(tmp_path / "a.zarr", images[0])
    tifffile.imwrite(tmp_path / "b.tif", np.moveaxis(images[1], 0, -1), tile=(16, 16), photometric="rgb")
    Image.fromarray(np.moveaxis(images[2], 0, -1)).save(tmp_path / "c.png")
    return [tmp_path / "a.zarr", tmp_path / "b.tif", tmp_path / "c.png"], images


def rows_of(path: Path) -> np.ndarray:
    dataset = patchfold.load_dataset(path)
    return np.stack([np.asarray(dataset[i]).reshape(-1) for i in range(len(dataset))])


BLOCKS = [
    Blocks((9, 7), stride=(4, 3), padding=(3, 2), padding_mode="reflect"),
    Blocks(8, stride=5, dilation=2, padding=1, padding_mode="circular"),
    Blocks(16, stride=12, cover=True),
]


@pytest.mark.parametrize("store", ["shards", "store.zarr"])
@pytest.mark.parametrize("blocks", BLOCKS, ids=["reflect", "dilated-circular", "cover"])
@pytest.mark.parametrize("channels", [None, 1])
def test_region_sources_become_the_rows_of_their_pixels_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str, blocks: Blocks, channels: int | None
) -> None:
    inputs, images = region_inputs(tmp_path)
    for index, image in enumerate(images):
        np.save(tmp_path / f"m{index}.npy", image[None])
    memory = [tmp_path / f"m{index}.npy" for index in range(len(images))]
    options = {"channels": channels, "workers": 1, "dtype": "keep" if channels is None else "float32"}
    if store.endswith(".zarr"):
        options["chunk_size"] = 7 * 4 * blocks.to_dict()["kernel_size"][0] ** 2  # chunks of a few rows
    finish(unfold_dataset(memory, tmp_path / f"memory-{store}", blocks, **options))
    monkeypatch.setattr(tile_rows, "BAND_BYTES", 3000)  # many bands of block rows per image
    monkeypatch.setattr(RegionSource, "load", never_whole)
    bands: list[tuple[int, int]] = []
    cut = images_module._band_patches
    monkeypatch.setattr(images_module, "_band_patches", lambda *a: bands.append(a[3:]) or cut(*a))
    result = finish(unfold_dataset(inputs, tmp_path / store, blocks, **options))
    assert result.summary()["failed"] == 0
    assert len(bands) > 6  # the Zarr store and the tiled TIFF, each in several bands
    np.testing.assert_array_equal(rows_of(tmp_path / store), rows_of(tmp_path / f"memory-{store}"))
    if channels is None:  # and against the library's own unfold of each image
        expected = [patchfold.unfold(image[None], **blocks.to_dict(), layout="nlc")[0] for image in images]
        np.testing.assert_array_equal(rows_of(tmp_path / store), np.concatenate(expected))


@pytest.mark.parametrize("store", ["shards", "store.zarr"])
def test_keep_rules_choose_band_by_band_what_tiles_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    tissue = np.full((128, 160, 3), 235, np.uint8)
    tissue[20:90, 30:120] = RNG.integers(40, 120, (70, 90, 3), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "slide.tif") as tif:  # three levels: the threshold from level 1
        tif.write(tissue, tile=(32, 32), subifds=2, photometric="rgb")
        for step in (2, 4):
            tif.write(np.ascontiguousarray(tissue[::step, ::step]), tile=(16, 16), subfiletype=1, photometric="rgb")
    monkeypatch.setattr(tile_rows, "BAND_BYTES", 5000)
    monkeypatch.setattr(RegionSource, "load", never_whole)
    monkeypatch.setattr(tile_rows, "OTSU_SAMPLES", 40 * 32 + 1)  # level 1 is the smallest with as many
    keep, blocks = KeepRules(min_foreground=0.5), Blocks(16, stride=16)
    finish(unfold_dataset([tmp_path / "slide.tif"], tmp_path / store, blocks, level=0, keep=keep, workers=1))
    tiles = tiles_file([tmp_path / "slide.tif"], tmp_path / "tiles", blocks, keep=keep, level=0)
    record = list(tiles)[-1]
    tiled = json.loads((tmp_path / "tiles" / "manifest.json").read_text())
    kept = [tuple(t["index"]) for t in tiled["tiles"]]
    dataset = patchfold.load_dataset(tmp_path / store)
    assert [tuple(int(v) for v in row[1:3]) for row in dataset.index] == kept
    assert 0 < len(kept) < blocks.at((128, 160)).num_blocks and record is not None
    image_record = dataset.manifest["images"][0]["keep"]
    assert image_record["sampled_level"] == 1 == tiled["images"][0]["keep"]["sampled_level"]
    for row, (y, x) in enumerate(kept):
        patch = np.moveaxis(tissue[y * 16 : y * 16 + 16, x * 16 : x * 16 + 16], -1, 0).reshape(-1)
        np.testing.assert_array_equal(np.asarray(dataset[row]).reshape(-1), patch)


def test_batch_tiles_of_a_level_are_the_tiles_command_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyramid(tmp_path / "s.tif", 5, (96, 128))
    monkeypatch.setattr(tile_rows, "BAND_BYTES", 4000)
    monkeypatch.setattr(RegionSource, "load", never_whole)
    blocks = Blocks(16, stride=12, cover=True)
    finish(tile_dataset([tmp_path / "s.tif"], tmp_path / "batch", blocks, level=1, workers=1))
    list(tiles_file([tmp_path / "s.tif"], tmp_path / "one", blocks, level=1))
    (directory,) = [p for p in (tmp_path / "batch").iterdir() if p.is_dir()]
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert any("_L1_" in name for name in names)  # the level is in the names, as tiles gives them
    for name in names:
        if name.endswith(".png"):
            assert (directory / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["source_level"]["level"] == 1


def test_a_finished_zarr_input_is_kept_on_resume_and_redone_when_it_changes(tmp_path: Path) -> None:
    inputs, images = region_inputs(tmp_path)
    blocks = Blocks(8, stride=8)
    first = finish(unfold_dataset(inputs, tmp_path / "out", blocks, workers=1)).summary()
    assert first["done"] == 3
    again = finish(unfold_dataset(inputs, tmp_path / "out", blocks, workers=1)).summary()
    assert again["done"] == 0 and again["skipped"] == 3
    changed = zarr.open_array(str(inputs[0]), mode="r+")
    changed[0, 0, 0] = 255 - images[0][0, 0, 0]
    third = finish(unfold_dataset(inputs, tmp_path / "out", blocks, workers=1)).summary()
    assert third["done"] == 1 and third["skipped"] == 2
    assert rows_of(tmp_path / "out")[0][0] == 255 - images[0][0, 0, 0]
