"""Findings of the red-team pass over issue #17's sources and datasets, each kept as a test: a
truncated pyramid stops with one Error line (tifffile's log lines kept off stderr); a tile dataset
records its request, so a resumed run with another one is refused; with keep rules, a re-run after a
source changed redoes it in place where its row count is unchanged and otherwise says why not; a
quiet batch run still says why an image failed. (Exact keep fractions: tests/test_keep.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import patchfold
import pytest
from PIL import Image

from tests.cli_fixtures import assert_runtime_error, invoke, ok

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("zarr")


def pyramid(path: Path, levels: int = 3, size: int = 256) -> None:
    """A tiled RGB pyramid of ``levels`` levels (each half the last), with resolution tags."""
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, tile=(64, 64), subifds=levels - 1, photometric="rgb", resolution=(40000, 40000),
                  resolutionunit=3)  # fmt: skip
        for level in range(1, levels):
            tif.write(image[:: 2**level, :: 2**level], tile=(64, 64), subfiletype=1, photometric="rgb")


@pytest.mark.parametrize(
    "command",
    [
        ["unfold", "-k", "32", "-s", "32", "-o", "x.npy"],
        ["tiles", "-k", "32", "-s", "32", "-o", "t"],
        ["stats", "-k", "32", "-s", "32", "--json"],
    ],
    ids=lambda c: c[0],
)
def test_a_truncated_pyramid_gives_one_error_line(tmp_path: Path, command: list[str]) -> None:
    pyramid(tmp_path / "whole.tif", size=512)
    truncated = tmp_path / "trunc.tif"
    truncated.write_bytes((tmp_path / "whole.tif").read_bytes()[:30000])
    name, *options = command
    options = [str(tmp_path / o) if o in ("x.npy", "t") else o for o in options]
    progress = [] if name == "stats" else ["--no-progress"]
    result = invoke(name, truncated, "--level", "0", *options, *progress)
    if result.exit_code == 0:  # stats reads only the header, which survived
        assert name == "stats" and result.stderr == ""
        return
    line = assert_runtime_error(result, "trunc.tif")
    assert result.stderr.strip() == line
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "t").exists()


def _batch_tiles(tmp_path: Path, *options: str):
    return invoke("batch", "tiles", tmp_path / "s.tif", "-o", tmp_path / "t", "--workers", "1", "--no-progress",
                  *options)  # fmt: skip


@pytest.mark.parametrize(
    "changed",
    [["-k", "32", "-s", "32", "--level", "2"], ["-k", "16", "-s", "16", "--level", "1"],
     ["-k", "32", "-s", "32", "--level", "1", "--min-foreground", "0.5"],
     ["-k", "32", "-s", "32", "--level", "1", "--format", "npy"]],
    ids=["level", "kernel", "keep", "format"],
)  # fmt: skip
def test_batch_tiles_refuses_to_resume_with_another_request(tmp_path: Path, changed: list[str]) -> None:
    pyramid(tmp_path / "s.tif")
    first = ["-k", "32", "-s", "32", "--level", "1"]
    assert _batch_tiles(tmp_path, *first).exit_code == 0
    before = {p: p.read_bytes() for p in sorted((tmp_path / "t").rglob("*")) if p.is_file()}
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["request"]["level"] == 1 and manifest["request"]["format"] == "png"
    line = assert_runtime_error(_batch_tiles(tmp_path, *changed), "other parameters")
    assert "->" in line
    assert {p: p.read_bytes() for p in sorted((tmp_path / "t").rglob("*")) if p.is_file()} == before
    again = _batch_tiles(tmp_path, *first, "--json")  # the same request resumes: everything skipped
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 1


def test_batch_tiles_resumes_the_same_blocks_spelled_per_dim(tmp_path: Path) -> None:
    """``-k 32 -s 32`` and ``-k 32,32 -s 32,32`` are the same blocks on an image (the second
    red-team pass: the request was compared as typed)."""
    pyramid(tmp_path / "s.tif")
    assert _batch_tiles(tmp_path, "-k", "32", "-s", "32", "--level", "1").exit_code == 0
    again = _batch_tiles(tmp_path, "-k", "32,32", "-s", "32,32", "--level", "1", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["skipped"] == 1
    assert_runtime_error(_batch_tiles(tmp_path, "-k", "32,16", "-s", "32", "--level", "1"), "kernel_size")


def test_batch_tiles_refuses_a_manifest_without_a_request(tmp_path: Path) -> None:
    pyramid(tmp_path / "s.tif")
    assert _batch_tiles(tmp_path, "-k", "32", "-s", "32").exit_code == 0
    top = tmp_path / "t" / "manifest.json"
    old = json.loads(top.read_text())
    del old["request"]
    top.write_text(json.dumps({**old, "version": 1}))
    assert_runtime_error(_batch_tiles(tmp_path, "-k", "32", "-s", "32"), "earlier patchfold")


def disc(path: Path, radius: int) -> None:
    """A dark disc on white: its foreground grows with ``radius``."""
    y, x = np.mgrid[:96, :96]
    image = np.full((96, 96, 3), 230, np.uint8)
    image[(y - 48) ** 2 + (x - 48) ** 2 < radius**2] = 60
    Image.fromarray(image).save(path)


@pytest.mark.parametrize("store", ["ds", "ds.zarr"])
def test_keep_rules_redo_a_changed_source_or_say_why_not(tmp_path: Path, store: str) -> None:
    disc(tmp_path / "a.png", 30)
    disc(tmp_path / "b.png", 20)
    args = ["batch", "unfold", tmp_path / "a.png", tmp_path / "b.png", "-k", "16", "-s", "16", "--channels", "3",
            "--min-foreground", "0.5", "--workers", "1", "--no-progress"]  # fmt: skip
    ok(*args, "-o", tmp_path / store)
    # the same blocks kept, other pixels inside them: redone in place, as a fresh run writes it
    image = np.array(Image.open(tmp_path / "a.png"))
    image[image == 60] = 70
    Image.fromarray(image).save(tmp_path / "a.png")
    ok(*args, "-o", tmp_path / store)
    ok(*args, "-o", tmp_path / f"fresh{Path(store).suffix}")
    redone = patchfold.load_dataset(tmp_path / store)
    fresh = patchfold.load_dataset(tmp_path / f"fresh{Path(store).suffix}")
    assert len(redone) == len(fresh)
    for i in range(len(fresh)):
        np.testing.assert_array_equal(np.asarray(redone[i]), np.asarray(fresh[i]))
    # now more blocks kept: every later row would move, refused with the source and both counts
    disc(tmp_path / "a.png", 40)
    line = assert_runtime_error(invoke(*args, "-o", tmp_path / store), "kept blocks changed", "a.png")
    assert "->" in line and "other parameters" not in line and "--append" not in line


def test_batch_unfold_names_the_parameter_that_differs(tmp_path: Path) -> None:
    disc(tmp_path / "a.png", 30)
    base = ["batch", "unfold", tmp_path / "a.png", "-s", "16", "--workers", "1", "--no-progress", "-o", tmp_path / "d"]
    ok(*base, "-k", "16")
    assert_runtime_error(invoke(*base, "-k", "8"), "other parameters", "kernel_size")


@pytest.mark.parametrize("command", ["unfold", "tiles"])
def test_a_quiet_batch_run_says_why_an_image_failed(tmp_path: Path, command: str) -> None:
    pyramid(tmp_path / "s.tif", levels=2)
    disc(tmp_path / "a.png", 30)
    result = invoke("batch", command, tmp_path / "s.tif", "-k", "16", "-s", "16", "--level", "1", "-q",
                    "--workers", "1", "--no-progress", "-o", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = invoke("batch", command, tmp_path / "s.tif", "-k", "16", "-s", "16", "--level", "3",
                    "-q", "--workers", "1", "--no-progress", "-o", tmp_path / "out3")  # fmt: skip
    line = assert_runtime_error(result, "--level 3", "s.tif")
    assert "listed above" not in line


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_one_channel_float_or_int32_images_go_to_tiff_only(tmp_path: Path, dtype: str) -> None:
    values = (np.random.default_rng(1).random((1, 1, 32, 32)) * 1e6 - 5).astype(dtype)
    np.save(tmp_path / "x.npy", values)
    ok("unfold", tmp_path / "x.npy", "-k", "16", "-s", "16", "-o", tmp_path / "p.npy", "--no-progress")
    line = assert_runtime_error(invoke("fold", tmp_path / "p.npy", "-o", tmp_path / "x.png", "--no-progress"), ".tif")
    assert "mode" not in line and not (tmp_path / "x.png").exists()
    ok("fold", tmp_path / "p.npy", "-o", tmp_path / "x.tif", "--no-progress")
    back = np.asarray(Image.open(tmp_path / "x.tif"))
    assert back.dtype == values.dtype
    np.testing.assert_array_equal(back, values[0, 0])
