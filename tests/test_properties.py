"""Hypothesis properties over random valid shapes and parameters (1-3 spatial dims, small sizes): the
divisor's separability and the threaded CPU engine. (Correct results or PatchfoldError for any
parameters, round trips, divisor and overlap_stats: test_fuzz.py.)"""

from __future__ import annotations

from unittest import mock

import numpy as np
import patchfold
from helpers_ref import (
    PADDING_MODES,
    as_tuple,
    geometry_is_valid,
    reference_divisor,
    reference_fold,
    reference_unfold,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from patchfold.engines import cpu

SETTINGS = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAX_SIZE = {1: 12, 2: 7, 3: 5}
MAX_PAD = {1: 4, 2: 3, 3: 1}


@st.composite
def problems(draw):
    """A spatial size and valid block parameters; per-dim tuples or ints."""
    nd = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(1, MAX_SIZE[nd])) for _ in range(nd))

    def param(low: int, high: int):
        return draw(st.one_of(st.integers(low, high), st.tuples(*(st.integers(low, high) for _ in range(nd)))))

    kernel_size = param(1, 4 if nd < 3 else 3)
    dilation = param(1, 3 if nd < 3 else 2)
    padding = param(0, MAX_PAD[nd])
    stride = param(1, 4)
    mode = draw(st.sampled_from(PADDING_MODES))
    assume(geometry_is_valid(size, kernel_size, dilation, padding, stride, mode))
    return size, kernel_size, dilation, padding, stride, mode


def random_ints(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-100, 100, shape).astype(np.int32)


@SETTINGS
@given(problem=problems(), window=st.sampled_from([None, "hann", "triangular", "gaussian", "pyramid"]))
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
    layout=st.sampled_from(["ncl", "nlc"]),
    threads=st.integers(2, 5),
    window=st.sampled_from([None, "hann"]),
    seed=st.integers(0, 2**16),
)
def test_threaded_cpu_engine_matches_reference(problem, layout, threads, window, seed):
    # Force the CPU engine to split even tiny jobs over threads, to exercise the band arithmetic.
    size, k, d, p, s, mode = problem
    nd = len(size)
    x = random_ints((2, 2, *size), seed)
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
