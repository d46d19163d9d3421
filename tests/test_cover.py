"""``cover=True`` / ``--cover``: every pixel covered, the last block of each dim moved inward.

One reference: a slow loop that finds the block starts from the definition (every ``stride`` from
0 while a block fits, then one block ending at the border where they fall short; a dim shorter
than one block gets one block, centred, over padding in the mode) and cuts or adds each block.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import patchfold
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from patchfold.blocks import Blocks
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry

from tests.cli_fixtures import invoke, ok, ok_json, pixels

NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def starts_ref(size: int, kernel: int, stride: int, dilation: int) -> tuple[list[int], tuple[int, int]]:
    """Block starts (in padded coordinates) and the (before, after) padding, from the definition."""
    span = (kernel - 1) * dilation + 1
    if size < span:
        extra = span - size
        return [0], (extra // 2, extra - extra // 2)
    starts = list(range(0, size - span + 1, stride))
    if starts[-1] + span < size:
        starts.append(size - span)
    return starts, (0, 0)


def padded_ref(x: np.ndarray, widths: list[tuple[int, int]], mode: str) -> np.ndarray:
    full = [(0, 0), (0, 0), *widths]
    return np.pad(x, full) if mode == "zeros" else np.pad(x, full, mode=NUMPY_MODE[mode])


def grid_ref(shape: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]):
    per_dim = [starts_ref(n, k, s, d) for n, k, s, d in zip(shape, kernel, stride, dilation)]
    return [p[0] for p in per_dim], [p[1] for p in per_dim]


def block_slices(index, starts, kernel, dilation):
    return tuple(
        slice(starts[d][i], starts[d][i] + (kernel[d] - 1) * dilation[d] + 1, dilation[d]) for d, i in enumerate(index)
    )


def unfold_ref(x, kernel, stride, dilation, mode):
    starts, widths = grid_ref(x.shape[2:], kernel, stride, dilation)
    padded = padded_ref(x, widths, mode)
    columns = [
        padded[(slice(None), slice(None), *block_slices(index, starts, kernel, dilation))].reshape(x.shape[0], -1)
        for index in itertools.product(*(range(len(s)) for s in starts))
    ]
    return np.stack(columns, axis=2)


def fold_ref(cols, shape, kernel, stride, dilation, mode):
    """The adjoint of :func:`unfold_ref`, by brute force: sum of each column's unit contributions."""
    starts, widths = grid_ref(shape, kernel, stride, dilation)
    n, rows, _ = cols.shape
    channels = rows // int(np.prod(kernel))
    # the padded position -> source pixel map of each dim, from np.pad of the indices
    sources = [
        np.arange(size) if mode == "zeros" else np.pad(np.arange(size), w, mode=NUMPY_MODE[mode])
        for size, w in zip(shape, widths)
    ]
    out = np.zeros((n, channels, *shape), dtype=np.float64)
    for column, index in enumerate(itertools.product(*(range(len(s)) for s in starts))):
        patch = cols[:, :, column].reshape(n, channels, *kernel)
        for offset in itertools.product(*(range(k) for k in kernel)):
            where = []
            for d, (i, j) in enumerate(zip(index, offset)):
                p = starts[d][i] + j * dilation[d]
                if mode == "zeros":
                    p -= widths[d][0]
                    if not 0 <= p < shape[d]:
                        break
                    where.append(p)
                else:
                    where.append(sources[d][p])
            else:
                out[(slice(None), slice(None), *where)] += patch[(slice(None), slice(None), *offset)]
    return out


@st.composite
def cover_cases(draw):
    """A shape (1-3 spatial dims, some shorter than a block), block parameters and a mode."""
    ndim = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 6)) for _ in range(ndim))
    shape = tuple(draw(st.integers(1, 13 if ndim < 3 else 8)) for _ in range(ndim))
    mode = draw(st.sampled_from(["zeros", "replicate", "reflect", "circular"]))
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    extra = [max(0, s - n) for n, s in zip(shape, spans)]
    widest = [max(e // 2, e - e // 2) for e in extra]
    if mode == "reflect" and any(w >= n for w, n in zip(widest, shape)):
        mode = "replicate"
    if mode == "circular" and any(w > n for w, n in zip(widest, shape)):
        mode = "zeros"
    return shape, kernel, stride, dilation, mode


def gapless(kernel, stride, dilation) -> bool:
    """Whether consecutive undilated blocks leave no pixel between them."""
    return all(d == 1 and s <= k for k, s, d in zip(kernel, stride, dilation))


def _x(shape, dtype="float64", batch=2, channels=2, seed=0):
    values = np.random.default_rng(seed).integers(0, 200, (batch, channels, *shape))
    return values.astype(dtype)


@settings(max_examples=120, deadline=None)
@given(cover_cases(), st.sampled_from(["ncl", "nlc"]), st.sampled_from(["float64", "float32", "uint8", "int16"]))
def test_unfold_equals_the_definition(case, layout, dtype) -> None:
    shape, kernel, stride, dilation, mode = case
    x = _x(shape, dtype)
    options = dict(padding_mode=mode, cover=True, layout=layout, spatial_dims=len(shape))
    got = patchfold.unfold(x, kernel, dilation, 0, stride, **options)
    expected = unfold_ref(x, kernel, stride, dilation, mode)
    np.testing.assert_array_equal(got, expected if layout == "ncl" else expected.transpose(0, 2, 1))
    assert got.dtype == x.dtype


@settings(max_examples=80, deadline=None)
@given(cover_cases(), st.sampled_from(["ncl", "nlc"]))
def test_fold_is_the_adjoint_and_the_normalised_round_trip_is_exact(case, layout) -> None:
    shape, kernel, stride, dilation, mode = case
    x = _x(shape)
    options = dict(padding_mode=mode, cover=True, layout=layout)
    cols = patchfold.unfold(x, kernel, dilation, 0, stride, **options, spatial_dims=len(shape))
    plain = cols if layout == "ncl" else cols.transpose(0, 2, 1)
    summed = patchfold.fold(cols, shape, kernel, dilation, 0, stride, **options)
    np.testing.assert_allclose(summed, fold_ref(plain, shape, kernel, stride, dilation, mode), rtol=0, atol=1e-9)
    back = patchfold.fold(cols, shape, kernel, dilation, 0, stride, normalize=True, **options)
    ones = np.ones((1, 1, *shape))
    divisor = patchfold.divisor(shape, kernel, dilation, 0, stride, padding_mode=mode, cover=True)
    ref_ones = unfold_ref(ones, kernel, stride, dilation, mode)
    np.testing.assert_array_equal(divisor, fold_ref(ref_ones, shape, kernel, stride, dilation, mode)[0, 0])
    np.testing.assert_array_equal(back, x * (divisor > 0))  # untouched patches give x back where covered
    if gapless(kernel, stride, dilation):  # blocks that touch or overlap: every pixel is covered
        assert divisor.min() >= 1


@settings(max_examples=60, deadline=None)
@given(cover_cases())
def test_geometry_grid_and_statistics(case) -> None:
    shape, kernel, stride, dilation, mode = case
    geometry = Blocks(kernel, stride=stride, dilation=dilation, padding_mode=mode, cover=True).at(shape)
    starts, widths = grid_ref(shape, kernel, stride, dilation)
    assert [geometry.block_starts(d).tolist() for d in range(len(shape))] == starts
    assert list(geometry.pad_widths) == widths
    assert geometry.blocks_per_dim == tuple(len(s) for s in starts)
    assert geometry.covered_extent == geometry.padded_size  # the last block ends at the border
    for index in itertools.product(*(range(len(s)) for s in starts)):
        box = geometry.block_box(index)
        assert [b[0] for b in box] == [s[i] - w[0] for s, i, w in zip(starts, index, widths)]
    stats = patchfold.overlap_stats(shape, kernel, dilation, 0, stride, padding_mode=mode, cover=True)
    assert stats["cover"] is True
    if gapless(kernel, stride, dilation):
        assert stats["uncovered_pixels"] == 0 and stats["invertible"]
    assert stats["num_blocks"] == int(np.prod([len(s) for s in starts]))


@settings(max_examples=40, deadline=None)
@given(cover_cases(), st.sampled_from(["hann", "gaussian", "triangular"]))
def test_windowed_normalised_round_trip(case, window) -> None:
    shape, kernel, stride, dilation, mode = case
    x = _x(shape)
    cols = patchfold.unfold(x, kernel, dilation, 0, stride, padding_mode=mode, cover=True, spatial_dims=len(shape))
    back = patchfold.fold(cols, shape, kernel, dilation, 0, stride, True, padding_mode=mode, cover=True, window=window)
    covered = patchfold.divisor(shape, kernel, dilation, 0, stride, padding_mode=mode, cover=True) > 0
    np.testing.assert_allclose(back, x * covered, rtol=1e-12, atol=1e-9)


def test_torch_tensors_and_gradients() -> None:
    torch = pytest.importorskip("torch")
    x = torch.rand(1, 2, 7, 9, dtype=torch.float64, requires_grad=True)
    options = dict(stride=(3, 4), cover=True, padding_mode="replicate")
    cols = patchfold.unfold(x, (4, 3), **options)
    expected = unfold_ref(x.detach().numpy(), (4, 3), (3, 4), (1, 1), "replicate")
    np.testing.assert_array_equal(cols.detach().numpy(), expected)
    torch.autograd.gradcheck(lambda t: patchfold.unfold(t, (4, 3), **options), (x,))
    c = torch.rand(cols.shape, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: patchfold.fold(t, (7, 9), (4, 3), normalize=True, **options), (c,))
    via_torch = patchfold.unfold(x.detach(), (4, 3), engine="torch", **options)
    torch.testing.assert_close(via_torch, cols.detach())
    short = torch.rand(1, 1, 2, 9, dtype=torch.float64)  # a dim shorter than the block: padded
    for engine in ("auto", "torch"):
        got = patchfold.unfold(short, 4, stride=3, cover=True, padding_mode="replicate", engine=engine)
        np.testing.assert_array_equal(got.numpy(), unfold_ref(short.numpy(), (4, 4), (3, 3), (1, 1), "replicate"))
        options = dict(stride=3, cover=True, padding_mode="replicate", engine=engine)
        back = patchfold.fold(got, (2, 9), 4, normalize=True, **options)
        torch.testing.assert_close(back, short)


def test_a_grid_that_fits_is_the_plain_grid() -> None:
    x = _x((10, 13))
    plain = patchfold.unfold(x, (4, 3), stride=(3, 2))  # 10 = 3*2+4, 13 = 5*2+3: nothing to move
    np.testing.assert_array_equal(patchfold.unfold(x, (4, 3), stride=(3, 2), cover=True), plain)


def test_bad_cover_arguments() -> None:
    with pytest.raises(PatchfoldError, match="padding must be 0") as error:
        Blocks(4, padding=1, cover=True)
    assert error.value.param == "padding"
    with pytest.raises(PatchfoldError, match="cover must be True or False"):
        Blocks(4, cover="yes")  # type: ignore[arg-type]
    with pytest.raises(PatchfoldError, match="reflect"):
        Geometry.create((1, 10), 4, cover=True, padding_mode="reflect")  # 3 rows of reflection from 1
    with pytest.raises(PatchfoldError, match="cover must be true or false"):
        Blocks.from_dict({"kernel_size": [4], "cover": 1}, "the sidecar")
    blocks = Blocks((4, 2), stride=3, cover=True)
    assert Blocks.from_dict(json.loads(json.dumps(blocks.to_dict()))) == blocks
    assert "cover" not in Blocks(4).to_dict() and Blocks.from_dict({"kernel_size": [4]}).cover is False


# ----- the command line ---------------------------------------------------------------------------


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    ok("sample", "-o", path, "--size", "61,47", "-q")
    return path


def test_unfold_fold_round_trip_on_the_command_line(tmp_path: Path, scene: Path) -> None:
    image = pixels(scene)
    whole = tmp_path / "p.npy"
    summary = ok_json("unfold", scene, "-k", "16", "-s", "12", "--cover", "-o", whole)
    assert summary["cover"] is True and summary["blocks_per_dim"] == [5, 4]
    assert json.loads(whole.with_suffix(".json").read_text())["cover"] is True
    x = np.moveaxis(image, -1, 0)[None]
    np.testing.assert_array_equal(np.load(whole), unfold_ref(x, (16, 16), (12, 12), (1, 1), "zeros"))
    for budget in ("12KiB", "8KiB"):  # streamed in bands, the last one only the moved block row
        banded = tmp_path / f"b{budget}.npy"
        assert ok_json("unfold", scene, "-k", "16", "-s", "12", "--cover", "--max-memory", budget, "-o", banded)[
            "streamed"
        ]
        np.testing.assert_array_equal(np.load(banded), np.load(whole))
    ok("fold", whole, "-o", tmp_path / "back.png", "-q")
    np.testing.assert_array_equal(pixels(tmp_path / "back.png"), image)
    whole.with_suffix(".json").unlink()  # no sidecar: the options say it
    ok("fold", whole, "-k", "16", "-s", "12", "--cover", "--size", "61,47", "-o", tmp_path / "again.png", "-q")
    np.testing.assert_array_equal(pixels(tmp_path / "again.png"), image)


def test_tiles_stats_and_divisor_take_cover(tmp_path: Path, scene: Path) -> None:
    ok("tiles", scene, "-k", "20", "-s", "15", "--cover", "-o", tmp_path / "t", "-q")
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["cover"] is True
    stops = {tuple(tile["stop"]) for tile in manifest["tiles"]}
    assert max(s[0] for s in stops) == 61 and max(s[1] for s in stops) == 47  # the last blocks end at the border
    assert all(min(tile["start"]) >= 0 for tile in manifest["tiles"])
    ok("untile", tmp_path / "t", "-o", tmp_path / "u.png", "-q")
    np.testing.assert_array_equal(pixels(tmp_path / "u.png"), pixels(scene))
    stats = ok_json("stats", scene, "-k", "20", "-s", "15", "--cover")
    plain = ok_json("stats", scene, "-k", "20", "-s", "15")
    assert stats["uncovered_pixels"] == 0 and plain["uncovered_pixels"] > 0
    ok("divisor", scene, "-k", "20", "-s", "15", "--cover", "-o", tmp_path / "d.npy", "-q")
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), patchfold.divisor((61, 47), 20, stride=15, cover=True))


def test_cover_with_padding_is_a_usage_error(tmp_path: Path, scene: Path) -> None:
    result = invoke("unfold", scene, "-k", "16", "-p", "2", "--cover", "-o", tmp_path / "p.npy")
    assert result.exit_code == 2 and "padding must be 0" in result.stderr
    assert not (tmp_path / "p.npy").exists()


@pytest.mark.parametrize("rows", [41, 2])  # a moved last block row; a dim shorter than one block
def test_a_zarr_input_streams_band_by_band_with_cover(tmp_path: Path, rows: int) -> None:
    zarr = pytest.importorskip("zarr")
    x = np.random.default_rng(3).integers(0, 256, (3, rows, 53), dtype=np.uint8)
    store = zarr.create_array(str(tmp_path / "in.zarr"), shape=x.shape, chunks=(3, 2, 16), dtype=x.dtype)
    store[...] = x
    for mode in ("zeros", "replicate"):
        out = tmp_path / f"{mode}.npy"
        options = ["-k", "4,8", "-s", "3,6", "--cover", "--padding-mode", mode, "--max-memory", "4KiB"]
        assert ok_json("unfold", tmp_path / "in.zarr", *options, "-o", out)["streamed"] == (rows > 2)
        np.testing.assert_array_equal(np.load(out), unfold_ref(x[None], (4, 8), (3, 6), (1, 1), mode))
        ok("fold", out, "-o", tmp_path / f"{mode}_back.npy", "-q")
        np.testing.assert_array_equal(np.load(tmp_path / f"{mode}_back.npy"), x[None])
