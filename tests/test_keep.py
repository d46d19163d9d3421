"""Keep rules (issue #17, "skip what is empty"): per-block foreground counts against a plain loop,
Otsu's threshold against a brute-force search, tiles that skip blank blocks, untile of what is left,
and stats counting what tiles would keep."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from itertools import product
from pathlib import Path

import numpy as np
import patchfold
import pytest
from cli_fixtures import SAMPLES, invoke, ok, ok_json, pixels
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from patchfold import keep as keep_module
from patchfold.geometry import Geometry
from patchfold.jobs.tiles import TileSet, fold_kept, read_tiles, write_tiles
from patchfold.keep import (
    KeepRules,
    block_counts,
    find_threshold,
    foreground_mask,
    otsu_bin,
    otsu_threshold,
    select_blocks,
    subsample,
)
from PIL import Image

PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def slide(height: int = 96, width: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tissue-like RGB image ``(3, H, W)`` uint8: a textured pink-purple blob on noisy white glass,
    and the blob's mask (grey levels: tissue below 170.7, glass above 235.3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    blob = ((y - 0.4 * height) / (0.28 * height)) ** 2 + ((x - 0.4 * width) / (0.3 * width)) ** 2 < 1
    glass = rng.integers(235, 256, (3, height, width))
    tissue = np.stack(
        [rng.integers(120, 200, blob.shape), rng.integers(40, 120, blob.shape), rng.integers(120, 200, blob.shape)]
    )
    return np.where(blob, tissue, glass).astype(np.uint8), blob


def slow_counts(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Foreground pixels per block, one pixel at a time (padding: outside the mask, background)."""
    counts = np.zeros(geometry.num_blocks, dtype=np.int64)
    for column, index in enumerate(product(*(range(n) for n in geometry.blocks_per_dim))):
        for offset in geometry.kernel_offsets():
            # block_box: each block's first pixel (cover grids' moved blocks too; checked in test_cover)
            position = [start + o * d for (start, _), o, d in zip(geometry.block_box(index), offset, geometry.dilation)]
            if all(0 <= q < n for q, n in zip(position, mask.shape)):
                counts[column] += bool(mask[tuple(position)])
    return counts


def brute_otsu(counts: list[int]) -> int:
    """Otsu's split by trying every one, in exact arithmetic: the first ``k`` maximising the
    between-class variance ``w0·w1·(mu0 − mu1)²`` of bins ``0..k`` against ``k+1..``."""
    best, best_k = Fraction(-1), None
    total = sum(counts)
    for k in range(len(counts) - 1):
        n0 = sum(counts[: k + 1])
        n1 = total - n0
        if n0 == 0 or n1 == 0:
            continue
        mu0 = Fraction(sum(i * c for i, c in enumerate(counts[: k + 1])), n0)
        mu1 = Fraction(sum(i * c for i, c in enumerate(counts) if i > k), n1)
        variance = Fraction(n0, total) * Fraction(n1, total) * (mu0 - mu1) ** 2
        if variance > best:
            best, best_k = variance, k
    if best_k is None:  # fewer than two non-empty bins: the last non-empty one
        nonzero = [i for i, c in enumerate(counts) if c]
        return nonzero[-1] if nonzero else 0
    return best_k


# ----- the library: counts, thresholds, rules ----------------------------------------------------------
@st.composite
def mask_and_geometry(draw: st.DrawFn) -> tuple[np.ndarray, Geometry]:
    ndim = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(1, 11 if ndim < 3 else 6)) for _ in range(ndim))

    def per_dim(low: int, high: int) -> tuple[int, ...]:
        return tuple(draw(st.integers(low, high)) for _ in range(ndim))

    kernel, stride, padding, dilation = per_dim(1, 4), per_dim(1, 3), per_dim(0, 2), per_dim(1, 3)
    cover = draw(st.booleans())
    padding = (0,) * ndim if cover else padding
    try:
        geometry = Geometry.create(size, kernel, stride=stride, padding=padding, dilation=dilation, cover=cover)
    except patchfold.PatchfoldError:
        assume(False)
    seed = draw(st.integers(0, 2**16))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    return np.random.default_rng(seed).random(size) < density, geometry


@PROPERTY
@given(mask_and_geometry())
def test_block_counts_match_a_pixel_loop(case: tuple[np.ndarray, Geometry]) -> None:
    mask, geometry = case
    counts = block_counts(mask, geometry)
    assert counts.shape == geometry.blocks_per_dim
    np.testing.assert_array_equal(counts.reshape(-1), slow_counts(mask, geometry))


@PROPERTY
@given(st.lists(st.integers(0, 40), min_size=1, max_size=16))
def test_otsu_matches_a_brute_force_search(counts: list[int]) -> None:
    assert otsu_bin(np.array(counts)) == brute_otsu(counts)


def test_otsu_threshold_splits_two_modes_and_handles_flat_images() -> None:
    rng = np.random.default_rng(0)
    grey = np.concatenate([rng.normal(60, 8, 3000), rng.normal(230, 5, 7000)])
    dark, light = grey[:3000].max(), grey[3000:].min()
    assert otsu_threshold(grey) == pytest.approx((dark + light) / 2, abs=1)  # halfway across the gap
    assert otsu_threshold(np.full(10, 7.0)) == 7.0  # one level: every pixel light (grey >= t)
    assert np.isnan(otsu_threshold(np.full(4, np.nan)))
    assert otsu_threshold(np.array([0.0, np.nan, 10.0, np.inf])) == pytest.approx(5, abs=0.1)


def test_the_tissue_of_a_synthetic_slide_is_the_foreground() -> None:
    image, blob = slide()
    threshold = find_threshold(image)
    assert 170.7 < threshold.level < 235.3 and threshold.light_background
    np.testing.assert_array_equal(foreground_mask(image, threshold), blob)


def test_a_dark_background_is_named_by_its_grey_level() -> None:
    image, blob = slide()
    inverted = 255 - image  # black background, light tissue
    threshold = find_threshold(inverted, background=0)
    assert not threshold.light_background
    np.testing.assert_array_equal(foreground_mask(inverted, threshold), blob)
    auto = find_threshold(inverted)  # auto: the light side (here the tissue) is the background
    np.testing.assert_array_equal(foreground_mask(inverted, auto), ~blob)


def test_constant_and_nan_images_are_all_background() -> None:
    g = Geometry.create((8, 8), 4, stride=4)
    rules = KeepRules(min_foreground=0.0001)
    assert select_blocks(np.full((3, 8, 8), 255, np.uint8), g, rules).kept == 0
    assert select_blocks(np.full((1, 8, 8), np.nan), g, rules).kept == 0
    black = np.zeros((1, 8, 8), np.uint8)
    assert select_blocks(black, g, rules).kept == 0  # one grey level: nothing to tell apart
    assert select_blocks(black, g, KeepRules(min_foreground=1, background=255)).kept == 0  # all light
    white = np.full((1, 8, 8), 255, np.uint8)
    assert select_blocks(white, g, KeepRules(min_foreground=1, background=0)).kept == 4  # a level below it


def test_foreground_mask_in_bands_is_the_whole_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    image, _ = slide(40, 30)
    threshold = find_threshold(image)
    whole = foreground_mask(image, threshold)
    monkeypatch.setattr(keep_module, "_BAND_PIXELS", 7)
    np.testing.assert_array_equal(foreground_mask(image, threshold), whole)


def test_otsu_sees_a_strided_subsample_of_large_images() -> None:
    image = np.zeros((1, 3000, 2000), np.uint8)
    sampled = subsample(image, most=10_000)
    assert sampled.size <= 10_000 and sampled.size > 2_000
    assert subsample(image[:, :50, :50]).shape == (1, 50, 50)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"), [(16, 16, 0, 1), (16, 8, 4, 1), ((9, 12), (5, 7), (3, 0), (2, 3))]
)
def test_selection_matches_the_rules_applied_block_by_block(kernel, stride, padding, dilation) -> None:
    image, blob = slide()
    g = Geometry.create(blob.shape, kernel, stride=stride, padding=padding, dilation=dilation)
    counts = slow_counts(blob, g)
    volume = g.kernel_volume
    for rules in (
        KeepRules(min_foreground=0.5),
        KeepRules(max_blank=0.25),
        KeepRules(min_foreground=0.2, max_blank=0.6),
    ):
        chosen = select_blocks(image, g, rules)
        np.testing.assert_array_equal(chosen.counts, counts)
        expected = [
            (rules.min_foreground is None or c / volume >= rules.min_foreground)
            and (rules.max_blank is None or (volume - c) / volume <= rules.max_blank)
            for c in counts
        ]
        np.testing.assert_array_equal(chosen.keep, expected)
        assert 0 < chosen.kept < g.num_blocks


def test_max_blank_is_the_complement_of_min_foreground() -> None:
    counts = np.arange(0, 101)
    np.testing.assert_array_equal(
        KeepRules(max_blank=0.3).keeps(counts, 100), KeepRules(min_foreground=0.7).keeps(counts, 100)
    )
    both = KeepRules(min_foreground=0.2, max_blank=0.9).keeps(counts, 100)  # every rule must hold
    assert both.sum() == 81 and both[20] and not both[19]


@given(
    hundredths=st.integers(0, 100),
    volume=st.sampled_from([1, 3, 7, 10, 64, 100, 144, 1000, 4096, 262144]),
)
def test_fractions_are_exact_at_the_boundary(hundredths: int, volume: int) -> None:
    """A block whose fraction is exactly F meets ``min_foreground=F``, and one whose blank share is
    exactly B meets ``max_blank=B``: reference in integers on the decimal F = hundredths / 100
    (0.55 * 100 is 55.00000000000001 in floats)."""
    fraction = float(f"{hundredths / 100:.2f}")
    counts = np.arange(volume + 1)
    want_foreground = counts * 100 >= hundredths * volume
    want_blank = (volume - counts) * 100 <= hundredths * volume
    np.testing.assert_array_equal(KeepRules(min_foreground=fraction).keeps(counts, volume), want_foreground)
    np.testing.assert_array_equal(KeepRules(max_blank=fraction).keeps(counts, volume), want_blank)
    complement = float(f"{(100 - hundredths) / 100:.2f}")  # the README: the two rules say the same
    np.testing.assert_array_equal(
        KeepRules(max_blank=complement).keeps(counts, volume), KeepRules(min_foreground=fraction).keeps(counts, volume)
    )


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"min_foreground": 1.5}, "min_foreground"),
        ({"min_foreground": -0.1}, "min_foreground"),
        ({"max_blank": float("nan")}, "max_blank"),
        ({"max_blank": "0.5"}, "max_blank"),
        ({"min_foreground": True}, "min_foreground"),
        ({"min_foreground": 0.5, "background": float("inf")}, "background"),
        ({"min_foreground": 0.5, "background": "white"}, "background"),
        ({"background": 255}, "background"),
        ({}, "min_foreground"),
    ],
)
def test_bad_rules_name_the_parameter(arguments: dict, param: str) -> None:
    with pytest.raises(patchfold.PatchfoldError) as caught:
        KeepRules(**arguments)
    assert caught.value.param == param


# ----- tiles that skip blank blocks, and untile of what is left -------------------------------------
def kept_tiles(tmp_path: Path, **rules) -> tuple[np.ndarray, Geometry, Path]:
    image, _ = slide()
    g = Geometry.create(image.shape[1:], 16, stride=8, padding=4)
    list(write_tiles(image[None], g, tmp_path / "t", ["slide.png"], "png", KeepRules(**rules)))
    return image, g, tmp_path / "t"


def test_write_tiles_writes_and_lists_only_kept_blocks(tmp_path: Path) -> None:
    image, g, directory = kept_tiles(tmp_path, min_foreground=0.5)
    chosen = select_blocks(image, g, KeepRules(min_foreground=0.5))
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["keep"] == {
        "min_foreground": 0.5, "max_blank": None, "background": "auto", "grey": "mean of channels",
        "kept": chosen.kept, "skipped": g.num_blocks - chosen.kept,
    }  # fmt: skip
    assert manifest["images"][0]["keep"]["kept"] == chosen.kept
    assert manifest["images"][0]["keep"]["background_class"] == "light"
    assert 170.7 < manifest["images"][0]["keep"]["threshold"] < 235.3
    columns = [int(np.ravel_multi_index(t["index"], g.blocks_per_dim)) for t in manifest["tiles"]]
    assert columns == list(np.flatnonzero(chosen.keep))
    assert all(t["foreground"] >= 0.5 for t in manifest["tiles"])
    files = {p.name for p in directory.iterdir()} - {"manifest.json", "manifest.csv"}
    assert files == {t["file"] for t in manifest["tiles"]}
    with open(directory / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == chosen.kept and float(rows[0]["foreground"]) == manifest["tiles"][0]["foreground"]


def test_read_tiles_leaves_skipped_blocks_empty(tmp_path: Path) -> None:
    image, g, directory = kept_tiles(tmp_path, max_blank=0.5)
    *_, tileset = read_tiles(directory)
    assert isinstance(tileset, TileSet)
    cols = patchfold.unfold(image[None], g.blocks)
    present = tileset.present[0]
    assert tileset.missing == int((~present).sum()) > 0
    np.testing.assert_array_equal(tileset.cols[0][:, present], cols[0][:, present])
    assert not tileset.cols[0][:, ~present].any()
    (directory / json.loads((directory / "manifest.json").read_text())["tiles"][0]["file"]).unlink()
    with pytest.raises(patchfold.PatchfoldError, match="missing"):  # a listed tile must still be there
        list(read_tiles(directory))


def slow_fold_kept(cols: np.ndarray, present: np.ndarray, g: Geometry, weights: np.ndarray | None) -> np.ndarray:
    """The mean of the kept blocks over each pixel (weighted by ``weights`` ``(L, ∏k)``), 0 elsewhere."""
    channels = cols.shape[0] // g.kernel_volume
    sums = np.zeros((channels, *g.spatial_size))
    divisor = np.zeros(g.spatial_size)
    for column, index in enumerate(product(*(range(n) for n in g.blocks_per_dim))):
        if not present[column]:
            continue
        for row, offset in enumerate(g.kernel_offsets()):
            position = tuple(i * s - p + o * d for i, s, p, o, d in zip(index, g.stride, g.padding, offset, g.dilation))
            if all(0 <= q < n for q, n in zip(position, g.spatial_size)):
                weight = 1.0 if weights is None else weights[column, row]
                sums[(slice(None), *position)] += weight * cols[row :: g.kernel_volume, column]
                divisor[position] += weight
    return np.divide(sums, divisor, out=np.zeros_like(sums), where=divisor > 0)


@pytest.mark.parametrize("window", [None, "hann"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_fold_kept_is_the_mean_of_the_kept_blocks(window: str | None, dtype: type) -> None:
    rng = np.random.default_rng(3)
    g = Geometry.create((13, 11), (4, 3), stride=(3, 2), padding=(1, 2), dilation=(2, 1))
    x = rng.integers(0, 256, (1, 2, 13, 11)).astype(dtype)
    cols = patchfold.unfold(x, g.blocks)
    present = rng.random((1, g.num_blocks)) < 0.5
    cols[:, :, ~present[0]] = 0
    from patchfold.windows import window_weights

    per_dim = window_weights(g, window)
    weights = None
    if per_dim is not None:  # per block and kernel offset: the product of the per-dim weights
        weights = np.array(
            [
                [
                    np.prod([per_dim[d][i][o] for d, (i, o) in enumerate(zip(index, offset))])
                    for offset in g.kernel_offsets()
                ]
                for index in product(*(range(n) for n in g.blocks_per_dim))
            ]
        )
    expected = slow_fold_kept(cols[0].astype(np.float64), present[0], g, weights)
    result = fold_kept(cols, present, g, window)
    assert result.dtype == dtype
    if dtype == np.uint8:
        np.testing.assert_array_equal(result[0], np.rint(expected).astype(np.uint8))
    else:
        np.testing.assert_allclose(result[0], expected, rtol=1e-12, atol=1e-12)


# ----- the command line ---------------------------------------------------------------------------------
@pytest.fixture
def slide_png(tmp_path: Path) -> Path:
    path = tmp_path / "slide.png"
    Image.fromarray(np.moveaxis(slide()[0], 0, -1)).save(path)
    return path


def test_cli_tiles_keep_and_untile_back(tmp_path: Path, slide_png: Path) -> None:
    image, blob = slide()
    summary = ok_json("tiles", slide_png, "-k", 16, "-s", 16, "--min-foreground", 0.5, "-o", tmp_path / "t")
    g = Geometry.create(blob.shape, 16, stride=16)
    expected = KeepRules(min_foreground=0.5).keeps(slow_counts(blob, g), g.kernel_volume)
    assert summary["tiles"] == summary["keep"]["kept"] == int(expected.sum())
    assert summary["keep"]["skipped"] == g.num_blocks - int(expected.sum())
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["keep"]["min_foreground"] == 0.5 and len(manifest["tiles"]) == summary["tiles"]
    back = ok_json("untile", tmp_path / "t", "-o", tmp_path / "back.png")
    assert back["tiles"] == summary["tiles"] and back["missing_blocks"] == summary["keep"]["skipped"]
    restored = np.moveaxis(pixels(tmp_path / "back.png"), -1, 0)
    kept = np.zeros(blob.shape, bool)  # the pixels of the kept blocks (no overlap: stride = kernel)
    for column in np.flatnonzero(expected):
        (y0, y1), (x0, x1) = g.block_box(np.unravel_index(column, g.blocks_per_dim))
        kept[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(restored[:, kept], image[:, kept])
    assert not restored[:, ~kept].any()


def test_cli_untile_of_overlapping_kept_tiles_with_a_window(tmp_path: Path, slide_png: Path) -> None:
    image, _ = slide()
    ok("tiles", slide_png, "-k", 16, "-s", 8, "--max-blank", 0.2, "-o", tmp_path / "t")
    ok("untile", tmp_path / "t", "--window", "hann", "-o", tmp_path / "back.png")
    restored = np.moveaxis(pixels(tmp_path / "back.png"), -1, 0)
    covered = restored.any(axis=0)
    assert 0 < covered.mean() < 1
    assert np.abs(restored[:, covered].astype(int) - image[:, covered]).max() <= 1  # rounding of a weighted mean


def test_cli_stats_reports_what_tiles_would_keep(tmp_path: Path, slide_png: Path) -> None:
    args = ("-k", 16, "-s", 8, "--min-foreground", 0.3, "--max-blank", 0.6)
    stats = ok_json("stats", slide_png, *args)
    tiles = ok_json("tiles", slide_png, *args, "-o", tmp_path / "t")
    assert stats["keep"] == tiles["keep"] and stats["keep"]["max_blank"] == 0.6
    assert stats["keep"]["kept"] + stats["keep"]["skipped"] == stats["num_blocks"]
    table = ok("stats", slide_png, *args).stderr  # a report goes to stdout at a terminal only
    assert f"{tiles['tiles']} of {stats['num_blocks']} (min foreground 0.3; max blank 0.6;" in table
    assert "keep" not in ok_json("stats", slide_png, "-k", 16)  # no rules: the header only, as before


def test_cli_background_names_a_dark_background(tmp_path: Path) -> None:
    path = tmp_path / "dark.png"
    Image.fromarray(255 - np.moveaxis(slide()[0], 0, -1)).save(path)
    light = ok_json("stats", path, "-k", 16, "-s", 16, "--min-foreground", 0.5)["keep"]
    dark = ok_json("stats", path, "-k", 16, "-s", 16, "--min-foreground", 0.5, "--background", 0)["keep"]
    assert dark["background"] == 0 and dark["kept"] != light["kept"]


def test_cli_batch_tiles_keep(tmp_path: Path, slide_png: Path) -> None:
    summary = ok_json(
        "batch", "tiles", slide_png, "-k", 16, "-s", 16, "--min-foreground", 0.5, "-o", tmp_path / "b", "--workers", 1
    )
    single = ok_json("tiles", slide_png, "-k", 16, "-s", 16, "--min-foreground", 0.5, "-o", tmp_path / "t")
    assert summary["tiles"] == single["tiles"]
    top = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert top["keep"]["min_foreground"] == 0.5
    ok("untile", tmp_path / "b" / top["images"][0]["directory"], "-o", tmp_path / "back.png")


def test_cli_readme_sample_keeps_the_hills() -> None:
    summary = ok_json("stats", SAMPLES / "scene_rgb.png", "-k", 40, "-s", 40, "--min-foreground", 0.5)
    assert 0 < summary["keep"]["kept"] < summary["num_blocks"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--min-foreground", "1.5"], "--min-foreground"),
        (["--min-foreground", "-0.2"], "--min-foreground"),
        (["--max-blank", "nan"], "--max-blank"),
        (["--max-blank", "half"], "--max-blank"),
        (["--min-foreground", "0.5", "--background", "white"], "--background"),
        (["--min-foreground", "0.5", "--background", "inf"], "--background"),
        (["--background", "255"], "--background"),
    ],
)
@pytest.mark.parametrize("command", ["tiles", "stats"])
def test_cli_bad_keep_values_are_usage_errors(tmp_path: Path, command: str, args: list[str], named: str) -> None:
    output = ["-o", tmp_path / "t"] if command == "tiles" else []
    result = invoke(command, SAMPLES / "scene_gray.png", "-k", 16, *args, *output)
    assert result.exit_code == 2, result.stderr
    assert f"Invalid value for '{named}'" in result.stderr
    assert not (tmp_path / "t").exists()


def test_cli_stats_keep_needs_pixels() -> None:
    result = invoke("stats", "--size", "64,64", "-k", 8, "--min-foreground", 0.5)
    assert result.exit_code == 2 and "give inputs instead of --size" in result.stderr


def test_cli_a_blank_image_keeps_nothing_and_untiles_to_zeros(tmp_path: Path) -> None:
    path = tmp_path / "glass.png"
    Image.fromarray(np.full((48, 64, 3), 250, np.uint8)).save(path)
    summary = ok_json("tiles", path, "-k", 16, "--min-foreground", 0.01, "-o", tmp_path / "t")
    assert summary["tiles"] == 0 and summary["keep"]["skipped"] == 33 * 49
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["manifest.csv", "manifest.json"]
    back = ok_json("untile", tmp_path / "t", "-o", tmp_path / "back.png")
    assert back["tiles"] == 0 and back["missing_blocks"] == 33 * 49
    assert not pixels(tmp_path / "back.png").any() and pixels(tmp_path / "back.png").shape == (48, 64, 3)
