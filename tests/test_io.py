"""Reading inputs: TIFF variants through tifffile, volumes, channel conversion, .npy shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import patchfold
import pytest
from patchfold.io.read import load_inputs, read_npy
from patchfold.io.sources import convert_channels
from PIL import Image

tifffile = pytest.importorskip("tifffile")


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(bigtiff=True),
        dict(tile=(16, 16)),
        dict(tile=(16, 16), bigtiff=True, compression="zlib"),
    ],
    ids=["plain", "bigtiff", "tiled", "tiled-bigtiff-zlib"],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_variants_read_exactly(tmp_path: Path, options: dict, dtype: type) -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.random((40, 56, 3)) * 60000).astype(dtype)
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", **options)
    batch = load_inputs([path])
    assert batch.array.dtype == dtype
    np.testing.assert_array_equal(batch.array[0], np.moveaxis(pixels, -1, 0))


def test_uncompressed_tiff_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    array = load_inputs([path]).array
    assert isinstance(array.base, np.memmap) or isinstance(array, np.memmap) or array.base is not None
    assert not array.flags.owndata


def test_multipage_tiff_needs_stack(tmp_path: Path) -> None:
    path = tmp_path / "volume.tif"
    volume = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    tifffile.imwrite(path, volume)
    with pytest.raises(patchfold.PatchfoldError, match="stack=True"):
        load_inputs([path])
    array = load_inputs([path], stack=True).array
    assert array.shape == (1, 1, 5, 6, 7)
    np.testing.assert_array_equal(array[0, 0], volume)


def test_directory_of_slices_stacks_into_a_volume(tmp_path: Path) -> None:
    slices = np.random.default_rng(1).integers(0, 255, (4, 9, 11), dtype=np.uint8)
    for i, plane in enumerate(slices):
        Image.fromarray(plane).save(tmp_path / f"slice_{i:02d}.png")
    array = load_inputs([tmp_path], stack=True).array
    np.testing.assert_array_equal(array[0, 0], slices)
    Image.fromarray(np.zeros((9, 12), np.uint8)).save(tmp_path / "slice_99.png")
    with pytest.raises(patchfold.PatchfoldError, match="one volume"):
        load_inputs([tmp_path], stack=True)


def test_tiff_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, np.zeros((30, 40), np.uint8))
    with pytest.raises(patchfold.PatchfoldError, match="over the limit of 1000"):
        load_inputs([path], max_pixels=1000)


@pytest.mark.parametrize(
    ("have", "want", "expected"),
    [(1, 3, [[7, 7, 7]]), (4, 3, [[1, 2, 3]]), (3, 1, [[2]]), (2, 1, [[1]]), (3, 3, [[1, 2, 3]])],
)
def test_convert_channels(have: int, want: int, expected: list) -> None:
    values = {1: [7], 2: [1, 9], 3: [1, 2, 3], 4: [1, 2, 3, 4]}[have]
    array = np.array(values, dtype=np.uint8).reshape(1, have, 1, 1)
    np.testing.assert_array_equal(convert_channels(array, want, "x")[0, :, 0, 0], expected[0])


def test_convert_channels_refuses_the_impossible() -> None:
    with pytest.raises(patchfold.PatchfoldError, match="cannot convert"):
        convert_channels(np.zeros((1, 2, 1, 1), np.uint8), 4, "x.png")


@pytest.mark.parametrize(
    ("shape", "dims", "expected"),
    [
        ((7,), None, (1, 1, 7)),
        ((5, 6), None, (1, 1, 5, 6)),
        ((2, 5, 6), None, (1, 2, 5, 6)),
        ((1, 2, 3, 4, 5), None, (1, 2, 3, 4, 5)),
        ((3, 4, 5), 3, (1, 1, 3, 4, 5)),
        ((2, 9), 1, (1, 2, 9)),
    ],
)
def test_npy_shapes_by_rank(tmp_path: Path, shape: tuple, dims: int | None, expected: tuple) -> None:
    np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
    assert read_npy(tmp_path / "a.npy", dims).shape == expected


def test_a_writer_waits_for_a_memory_mapped_input_and_we_are_told(tmp_path: Path, monkeypatch) -> None:
    """A large .npy is memory-mapped under a read lease: another process opening it to write is
    held back by the kernel, this process gets a PatchfoldError (never SIGBUS), and the writer
    goes on once the mapping is freed."""
    import gc
    import subprocess
    import sys
    import time

    from patchfold.io import leases, read

    path = tmp_path / "big.npy"
    np.save(path, np.arange(2_000_000, dtype=np.float64))
    monkeypatch.setattr(read, "MAX_READ_BYTES", 1 << 20)
    array = read_npy(path)
    assert isinstance(array.base if array.base is not None else array, np.ndarray)
    if not leases._LEASED:
        pytest.skip("no read leases here (file system or permissions)")
    writer = subprocess.Popen(
        [sys.executable, "-c", f"f = open({str(path)!r}, 'r+b'); f.truncate(0); print('truncated')"],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    with pytest.raises(patchfold.PatchfoldError, match="being written by another process"):
        while time.monotonic() < deadline:
            float(array[::1000].sum())  # touching the pages: with the file truncated this would be SIGBUS
            time.sleep(0.005)
    assert writer.poll() is None  # still held back: the mapping is alive
    del array
    gc.collect()
    assert writer.communicate(timeout=10)[0].strip() == "truncated"
    assert not leases._LEASED


def test_float16_conversion_of_16_bit_pixels_scales_before_it_narrows() -> None:
    from patchfold.dtypes import convert_dtype

    pixels = np.array([0, 1000, 65504, 65535], dtype=np.uint16)
    converted, _ = convert_dtype(pixels, "float16")
    assert converted.dtype == np.float16 and np.isfinite(converted).all()
    np.testing.assert_allclose(converted, pixels / 65535, rtol=1e-3)
