"""The command line, run in-process with click's CliRunner: success paths checked against PyTorch
and the original pixels, output channels, and atomic outputs when a write fails midway. (The matrix
of bad inputs and option values, with the error contract, is test_hostile.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import patchfold
import pytest
import torch
from cli_fixtures import (
    SAMPLE_IMAGES,
    VOLUME,
    as_nchw,
    assert_runtime_error,
    divisor_ref,
    fold_ref,
    invoke,
    ok,
    ok_json,
    part_files,
    pixels,
    sample,
    unfold_ref,
)
from helpers_ref import STATS_KEYS
from patchfold.errors import PatchfoldError
from PIL import Image

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture
def rgb_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two different RGB images of the same size (a.png is the sample, b.png its mirror image)."""
    folder = tmp_path / "pair"
    folder.mkdir()
    original = pixels(sample("rgb"))
    Image.fromarray(original).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(original[::-1, ::-1])).save(folder / "b.png")
    return folder / "a.png", folder / "b.png"


def sample_nchw(name: str) -> np.ndarray:
    return as_nchw(pixels(sample(name)))


# ----- unfold ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("name", list(SAMPLE_IMAGES))
def test_unfold_each_sample_image(tmp_path: Path, name: str, layout: str) -> None:
    path = sample(name)
    out = tmp_path / "patches.npy"
    summary = ok_json("unfold", path, "-k", 16, "-s", 8, "-o", out, "--layout", layout, "--no-progress")
    images = as_nchw(pixels(path))
    cols = np.load(out)
    assert cols.dtype == images.dtype, "dtype keep must keep the image's dtype (16-bit stays 16-bit)"
    np.testing.assert_array_equal(cols, unfold_ref(images, 16, stride=8, layout=layout))
    assert list(cols.shape) == summary["output_shape"]
    assert summary["input_shape"] == list(images.shape)
    assert summary["layout"] == layout
    assert summary["input_dtype"] == summary["output_dtype"] == str(images.dtype)
    h, w = images.shape[2:]
    assert summary["blocks_per_dim"] == [(h - 16) // 8 + 1, (w - 16) // 8 + 1]
    assert summary["num_blocks"] == summary["blocks_per_dim"][0] * summary["blocks_per_dim"][1]
    assert summary["output_bytes"] == cols.nbytes
    assert summary["sidecar"] == str(out.with_suffix(".json"))

    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar == {
        "kernel_size": [16, 16],
        "stride": [8, 8],
        "padding": [0, 0],
        "dilation": [1, 1],
        "input_shape": list(images.shape),
        "input_dtype": str(images.dtype),
        "output_dtype": str(images.dtype),
        "scale": 1.0,
        "layout": layout,
        "padding_mode": "zeros",
        "sources": [str(path.resolve())],
        "format": "patchfold-patches",
        "version": 1,
    }


@pytest.mark.parametrize("name", ["rgb", "depth16"])
def test_unfold_dtype_float32_scales_to_unit_range(tmp_path: Path, name: str) -> None:
    out = tmp_path / "p.npy"
    ok("unfold", sample(name), "-k", 8, "-s", 4, "--dtype", "float32", "-o", out)
    cols = np.load(out)
    images = sample_nchw(name)
    maximum = np.iinfo(images.dtype).max
    assert cols.dtype == np.float32
    np.testing.assert_allclose(cols, unfold_ref(images, 8, stride=4) / maximum, rtol=2e-7, atol=0)
    assert cols.min() >= 0.0 and cols.max() <= 1.0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["input_dtype"] == str(images.dtype)
    assert sidecar["output_dtype"] == "float32"
    assert sidecar["scale"] == pytest.approx(1 / maximum, rel=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_unfold_other_float_dtypes(tmp_path: Path, dtype: str) -> None:
    out = tmp_path / "p.npy"
    ok("unfold", sample("gray"), "-k", 4, "-s", 4, "--dtype", dtype, "-o", out)
    cols = np.load(out)
    assert cols.dtype == np.dtype(dtype)
    ref = unfold_ref(sample_nchw("gray"), 4, stride=4) / 255
    np.testing.assert_allclose(cols.astype(np.float64), ref, rtol=1e-3 if dtype == "float16" else 1e-12)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_unfold_all_block_parameters_match_torch(tmp_path: Path, layout: str) -> None:
    out = tmp_path / "p.npy"
    summary = ok_json(
        "unfold", sample("rgb"), "-k", "5,3", "-s", "2,3", "-p", "1,2", "-d", "2,1", "--layout", layout, "-o", out
    )
    cols = np.load(out)
    np.testing.assert_array_equal(cols, unfold_ref(sample_nchw("rgb"), (5, 3), (2, 1), (1, 2), (2, 3), layout))
    assert summary["kernel_size"] == [5, 3] and summary["stride"] == [2, 3]
    assert summary["padding"] == [1, 2] and summary["dilation"] == [2, 1]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_unfold_padding_modes(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "p.npy"
    ok("unfold", sample("gray"), "-k", 7, "-s", 3, "-p", 4, "--padding-mode", mode, "-o", out)
    images = sample_nchw("gray")
    numpy_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    padded = np.pad(images, [(0, 0), (0, 0), (4, 4), (4, 4)], mode=numpy_mode)
    np.testing.assert_array_equal(np.load(out), unfold_ref(padded, 7, stride=3))
    assert json.loads(out.with_suffix(".json").read_text())["padding_mode"] == mode
    restored = tmp_path / "r.png"
    ok("fold", out, "-o", restored)
    np.testing.assert_array_equal(pixels(restored), pixels(sample("gray")))


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_unfold_streamed_in_bands_equals_whole(tmp_path: Path, layout: str) -> None:
    whole, banded = tmp_path / "whole.npy", tmp_path / "banded.npy"
    first = ok_json("unfold", sample("rgb"), "-k", 16, "-s", 8, "--layout", layout, "-o", whole)
    second = ok_json(
        "unfold", sample("rgb"), "-k", 16, "-s", 8, "--layout", layout, "-o", banded, "--max-memory", "40KB"
    )
    assert first["streamed"] is False and first["bands"] == 1
    assert second["streamed"] is True and second["bands"] > 1
    np.testing.assert_array_equal(np.load(banded), np.load(whole))


def test_unfold_torch_engine_equals_cpu_engine(tmp_path: Path) -> None:
    ok("unfold", sample("rgba"), "-k", 6, "-s", 5, "-p", 2, "-o", tmp_path / "cpu.npy", "--engine", "cpu")
    summary = ok_json(
        "unfold",
        sample("rgba"),
        "-k",
        6,
        "-s",
        5,
        "-p",
        2,
        "-o",
        tmp_path / "torch.npy",
        "--engine",
        "torch",
        "--device",
        "cpu",
    )
    assert summary["engine"] == "torch" and summary["device"] == "cpu"
    np.testing.assert_array_equal(np.load(tmp_path / "torch.npy"), np.load(tmp_path / "cpu.npy"))


def test_unfold_npy_input_1d_and_3d(tmp_path: Path) -> None:
    signal = np.arange(50, dtype=np.int32) * 3 - 7
    np.save(tmp_path / "signal.npy", signal)
    summary = ok_json("unfold", tmp_path / "signal.npy", "-k", 5, "-s", 2, "-o", tmp_path / "s.npy")
    assert summary["input_shape"] == [1, 1, 50]
    expected = np.lib.stride_tricks.sliding_window_view(signal, 5)[::2].T[None]
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), expected)
    ok("fold", tmp_path / "s.npy", "-o", tmp_path / "signal_back.npy")  # the sidecar's 1-D size, not a square
    back = np.load(tmp_path / "signal_back.npy")
    np.testing.assert_array_equal(back[0, 0, : 2 * 22 + 5], signal[: 2 * 22 + 5])
    assert back.shape == (1, 1, 50)

    volume = np.random.default_rng(0).integers(0, 1000, size=(2, 12, 16, 20)).astype(np.uint16)
    np.save(tmp_path / "volume.npy", volume)
    summary = ok_json(
        "unfold", tmp_path / "volume.npy", "--spatial-dims", 3, "-k", "4,4,5", "-s", "2,4,5", "-o", tmp_path / "v.npy"
    )
    assert summary["input_shape"] == [1, 2, 12, 16, 20]
    assert summary["blocks_per_dim"] == [5, 4, 4]
    assert np.load(tmp_path / "v.npy").shape == (1, 2 * 4 * 4 * 5, 80)
    ok("fold", tmp_path / "v.npy", "-o", tmp_path / "back.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), volume[None])


def test_unfold_directory_input_is_sorted_by_name(tmp_path: Path, rgb_pair: tuple[Path, Path]) -> None:
    a, b = rgb_pair
    out = tmp_path / "p.npy"
    summary = ok_json("unfold", a.parent, "-k", 16, "-s", 16, "-o", out)
    assert summary["inputs"] == 2 and summary["input_shape"] == [2, 3, 240, 320]
    cols = np.load(out)
    np.testing.assert_array_equal(cols[0], unfold_ref(as_nchw(pixels(a)), 16, stride=16)[0])
    np.testing.assert_array_equal(cols[1], unfold_ref(as_nchw(pixels(b)), 16, stride=16)[0])
    assert json.loads(out.with_suffix(".json").read_text())["sources"] == [str(a.resolve()), str(b.resolve())]


def test_the_summary_counts_every_input_given(tmp_path: Path, rgb_pair: tuple[Path, Path]) -> None:
    """ "inputs" was the number of distinct files: 1 for the README's pair of one image given twice."""
    a, b = rgb_pair
    out = tmp_path / "p.npy"
    for inputs, count in (((a, a), 2), ((a, b), 2), ((a.parent, a), 3), ((a,), 1)):
        summary = ok_json("unfold", *inputs, "-k", 4, "-s", 4, "-o", out)
        assert summary["inputs"] == count and summary["input_shape"][0] == count, inputs
    tiles = ok_json("tiles", a, a, "-k", 80, "-s", 80, "-o", tmp_path / "tiles")
    assert tiles["images"] == 2 and tiles["tiles"] == 2 * 3 * 4
    npy = tmp_path / "four.npy"
    np.save(npy, np.zeros((4, 1, 8, 8), np.uint8))
    summary = ok_json("unfold", npy, "-k", 4, "-o", out)
    assert summary["inputs"] == 1 and summary["input_shape"][0] == 4  # one file holding four images


def test_unfold_stacks_several_inputs(tmp_path: Path, rgb_pair: tuple[Path, Path]) -> None:
    a, b = rgb_pair
    out = tmp_path / "p.npy"
    summary = ok_json("unfold", b, a, b, "-k", 8, "-s", 8, "-o", out)
    assert summary["input_shape"] == [3, 3, 240, 320]
    assert summary["inputs"] == 3  # b given twice is two images of the batch
    cols = np.load(out)
    ref_a, ref_b = (unfold_ref(as_nchw(pixels(p)), 8, stride=8)[0] for p in (a, b))
    assert not np.array_equal(ref_a, ref_b)
    for item, ref in zip(cols, (ref_b, ref_a, ref_b), strict=True):
        np.testing.assert_array_equal(item, ref)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["sources"] == [str(b.resolve()), str(a.resolve()), str(b.resolve())]
    assert sidecar["input_shape"] == [3, 3, 240, 320]


def volume_pages() -> np.ndarray:
    with Image.open(VOLUME) as image:
        pages = []
        for index in range(image.n_frames):
            image.seek(index)
            pages.append(np.asarray(image).copy())
    return np.stack(pages)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_unfold_volume_stack_as_3d_volume(tmp_path: Path, layout: str) -> None:
    """sample_images/README.md documents volume_stack.tif (16 pages) as 'a 3-D volume (`--stack`)'."""
    out = tmp_path / "v.npy"
    summary = ok_json("unfold", VOLUME, "--stack", "-k", "4,8,8", "-s", "4,8,8", "--layout", layout, "-o", out)
    volume = volume_pages()
    assert volume.shape == (16, 64, 64)
    assert summary["input_shape"] == [1, 1, 16, 64, 64]
    assert summary["blocks_per_dim"] == [4, 8, 8]
    cols = np.load(out)
    # non-overlapping 4x8x8 blocks: block (a, b, c) holds volume[4a:4a+4, 8b:8b+8, 8c:8c+8] flattened
    blocks = volume.reshape(4, 4, 8, 8, 8, 8).transpose(0, 2, 4, 1, 3, 5).reshape(256, 256)
    np.testing.assert_array_equal(cols[0], blocks.T if layout == "ncl" else blocks)
    assert json.loads(out.with_suffix(".json").read_text())["input_shape"] == [1, 1, 16, 64, 64]
    ok("fold", out, "-o", tmp_path / "back.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), volume[None, None])


def test_unfold_multipage_tiff_without_stack_is_not_silently_cut(tmp_path: Path) -> None:
    """Without --stack a 16-page TIFF must not quietly become its first page."""
    out = tmp_path / "v.npy"
    result = invoke("unfold", VOLUME, "-k", 8, "-o", out, "--json")
    if result.exit_code == 0:
        assert json.loads(result.stdout)["input_shape"] != [1, 1, 64, 64], "15 of 16 pages were dropped"
    else:
        assert_runtime_error(result, "--stack")
        assert not out.exists()


# ----- fold ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["keep", "float32"])
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("name", list(SAMPLE_IMAGES))
def test_fold_round_trip_is_bit_exact(tmp_path: Path, name: str, layout: str, dtype: str) -> None:
    patches, restored = tmp_path / "p.npy", tmp_path / "restored.png"
    ok("unfold", sample(name), "-k", 16, "-s", 8, "--layout", layout, "--dtype", dtype, "-o", patches)
    summary = ok_json("fold", patches, "-o", restored)
    _, mode, size, np_dtype = SAMPLE_IMAGES[name]
    with Image.open(restored) as image:
        assert image.size == size
        assert image.mode == mode
    original = pixels(sample(name))
    back = pixels(restored)
    assert back.dtype == np_dtype
    np.testing.assert_array_equal(back, original)
    assert summary["output"] == [str(restored)]
    assert summary["output_dtype"] == str(np.dtype(np_dtype))


def test_16bit_round_trip_padded_nlc(tmp_path: Path) -> None:
    ok("unfold", sample("depth16"), "-k", 8, "-s", 4, "-p", 2, "--layout", "nlc", "-o", tmp_path / "d.npy")
    cols = np.load(tmp_path / "d.npy", allow_pickle=False)
    assert cols.dtype == np.uint16
    np.testing.assert_array_equal(cols, unfold_ref(sample_nchw("depth16"), 8, 1, 2, 4, "nlc"))
    ok("fold", tmp_path / "d.npy", "-o", tmp_path / "d.png")
    np.testing.assert_array_equal(pixels(tmp_path / "d.png"), pixels(sample("depth16")))


@pytest.mark.parametrize("name", ["rgb", "depth16"])
def test_fold_to_npy(tmp_path: Path, name: str) -> None:
    ok("unfold", sample(name), "-k", 12, "-s", 4, "-o", tmp_path / "p.npy")
    summary = ok_json("fold", tmp_path / "p.npy", "-o", tmp_path / "back.npy")
    back = np.load(tmp_path / "back.npy")
    expected = sample_nchw(name)
    assert back.dtype == expected.dtype
    np.testing.assert_array_equal(back, expected)
    assert summary["output"] == str(tmp_path / "back.npy")
    assert summary["output_shape"] == list(expected.shape)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("dtype", ["keep", "float32", "float64"])
def test_fold_no_normalize_equals_torch_fold(tmp_path: Path, dtype: str, layout: str) -> None:
    patches, summed = tmp_path / "p.npy", tmp_path / "sum.npy"
    ok(
        "unfold",
        sample("rgba"),
        "-k",
        5,
        "-s",
        3,
        "-p",
        2,
        "-d",
        2,
        "--dtype",
        dtype,
        "--layout",
        layout,
        "-o",
        patches,
    )
    ok("fold", patches, "--no-normalize", "-o", summed)
    cols = np.load(patches)
    out = np.load(summed)
    ref = fold_ref(cols, (128, 128), 5, dilation=2, padding=2, stride=3, layout=layout)
    if cols.dtype.kind in "iu":
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, ref.astype(np.int64))
    else:
        assert out.dtype == cols.dtype
        np.testing.assert_allclose(out, ref.astype(cols.dtype), rtol=1e-6 if dtype == "float32" else 1e-12)
    assert out.shape == (1, 4, 128, 128)
    # overlap-add really summed: interior pixels are covered several times
    assert out.max() > cols.max()


def test_fold_several_images_numbered_and_into_directory(tmp_path: Path, rgb_pair: tuple[Path, Path]) -> None:
    a, b = rgb_pair
    patches = tmp_path / "p.npy"
    ok("unfold", a, b, "-k", 16, "-s", 8, "-o", patches)

    summary = ok_json("fold", patches, "-o", tmp_path / "out_{i}.png")
    numbered = [tmp_path / "out_0000.png", tmp_path / "out_0001.png"]
    assert summary["output"] == [str(p) for p in numbered]
    np.testing.assert_array_equal(pixels(numbered[0]), pixels(a))
    np.testing.assert_array_equal(pixels(numbered[1]), pixels(b))

    folder = tmp_path / "restored"
    folder.mkdir()
    ok("fold", patches, "-o", folder)
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png"]
    np.testing.assert_array_equal(pixels(folder / "a.png"), pixels(a))
    np.testing.assert_array_equal(pixels(folder / "b.png"), pixels(b))


def test_fold_several_images_into_one_file_is_an_error(tmp_path: Path, rgb_pair: tuple[Path, Path]) -> None:
    patches = tmp_path / "p.npy"
    ok("unfold", *rgb_pair, "-k", 16, "-s", 8, "-o", patches)
    assert_runtime_error(invoke("fold", patches, "-o", tmp_path / "one.png"), "{i}", "2 images")
    assert not (tmp_path / "one.png").exists()
    assert part_files(tmp_path) == []


def test_fold_directory_with_duplicate_names_numbers_files(tmp_path: Path) -> None:
    patches = tmp_path / "p.npy"
    ok("unfold", sample("gray"), sample("gray"), "-k", 8, "-s", 8, "-o", patches)
    folder = tmp_path / "out"
    folder.mkdir()
    ok("fold", patches, "-o", folder)
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png"]
    np.testing.assert_array_equal(pixels(folder / "0001.png"), pixels(sample("gray")))


def test_fold_without_sidecar_uses_options(tmp_path: Path) -> None:
    patches = tmp_path / "p.npy"
    ok("unfold", sample("rgb"), "-k", 16, "-s", 8, "-o", patches)
    patches.with_suffix(".json").unlink()
    ok("fold", patches, "-k", 16, "-s", 8, "--output-size", "240,320", "-o", tmp_path / "back.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), sample_nchw("rgb"))


@pytest.mark.parametrize("window", ["hann", "gaussian:3"])
def test_fold_window_blend_of_exact_patches_gives_the_image(tmp_path: Path, window: str) -> None:
    ok("unfold", sample("depth16"), "-k", 16, "-s", 4, "-o", tmp_path / "p.npy")
    summary = ok_json("fold", tmp_path / "p.npy", "--window", window, "-o", tmp_path / "w.png")
    assert summary["window"] == window
    np.testing.assert_array_equal(pixels(tmp_path / "w.png"), pixels(sample("depth16")))


def test_fold_json_summary(tmp_path: Path) -> None:
    ok("unfold", sample("gray"), "-k", 8, "-s", 4, "-p", 1, "-o", tmp_path / "p.npy", "--layout", "nlc")
    summary = ok_json("fold", tmp_path / "p.npy", "-o", tmp_path / "g.png")
    assert summary["patches_shape"] == list(np.load(tmp_path / "p.npy").shape)
    assert summary["output_shape"] == [1, 1, 120, 160]
    assert summary["kernel_size"] == [8, 8] and summary["stride"] == [4, 4] and summary["padding"] == [1, 1]
    assert summary["layout"] == "nlc" and summary["normalize"] is True and summary["window"] == "none"


# ----- stats and divisor -----------------------------------------------------------------------
def test_stats_json_for_size(tmp_path: Path) -> None:
    result = ok("stats", "--size", "512,512", "-k", 16, "-s", 8, "--json")
    assert result.stderr == ""
    stats = json.loads(result.stdout)
    assert set(stats) == STATS_KEYS | {"cpu_engine"}
    assert set(stats["coverage"]) == {"min", "max", "mean", "histogram"}
    assert stats.pop("cpu_engine").startswith(("compiled loops (", "numpy fallback ("))
    assert stats == {
        "input_shape": [1, 1, 512, 512],
        "kernel_size": [16, 16],
        "stride": [8, 8],
        "padding": [0, 0],
        "dilation": [1, 1],
        "padding_mode": "zeros",
        "blocks_per_dim": [63, 63],
        "num_blocks": 3969,
        "patch_length": 256,
        "output_shape": [1, 256, 3969],
        "output_bytes": 256 * 3969 * 4,
        "coverage": {"min": 1, "max": 4, "mean": 3.8759765625, "histogram": {"1": 256, "2": 15872, "4": 246016}},
        "uncovered_pixels": 0,
        "uncovered_fraction": 0.0,
        "redundancy": 3.8759765625,
        "invertible": True,
    }


def test_stats_for_an_input_file_with_overrides() -> None:
    stats = ok_json("stats", sample("rgb"), "-k", 32, "-s", 24)
    assert stats["input_shape"] == [1, 3, 240, 320]
    assert stats["blocks_per_dim"] == [9, 13]
    assert stats["coverage"]["histogram"] == {"0": 5120, "1": 35840, "2": 29696, "4": 6144}
    assert stats["uncovered_pixels"] == 16 * 320
    assert stats["uncovered_fraction"] == pytest.approx(16 / 240)
    assert stats["invertible"] is False
    assert stats["output_bytes"] == 3 * 32 * 32 * 117  # uint8 kept

    stats = ok_json(
        "stats",
        sample("rgb"),
        "-k",
        32,
        "-s",
        24,
        "--batch",
        3,
        "--channels",
        2,
        "--dtype",
        "float64",
        "--layout",
        "nlc",
    )
    assert stats["input_shape"] == [3, 2, 240, 320]
    assert stats["output_shape"] == [3, 117, 2048]
    assert stats["output_bytes"] == 3 * 117 * 2048 * 8

    assert ok_json("stats", sample("depth16"), "-k", 8)["output_bytes"] == 1 * 64 * 113 * 121 * 2  # uint16 kept


def test_stats_reads_inputs_as_unfold_does(tmp_path: Path) -> None:
    """stats reads only headers, but by unfold's rules: a multi-page TIFF needs --stack, and a
    --spatial-dims that does not match the image is refused (stats once reported a 2-D image)."""
    assert_runtime_error(invoke("stats", VOLUME, "-k", 4), "pages: pass --stack")
    assert_runtime_error(invoke("unfold", VOLUME, "-k", 4, "-o", tmp_path / "v.npy"), "pages: pass --stack")
    unfolded = ok_json("unfold", VOLUME, "--stack", "-k", 4, "-o", tmp_path / "v.npy")
    assert ok_json("stats", VOLUME, "--stack", "-k", 4)["input_shape"] == unfolded["input_shape"]
    assert_runtime_error(invoke("stats", sample("gray"), "--spatial-dims", 3, "-k", 2), "2-D image", "--spatial-dims 3")


@pytest.mark.parametrize(("size", "expected"), [("64", [1, 1, 64, 64]), ("10,20,30", [1, 1, 10, 20, 30])])
def test_stats_size_forms(size: str, expected: list[int]) -> None:
    assert ok_json("stats", "--size", size, "-k", 3)["input_shape"] == expected


GEOMETRIES = [
    ((37, 53), (5, 4), (3, 2), (2, 1), (2, 3)),
    ((64, 64), (8, 8), (8, 8), (0, 0), (1, 1)),
    ((40, 30), (7, 3), (4, 5), (0, 0), (1, 2)),
]


def csv(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "dilation"), GEOMETRIES)
def test_stats_coverage_matches_divisor_ref(size, kernel, dilation, padding, stride) -> None:
    stats = ok_json(
        "stats", "--size", csv(size), "-k", csv(kernel), "-s", csv(stride), "-p", csv(padding), "-d", csv(dilation)
    )
    counts = divisor_ref(size, kernel, dilation, padding, stride).astype(np.int64)
    values, pixels_per_value = np.unique(counts, return_counts=True)
    histogram = {str(v): int(c) for v, c in zip(values, pixels_per_value, strict=True)}
    assert {k: v for k, v in stats["coverage"]["histogram"].items() if v} == histogram
    assert stats["coverage"]["min"] == counts.min() and stats["coverage"]["max"] == counts.max()
    assert stats["coverage"]["mean"] == pytest.approx(counts.mean())
    assert stats["uncovered_pixels"] == int((counts == 0).sum())
    assert stats["invertible"] == bool((counts > 0).all())


@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "dilation"), GEOMETRIES)
def test_divisor_npy_equals_torch_fold_of_unfold_of_ones(
    tmp_path: Path, size, kernel, stride, padding, dilation
) -> None:
    out = tmp_path / "d.npy"
    summary = ok_json(
        "divisor",
        "--size",
        csv(size),
        "-k",
        csv(kernel),
        "-s",
        csv(stride),
        "-p",
        csv(padding),
        "-d",
        csv(dilation),
        "--npy",
        out,
    )
    assert summary["written"] == [str(out)]
    assert set(summary) == STATS_KEYS | {"written"}
    divisor = np.load(out)
    assert divisor.shape == size
    np.testing.assert_array_equal(divisor, divisor_ref(size, kernel, dilation, padding, stride))


def test_divisor_from_input_file_matches_size(tmp_path: Path) -> None:
    ok("divisor", sample("gray"), "-k", 9, "-s", 5, "--npy", tmp_path / "a.npy")
    ok("divisor", "--size", "120,160", "-k", 9, "-s", 5, "--npy", tmp_path / "b.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert np.load(tmp_path / "a.npy").shape == (120, 160)


def test_divisor_png_is_a_valid_png(tmp_path: Path) -> None:
    out = tmp_path / "d.png"
    assert ok_json("divisor", "--size", "64,64", "-k", 8, "-s", 6, "--png", out)["written"] == [str(out)]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.mode in ("RGB", "RGBA")
        assert min(image.size) >= 64
        picture = np.asarray(image.convert("RGB"))
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 2, "a heatmap, not a blank picture"


# ----- output channels -------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["unfold", "fold", "stats", "divisor"])
def test_json_goes_to_stdout_and_tables_to_stderr(tmp_path: Path, command: str) -> None:
    ok("unfold", sample("gray"), "-k", 8, "-s", 8, "-o", tmp_path / "p.npy")
    args = {
        "unfold": ["unfold", sample("gray"), "-k", 8, "-o", tmp_path / "q.npy"],
        "fold": ["fold", tmp_path / "p.npy", "-o", tmp_path / "f.png"],
        "stats": ["stats", "--size", "64,64", "-k", 8],
        "divisor": ["divisor", "--size", "64,64", "-k", 8],
    }[command]
    as_json = ok(*args, "--json")
    assert as_json.stderr == ""
    assert isinstance(json.loads(as_json.stdout), dict)
    table = ok(*args)
    assert table.stdout == ""
    assert table.stderr.strip()
    with pytest.raises(json.JSONDecodeError):
        json.loads(table.stderr)


def test_version_and_help() -> None:
    for flag in ("--version", "-V"):  # the version, then Python, the CPU engine, torch and CUDA (test_about.py)
        lines = ok(flag).stdout.splitlines()
        assert lines[0] == f"patchfold, version {patchfold.__version__}" and len(lines) == 5
    text = ok("--help").stdout
    for command in ("unfold", "fold", "divisor", "stats"):
        assert command in text
    for command in ("unfold", "fold", "divisor", "stats"):
        assert "Usage: " in ok(command, "-h").stdout


def test_debug_env_shows_the_exception(tmp_path: Path) -> None:
    result = invoke("unfold", tmp_path / "missing.png", "-k", 4, "-o", tmp_path / "o.npy", env={"PATCHFOLD_DEBUG": "1"})
    assert result.exit_code == 1
    assert isinstance(result.exception, PatchfoldError)
    plain = invoke("unfold", tmp_path / "missing.png", "-k", 4, "-o", tmp_path / "o.npy")
    assert isinstance(plain.exception, SystemExit)


# ----- atomic outputs (failures inside a write; the bad-input matrix is in test_hostile.py) ---------
ORIGINAL = b"pre-existing output, must survive a failed run\n"


def test_unfold_failing_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from patchfold.jobs import unfold as unfold_job

    real_write_band = unfold_job.write_band
    calls = []

    def failing_write_band(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write_band(*args, **kwargs)

    monkeypatch.setattr(unfold_job, "write_band", failing_write_band)
    out = tmp_path / "out.npy"
    out.write_bytes(ORIGINAL)
    result = invoke("unfold", sample("rgb"), "-k", 16, "-s", 8, "--max-memory", "40KB", "-o", out)
    assert len(calls) == 2, "the failure must come after a band was written"
    assert_runtime_error(result, "No space left on device")
    assert out.read_bytes() == ORIGINAL
    assert not out.with_suffix(".json").exists()
    assert part_files(tmp_path) == []


def test_fold_failing_on_second_image_writes_none(
    tmp_path: Path, rgb_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    patches = tmp_path / "p.npy"
    ok("unfold", *rgb_pair, "-k", 16, "-s", 8, "-o", patches)
    first = tmp_path / "out_0000.png"
    first.write_bytes(ORIGINAL)
    real_save = Image.Image.save
    calls = []

    def failing_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    result = invoke("fold", patches, "-o", tmp_path / "out_{i}.png")
    assert len(calls) == 2
    assert_runtime_error(result, "out_0001.png")
    assert first.read_bytes() == ORIGINAL
    assert not (tmp_path / "out_0001.png").exists()
    assert part_files(tmp_path) == []


def test_unfold_with_unwritable_sidecar_leaves_existing_npy_untouched(tmp_path: Path) -> None:
    """The sidecar target (OUT.json) is a directory: the run must fail without replacing OUT.npy."""
    out = tmp_path / "out.npy"
    out.write_bytes(ORIGINAL)
    (tmp_path / "out.json").mkdir()
    result = invoke("unfold", sample("gray"), "-k", 8, "-o", out)
    assert_runtime_error(result, f"sidecar '{tmp_path / 'out.json'}' is a directory")
    assert part_files(tmp_path) == []
    assert out.read_bytes() == ORIGINAL, "out.npy was replaced although the run failed"


def test_successful_runs_leave_no_temporary_files(tmp_path: Path) -> None:
    ok("unfold", sample("rgb"), "-k", 16, "-s", 8, "-o", tmp_path / "p.npy", "--max-memory", "40KB")
    ok("fold", tmp_path / "p.npy", "-o", tmp_path / "r.png")
    ok("divisor", "--size", "32,32", "-k", 4, "--npy", tmp_path / "d.npy", "--png", tmp_path / "d.png")
    assert part_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "d.png", "p.json", "p.npy", "r.png"]
    if os.name == "posix":
        mode = (tmp_path / "p.npy").stat().st_mode & 0o777
        umask = os.umask(0)
        os.umask(umask)
        assert mode == 0o666 & ~umask, "outputs get normal permissions, not mkstemp's 0600"


# ----- CUDA (only where a GPU is present) ------------------------------------------------------
@needs_cuda
def test_cuda_unfold_and_fold_match_cpu(tmp_path: Path) -> None:
    ok("unfold", sample("rgb"), "-k", 16, "-s", 8, "-o", tmp_path / "cpu.npy", "--device", "cpu")
    summary = ok_json("unfold", sample("rgb"), "-k", 16, "-s", 8, "-o", tmp_path / "gpu.npy", "--device", "cuda")
    assert summary["device"].startswith("cuda") and summary["engine"] == "torch"
    np.testing.assert_array_equal(np.load(tmp_path / "gpu.npy"), np.load(tmp_path / "cpu.npy"))
    ok("fold", tmp_path / "gpu.npy", "-o", tmp_path / "r.png", "--device", "cuda")
    np.testing.assert_array_equal(pixels(tmp_path / "r.png"), pixels(sample("rgb")))


def test_the_group_lists_each_command_with_its_own_short_help() -> None:
    """``patchfold --help`` lists the commands from a table, without importing them: that table's
    one-line help must be what each command says of itself."""
    from patchfold.cli.main import COMMANDS, main

    context = click.Context(main)
    for name, (_, short_help) in COMMANDS.items():
        command = main.get_command(context, name)
        assert command is not None and command.name == name
        for limit in (45, 80, 200):
            assert click.Command(name, help=short_help).get_short_help_str(limit) == command.get_short_help_str(
                limit
            ), name
    assert sorted(main.list_commands(context)) == sorted(COMMANDS)


def test_help_and_version_and_import_patchfold_load_neither_numpy_nor_torch() -> None:
    code = (
        "import sys, patchfold\n"
        "from patchfold.cli.main import main\n"
        "for args in (['--help'], ['--version']):\n"
        "    try:\n"
        "        main(args, prog_name='patchfold')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('numpy', 'torch', 'rich', 'PIL') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "Commands:" in result.stdout and "unfold" in result.stdout


def test_each_commands_help_loads_neither_numpy_nor_torch() -> None:
    """``patchfold CMD --help`` imports the command's module and its options, never the numpy
    machinery of its job (choices come from :mod:`patchfold.choices`): one process for all of
    them, the modules checked after each (a command loaded once stays loaded)."""
    from patchfold.cli.main import COMMANDS

    code = (
        "import sys\n"
        "from patchfold.cli.main import main\n"
        f"for name in {sorted(COMMANDS)!r}:\n"
        "    try:\n"
        "        main([name, '--help'], prog_name='patchfold')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    print(name, sorted(m for m in ('numpy', 'torch', 'PIL') if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = result.stderr.strip().splitlines()
    assert loaded == [f"{name} []" for name in sorted(COMMANDS)], result.stderr
    # control: the same probe sees numpy once a job module is imported
    control = subprocess.run(
        [sys.executable, "-c", "import sys, patchfold.jobs.unfold; print('numpy' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert control.stdout.strip() == "True"


def test_the_version_is_written_once_and_the_package_is_typed() -> None:
    from importlib import metadata, resources

    assert metadata.version("patchfold") == patchfold.__version__  # pyproject reads patchfold/_version.py
    assert resources.files("patchfold").joinpath("py.typed").is_file()
