"""``patchfold.apply`` and ``patchfold apply``: a function on every patch, blended back (issue #15)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import patchfold
import pytest
import torch
import torch.nn.functional as F
from cli_fixtures import error_lines, invoke, ok
from patchfold import PatchfoldError
from patchfold.patchwise import apply, axis_grid
from PIL import Image

WINDOWS = ["none", "hann", "triangular", "gaussian", "pyramid"]
RNG = np.random.default_rng(7)


def identity(patches: np.ndarray) -> np.ndarray:
    return patches


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize(
    ("kernel", "extras"),
    [
        (8, {"stride": 4, "cover": True}),
        (8, {"stride": 4, "cover": True, "margin": 2}),
        ((7, 6), {"stride": (3, 2), "padding": (2, 1)}),
        (9, {"stride": 5, "padding": 4, "padding_mode": "reflect", "margin": 2}),
        (6, {"stride": 3, "cover": True, "margin": (1, 0)}),
    ],
    ids=["cover", "cover-margin", "padded", "reflect-margin", "margin-per-dim"],
)
def test_identity_round_trip_is_exact(kernel, extras, window) -> None:
    x = RNG.random((2, 3, 23, 19)).astype(np.float32)
    y = apply(x, identity, kernel, window=window, **extras)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 29), (1, 2, 11, 9, 10), (1, 1, 6, 5, 7, 6)], ids=["1d", "3d", "4d"])
def test_identity_round_trip_is_exact_in_every_dimension(shape, dtype) -> None:
    """1-D and N-d outputs go through the numpy blend (the compiled one takes 2-D and 3-D)."""
    x = RNG.random(shape).astype(dtype)
    ndim = len(shape) - 2
    y = apply(x, identity, 4, stride=3, cover=True, window="hann", spatial_dims=ndim)
    assert y.dtype == dtype
    if dtype == np.float32:  # summed in float64: exact
        np.testing.assert_array_equal(y, x)
    else:  # float64 sums have no wider type: within a few rounding steps (as the README says)
        np.testing.assert_allclose(y, x, rtol=8 * np.finfo(np.float64).eps, atol=0)


def test_identity_of_integer_pixels_through_the_cli(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    (tmp_path / "ident.py").write_text("def f(p):\n    return p\n")
    sys.path.insert(0, str(tmp_path))
    try:
        ok("apply", tmp_path / "img.png", "--function", "ident:f", "-k", 8, "-s", 5, "--cover", "--margin", 1,
               "--window", "hann", "-o", tmp_path / "out.png")  # fmt: skip
    finally:
        sys.path.remove(str(tmp_path))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), pixels)


CONVOLUTIONS = [
    (2, {"stride": 1, "padding": 0, "dilation": 1}),
    (2, {"stride": 2, "padding": 1, "dilation": 2}),
    (2, {"stride": (3, 1), "padding": (0, 2), "dilation": (1, 3)}),
    (1, {"stride": 2, "padding": 3, "dilation": 2}),
    (3, {"stride": (1, 2, 1), "padding": 1, "dilation": (2, 1, 1)}),
]


@pytest.mark.parametrize(("ndim", "params"), CONVOLUTIONS, ids=["2d", "2d-s2p1d2", "2d-mixed", "1d", "3d"])
def test_linear_map_is_a_convolution(ndim: int, params: dict, tmp_path: Path) -> None:
    size = {1: (41,), 2: (23, 19), 3: (9, 10, 8)}[ndim]
    kernel = {1: (5,), 2: (3, 4), 3: (3, 2, 3)}[ndim]
    x = RNG.standard_normal((2, 3, *size)).astype(np.float32)
    w = RNG.standard_normal((4, 3, *kernel)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "b.npy", b)
    args = []
    for name, value in params.items():
        args += [f"--{name}", ",".join(map(str, np.atleast_1d(value)))]
    ok("apply", tmp_path / "x.npy", "--linear", tmp_path / "w.npy", "--bias", tmp_path / "b.npy",
           "-k", ",".join(map(str, kernel)), *args, "--spatial-dims", ndim, "-o", tmp_path / "y.npy")  # fmt: skip
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ndim]
    expected = conv(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(), **params)
    got = np.load(tmp_path / "y.npy")
    assert got.shape == tuple(expected.shape) and got.dtype == np.float32
    error = np.abs(got - expected.numpy()).max() / np.abs(expected.numpy()).max()
    assert error <= 1e-5, error


def three_convolutions(seed: int = 0) -> torch.nn.Module:
    """A fully-convolutional model of receptive radius 3 (three 3x3 convolutions, zero padding)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 2, 3, padding=1),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("size", [(64, 48), (61, 47), (33, 70)], ids=["multiple", "odd", "wide"])
@pytest.mark.parametrize("window", ["none", "hann"])
def test_margin_and_cover_equal_the_model_on_the_whole_image(size, window) -> None:
    model = three_convolutions()
    x = torch.rand(1, 3, *size)
    with torch.inference_mode():
        whole = model(x).numpy()
    y = apply(x, model, 16, stride=10, cover=True, margin=3, window=window)
    assert isinstance(y, torch.Tensor) and y.shape == whole.shape
    assert np.abs(y.numpy() - whole).max() <= 1e-5


def test_margin_too_small_for_the_receptive_field_differs() -> None:
    """The equality above is the margin's doing: without it, patch borders show."""
    model = three_convolutions()
    x = torch.rand(1, 3, 40, 40)
    with torch.inference_mode():
        whole = model(x).numpy()
    y = apply(x, model, 16, stride=10, cover=True).numpy()
    assert np.abs(y - whole).max() > 1e-3


def test_reduce_argmax_and_max_equal_those_of_the_blended_output() -> None:
    model = three_convolutions(1)
    x = torch.rand(2, 3, 30, 26)
    blended = apply(x, model, 12, stride=8, cover=True, window="hann").numpy()
    labels = apply(x, model, 12, stride=8, cover=True, window="hann", reduce="argmax").numpy()
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, blended.argmax(axis=1))
    maxima = apply(x, model, 12, stride=8, cover=True, window="hann", reduce="max").numpy()
    np.testing.assert_array_equal(maxima, blended.max(axis=1))


def test_upsampling_model_gives_the_whole_image_upsampled() -> None:
    def up(patches: torch.Tensor) -> torch.Tensor:
        return F.interpolate(patches, scale_factor=2, mode="nearest")

    x = torch.rand(1, 2, 21, 17)
    y = apply(x, up, 8, stride=5, cover=True, window="triangular")
    assert y.shape == (1, 2, 42, 34)
    torch.testing.assert_close(y, up(x), rtol=0, atol=0)


def test_per_patch_classifier_gives_the_block_grid() -> None:
    x = RNG.random((2, 3, 20, 17))

    def mean_and_max(patches: np.ndarray) -> np.ndarray:
        flat = patches.reshape(len(patches), -1)
        return np.stack([flat.mean(axis=1), flat.max(axis=1)], axis=1)

    grid = apply(x, mean_and_max, 4, stride=3)
    cols = patchfold.unfold(x, 4, stride=3)  # (N, C*16, L)
    blocks = patchfold.Blocks(4, stride=3).at((20, 17)).blocks_per_dim
    expected = np.stack([cols.mean(axis=1), cols.max(axis=1)], axis=1).reshape(2, 2, *blocks)
    np.testing.assert_allclose(grid, expected)


def test_cover_grid_ends_at_the_border() -> None:
    assert axis_grid(23, 8, 5, 0, 1, cover=True).starts.tolist() == [0, 5, 10, 15]
    assert axis_grid(24, 8, 5, 0, 1, cover=True).starts.tolist() == [0, 5, 10, 15, 16]
    assert axis_grid(5, 8, 5, 0, 1, cover=True).starts.tolist() == [-1]  # shorter than a block: centred
    assert axis_grid(23, 8, 5, 2, 1, cover=False).starts.tolist() == [-2, 3, 8, 13]


def test_a_dim_shorter_than_a_block_is_padded_by_the_mode() -> None:
    x = RNG.random((1, 1, 5, 30)).astype(np.float32)
    y = apply(x, identity, 8, stride=6, cover=True, padding_mode="reflect", window="hann")
    np.testing.assert_array_equal(y, x)


def test_torch_model_on_numpy_input_gives_numpy_and_batches_agree() -> None:
    model = three_convolutions()
    x = RNG.random((1, 3, 30, 30)).astype(np.float32)
    small = apply(x, model, 12, stride=6, cover=True, margin=3, batch_size=1)
    large = apply(x, model, 12, stride=6, cover=True, margin=3, batch_size=100)
    assert isinstance(small, np.ndarray)
    np.testing.assert_allclose(small, large, rtol=1e-6, atol=1e-6)


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(PatchfoldError, match="at least one image"):
        apply(np.zeros((0, 3, 8, 8)), identity, 4)


def test_unbatched_input_gives_unbatched_output() -> None:
    x = RNG.random((3, 12, 12))
    assert apply(x, identity, 4, stride=4).shape == (3, 12, 12)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda p: p[:, :, :3], "expected"),
        (lambda p: p.sum(), "expected"),
        (lambda p: np.zeros((len(p), 2, 3, 5, 5)), "expected"),
        ("not callable", "callable"),
    ],
    ids=["cropped", "scalar", "rank", "not-callable"],
)
def test_outputs_that_fit_no_mode_are_refused(fn, match) -> None:
    with pytest.raises(PatchfoldError, match=match):
        apply(RNG.random((1, 1, 10, 10)), fn, 4, stride=2)


def test_output_shape_that_changes_between_batches_is_refused() -> None:
    calls = []

    def unsteady(patches: np.ndarray) -> np.ndarray:
        calls.append(1)
        return patches if len(calls) == 1 else patches[:, :1]

    with pytest.raises(PatchfoldError, match="changed shape"):
        apply(RNG.random((1, 2, 12, 12)), unsteady, 4, stride=2, batch_size=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"margin": 3, "stride": 4}, "margin 3"),
        ({"margin": 1, "stride": 2, "dilation": 2}, "dilation"),
        ({"cover": True, "padding": 1}, "padding"),
        ({"reduce": "mean"}, "reduce"),
        ({"batch_size": 0}, "batch_size"),
        ({"memory_format": "nhwc"}, "memory_format"),
    ],
)
def test_bad_parameters_are_refused_before_any_call(kwargs, match) -> None:
    def never(patches):  # pragma: no cover - must not be reached
        raise AssertionError("fn was called")

    with pytest.raises(PatchfoldError, match=match):
        apply(RNG.random((1, 1, 16, 16)), never, 8, **kwargs)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(RNG.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda d: (d / "model.pt").write_bytes(b"not a model"), ["--model", "{d}/model.pt"], "not a TorchScript"),
        (lambda d: np.save(d / "model.npy", np.zeros(3)), ["--model", "{d}/model.npy"], "must be TorchScript"),
        (lambda d: None, ["--function", "no_such_module_here:f"], "cannot import"),
        (lambda d: None, ["--function", "numpy"], "module:callable"),
        (lambda d: np.save(d / "w.npy", np.zeros((2, 5))), ["--linear", "{d}/w.npy"], "expected"),
        (lambda d: None, ["--linear", "{d}/absent.npy"], "does not exist"),
        (lambda d: None, [], "exactly one"),
    ],
    ids=["garbage-model", "npy-model", "no-module", "no-colon", "bad-weight", "no-weight", "no-function"],
)
def test_bad_functions_give_one_error_line_and_write_nothing(image, setup, args, message, tmp_path: Path) -> None:
    setup(tmp_path)
    args = [a.replace("{d}", str(tmp_path)) for a in args]
    result = invoke("apply", image, *args, "-k", 4, "-o", tmp_path / "out.npy")
    assert result.exit_code in (1, 2)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out.npy").exists()


def test_a_model_that_fails_on_the_patches_gives_one_error_line(image, tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.fromarray(RNG.integers(0, 256, (24, 20), dtype=np.uint8)).save(gray)
    torch.jit.script(three_convolutions()).save(str(tmp_path / "model.pt"))  # wants 3 channels
    result = invoke("apply", gray, "--model", tmp_path / "model.pt", "-k", 8, "-o", tmp_path / "out.npy")
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "failed on a batch of patches [64, 1, 8, 8]" in lines[0] and "channels" in lines[0]
    assert not (tmp_path / "out.npy").exists()


def test_torchscript_and_export_models_through_the_cli(image, tmp_path: Path) -> None:
    model = three_convolutions()
    torch.jit.script(model).save(str(tmp_path / "model.pt"))
    torch.export.save(torch.export.export(model, (torch.rand(4, 3, 12, 12),)), str(tmp_path / "model.pt2"))
    for name in ("model.pt", "model.pt2"):
        ok("apply", image, "--model", tmp_path / name, "-k", 12, "-s", 6, "--cover", "--margin", 3,
               "--batch-size", 4, "-o", tmp_path / f"{name}.npy")  # fmt: skip
    pixels = torch.from_numpy(np.array(Image.open(image))).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        whole = model(pixels).numpy()
    for name in ("model.pt", "model.pt2"):
        assert np.abs(np.load(tmp_path / f"{name}.npy") - whole).max() <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_cuda_gives_the_cpu_result() -> None:
    model = three_convolutions()
    x = RNG.random((1, 3, 40, 36)).astype(np.float32)
    on_cpu = apply(x, model, 16, stride=10, cover=True, margin=3)
    on_gpu = apply(x, model.cuda(), 16, stride=10, cover=True, margin=3, device="cuda")
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)


def test_the_compiled_blending_refuses_a_patch_outside_the_band() -> None:
    from patchfold.engines import compiled

    loop = compiled.place("float32")
    if loop is None:
        pytest.skip("the optional C loops were not built here")
    outputs = np.ones((2, 1, 4, 4), np.float32)
    band = np.zeros((1, 10, 10))
    weights = [np.ones((2, 4)), np.ones((2, 4))]
    loop(outputs, band, np.array([[0, 0], [6, 6]], np.int64), weights, (1, 1))
    assert band.sum() == 32
    for starts in ([[0, 0], [7, 0]], [[0, -1], [0, 0]], [[0, 0], [0, 4]]):
        with pytest.raises(PatchfoldError, match="inside the band"):
            loop(outputs, band, np.array(starts, np.int64), weights, (1, 2) if starts[1][1] == 4 else (1, 1))
    with pytest.raises(PatchfoldError, match="weights of dim 1"):
        loop(outputs, band, np.zeros((2, 2), np.int64), [np.ones((2, 4)), np.ones((2, 3))], (1, 1))
    with pytest.raises(PatchfoldError, match="band must be"):
        loop(outputs, np.zeros((1, 10, 10), np.float32), np.zeros((2, 2), np.int64), weights, (1, 1))


@pytest.mark.parametrize(
    "options",
    [["--cover", "--margin", "2"], ["-p", "3", "--padding-mode", "reflect"], ["--cover", "--window", "hann"]],
    ids=["cover-margin", "reflect-padding", "cover-hann"],
)
def test_a_tiled_tiff_is_read_band_by_band_and_gives_the_in_memory_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str]
) -> None:
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("zarr")
    from patchfold.io.sources import RegionSource

    pixels = RNG.integers(0, 256, (150, 70, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tiled.tif", pixels, tile=(32, 32), photometric="rgb")
    Image.fromarray(pixels).save(tmp_path / "same.png")
    (tmp_path / "halve.py").write_text("def f(p):\n    return p * 0.5 + p[:, ::-1] * 0.25\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    heights: list[int] = []
    read_rows = RegionSource.rows

    def rows(self: RegionSource, lo: int, hi: int) -> np.ndarray:
        heights.append(hi - lo)
        return read_rows(self, lo, hi)

    def whole(self: RegionSource) -> np.ndarray:
        raise AssertionError("the tiled TIFF was read whole")

    common = ["--function", "halve:f", "-k", "16", "-s", "10", "--batch-size", "4", *options, "-q"]
    ok("apply", tmp_path / "same.png", *common, "-o", tmp_path / "memory.npy")
    monkeypatch.setattr(RegionSource, "rows", rows)
    monkeypatch.setattr(RegionSource, "load", whole)
    ok("apply", tmp_path / "tiled.tif", *common, "-o", tmp_path / "streamed.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "streamed.npy"), np.load(tmp_path / "memory.npy"))
    assert heights and max(heights) < 150 / 2  # bands of rows, never the whole image
