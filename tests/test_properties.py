"""Hypothesis properties over random shapes and parameters (1-3 spatial dims, small sizes)."""

from __future__ import annotations

import math
from collections import Counter
from unittest import mock

import numpy as np
import patchfold
import torch
import torch.nn.functional as F
from helpers_ref import (
    PADDING_MODES,
    as_tuple,
    blocks_per_dim,
    geometry_is_valid,
    reference_divisor,
    reference_fold,
    reference_unfold,
    to_numpy,
)
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from patchfold import PatchfoldError
from patchfold.engines import cpu

SETTINGS = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = (np.float32, np.float64, np.uint8, np.int16, np.int32, np.int64)
MAX_SIZE = {1: 12, 2: 7, 3: 5}
MAX_PAD = {1: 4, 2: 3, 3: 1}


@st.composite
def problems(draw, valid_only: bool = False):
    """A spatial size and block parameters; per-dim tuples or ints, not necessarily valid."""
    nd = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(1, MAX_SIZE[nd])) for _ in range(nd))

    def param(low: int, high: int):
        return draw(st.one_of(st.integers(low, high), st.tuples(*(st.integers(low, high) for _ in range(nd)))))

    kernel_size = param(1, 4 if nd < 3 else 3)
    dilation = param(1, 3 if nd < 3 else 2)
    padding = param(0, MAX_PAD[nd])
    stride = param(1, 4)
    mode = draw(st.sampled_from(PADDING_MODES))
    if valid_only:
        assume(geometry_is_valid(size, kernel_size, dilation, padding, stride, mode))
    return size, kernel_size, dilation, padding, stride, mode


def random_data(shape, dtype, seed: int, integer_valued: bool = True) -> np.ndarray:
    generator = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f" and not integer_valued:
        return generator.standard_normal(shape).astype(dtype)
    if np.dtype(dtype) == np.uint8:
        return generator.integers(0, 256, shape).astype(dtype)
    return generator.integers(-100, 100, shape).astype(dtype)


@SETTINGS
@given(
    problem=problems(),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["ncl", "nlc"]),
    engine=st.sampled_from(["cpu", "torch"]),
    batch=st.integers(1, 2),
    channels=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_correct_result_or_patchfold_error(problem, dtype, layout, engine, batch, channels, seed):
    size, k, d, p, s, mode = problem
    nd = len(size)
    x = random_data((batch, channels, *size), dtype, seed)
    valid = geometry_is_valid(size, k, d, p, s, mode)
    event(f"{nd}-D, valid={valid}")
    options = {"padding_mode": mode, "layout": layout, "engine": engine}
    if not valid:
        try:
            patchfold.unfold(x, k, d, p, s, spatial_dims=nd, **options)
        except PatchfoldError:
            pass
        else:
            raise AssertionError("unfold accepted an invalid geometry")
        cols = np.zeros((batch, channels * math.prod(as_tuple(k, nd)), 1), dtype=dtype)
        try:
            patchfold.fold(cols, size, k, d, p, s, **options)
        except PatchfoldError:
            pass
        else:
            raise AssertionError("fold accepted an invalid geometry")
        return

    expected = reference_unfold(x, k, d, p, s, mode)
    if nd == 2 and mode == "zeros" and x.dtype.kind == "f":
        assert np.array_equal(expected, F.unfold(torch.from_numpy(x), k, d, p, s).numpy())
    cols = to_numpy(patchfold.unfold(x, k, d, p, s, spatial_dims=nd, **options))
    want = expected if layout == "ncl" else expected.transpose(0, 2, 1)
    assert cols.shape == want.shape
    assert cols.dtype == x.dtype
    assert np.array_equal(cols, want)

    patches = random_data(want.shape, dtype, seed + 1)
    summed = to_numpy(patchfold.fold(patches, size, k, d, p, s, **options))
    reference = reference_fold(patches if layout == "ncl" else patches.transpose(0, 2, 1), size, k, d, p, s, mode)
    assert summed.shape == (batch, channels, *size)
    assert summed.dtype == (np.int64 if x.dtype.kind in "iu" else x.dtype)
    assert np.array_equal(summed, reference)


@SETTINGS
@given(
    problem=problems(valid_only=True),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["ncl", "nlc"]),
    engine=st.sampled_from(["cpu", "torch"]),
    window=st.sampled_from([None, "none", "hann", "triangular", "gaussian", "gaussian:0.4", "pyramid"]),
    seed=st.integers(0, 2**16),
)
def test_normalised_round_trip(problem, dtype, layout, engine, window, seed):
    size, k, d, p, s, mode = problem
    nd = len(size)
    x = random_data((2, 2, *size), dtype, seed)
    options = {"padding_mode": mode, "layout": layout, "engine": engine}
    cols = patchfold.unfold(x, k, d, p, s, spatial_dims=nd, **options)
    back = to_numpy(patchfold.fold(cols, size, k, d, p, s, normalize=True, window=window, **options))
    covered = reference_divisor(size, k, d, p, s, mode) > 0
    assert back.dtype == x.dtype
    assert back.shape == x.shape
    if window in (None, "none") or x.dtype.kind != "f":
        assert np.array_equal(back, np.where(covered, x, 0))
    else:
        np.testing.assert_allclose(back, np.where(covered, x, 0), rtol=1e-5, atol=1e-5)
    # random (not integer-valued) floats: close, and never NaN
    xf = random_data((1, 1, *size), np.float64, seed, integer_valued=False)
    cols = patchfold.unfold(xf, k, d, p, s, spatial_dims=nd, **options)
    back = to_numpy(patchfold.fold(cols, size, k, d, p, s, normalize=True, window=window, **options))
    assert not np.isnan(back).any()
    np.testing.assert_allclose(back, np.where(covered, xf, 0), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(
    problem=problems(valid_only=True),
    dtype=st.sampled_from(DTYPES),
    engine=st.sampled_from(["cpu", "torch"]),
    seed=st.integers(0, 2**16),
)
def test_fold_of_unfold_is_divisor_times_x(problem, dtype, engine, seed):
    size, k, d, p, s, mode = problem
    nd = len(size)
    x = random_data((1, 2, *size), dtype, seed)
    cols = patchfold.unfold(x, k, d, p, s, spatial_dims=nd, padding_mode=mode, engine=engine)
    summed = to_numpy(patchfold.fold(cols, size, k, d, p, s, padding_mode=mode, engine=engine))
    div = patchfold.divisor(size, k, d, p, s, padding_mode=mode)
    assert div.shape == size
    assert div.dtype == np.int64
    assert np.array_equal(div, reference_divisor(size, k, d, p, s, mode))
    assert np.array_equal(summed, div * x.astype(summed.dtype))


@SETTINGS
@given(problem=problems(valid_only=True), window=st.sampled_from([None, "hann", "triangular", "gaussian", "pyramid"]))
def test_divisor_separable(problem, window):
    size, k, d, p, s, mode = problem
    nd = len(size)
    full = patchfold.divisor(size, k, d, p, s, padding_mode=mode, window=window)
    parts = [
        patchfold.divisor((size[i],), *(as_tuple(v, nd)[i] for v in (k, d, p, s)), padding_mode=mode, window=window)
        for i in range(nd)
    ]
    product = parts[0]
    for part in parts[1:]:
        product = np.multiply.outer(product, part)
    assert full.shape == size
    np.testing.assert_allclose(full, product, rtol=1e-12)
    if window is None:
        assert np.array_equal(full, product)
    else:
        assert np.array_equal(full > 0, reference_divisor(size, k, d, p, s, mode) > 0)


@SETTINGS
@given(
    problem=problems(),
    channels=st.integers(1, 4),
    batch=st.integers(1, 3),
    layout=st.sampled_from(["ncl", "nlc"]),
)
def test_stats_consistent_with_divisor(problem, channels, batch, layout):
    size, k, d, p, s, mode = problem
    nd = len(size)
    try:
        stats = patchfold.overlap_stats(
            size, k, d, p, s, channels=channels, batch=batch, layout=layout, padding_mode=mode
        )
    except PatchfoldError:
        assert not geometry_is_valid(size, k, d, p, s, mode)
        return
    assert geometry_is_valid(size, k, d, p, s, mode)
    div = reference_divisor(size, k, d, p, s, mode)
    pixels = math.prod(size)
    coverage = stats["coverage"]
    assert sum(coverage["histogram"].values()) == pixels
    assert coverage["histogram"] == {str(v): n for v, n in Counter(div.ravel().tolist()).items()}
    assert math.isclose(coverage["mean"], float(div.mean()), rel_tol=1e-12)
    assert coverage["min"] == div.min()
    assert coverage["max"] == div.max()
    assert stats["uncovered_pixels"] == int((div == 0).sum())
    assert stats["invertible"] == bool((div > 0).all())
    counts = blocks_per_dim(size, k, d, p, s)
    assert stats["blocks_per_dim"] == list(counts)
    assert stats["num_blocks"] == math.prod(counts)
    volume = math.prod(as_tuple(k, nd))
    assert stats["patch_length"] == channels * volume
    assert math.isclose(stats["redundancy"], volume * math.prod(counts) / pixels)
    assert stats["output_bytes"] == batch * channels * volume * math.prod(counts) * 4


JUNK = st.one_of(
    st.integers(-3, 6),
    st.lists(st.integers(-2, 5), min_size=0, max_size=4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(st.floats(0, 3), min_size=1, max_size=3),
)


def sometimes_junk(nd: int, low: int):
    """Mostly sensible values (so some calls succeed), otherwise anything."""
    sensible = st.integers(low, 3)
    return st.one_of(sensible, sensible, sensible, st.tuples(*(sensible for _ in range(nd))), JUNK)


@st.composite
def junk_parameters(draw):
    nd = draw(st.integers(1, 3))
    kernel_size, dilation, stride = (draw(sometimes_junk(nd, 1)) for _ in range(3))
    padding = draw(sometimes_junk(nd, 0))
    return nd, kernel_size, dilation, padding, stride


@SETTINGS
@given(
    parameters=junk_parameters(),
    mode=st.sampled_from([*PADDING_MODES, *PADDING_MODES, "mirror", ""]),
    engine=st.sampled_from(["cpu", "torch"]),
)
def test_arbitrary_parameters_never_raise_anything_else(parameters, mode, engine):
    nd, kernel_size, dilation, padding, stride = parameters
    size = (5, 4, 3)[:nd]
    x = np.arange(2 * math.prod(size), dtype=np.float32).reshape(1, 2, *size)
    try:
        cols = patchfold.unfold(
            x, kernel_size, dilation, padding, stride, padding_mode=mode, spatial_dims=nd, engine=engine
        )
    except PatchfoldError as error:
        assert str(error)
        event("rejected")
        return
    event("accepted")
    # accepted: the parameters must have been sensible, and the result right
    assert geometry_is_valid(size, kernel_size, dilation, padding, stride, mode)
    assert np.array_equal(to_numpy(cols), reference_unfold(x, kernel_size, dilation, padding, stride, mode))
    back = to_numpy(
        patchfold.fold(cols, size, kernel_size, dilation, padding, stride, True, padding_mode=mode, engine=engine)
    )
    covered = reference_divisor(size, kernel_size, dilation, padding, stride, mode) > 0
    assert np.array_equal(back, np.where(covered, x, 0))


@SETTINGS
@given(
    problem=problems(valid_only=True),
    layout=st.sampled_from(["ncl", "nlc"]),
    threads=st.integers(2, 5),
    window=st.sampled_from([None, "hann"]),
    seed=st.integers(0, 2**16),
)
def test_threaded_cpu_engine_matches_reference(problem, layout, threads, window, seed):
    # Force the CPU engine to split even tiny jobs over threads, to exercise the band arithmetic.
    size, k, d, p, s, mode = problem
    nd = len(size)
    x = random_data((2, 2, *size), np.int32, seed)
    options = {"padding_mode": mode, "layout": layout, "engine": "cpu", "threads": threads}
    with mock.patch.object(cpu, "_PARALLEL_MIN_BYTES", 0):
        cols = patchfold.unfold(x, k, d, p, s, spatial_dims=nd, **options)
        expected = reference_unfold(x, k, d, p, s, mode)
        assert np.array_equal(cols, expected if layout == "ncl" else expected.transpose(0, 2, 1))
        summed = patchfold.fold(cols, size, k, d, p, s, **options)
        assert np.array_equal(summed, reference_fold(expected, size, k, d, p, s, mode))
        back = patchfold.fold(cols, size, k, d, p, s, True, window=window, **options)
    covered = reference_divisor(size, k, d, p, s, mode) > 0
    assert np.array_equal(back, np.where(covered, x, 0))
