"""``batch unfold`` and ``batch tiles`` at a pyramid level (``--level``; ``--mpp`` picks it by
resolution): every image read at that level, recorded in the manifest, the same patches as
unfolding that level of each image on its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_fixtures import ok

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("zarr")


def pyramid(path: Path, seed: int, size: tuple[int, int]) -> np.ndarray:
    """A two-level tiled RGB pyramid with 0.25 µm pixels; returns level 1 (every other pixel)."""
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(32, 32), subifds=1, photometric="rgb", resolution=(40000, 40000), resolutionunit=3)
        tif.write(rgb[::2, ::2], tile=(32, 32), subfiletype=1, photometric="rgb")
    return rgb[::2, ::2]


@pytest.mark.parametrize("level", [["--level", "1"], ["--mpp", "0.5"]], ids=["level", "mpp"])
@pytest.mark.parametrize("store", ["dataset", "dataset.zarr"])
def test_batch_unfold_reads_every_image_at_the_level(tmp_path: Path, level: list[str], store: str) -> None:
    import patchfold

    images = [pyramid(tmp_path / f"s{i}.tif", i, size) for i, size in enumerate([(96, 128), (64, 96)])]
    out = tmp_path / store
    ok("batch", "unfold", tmp_path / "s0.tif", tmp_path / "s1.tif", "-k", "16", "-s", "8", *level, "-o", out,
       "--workers", "1", "--no-progress")  # fmt: skip
    dataset = patchfold.load_dataset(out)
    expected = np.concatenate(
        [patchfold.unfold(np.moveaxis(image, -1, 0)[None], 16, stride=8, layout="nlc")[0] for image in images]
    )
    got = np.stack([np.asarray(dataset[i]).reshape(-1) for i in range(len(dataset))])
    np.testing.assert_array_equal(got, expected)
    if store.endswith(".zarr"):
        import zarr

        manifest = dict(zarr.open_group(str(out), mode="r").attrs)["patchfold"]
    else:
        manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["level"] == (1 if level[0] == "--level" else {"mpp": 0.5})


def test_batch_tiles_at_a_level(tmp_path: Path) -> None:
    image = pyramid(tmp_path / "s.tif", 3, (96, 128))
    ok("batch", "tiles", tmp_path / "s.tif", "-k", "16", "-s", "16", "--level", "1", "-o", tmp_path / "t",
       "--workers", "1", "--no-progress", "--format", "npy")  # fmt: skip
    (directory,) = [p for p in (tmp_path / "t").iterdir() if p.is_dir()]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["input_shape"][2:] == [48, 64]
    first = np.load(directory / manifest["tiles"][0]["file"])
    np.testing.assert_array_equal(first, np.moveaxis(image[:16, :16], -1, 0))


def test_a_resumed_run_at_another_level_is_refused(tmp_path: Path) -> None:
    from tests.cli_fixtures import invoke

    pyramid(tmp_path / "s.tif", 5, (64, 64))
    out = tmp_path / "dataset"
    ok("batch", "unfold", tmp_path / "s.tif", "-k", "16", "--level", "1", "-o", out, "--workers", "1", "--no-progress")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = invoke("batch", "unfold", tmp_path / "s.tif", "-k", "16", "--level", "0", "-o", out, "--workers", "1")
    assert result.exit_code != 0 and "Error:" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
