"""Pictures: colormap, divisor heatmap, grid, mosaic, side-by-side, terminal preview."""

from __future__ import annotations

import numpy as np
import patchfold
import pytest
from patchfold import render
from patchfold.geometry import Geometry


def test_colormap_ends_and_monotonic_brightness() -> None:
    colours = render.colormap(np.array([0.0, 0.5, 1.0]), 0.0, 1.0)
    assert colours[0].tolist() == list(render.VIRIDIS[0]) and colours[-1].tolist() == list(render.VIRIDIS[-1])
    brightness = render.colormap(np.linspace(0, 1, 50), 0, 1).astype(int).sum(axis=1)
    assert (np.diff(brightness) >= -3).all()


def test_sampled_divisor_matches_full_map_where_not_resampled() -> None:
    geometry = Geometry.create((300, 280), 32, stride=24)
    sampled = render.sampled_divisor(geometry, max_side=1024, min_side=1)
    np.testing.assert_array_equal(sampled, patchfold.divisor((300, 280), 32, stride=24))


def test_sampled_divisor_of_huge_size_is_small() -> None:
    sampled = render.sampled_divisor(Geometry.create((100000, 50000), 64, stride=32))
    assert max(sampled.shape) == render.MAX_SIDE and sampled.min() >= 1


def test_heatmap_marks_uncovered_pixels() -> None:
    values = patchfold.divisor((40, 50), 16, stride=20)
    picture = render.heatmap_image(values)
    assert picture.shape[1] == 50 + 150
    uncovered = values == 0
    assert uncovered.any()
    assert (picture[:40, :50][uncovered] == render.UNCOVERED).all()
    assert not (picture[:40, :50][~uncovered] == render.UNCOVERED).all(axis=-1).any()


def test_grid_picture_draws_outlines_and_hatched_padding() -> None:
    pixels = np.zeros((3, 40, 60), dtype=np.uint8)
    picture = render.grid_picture(pixels, Geometry.create((40, 60), 16, stride=12, padding=4))
    zoom = picture.shape[0] // 48
    assert picture.shape[:2] == (48 * zoom, 68 * zoom)
    assert (picture[0, 0] != 0).any()  # padding is hatched, not black
    assert (picture == (0, 220, 255)).all(axis=-1).any()  # the first block's outline
    assert (picture == (255, 230, 0)).all(axis=-1).any()


def test_mosaic_shows_the_patches() -> None:
    x = np.arange(2 * 6 * 8, dtype=np.uint8).reshape(1, 2, 6, 8) * 2
    cols = patchfold.unfold(x, (3, 4), stride=(3, 4))
    sheet = render.mosaic_picture(cols, 2, (3, 4), "ncl", 4)
    zoom = sheet.shape[0] // 9
    first = sheet[zoom : zoom * 4 : zoom, zoom : zoom * 5 : zoom, 0]
    np.testing.assert_array_equal(first, x[0, 0, :3, :4])  # 2 channels are shown as grey from channel 0


def test_display_rgb_stretches_16_bit_and_float() -> None:
    assert render.display_rgb(np.array([[[0, 65535]]], dtype=np.uint16)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert render.display_rgb(np.array([[[0.0, 0.5]]], dtype=np.float32))[0, 1, 0] == 128


def test_divisor_beside_image_rejects_volumes() -> None:
    with pytest.raises(patchfold.PatchfoldError):
        render.divisor_beside_image(np.zeros((1, 4, 4, 4), np.uint8), Geometry.create((4, 4, 4), 2))
