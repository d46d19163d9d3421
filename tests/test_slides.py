"""Whole-slide images through OpenSlide and levels picked by resolution (issue #17): tiled TIFF
pyramids written with tifffile, opened through OpenSlide (as a ``.svs``, or a ``.tif`` given to
:func:`open_slide` directly) and compared with tifffile's reads of the same levels; ``--mpp`` and
``--magnification`` on TIFF, OME-Zarr and slides; the message without the ``slide`` extra."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import patchfold
import pytest
from patchfold.blocks import Blocks
from patchfold.errors import PatchfoldError
from patchfold.io import slides
from patchfold.io.levels import LevelRequest, LevelScale, pick_level
from patchfold.io.slides import SlideLevel, composite, open_slide
from patchfold.io.sources import open_pyramid_tiff
from patchfold.jobs.unfold import unfold_file

from tests.cli_fixtures import assert_runtime_error, invoke, ok, ok_json, sample
from tests.slide_files import tissue, write_svs, write_tiled_pyramid

tifffile = pytest.importorskip("tifffile")
openslide = pytest.importorskip("openslide")

IMAGE = tissue(192, 160)  # (H, W, 3): levels of 192x160, 96x80, 48x40


def run(*args, **kwargs):
    """The unfold job to its result (the last thing it yields)."""
    return list(unfold_file(*args, **kwargs))[-1]


def chw(level_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(level_hwc.transpose(2, 0, 1))


def tifffile_level(path: Path, level: int) -> np.ndarray:
    """tifffile's own read of a level, ``(C, H, W)``."""
    return chw(tifffile.imread(path, series=0, level=level))


@pytest.fixture
def svs(tmp_path: Path) -> Path:
    write_svs(tmp_path / "scan.svs", IMAGE, levels=3, mpp=0.25, objective=40)
    return tmp_path / "scan.svs"


@pytest.fixture
def generic(tmp_path: Path) -> Path:
    write_tiled_pyramid(tmp_path / "pyramid.tif", IMAGE, levels=3, mpp=0.5)
    return tmp_path / "pyramid.tif"


# ----- reading: OpenSlide against tifffile -------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 2])
def test_a_generic_tiled_tiff_through_openslide_reads_tifffiles_pixels(generic: Path, level: int) -> None:
    source = open_slide(generic, level)  # a .tif forced through the OpenSlide reader
    expected = tifffile_level(generic, level)
    assert source.shape == (1, *expected.shape) and source.dtype == np.uint8
    assert (source.level, source.levels) == (level, 3)
    assert source.resolution == pytest.approx((0.5 * 2**level,) * 2)
    assert source.magnification is None  # a generic TIFF records no objective power
    np.testing.assert_array_equal(source.load()[0], expected)
    np.testing.assert_array_equal(source.rows(5, 17)[0], expected[:, 5:17])
    np.testing.assert_array_equal(source.rows(0, 1)[0], tifffile_level(generic, level)[:, :1])


def test_an_svs_has_openslides_levels_resolution_and_magnification(svs: Path) -> None:
    slide = openslide.OpenSlide(str(svs))
    assert slide.properties["openslide.vendor"] == "aperio"
    for level in range(3):
        source = open_slide(svs, level)
        width, height = slide.level_dimensions[level]
        assert source.shape == (1, 3, height, width)
        assert source.resolution == pytest.approx((0.25 * 2**level,) * 2)
        assert source.magnification == pytest.approx(40 / slide.level_downsamples[level])
        np.testing.assert_array_equal(source.load()[0], tifffile_level(svs, level))


def test_reads_in_strips_give_the_same_rows(svs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = open_slide(svs, 1).rows(3, 90)
    monkeypatch.setattr(slides, "STRIP_PIXELS", 100)  # about one row of 80 columns per read_region
    calls = []
    level = open_slide(svs, 1)
    real = level.array.slide.read_region
    monkeypatch.setattr(level.array.slide, "read_region", lambda *a: calls.append(a) or real(*a))
    np.testing.assert_array_equal(level.rows(3, 90), whole)
    assert len(calls) == 87 and calls[0] == ((0, 6), 1, (80, 1))  # level-0 origin: twice the level's row


@pytest.mark.parametrize("level", [0, 1, 2])
def test_unfold_of_a_slide_level_is_unfold_of_tifffiles_level(tmp_path: Path, svs: Path, level: int) -> None:
    blocks = Blocks((9, 7), stride=(4, 3), padding=2, padding_mode="reflect")
    ok("unfold", svs, "--level", level, "-k", "9,7", "-s", "4,3", "-p", "2", "--padding-mode", "reflect",
       "--max-memory", "20000", "-o", tmp_path / "slide.npy")  # fmt: skip
    expected = patchfold.unfold(tifffile_level(svs, level)[None], **blocks.to_dict())
    np.testing.assert_array_equal(np.load(tmp_path / "slide.npy"), expected)
    # the same level read through tifffile (the same file as a .tif) gives the same patch matrix
    shutil.copy(svs, tmp_path / "scan.tif")
    ok("unfold", tmp_path / "scan.tif", "--level", level, "-k", "9,7", "-s", "4,3", "-p", "2",
       "--padding-mode", "reflect", "-o", tmp_path / "tiff.npy")  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "tiff.npy"), expected)
    sidecar = json.loads((tmp_path / "slide.json").read_text())
    assert sidecar["source_level"] == {
        "path": str(svs), "level": level, "levels": 3, "mpp": [0.25 * 2**level] * 2, "magnification": 40 / 2**level,
    }  # fmt: skip


def test_a_streamed_slide_unfold_reads_band_by_band(tmp_path: Path, svs: Path) -> None:
    result = run([svs], tmp_path / "out.npy", Blocks(8, stride=4), max_memory=30000)
    assert result.plan.bands > 3
    np.testing.assert_array_equal(
        np.load(tmp_path / "out.npy"), patchfold.unfold(tifffile_level(svs, 0)[None], 8, stride=4)
    )


def test_a_slide_without_a_level_is_level_0_in_every_command(tmp_path: Path, svs: Path) -> None:
    level0 = tifffile_level(svs, 0)
    stats = ok_json("stats", svs, "-k", "16", "-s", "16")
    assert stats["input_shape"] == [1, *level0.shape]
    ok("tiles", svs, "--level", "2", "-k", "16", "-s", "16", "--format", "npy", "-o", tmp_path / "t")
    tiles = sorted((tmp_path / "t").glob("*.npy"))
    assert len(tiles) == Blocks(16, stride=16).at((48, 40)).num_blocks
    np.testing.assert_array_equal(np.load(tiles[0]).reshape(3, 16, 16), tifffile_level(svs, 2)[:, :16, :16])
    ok("show", "grid", svs, "--magnification", "10", "-k", "8", "-o", tmp_path / "grid.png")


# ----- compositing -----------------------------------------------------------------------------


class FakeSlide:
    """A stand-in for ``openslide.OpenSlide``: one 4x6 level of RGBA, transparent on the left."""

    level_dimensions = ((6, 4),)
    level_downsamples = (1.0,)

    def __init__(self) -> None:
        self.rgba = np.zeros((4, 6, 4), dtype=np.uint8)
        self.rgba[..., :3] = 100
        self.rgba[:, 3:, 3] = 255
        self.rgba[:, 2, 3] = 51  # a fifth opaque

    def read_region(self, origin, level, size):
        (x, y), (w, h) = origin, size
        return self.rgba[y : y + h, x : x + w]


def test_transparent_pixels_are_composited_on_the_background() -> None:
    level = SlideLevel(FakeSlide(), 0, (0, 128, 255))
    pixels = level[1:3, :]
    assert pixels.shape == (2, 6, 3)
    np.testing.assert_array_equal(pixels[:, :2], np.broadcast_to([0, 128, 255], (2, 2, 3)))  # no data: background
    np.testing.assert_array_equal(pixels[:, 3:], 100)  # opaque: as OpenSlide read it
    np.testing.assert_array_equal(pixels[0, 2], [20, 122, 224])  # 100·0.2 + background·0.8, rounded
    opaque = np.full((2, 2, 4), 255, dtype=np.uint8)
    assert composite(opaque, np.array(slides.WHITE)).base is not None  # a view: no copy where alpha is 255


def test_the_background_colour_property(monkeypatch: pytest.MonkeyPatch) -> None:
    assert slides._background({"openslide.background-color": "FF8000"}) == (255, 128, 0)
    assert slides._background({}) == slides.WHITE
    assert slides._background({"openslide.background-color": "nonsense"}) == slides.WHITE


# ----- choosing a level by resolution --------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "level"),
    [
        (["--mpp", "0.25"], 0),
        (["--mpp", "0.5"], 1),
        (["--mpp", "0.54"], 1),  # the coarsest level at or finer than asked
        (["--mpp", "0.53"], 1),
        (["--mpp", "1.05"], 2),  # 1.0 µm is finer than 1.05
        (["--mpp", "0.46"], 1),  # 0.5 is within 10 % of 0.46
        (["--mpp", "0.45"], 0),  # but not of 0.45
        (["--mpp", "0.4"], 0),
        (["--mpp", "100"], 2),
        (["--magnification", "40"], 0),
        (["--magnification", "20x"], 1),
        (["--magnification", "21"], 1),  # 20x is within 10 % of 21x
        (["--magnification", "23"], 0),
        (["--magnification", "10X"], 2),
        (["--magnification", "1"], 2),
    ],
)
def test_mpp_and_magnification_pick_a_slides_level(tmp_path: Path, svs: Path, flags: list[str], level: int) -> None:
    ok("unfold", svs, *flags, "-k", "8", "-s", "8", "-o", tmp_path / "out.npy")
    recorded = json.loads((tmp_path / "out.json").read_text())["source_level"]
    assert recorded["level"] == level
    name, value = flags[0].lstrip("-"), float(flags[1].rstrip("xX"))
    assert recorded["asked"] == {name: value}
    np.testing.assert_array_equal(
        np.load(tmp_path / "out.npy"), patchfold.unfold(tifffile_level(svs, level)[None], 8, stride=8)
    )


def test_the_objective_power_wins_over_the_pixel_size(tmp_path: Path) -> None:
    """A 20x objective scanned at 0.25 µm: 20x is level 0 by the objective, not level 1 by 10/mpp."""
    write_svs(tmp_path / "s.svs", IMAGE, levels=3, mpp=0.25, objective=20)
    assert open_slide(tmp_path / "s.svs", LevelRequest(magnification=20)).level == 0
    assert open_slide(tmp_path / "s.svs", LevelRequest(magnification=10)).level == 1
    assert open_slide(tmp_path / "s.svs", LevelRequest(mpp=0.5)).level == 1


@pytest.mark.parametrize(("request_", "level"), [({"mpp": 0.5}, 0), ({"mpp": 1}, 1), ({"magnification": 5}, 2)])
def test_tifffile_pyramids_pick_a_level_from_their_resolution_tags(generic: Path, request_, level: int) -> None:
    source = open_pyramid_tiff(generic, LevelRequest(**request_))  # 0.5, 1 and 2 µm: 20x, 10x, 5x
    assert source.level == level and source.describe()["asked"] == request_
    np.testing.assert_array_equal(source.load()[0], tifffile_level(generic, level))


def test_the_readmes_subifd_pyramid_picks_by_mpp(tmp_path: Path) -> None:
    from tests.test_sources import write_pyramid

    pyramid = write_pyramid(tmp_path / "slide.tif", IMAGE, levels=3, mpp=0.25)
    ok("unfold", tmp_path / "slide.tif", "--mpp", "1", "-k", "8", "-o", tmp_path / "o.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), patchfold.unfold(chw(pyramid[2])[None], 8))
    assert json.loads((tmp_path / "o.json").read_text())["source_level"]["mpp"] == [1.0, 1.0]


def test_ome_zarr_picks_a_level_from_its_scale(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(store), mode="w")
    levels = [chw(IMAGE), chw(IMAGE)[:, ::2, ::2]]
    for index, level in enumerate(levels):
        group.create_array(str(index), shape=level.shape, chunks=(3, 32, 32), dtype=level.dtype)[...] = level
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "nanometer"} for n in "yx"]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 250 * 2**i, 250 * 2**i]}]}
        for i in range(2)
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    for flags, level in [(["--mpp", "0.5"], 1), (["--mpp", "0.3"], 0), (["--magnification", "20"], 1)]:
        ok("unfold", store, *flags, "-k", "8", "-s", "8", "-o", tmp_path / "o.npy")
        np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), patchfold.unfold(levels[level][None], 8, stride=8))


def test_no_recorded_resolution_and_too_fine_a_request_are_one_error_line(tmp_path: Path) -> None:
    write_tiled_pyramid(tmp_path / "bare.tif", IMAGE, levels=2, mpp=None)
    result = invoke("unfold", tmp_path / "bare.tif", "--mpp", "0.5", "-k", "8", "-o", tmp_path / "o.npy")
    line = assert_runtime_error(result)
    assert "records no pixel size" in line and "--mpp 0.5" in line
    line = assert_runtime_error(invoke("stats", tmp_path / "bare.tif", "--magnification", "20", "-k", "8"))
    assert "records no pixel size or objective power" in line
    write_svs(tmp_path / "s.svs", IMAGE, levels=2, mpp=0.5, objective=20)
    line = assert_runtime_error(invoke("stats", tmp_path / "s.svs", "--magnification", "40", "-k", "8"))
    assert "is at most 20x (level 0)" in line and "--magnification 40" in line
    line = assert_runtime_error(invoke("stats", tmp_path / "s.svs", "--mpp", "0.25", "-k", "8"))
    assert "is at most 0.5 µm per pixel (level 0)" in line
    line = assert_runtime_error(invoke("stats", tmp_path / "s.svs", "--level", "2", "-k", "8"))
    assert "2 resolution level(s)" in line
    line = assert_runtime_error(invoke("stats", sample("rgb"), "--mpp", "0.5", "-k", "8"))
    assert "has one resolution; --mpp applies to" in line
    assert not (tmp_path / "o.npy").exists()


def test_the_level_picker_in_python() -> None:
    scales = [LevelScale.of((0.2527, 0.2527), 40.0, 1.0), LevelScale.of((0.5054, 0.5054), 40.0, 2.0)]
    assert pick_level("s.svs", LevelRequest(mpp=0.25), 2, lambda: scales) == 0  # 0.2527 counts as 0.25
    assert pick_level("s.svs", LevelRequest(mpp=0.55), 2, lambda: scales) == 1
    assert pick_level("s.svs", LevelRequest(magnification=20), 2, lambda: scales) == 1
    assert pick_level("s.svs", None, 2, lambda: pytest.fail("scales are read only for a request")) == 0
    assert LevelScale.of((0.5, 0.5)).magnification == 20  # 10 µm over the pixel size, without an objective
    for bad in [{}, {"mpp": 0.5, "magnification": 20}, {"mpp": -1}, {"mpp": float("nan")}, {"magnification": True}]:
        with pytest.raises(PatchfoldError):
            LevelRequest(**bad)


# ----- the command line -------------------------------------------------------------------------

LEVEL_COMMANDS = [
    ["unfold", "-k", "8", "-o", "o.npy"],
    ["apply", "--function", "numpy:sqrt", "-k", "8", "-o", "o.npy"],
    ["divisor", "-k", "8"],
    ["stats", "-k", "8"],
    ["tiles", "-k", "8", "-o", "tiles"],
    ["show", "grid", "-k", "8", "-o", "g.png"],
    ["show", "divisor", "-k", "8", "-o", "d.png"],
]


@pytest.mark.parametrize("command", LEVEL_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize(
    "flags",
    [
        ["--level", "1", "--mpp", "0.5"],
        ["--mpp", "0.5", "--magnification", "20"],
        ["--level", "0", "--magnification", "20"],
        ["--mpp", "0"],
        ["--mpp", "-0.5"],
        ["--mpp", "nan"],
        ["--mpp", "inf"],
        ["--mpp", "half"],
        ["--magnification", "0x"],
        ["--magnification", "x"],
    ],
)
def test_bad_level_options_exit_2(tmp_path: Path, svs: Path, command: list[str], flags: list[str]) -> None:
    name, rest = (command[:2], command[2:]) if command[0] == "show" else (command[:1], command[1:])
    rest = [str(tmp_path / a) if a.endswith((".npy", ".png", "tiles")) else a for a in rest]
    result = invoke(*name, svs, *flags, *rest)
    assert result.exit_code == 2, result.output
    assert ("--mpp" in result.stderr) or ("--magnification" in result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.svs"]


def test_every_command_with_level_offers_mpp_and_magnification() -> None:
    from tests.cli_fixtures import all_commands

    for name, command, context in all_commands():
        options = {opt for param in command.get_params(context) for opt in param.opts}
        if "--level" in options:
            assert {"--mpp", "--magnification"} <= options, name


def test_without_openslide_a_slide_is_one_line_naming_the_extra(
    tmp_path: Path, svs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide now raises ImportError
    line = assert_runtime_error(invoke("unfold", svs, "-k", "8", "-o", tmp_path / "o.npy"))
    assert "pip install 'patchfold[slide]'" in line and ".svs" in line
    # other TIFFs never needed OpenSlide
    shutil.copy(svs, tmp_path / "scan.tif")
    ok("unfold", tmp_path / "scan.tif", "--level", "1", "-k", "8", "-o", tmp_path / "o.npy")


def test_a_file_openslide_cannot_read_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "broken.svs").write_bytes(b"not a slide at all")
    line = assert_runtime_error(invoke("stats", tmp_path / "broken.svs", "-k", "8"))
    assert "'" in line and "broken.svs" in line and "OpenSlide" in line
