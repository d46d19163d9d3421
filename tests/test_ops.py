"""unfold / fold / divisor / overlap_stats against PyTorch and the slow reference."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import patchfold
import pytest
import torch
import torch.nn.functional as F
from cli_fixtures import divisor_ref
from helpers_ref import (
    PADDING_MODES,
    STATS_KEYS,
    as_tuple,
    blocks_per_dim,
    reference_divisor,
    reference_fold,
    reference_unfold,
    to_numpy,
)
from patchfold import PatchfoldError, windows
from patchfold.engines import compiled
from patchfold.engines.cpu import run_parallel, split_range

ENGINES = ("cpu", "torch")
FLOATS = (np.float32, np.float64)

# (spatial size, kernel_size, dilation, padding, stride): odd and rectangular sizes, every option
# away from its default somewhere, one case that leaves pixels uncovered.
CASES_2D = [
    ((7, 9), 3, 1, 0, 1),
    ((7, 9), (3, 2), 1, 0, 1),
    ((8, 6), 2, 1, 0, 2),
    ((7, 9), (3, 2), (2, 1), (1, 2), (2, 3)),
    ((5, 5), 1, 1, 0, 1),
    ((9, 7), 4, 2, 3, 3),
    ((6, 10), (2, 5), (3, 1), (0, 1), (1, 4)),
    ((5, 8), 2, 1, 1, 3),  # leaves rows/columns uncovered
    ((11, 3), (5, 3), 1, (2, 0), (2, 1)),
]
CASE_IDS = [f"case{i}" for i in range(len(CASES_2D))]
CHANNELS = (1, 3, 4)
BATCH = 2


def channels_for(index: int) -> int:
    return CHANNELS[index % len(CHANNELS)]


def component(value, dim: int, ndim: int) -> int:
    return as_tuple(value, ndim)[dim]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def torch_pad_unfold(x: torch.Tensor, kernel_size, dilation, padding, stride, mode) -> torch.Tensor:
    """PyTorch's unfold of ``F.pad(x, mode)`` for 2-D inputs (the oracle for padding modes)."""
    p = as_tuple(padding, 2)
    padded = F.pad(x, (p[1], p[1], p[0], p[0]), mode=mode) if any(p) else x
    return F.unfold(padded, kernel_size, dilation, 0, stride)


# ================================================================================================
# (1) float data against torch.nn.functional.unfold / fold
# ================================================================================================
@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tensor"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES_2D)), ids=CASE_IDS)
def test_unfold_matches_torch(index, case, dtype, engine, as_tensor):
    size, k, d, p, s = case
    x = rng(index).standard_normal((BATCH, channels_for(index), *size)).astype(dtype)
    expected = F.unfold(torch.from_numpy(x), k, d, p, s).numpy()
    source = torch.from_numpy(x) if as_tensor else x
    for layout, want in (("ncl", expected), ("nlc", expected.transpose(0, 2, 1))):
        result = to_numpy(patchfold.unfold(source, k, d, p, s, layout=layout, engine=engine))
        assert result.dtype == x.dtype
        assert result.shape == want.shape
        assert np.array_equal(result, want), layout


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tensor"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES_2D)), ids=CASE_IDS)
def test_fold_matches_torch(index, case, dtype, engine, as_tensor):
    size, k, d, p, s = case
    c = channels_for(index)
    length = math.prod(blocks_per_dim(size, k, d, p, s))
    shape = (BATCH, c * math.prod(as_tuple(k, 2)), length)
    generator = rng(100 + index)
    random_cols = generator.standard_normal(shape).astype(dtype)
    integer_cols = generator.integers(-50, 50, shape).astype(dtype)
    for cols, exact in ((random_cols, False), (integer_cols, True)):
        expected = F.fold(torch.from_numpy(cols), size, k, d, p, s).numpy()
        for layout, given in (("ncl", cols), ("nlc", np.ascontiguousarray(cols.transpose(0, 2, 1)))):
            source = torch.from_numpy(given) if as_tensor else given
            result = to_numpy(patchfold.fold(source, size, k, d, p, s, layout=layout, engine=engine))
            assert result.dtype == cols.dtype
            assert result.shape == (BATCH, c, *size)
            if exact:
                assert np.array_equal(result, expected), layout
            else:
                np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5, err_msg=layout)


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_numpy_in_numpy_out(engine):
    x = rng().standard_normal((1, 2, 6, 5)).astype(np.float32)
    cols = patchfold.unfold(x, 2, engine=engine)
    assert isinstance(cols, np.ndarray), type(cols)
    folded = patchfold.fold(np.asarray(to_numpy(cols)), (6, 5), 2, engine=engine)
    assert isinstance(folded, np.ndarray), type(folded)
    normalised = patchfold.fold(np.asarray(to_numpy(cols)), (6, 5), 2, normalize=True, engine=engine)
    assert isinstance(normalised, np.ndarray), type(normalised)


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_tensor_in_tensor_out(engine):
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    cols = patchfold.unfold(x, 2, engine=engine)
    assert isinstance(cols, torch.Tensor)
    assert cols.dtype == torch.float64
    folded = patchfold.fold(cols, (6, 5), 2, normalize=True, engine=engine)
    assert isinstance(folded, torch.Tensor)
    assert folded.dtype == torch.float64
    torch.testing.assert_close(folded, x)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES_2D[:5])), ids=CASE_IDS[:5])
def test_unbatched_input_like_pytorch(index, case, engine):
    size, k, d, p, s = case
    c = channels_for(index) + 1
    x = torch.randn(c, *size, dtype=torch.float64)
    expected = F.unfold(x, k, d, p, s)
    cols = patchfold.unfold(x, k, d, p, s, engine=engine)
    assert cols.shape == expected.shape
    assert torch.equal(cols, expected)
    cols_np = patchfold.unfold(x.numpy(), k, d, p, s, engine="cpu")
    assert cols_np.shape == tuple(expected.shape)
    folded = patchfold.fold(expected, size, k, d, p, s, engine=engine)
    torch.testing.assert_close(folded, F.fold(expected, size, k, d, p, s))
    assert folded.shape == (c, *size)


def test_noncontiguous_inputs():
    base = rng().standard_normal((2, 3, 9, 7))
    views = [base[..., ::-1], base.transpose(0, 1, 3, 2), np.asfortranarray(base), base[:, ::2, 1:, :]]
    for view in views:
        expected = F.unfold(torch.from_numpy(np.ascontiguousarray(view)), 3, 1, 1, 2).numpy()
        for engine in ENGINES:
            assert np.array_equal(to_numpy(patchfold.unfold(view, 3, 1, 1, 2, engine=engine)), expected)
        tensor_view = torch.from_numpy(np.ascontiguousarray(view)).transpose(2, 3)
        expected_t = F.unfold(tensor_view.contiguous(), 3, 1, 1, 2)
        for engine in ENGINES:
            assert torch.equal(patchfold.unfold(tensor_view, 3, 1, 1, 2, engine=engine), expected_t)
    cols = F.unfold(torch.from_numpy(base), 3)
    nlc_view = cols.transpose(1, 2)  # non-contiguous nlc matrix
    expected_fold = F.fold(cols, (9, 7), 3)
    for engine in ENGINES:
        torch.testing.assert_close(patchfold.fold(nlc_view, (9, 7), 3, layout="nlc", engine=engine), expected_fold)


@pytest.mark.parametrize("threads", [1, 2])
def test_threaded_cpu_engine_matches_torch(threads):
    # Large enough (> 4 MiB of patches) that the CPU engine splits the work over threads.
    x = rng(7).integers(0, 1000, (1, 4, 130, 129)).astype(np.float32)
    k, d, p, s = (5, 4), (1, 2), (2, 1), 1
    expected = F.unfold(torch.from_numpy(x), k, d, p, s)
    assert expected.numel() * 4 > 4 << 20
    for layout in ("ncl", "nlc"):
        cols = patchfold.unfold(x, k, d, p, s, layout=layout, engine="cpu", threads=threads)
        want = expected.numpy() if layout == "ncl" else expected.numpy().transpose(0, 2, 1)
        assert np.array_equal(cols, want)
        folded = patchfold.fold(cols, (130, 129), k, d, p, s, layout=layout, engine="cpu", threads=threads)
        assert np.array_equal(folded, F.fold(expected, (130, 129), k, d, p, s).numpy())


@pytest.mark.parametrize("engine", ENGINES)
def test_half_precision(engine):
    x = torch.randn(2, 3, 7, 6)
    expected = F.unfold(x, 3, 1, 1, 2)
    for dtype in (torch.float16, torch.bfloat16):
        cols = patchfold.unfold(x.to(dtype), 3, 1, 1, 2, engine=engine)
        assert cols.dtype == dtype
        assert torch.equal(cols, expected.to(dtype))
    x16 = x.numpy().astype(np.float16)
    cols16 = to_numpy(patchfold.unfold(x16, 3, 1, 1, 2, engine=engine))
    assert cols16.dtype == np.float16
    assert np.array_equal(cols16, expected.numpy().astype(np.float16))


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("engine", ENGINES)
def test_half_precision_fold_accumulates_in_float32(engine, layout):
    size, k, d, p, s = (9, 8), (3, 2), (2, 1), 1, (1, 2)
    length = math.prod(blocks_per_dim(size, k, d, p, s))
    cols = rng(3).integers(1000, 2048, (2, 3 * 6, length)).astype(np.float16)
    expected = F.fold(torch.from_numpy(cols.astype(np.float32)), size, k, d, p, s).numpy()
    assert np.abs(expected).max() > 2048  # sums a float16 accumulator could not hold exactly
    given = cols if layout == "ncl" else np.ascontiguousarray(cols.transpose(0, 2, 1))
    result = to_numpy(patchfold.fold(given, size, k, d, p, s, layout=layout, engine=engine))
    assert result.dtype == np.float16
    assert np.array_equal(result, expected.astype(np.float16))


def test_unfold_into_preallocated_out():
    x = rng().integers(0, 255, (2, 3, 7, 6)).astype(np.uint8)
    expected = F.unfold(torch.from_numpy(x.astype(np.float64)), 3, 1, 1, 2).numpy()
    out = np.full(expected.shape, -1.0)
    result = patchfold.unfold(x, 3, 1, 1, 2, out=out, engine="cpu")
    assert result is out
    assert np.array_equal(out, expected)
    with pytest.raises(PatchfoldError, match=r"out must be .* of shape \(2, 27, 12\), got \(2, 27, 5\)"):
        patchfold.unfold(x, 3, 1, 1, 2, out=np.empty((2, 27, 5)), engine="cpu")


# ================================================================================================
# (2) integer and bool dtypes
# ================================================================================================
INT_DTYPES = (np.uint8, np.uint16, np.int32, np.bool_)


def random_ints(shape, dtype, seed=0) -> np.ndarray:
    generator = rng(seed)
    if dtype == np.bool_:
        return generator.integers(0, 2, shape).astype(bool)
    info = np.iinfo(dtype)
    return generator.integers(max(info.min, -30000), info.max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize(("index", "case"), [(3, CASES_2D[3]), (5, CASES_2D[5]), (7, CASES_2D[7])])
def test_integer_unfold_equals_torch_of_float_cast(index, case, dtype, engine):
    size, k, d, p, s = case
    x = random_ints((BATCH, channels_for(index), *size), dtype, seed=index)
    expected = F.unfold(torch.from_numpy(x.astype(np.float64)), k, d, p, s).numpy().astype(dtype)
    for layout, want in (("ncl", expected), ("nlc", expected.transpose(0, 2, 1))):
        result = to_numpy(patchfold.unfold(x, k, d, p, s, layout=layout, engine=engine))
        assert result.dtype == np.dtype(dtype)
        assert np.array_equal(result, want)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize(("index", "case"), [(3, CASES_2D[3]), (5, CASES_2D[5]), (7, CASES_2D[7])])
def test_integer_fold_sums_in_int64(index, case, dtype, engine):
    size, k, d, p, s = case
    c = channels_for(index)
    shape = (BATCH, c * math.prod(as_tuple(k, 2)), math.prod(blocks_per_dim(size, k, d, p, s)))
    cols = random_ints(shape, dtype, seed=50 + index)
    expected = F.fold(torch.from_numpy(cols.astype(np.float64)), size, k, d, p, s).numpy().astype(np.int64)
    result = to_numpy(patchfold.fold(cols, size, k, d, p, s, engine=engine))
    assert result.dtype == np.int64
    assert np.array_equal(result, expected)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_fold_never_wraps(dtype, engine):
    top = np.iinfo(dtype).max
    x = np.full((1, 1, 31, 31), top, dtype=dtype)
    cols = patchfold.unfold(x, 16, engine=engine)
    summed = to_numpy(patchfold.fold(cols, (31, 31), 16, engine=engine))
    assert summed.dtype == np.int64
    assert summed[0, 0, 15, 15] == top * 256  # the centre pixel is covered by all 16·16 blocks
    assert np.array_equal(summed[0, 0], top * divisor_ref((31, 31), 16, 1, 0, 1).astype(np.int64))
    normalised = to_numpy(patchfold.fold(cols, (31, 31), 16, normalize=True, engine=engine))
    assert normalised.dtype == np.dtype(dtype)
    assert np.array_equal(normalised, x)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_normalised_fold_of_integers_returns_input_dtype_exactly(dtype, engine, layout):
    size, k, d, p, s = (9, 7), (4, 3), (1, 2), (2, 1), (2, 1)
    x = random_ints((2, 3, *size), dtype, seed=3)
    cols = patchfold.unfold(x, k, d, p, s, layout=layout, engine=engine)
    back = to_numpy(patchfold.fold(cols, size, k, d, p, s, normalize=True, layout=layout, engine=engine))
    assert back.dtype == np.dtype(dtype)
    assert np.array_equal(back, x)


@pytest.mark.parametrize("engine", ENGINES)
def test_normalised_fold_of_arbitrary_integer_patches_rounds(engine):
    size, k, s = (6, 7), 3, 2
    length = math.prod(blocks_per_dim(size, k, 1, 0, s))
    cols = random_ints((1, 2 * 9, length), np.uint8, seed=11)
    summed = F.fold(torch.from_numpy(cols.astype(np.float64)), size, k, 1, 0, s).numpy()
    div = divisor_ref(size, k, 1, 0, s)
    expected = np.where(div > 0, np.rint(summed / np.maximum(div, 1)), 0).astype(np.uint8)
    result = to_numpy(patchfold.fold(cols, size, k, stride=s, normalize=True, engine=engine))
    assert result.dtype == np.uint8
    assert np.array_equal(result, expected)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("size", "kernel", "extras"),
    [
        ((9, 8), 3, {"stride": 1}),
        ((9, 8), 4, {"stride": 2, "padding": 2, "padding_mode": "reflect", "window": "hann"}),
        ((7,), 3, {"padding": 1, "padding_mode": "circular"}),
        ((5, 6, 4), 2, {"dilation": 2, "window": "gaussian"}),
    ],
)
def test_normalised_fold_of_floats_near_the_maximum_gives_them_back(size, kernel, extras, engine):
    # The plain float64 sum of overlapping blocks overflows to inf; the mean it is divided into does not.
    rng = np.random.default_rng(3)
    x = np.finfo(np.float64).max * rng.uniform(-1, 1, (1, 2, *size))
    x[0, 0, 0] = np.finfo(np.float64).max  # the largest value itself, where blocks overlap least
    window = extras.pop("window", None)
    cols = patchfold.unfold(x, kernel, **extras, spatial_dims=len(size))
    back = patchfold.fold(cols, size, kernel, **extras, normalize=True, window=window, engine=engine)
    np.testing.assert_allclose(back, x, rtol=1e-12)
    assert np.isfinite(back).all()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_complex_input_rejected(kind, engine):
    x = np.zeros((1, 1, 4, 4), dtype=np.complex64)
    source = torch.from_numpy(x) if kind == "tensor" else x
    with pytest.raises(PatchfoldError, match=r"^unfold input must hold real numbers.*complex64"):
        patchfold.unfold(source, 2, engine=engine)
    cols = np.zeros((1, 4, 9), dtype=np.complex64)
    with pytest.raises(PatchfoldError, match=r"^fold input must hold real numbers.*complex64"):
        patchfold.fold(torch.from_numpy(cols) if kind == "tensor" else cols, (4, 4), 2, engine=engine)


# ================================================================================================
# (3) divisor
# ================================================================================================
@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES_2D)), ids=CASE_IDS)
def test_divisor_equals_torch_fold_of_unfold_ones(index, case):
    size, k, d, p, s = case
    result = patchfold.divisor(size, k, d, p, s)
    assert result.shape == size
    assert result.dtype == np.int64
    assert np.array_equal(result, divisor_ref(size, k, d, p, s))


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES_2D)), ids=CASE_IDS)
def test_divisor_separable(index, case, mode):
    size, k, d, p, s = case
    if mode == "reflect" and any(pi >= si for pi, si in zip(as_tuple(p, 2), size)):
        pytest.skip("reflect padding must be smaller than the size")
    full = patchfold.divisor(size, k, d, p, s, padding_mode=mode)
    parts = [
        patchfold.divisor((size[i],), *(component(v, i, 2) for v in (k, d, p, s)), padding_mode=mode) for i in range(2)
    ]
    assert parts[0].shape == (size[0],)
    assert np.array_equal(full, np.multiply.outer(parts[0], parts[1]))
    assert np.array_equal(full, reference_divisor(size, k, d, p, s, mode))


def test_divisor_known_values():
    assert patchfold.divisor((1, 5), (1, 3)).tolist() == [[1, 2, 3, 2, 1]]
    assert patchfold.divisor((7,), 2, stride=3).tolist() == [1, 1, 0, 1, 1, 0, 0]
    assert patchfold.divisor((4,), 3, padding=1, padding_mode="replicate").tolist() == [3, 3, 3, 3]
    assert patchfold.divisor((4,), 3, padding=1, padding_mode="circular").tolist() == [3, 3, 3, 3]
    assert patchfold.divisor((4,), 3, padding=1, padding_mode="reflect").tolist() == [2, 4, 4, 2]


def test_divisor_three_d_separable():
    size, k, d, p, s = (5, 6, 7), (2, 3, 2), (1, 1, 2), (0, 1, 1), (2, 1, 3)
    full = patchfold.divisor(size, k, d, p, s)
    parts = [patchfold.divisor((size[i],), k[i], d[i], p[i], s[i]) for i in range(3)]
    assert np.array_equal(full, np.multiply.outer(np.multiply.outer(parts[0], parts[1]), parts[2]))
    assert np.array_equal(full, reference_divisor(size, k, d, p, s))


# ================================================================================================
# (4) round trips
# ================================================================================================
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES_2D)), ids=CASE_IDS)
def test_round_trip_is_divisor_times_x(index, case, engine, layout):
    size, k, d, p, s = case
    x = rng(index).integers(-100, 100, (BATCH, channels_for(index), *size)).astype(np.float32)
    div = patchfold.divisor(size, k, d, p, s)
    cols = patchfold.unfold(x, k, d, p, s, layout=layout, engine=engine)
    summed = to_numpy(patchfold.fold(cols, size, k, d, p, s, layout=layout, engine=engine))
    assert np.array_equal(summed, div * x)
    normalised = to_numpy(patchfold.fold(cols, size, k, d, p, s, normalize=True, layout=layout, engine=engine))
    assert not np.isnan(normalised).any()
    assert np.array_equal(normalised, np.where(div > 0, x, 0))


@pytest.mark.parametrize("engine", ENGINES)
def test_normalised_round_trip_random_floats_and_uncovered_zero(engine):
    size, k, d, p, s = (5, 8), 2, 1, 1, 3
    div = patchfold.divisor(size, k, d, p, s)
    assert (div == 0).any() and (div > 0).any()
    for dtype in FLOATS:
        x = rng(5).standard_normal((3, 2, *size)).astype(dtype)
        x[..., div == 0] = np.nan  # uncovered pixels must come back 0 whatever they held
        cols = patchfold.unfold(x, k, d, p, s, engine=engine)
        back = to_numpy(patchfold.fold(cols, size, k, d, p, s, normalize=True, engine=engine))
        assert back.dtype == np.dtype(dtype)
        assert not np.isnan(back).any()
        assert np.all(back[..., div == 0] == 0)
        np.testing.assert_allclose(back[..., div > 0], x[..., div > 0], rtol=1e-6)


# ================================================================================================
# (5) 1-D, 3-D and padding modes against the slow reference
# ================================================================================================
CASES_ND = [
    ((13,), 3, 2, 1, 2),
    ((8,), 4, 1, 3, 3),
    ((6,), 1, 1, 0, 2),
    ((4, 5, 6), (2, 3, 2), 1, 0, 1),
    ((5, 4, 6), 2, (2, 1, 1), (1, 0, 2), (2, 1, 3)),
    ((3, 3, 3), 3, 1, 1, 2),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("case", CASES_ND, ids=[f"nd{i}" for i in range(len(CASES_ND))])
def test_nd_against_reference(case, mode, engine):
    size, k, d, p, s = case
    nd = len(size)
    x = rng(nd).integers(-100, 100, (2, 3, *size)).astype(np.float64)
    expected = reference_unfold(x, k, d, p, s, mode)
    kwargs = {"padding_mode": mode, "engine": engine}
    if nd == 1:
        kwargs["spatial_dims"] = 1
    cols = to_numpy(patchfold.unfold(x, k, d, p, s, **kwargs))
    assert np.array_equal(cols, expected)
    nlc = to_numpy(patchfold.unfold(x, k, d, p, s, layout="nlc", **kwargs))
    assert np.array_equal(nlc, expected.transpose(0, 2, 1))
    kwargs.pop("spatial_dims", None)
    random_cols = rng(9).integers(-100, 100, expected.shape).astype(np.float64)
    want = reference_fold(random_cols, size, k, d, p, s, mode)
    assert np.array_equal(to_numpy(patchfold.fold(random_cols, size, k, d, p, s, **kwargs)), want)
    nlc_cols = np.ascontiguousarray(random_cols.transpose(0, 2, 1))
    assert np.array_equal(to_numpy(patchfold.fold(nlc_cols, size, k, d, p, s, layout="nlc", **kwargs)), want)
    normalised = to_numpy(patchfold.fold(cols, size, k, d, p, s, normalize=True, **kwargs))
    div = reference_divisor(size, k, d, p, s, mode)
    assert np.array_equal(normalised, np.where(div > 0, x, 0))


@pytest.mark.parametrize("engine", ENGINES)
def test_one_d_unbatched_and_int_output_size(engine):
    x = rng().standard_normal((3, 10))
    cols = to_numpy(patchfold.unfold(x, 3, 1, 1, 2, spatial_dims=1, engine=engine))
    expected = reference_unfold(x[None], 3, 1, 1, 2)[0]
    assert np.array_equal(cols, expected)
    back = to_numpy(patchfold.fold(cols, (10,), 3, 1, 1, 2, normalize=True, engine=engine))
    assert back.shape == (3, 10)
    np.testing.assert_allclose(back, x)


def test_three_d_int_output_size_inferred_from_kernel():
    x = rng().integers(0, 9, (1, 2, 4, 4, 4)).astype(np.float64)
    cols = patchfold.unfold(x, (2, 2, 2), stride=2)
    assert cols.shape == (1, 16, 8)
    back = patchfold.fold(cols, 4, (2, 2, 2), stride=2)
    assert back.shape == x.shape
    assert np.array_equal(back, x)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "case",
    [((7, 9), (3, 2), (2, 1), (1, 2), (2, 3)), ((6, 5), 3, 1, 2, 1), ((5, 8), 2, 1, 1, 3), ((4, 4), 2, 1, (3, 0), 1)],
    ids=["a", "b", "c", "d"],
)
def test_2d_padding_modes_against_torch_pad(case, mode, dtype, engine):
    size, k, d, p, s = case
    if mode == "reflect" and any(pi >= si for pi, si in zip(as_tuple(p, 2), size)):
        pytest.skip("reflect padding must be smaller than the size")
    x = torch.from_numpy(rng(1).standard_normal((2, 3, *size)).astype(dtype)).requires_grad_()
    expected = torch_pad_unfold(x, k, d, p, s, mode)
    cols = patchfold.unfold(x.detach(), k, d, p, s, padding_mode=mode, engine=engine)
    assert torch.equal(cols, expected.detach())
    # fold with a padding mode is the adjoint of (pad then unfold): PyTorch's gradient.
    grad = torch.randn_like(expected)
    expected.backward(grad)
    folded = patchfold.fold(grad, size, k, d, p, s, padding_mode=mode, engine=engine)
    torch.testing.assert_close(folded, x.grad)
    assert folded.dtype == x.dtype


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_normalised_round_trip_exact_every_padding_mode(dtype, mode, engine):
    size, k, d, p, s = (7, 6), (3, 4), (2, 1), (2, 3), (1, 2)
    x = random_ints((2, 2, *size), np.uint8, seed=4).astype(dtype)
    cols = patchfold.unfold(x, k, d, p, s, padding_mode=mode, engine=engine)
    back = to_numpy(patchfold.fold(cols, size, k, d, p, s, normalize=True, padding_mode=mode, engine=engine))
    assert back.dtype == np.dtype(dtype)
    assert np.array_equal(back, x)


# ================================================================================================
# (6) windows
# ================================================================================================
WINDOW_SPECS = ("none", "hann", "triangular", "gaussian", "gaussian:0.3", "pyramid")
WINDOW_CASES = [
    ((8, 8), 4, 1, 0, 2),
    ((9, 7), (4, 3), 1, (1, 0), (2, 1)),
    ((5, 8), 2, 1, 1, 3),  # uncovered pixels
    ((7, 6), (3, 4), (2, 1), (2, 1), (1, 2)),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("window", WINDOW_SPECS)
@pytest.mark.parametrize("case", WINDOW_CASES, ids=[f"w{i}" for i in range(len(WINDOW_CASES))])
def test_windowed_normalised_fold_gives_back_x(case, window, engine):
    size, k, d, p, s = case
    div = patchfold.divisor(size, k, d, p, s, window=window)
    covered = patchfold.divisor(size, k, d, p, s) > 0
    assert np.array_equal(div > 0, covered)
    x = random_ints((2, 3, *size), np.uint8, seed=8)
    for mode in PADDING_MODES:
        mode_covered = reference_divisor(size, k, d, p, s, mode) > 0
        cols = patchfold.unfold(x, k, d, p, s, padding_mode=mode, engine=engine)
        back = to_numpy(
            patchfold.fold(cols, size, k, d, p, s, normalize=True, padding_mode=mode, window=window, engine=engine)
        )
        assert back.dtype == np.uint8
        assert np.array_equal(back, np.where(mode_covered, x, 0)), mode
    xf = rng(8).standard_normal((2, 3, *size)).astype(np.float32)
    cols = patchfold.unfold(xf, k, d, p, s, engine=engine)
    back = to_numpy(patchfold.fold(cols, size, k, d, p, s, normalize=True, window=window, engine=engine))
    assert back.dtype == np.float32
    assert not np.isnan(back).any()
    np.testing.assert_allclose(back, np.where(covered, xf, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("window", WINDOW_SPECS[1:])
def test_windowed_fold_matches_reference_weighting(window, mode, engine):
    size, k, d, p, s = (9, 7), (4, 3), (1, 2), (2, 1), (2, 1)
    geometry = patchfold.Geometry.create(size, k, stride=s, padding=p, dilation=d, padding_mode=mode)
    weights = windows.window_weights(geometry, window)
    assert [w.shape for w in weights] == [(geometry.blocks_per_dim[i], geometry.kernel_size[i]) for i in range(2)]
    assert all(np.all(w > 0) and np.all(w <= 1) for w in weights)

    def weight(block, offset):
        return math.prod(float(weights[i][block[i], offset[i]]) for i in range(2))

    cols = rng(2).standard_normal((1, 2 * 12, geometry.num_blocks))
    expected = reference_fold(cols, size, k, d, p, s, mode, weights=weight)
    result = to_numpy(patchfold.fold(cols, size, k, d, p, s, padding_mode=mode, window=window, engine=engine))
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        patchfold.divisor(size, k, d, p, s, padding_mode=mode, window=window),
        reference_divisor(size, k, d, p, s, mode, weights=weight),
        rtol=1e-12,
    )


@pytest.mark.parametrize("window", WINDOW_SPECS[1:])
def test_window_does_not_zero_image_borders(window):
    # hann etc. vanish at their ends in the textbook form; here the border pixels must keep weight.
    size, k, s = (8, 10), 4, 2
    div = patchfold.divisor(size, k, stride=s, window=window)
    assert np.all(div > 0)
    # only the first/last block reaches a corner, with the edge-aware full weight
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert div[corner] == pytest.approx(1.0)
    assert np.allclose(div, div[::-1, ::-1])  # symmetric windows give a symmetric divisor
    x = np.full((1, 1, *size), 200, dtype=np.uint8)
    back = patchfold.fold(patchfold.unfold(x, k, stride=s), size, k, stride=s, normalize=True, window=window)
    assert np.array_equal(back, x)


@pytest.mark.parametrize("window", WINDOW_SPECS[1:])
@pytest.mark.parametrize("case", WINDOW_CASES, ids=[f"w{i}" for i in range(len(WINDOW_CASES))])
def test_weighted_divisor_separable(case, window):
    size, k, d, p, s = case
    full = patchfold.divisor(size, k, d, p, s, window=window)
    assert full.dtype == np.float64
    parts = [
        patchfold.divisor((size[i],), *(component(v, i, 2) for v in (k, d, p, s)), window=window) for i in range(2)
    ]
    np.testing.assert_allclose(full, np.multiply.outer(parts[0], parts[1]), rtol=1e-12)


@pytest.mark.parametrize("spec", ["hamming", "hann:0.2", "gaussian:-1", "gaussian:abc", "gaussian:nan", "gaussian:0"])
def test_bad_window_specs(spec):
    cols = np.zeros((1, 4, 9), dtype=np.float32)
    with pytest.raises(PatchfoldError) as info:
        patchfold.fold(cols, (4, 4), 2, window=spec)
    assert info.value.param == "window"


# ================================================================================================
# (7) overlap_stats against a brute-force divisor
# ================================================================================================
STATS_CASES = [
    # size, kernel, dilation, padding, stride, mode, channels, batch, dtype, layout
    ((7, 9), 3, 1, 0, 1, "zeros", 1, 1, "float32", "ncl"),
    ((5, 8), 2, 1, 1, 3, "zeros", 3, 2, "uint8", "nlc"),  # uncovered pixels and padding
    ((9, 7), 4, 2, 3, 3, "zeros", 4, 1, "float64", "ncl"),
    ((7, 9), (3, 2), (2, 1), (1, 2), (2, 3), "zeros", 2, 3, "uint16", "nlc"),
    ((10, 10), 3, 1, 0, 4, "zeros", 1, 1, "float32", "ncl"),  # stride > kernel: gaps
    ((7, 6), (3, 4), (2, 1), (2, 3), (1, 2), "reflect", 3, 1, "float32", "ncl"),
    ((7, 6), (3, 4), (2, 1), (2, 3), (1, 2), "circular", 3, 1, "float32", "ncl"),
    ((7, 6), (3, 4), 1, 2, (3, 2), "replicate", 1, 2, "int32", "nlc"),
    ((6, 5, 4), 2, 1, 0, (2, 3, 1), "zeros", 1, 1, "float32", "ncl"),
]


@pytest.mark.parametrize("case", STATS_CASES, ids=[f"s{i}" for i in range(len(STATS_CASES))])
def test_overlap_stats_against_brute_force(case):
    size, k, d, p, s, mode, channels, batch, dtype, layout = case
    nd = len(size)
    stats = patchfold.overlap_stats(
        size, k, d, p, s, channels=channels, batch=batch, dtype=dtype, layout=layout, padding_mode=mode
    )
    assert set(stats) == STATS_KEYS
    assert set(stats["coverage"]) == {"min", "max", "mean", "histogram"}
    json.dumps(stats)  # plain JSON types only

    if mode == "zeros" and nd == 2:
        div = divisor_ref(size, k, d, p, s).astype(np.int64)
    else:
        div = reference_divisor(size, k, d, p, s, mode)
    kt, dt, pt, st = (list(as_tuple(v, nd)) for v in (k, d, p, s))
    counts = blocks_per_dim(size, k, d, p, s)
    num_blocks = math.prod(counts)
    patch_length = channels * math.prod(kt)
    pixels = math.prod(size)
    assert stats["input_shape"] == [batch, channels, *size]
    assert stats["kernel_size"] == kt
    assert stats["dilation"] == dt
    assert stats["padding"] == pt
    assert stats["stride"] == st
    assert stats["blocks_per_dim"] == list(counts)
    assert stats["num_blocks"] == num_blocks
    assert stats["patch_length"] == patch_length
    shape = [batch, patch_length, num_blocks] if layout == "ncl" else [batch, num_blocks, patch_length]
    assert stats["output_shape"] == shape
    assert stats["output_bytes"] == math.prod(shape) * np.dtype(dtype).itemsize
    if mode == "zeros" and nd == 2:
        cols = F.unfold(torch.zeros(batch, channels, *size), k, d, p, s)
        assert list(cols.shape) == [batch, patch_length, num_blocks]
    coverage = stats["coverage"]
    assert coverage["min"] == int(div.min())
    assert coverage["max"] == int(div.max())
    assert coverage["mean"] == pytest.approx(float(div.mean()))
    histogram = {str(value): count for value, count in Counter(div.ravel().tolist()).items()}
    assert coverage["histogram"] == histogram
    assert all(isinstance(key, str) for key in coverage["histogram"])
    uncovered = int((div == 0).sum())
    assert stats["uncovered_pixels"] == uncovered
    assert stats["uncovered_fraction"] == pytest.approx(uncovered / pixels)
    assert ("0" in coverage["histogram"]) == (uncovered > 0)
    assert stats["invertible"] is (uncovered == 0)
    assert stats["redundancy"] == pytest.approx(math.prod(kt) * num_blocks / pixels)


def test_overlap_stats_uncovered_case_has_zero_bucket():
    stats = patchfold.overlap_stats((5, 8), 2, 1, 1, 3)
    assert stats["uncovered_pixels"] > 0
    assert "0" in stats["coverage"]["histogram"]
    assert stats["coverage"]["min"] == 0
    assert stats["invertible"] is False
    assert sum(stats["coverage"]["histogram"].values()) == 40


def test_overlap_stats_rejects_bad_values():
    with pytest.raises(PatchfoldError, match=r"no block fits: kernel_size=\[5, 5\].*input size \[4, 4\]") as info:
        patchfold.overlap_stats((4, 4), 5)
    assert info.value.param is None
    with pytest.raises(PatchfoldError, match="channels and batch must be positive, got channels=0"):
        patchfold.overlap_stats((4, 4), 2, channels=0)
    with pytest.raises(PatchfoldError) as info:
        patchfold.overlap_stats((4, 4), 2, stride=0)
    assert info.value.param == "stride"


# ================================================================================================
# (8) CUDA
# ================================================================================================
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8, torch.int32])
def test_cuda_matches_cpu(dtype, mode):
    size, k, d, p, s = (9, 7), (3, 2), (2, 1), (1, 1), (2, 1)
    x = torch.from_numpy(random_ints((2, 3, *size), np.uint8, seed=6)).to(dtype)
    for layout in ("ncl", "nlc"):
        cpu_cols = patchfold.unfold(x, k, d, p, s, padding_mode=mode, layout=layout, engine="cpu")
        gpu_cols = patchfold.unfold(x.cuda(), k, d, p, s, padding_mode=mode, layout=layout)
        assert gpu_cols.device.type == "cuda"
        assert torch.equal(gpu_cols.cpu(), cpu_cols)
        for normalize in (False, True):
            cpu_back = patchfold.fold(cpu_cols, size, k, d, p, s, normalize, padding_mode=mode, layout=layout)
            gpu_back = patchfold.fold(gpu_cols, size, k, d, p, s, normalize, padding_mode=mode, layout=layout)
            assert gpu_back.device.type == "cuda"
            assert gpu_back.dtype == cpu_back.dtype
            assert torch.equal(gpu_back.cpu(), cpu_back)
        back = patchfold.fold(gpu_cols, size, k, d, p, s, True, padding_mode=mode, layout=layout, window="hann")
        covered = torch.from_numpy(reference_divisor(size, k, d, p, s, mode) > 0)
        want = torch.where(covered, x, torch.zeros_like(x))
        assert back.dtype == x.dtype
        assert torch.equal(back.cpu(), want) if not dtype.is_floating_point else torch.allclose(back.cpu(), want)


@cuda
def test_cuda_three_d_and_engine_cpu_refused():
    x = torch.randn(1, 2, 4, 5, 6, dtype=torch.float64)
    cols = patchfold.unfold(x.cuda(), (2, 3, 2), stride=(1, 2, 2), padding=1)
    assert torch.equal(cols.cpu(), patchfold.unfold(x, (2, 3, 2), stride=(1, 2, 2), padding=1))
    with pytest.raises(PatchfoldError) as info:
        patchfold.unfold(x.cuda(), 2, engine="cpu")
    assert info.value.param == "engine"


def test_compiled_loops_are_used_where_built() -> None:
    """The compiled loops are an optional build; where it exists, every dtype pair must find its loop."""

    if not compiled.available():
        pytest.skip("the optional C loops were not built here")
    for source, accumulator in (
        ("float32", "float32"),
        ("float32", "float64"),
        ("float64", "float64"),
        ("float16", "float32"),
        ("uint8", "int64"),
        ("uint16", "int64"),
        ("bool", "int64"),
    ):
        for ndim in (2, 3):
            assert compiled.fold(source, accumulator, ndim) is not None, (source, accumulator, ndim)
    for itemsize, ndim in itertools.product((1, 2, 4, 8), (2, 3)):
        assert compiled.unfold(itemsize, ndim) is not None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("shape", "kernel", "dilation", "padding", "stride"),
    [
        ((2, 3, 13, 70), (3, 8), 1, (1, 2), (2, 4)),  # constant-stride gather, copied kernel columns (8 = 2·4)
        ((2, 3, 13, 70), (2, 6), (1, 2), (0, 3), (1, 3)),  # dilation 2, stride 3: columns repeat every 3
        ((2, 3, 13, 70), (3, 5), (2, 3), (2, 4), (3, 6)),  # shift of 1 block every 2 columns, padding both sides
        ((2, 3, 13, 70), (2, 4), 1, 0, (1, 5)),  # a stride with no special case
        ((2, 3, 13, 70), (1, 3), 1, (0, 1), (1, 32)),  # fewer blocks than the copy's shift
        ((2, 3, 13, 70), (2, 33), 1, 0, (2, 16)),  # long runs for the nlc copy (33 values), stride 16
        ((2, 3, 13, 70), (4, 2), 1, (1, 1), (1, 1)),  # stride 1: plain memcpy rows
        ((2, 3, 13, 70), (2, 2), 1, (0, 1), (1, 2)),  # the row split into its 2 phases in one pass
        ((2, 3, 13, 70), (1, 9), 1, (0, 3), (1, 8)),  # 8 phases in one pass, edges in the padding
        ((2, 2, 6, 7, 19), (2, 3, 8), (1, 2, 1), (1, 2, 3), (3, 1, 4)),  # 3-D: planes of the 2-D loop
        ((2, 2, 6, 7, 19), (3, 1, 2), (2, 1, 3), (3, 0, 1), (1, 2, 6)),  # 3-D: depth padding written as zeros
        ((2, 3, 7, 9, 8), (3, 2, 3), (2, 1, 1), (2, 1, 0), (2, 3, 2)),  # 3-D: dilated depth, padding 2
    ],
)
def test_compiled_unfold_paths_match_reference(
    monkeypatch: pytest.MonkeyPatch, dtype, layout, threads, shape, kernel, dilation, padding, stride
) -> None:
    """Every dispatch of the compiled unfold (strides, run lengths, repeated kernel columns, 3-D
    planes, kernel-row and block-row splits over threads) gives the reference result."""
    from patchfold.engines import cpu

    monkeypatch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
    x = rng(11).integers(0, 250, shape).astype(dtype)
    params = dict(kernel_size=kernel, dilation=dilation, padding=padding, stride=stride)
    expected = reference_unfold(x, **params)
    result = patchfold.unfold(x, **params, layout=layout, threads=threads)
    assert result.dtype == x.dtype
    np.testing.assert_array_equal(result, expected if layout == "ncl" else expected.transpose(0, 2, 1))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("size", "kernel", "dilation", "padding", "stride"),
    [
        ((15, 41), (3, 8), 1, (1, 2), (2, 4)),  # two kernel columns per output column (k = 2s)
        ((15, 41), (2, 7), (1, 2), (0, 3), (1, 3)),  # dilation 2, stride 3: columns 0, 3, 6 meet, 2 blocks apart
        ((15, 41), (3, 9), (2, 1), (2, 4), (3, 2)),  # five columns meet (k = 4.5s), uneven residues
        ((15, 41), (2, 5), 1, 0, (1, 5)),  # no two columns meet
        ((15, 41), (1, 9), 1, (0, 4), (1, 4)),  # fewer blocks than the shift between meeting columns
        ((15, 41), (4, 2), 1, (1, 1), (1, 1)),  # stride 1
        ((6, 7, 19), (2, 3, 8), (1, 2, 1), (1, 1, 3), (1, 1, 4)),  # 3-D: planes added by the 2-D loop
        ((6, 7, 19), (3, 1, 2), (2, 1, 3), (1, 0, 1), (2, 2, 3)),  # 3-D: depth blocks skipping rows
    ],
)
def test_compiled_fold_paths_match_reference(
    monkeypatch: pytest.MonkeyPatch, dtype, layout, threads, size, kernel, dilation, padding, stride
) -> None:
    """Every path of the compiled fold (summed meeting columns, heads and tails, 3-D planes, bands
    over threads) gives the reference overlap-add (and F.fold's result, in 2-D)."""
    from patchfold.engines import cpu

    monkeypatch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
    geometry = patchfold.Geometry.create(size, kernel, stride=stride, padding=padding, dilation=dilation)
    cols = rng(12).integers(0, 100, (2, 3 * geometry.kernel_volume, geometry.num_blocks))
    expected = reference_fold(cols, size, kernel, dilation, padding, stride)
    if len(size) == 2:
        torch_sum = F.fold(torch.from_numpy(cols.astype(np.float64)), size, kernel, dilation, padding, stride)
        np.testing.assert_array_equal(expected, torch_sum.numpy())
    source = cols.astype(dtype) if layout == "ncl" else np.ascontiguousarray(cols.astype(dtype).transpose(0, 2, 1))
    result = patchfold.fold(source, size, kernel, dilation, padding, stride, layout=layout, threads=threads)
    np.testing.assert_array_equal(result, expected.astype(result.dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize(("kernel", "stride", "padding"), [((4, 6), (3, 3), (1, 2)), (16, 8, 0), ((3, 2), (2, 1), 0)])
def test_half_overlap_fold_matches_torch_on_threads(
    monkeypatch: pytest.MonkeyPatch, dtype, kernel, stride, padding
) -> None:
    """Kernel width twice the stride takes the compiled loop's paired path; check it in every band."""
    from patchfold.engines import cpu

    monkeypatch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
    size = (37, 45)
    x = rng(9).integers(0, 100, (2, 3, *size)).astype(dtype)
    cols = patchfold.unfold(x, kernel, 1, padding, stride)
    expected = F.fold(torch.from_numpy(cols.astype(np.float64)), size, kernel, 1, padding, stride).numpy()
    result = patchfold.fold(cols, size, kernel, 1, padding, stride, threads=2)
    np.testing.assert_array_equal(result, expected.astype(result.dtype))


@pytest.mark.parametrize("failing_piece", [0, 1])
def test_run_parallel_waits_for_every_piece_and_reraises(failing_piece: int) -> None:
    """Whichever piece fails (the caller's own or a worker's), every piece has finished when the
    error reaches the caller, so no thread is still writing into an array the caller may free."""
    import threading
    import time

    finished: list[int] = []
    lock = threading.Lock()

    def task(lo: int, hi: int) -> None:
        if lo // 50 == failing_piece:
            raise RuntimeError(f"piece {lo}")
        time.sleep(0.05)
        with lock:
            finished.append(lo)

    with pytest.raises(RuntimeError, match="piece"):
        run_parallel(task, 0, 100, nbytes=1 << 30, threads=2)
    assert finished == [50 if failing_piece == 0 else 0]


def test_run_parallel_covers_the_range_once() -> None:

    seen = np.zeros(1000, dtype=int)
    run_parallel(lambda lo, hi: seen.__setitem__(slice(lo, hi), seen[lo:hi] + 1), 0, 1000, 1 << 30, threads=3)
    assert (seen == 1).all()
    assert split_range(3, 5, 8) == [(3, 4), (4, 5)]


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("shape", [(2, 3, 13, 30), (1, 2, 5, 6, 9)])
def test_numpy_loops_match_reference_where_nothing_was_compiled(monkeypatch: pytest.MonkeyPatch, layout, shape) -> None:
    """Without the optional C build (no compiler at install), the numpy copies give the same results."""
    from patchfold.engines import compiled as kernels
    from patchfold.engines import cpu

    monkeypatch.setattr(kernels, "unfold", lambda *args: None)
    monkeypatch.setattr(kernels, "fold", lambda *args: None)
    monkeypatch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
    nd = len(shape) - 2
    params = dict(kernel_size=(3,) * nd, dilation=(2,) + (1,) * (nd - 1), padding=1, stride=(2,) * nd)
    x = rng(15).integers(0, 200, shape).astype(np.float32)
    expected = reference_unfold(x, **params)
    cols = patchfold.unfold(x, **params, layout=layout, threads=2)
    np.testing.assert_array_equal(cols, expected if layout == "ncl" else expected.transpose(0, 2, 1))
    summed = patchfold.fold(cols, shape[2:], **params, layout=layout, threads=2)
    np.testing.assert_array_equal(summed, reference_fold(expected, shape[2:], **params).astype(np.float32))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    ("shape", "kernel", "dilation", "padding"),
    [
        ((1, 2, 2, 1), (1, 3), (1, 2), (0, 2)),
        ((1, 1, 1, 1), (1, 2), (1, 10), (0, 5)),
        ((1, 1, 2, 2, 1), (1, 1, 3), (1, 1, 2), (0, 0, 2)),
    ],
)
def test_padding_wider_than_the_blocks_reach(
    monkeypatch: pytest.MonkeyPatch, threads, shape, kernel, dilation, padding
) -> None:
    """Kernel columns whose every block lies in the padding are all zeros, and nothing is written past
    the row (found by review under AddressSanitizer: the compiled ncl copy overran such rows)."""
    from patchfold.engines import cpu

    monkeypatch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
    x = np.arange(1, 1 + math.prod(shape), dtype=np.float32).reshape(shape)
    params = dict(kernel_size=kernel, dilation=dilation, padding=padding)
    expected = reference_unfold(x, **params)
    guarded = np.full((2, *expected.shape), -1, dtype=np.float32)  # a canary block after the result
    result = patchfold.unfold(x, **params, threads=threads, out=guarded[0])
    np.testing.assert_array_equal(result, expected)
    assert (guarded[1] == -1).all()
    if len(shape) == 4:
        np.testing.assert_array_equal(expected, F.unfold(torch.from_numpy(x), kernel, dilation, padding).numpy())


def test_out_must_be_writeable_and_apart_from_the_input(tmp_path) -> None:
    x = rng(16).random((1, 3, 20, 20), dtype=np.float32)
    shape = patchfold.Geometry.create((20, 20), 4, stride=4).unfold_shape(1, 3)
    read_only = np.zeros(shape, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(PatchfoldError, match="writeable"):
        patchfold.unfold(x, 4, stride=4, out=read_only)
    np.save(tmp_path / "out.npy", np.zeros(shape, np.float32))
    with pytest.raises(PatchfoldError, match="writeable"):  # once a segmentation fault in the C copy
        patchfold.unfold(x, 4, stride=4, out=np.load(tmp_path / "out.npy", mmap_mode="r"))
    with pytest.raises(PatchfoldError, match="overlap"):
        patchfold.unfold(x, 4, stride=4, out=x.reshape(shape))


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_misaligned_arrays_take_the_numpy_copy(layout: str) -> None:
    """Arrays at an odd byte offset (from a raw buffer) are accepted and give the right result."""
    x = rng(17).random((1, 2, 9, 11)).astype(np.float32)
    raw = bytearray(x.nbytes + 1)
    misaligned = np.ndarray(x.shape, np.float32, buffer=raw, offset=1)
    misaligned[...] = x
    assert not misaligned.flags.aligned
    expected = reference_unfold(x, 3, 1, 1, 2)
    expected = expected if layout == "ncl" else expected.transpose(0, 2, 1)
    np.testing.assert_array_equal(patchfold.unfold(misaligned, 3, 1, 1, 2, layout=layout), expected)
    out_raw = bytearray(expected.nbytes + 1)
    out = np.ndarray(expected.shape, np.float32, buffer=out_raw, offset=1)
    np.testing.assert_array_equal(patchfold.unfold(x, 3, 1, 1, 2, layout=layout, out=out), expected)
    cols = np.ndarray(expected.shape, np.float32, buffer=bytearray(expected.nbytes + 1), offset=1)
    cols[...] = expected
    summed = reference_fold(reference_unfold(x, 3, 1, 1, 2), (9, 11), 3, 1, 1, 2)
    np.testing.assert_array_equal(patchfold.fold(cols, (9, 11), 3, 1, 1, 2, layout=layout), summed)


def test_run_parallel_does_nothing_on_an_empty_range() -> None:

    calls: list[tuple[int, int]] = []
    run_parallel(lambda lo, hi: calls.append((lo, hi)), 5, 5, nbytes=1 << 30, threads=4)
    assert calls == []


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("window", WINDOW_SPECS)
def test_float64_normalised_round_trip_is_within_rounding(engine, window):
    """float64 has no wider type to sum in: the README promises a few units in the last place (and
    bit-exactness only for the narrower types, whose sums are wider)."""
    size, k, s = (23, 19), (5, 4), (2, 3)
    x = rng(11).standard_normal((2, 3, *size))
    cols = patchfold.unfold(x, k, stride=s, engine=engine)
    back = to_numpy(patchfold.fold(cols, size, k, stride=s, normalize=True, window=window, engine=engine))
    covered = patchfold.divisor(size, k, stride=s) > 0
    np.testing.assert_allclose(back[..., covered], x[..., covered], rtol=8 * np.finfo(np.float64).eps, atol=0)
    narrow = x.astype(np.float32)
    cols = patchfold.unfold(narrow, k, stride=s, engine=engine)
    back = to_numpy(patchfold.fold(cols, size, k, stride=s, normalize=True, window=window, engine=engine))
    assert np.array_equal(back[..., covered], narrow[..., covered])
