"""Pixels deeper than 8 bits come back as they went in: 16-bit colour PNGs (which Pillow reads as
8-bit) through imagecodecs, multi-channel 16-bit and float tiles and images through tifffile.
Never a silent conversion: where a library is missing, one error line names it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli_fixtures import assert_runtime_error, invoke, ok

imagecodecs = pytest.importorskip("imagecodecs")
tifffile = pytest.importorskip("tifffile")


def deep(channels: int, seed: int = 0) -> np.ndarray:
    """(H, W, C) uint16 with values across the whole 16-bit range (low bytes matter)."""
    return np.random.default_rng(seed).integers(0, 65536, (37, 29, channels), dtype=np.uint16)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_a_16_bit_colour_png_round_trips_exactly(tmp_path: Path, channels: int) -> None:
    pixels = deep(channels)
    (tmp_path / "in.png").write_bytes(imagecodecs.png_encode(pixels))
    ok("unfold", tmp_path / "in.png", "-k", "8", "-s", "4", "--cover", "-o", tmp_path / "p.npy", "-q")
    cols = np.load(tmp_path / "p.npy")
    assert cols.dtype == np.uint16 and cols.shape[1] == channels * 64
    ok("fold", tmp_path / "p.npy", "-o", tmp_path / "back.png", "-q")
    back = imagecodecs.png_decode((tmp_path / "back.png").read_bytes())
    assert back.dtype == np.uint16 and np.array_equal(back, pixels)
    stats = invoke("stats", tmp_path / "in.png", "-k", "8", "--json")
    assert stats.exit_code == 0 and f'"input_shape": [\n    1,\n    {channels},' in stats.stdout


@pytest.mark.parametrize(("fmt", "dtype"), [("png", np.uint16), ("tif", np.uint16), ("tif", np.float32)])
def test_deep_tiles_round_trip_exactly(tmp_path: Path, fmt: str, dtype: type) -> None:
    pixels = deep(3).astype(dtype) / (1 if dtype == np.uint16 else 65535)
    pixels = pixels.astype(dtype)
    tifffile.imwrite(tmp_path / "in.tif", pixels, photometric="rgb")
    ok("tiles", tmp_path / "in.tif", "-k", "8", "-s", "6", "--cover", "--format", fmt, "-o", tmp_path / "t", "-q")
    ok("untile", tmp_path / "t", "-o", tmp_path / "back.tif", "-q")
    back = tifffile.imread(tmp_path / "back.tif")
    assert back.dtype == pixels.dtype and np.array_equal(back, pixels)


def test_without_imagecodecs_a_16_bit_colour_png_is_refused_not_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.png").write_bytes(imagecodecs.png_encode(deep(3)))
    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    result = invoke("unfold", tmp_path / "in.png", "-k", "8", "-o", tmp_path / "p.npy")
    assert_runtime_error(result, "16-bit 3-channel PNG", "imagecodecs")
    assert not (tmp_path / "p.npy").exists()
    x = np.moveaxis(deep(3), -1, 0)[None]
    np.save(tmp_path / "x.npy", x)
    ok("unfold", tmp_path / "x.npy", "-k", "8", "-s", "8", "-o", tmp_path / "q.npy", "-q")
    result = invoke("fold", tmp_path / "q.npy", "-o", tmp_path / "out.png")
    assert_runtime_error(result, "uint16", "imagecodecs")
    assert not (tmp_path / "out.png").exists()
