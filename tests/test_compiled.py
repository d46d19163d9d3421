"""The C boundary of the CPU engine: arrays given straight to ``cpu.unfold_into`` and
``cpu.fold_padded`` (no ``ops`` layer in front), and to the checked compiled loops themselves, are
refused with a PatchfoldError, never written through C out of bounds (issue #12)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import patchfold
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from patchfold.coverage import coverage_vectors, divisor_map, unpad_adjoint
from patchfold.dtypes import accumulator_dtype, finish_fold
from patchfold.engines import compiled, cpu
from patchfold.engines.strided import fold_rows
from patchfold.errors import PatchfoldError
from patchfold.geometry import matrix_dims
from patchfold.windows import window_weights

if not compiled.available():
    pytest.skip("the optional C loops were not built here", allow_module_level=True)

N, C = 2, 3
SIZE = (20, 22)
PARAMS = dict(kernel_size=(4, 3), stride=(2, 3), padding=(1, 2), dilation=(1, 2))


def geometry(size: tuple[int, ...] = SIZE, **params) -> patchfold.Geometry:
    return patchfold.Geometry.create(size, **(params or PARAMS))


def image(dtype=np.float32, size: tuple[int, ...] = SIZE) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 200, (N, C, *size)).astype(dtype)


def matrix_shape(g: patchfold.Geometry, layout: str) -> tuple[int, int, int]:
    return g.unfold_shape(N, C, layout)


def fold_shape(g: patchfold.Geometry) -> tuple[int, ...]:
    return (N, C, *g.padded_size)


def misaligned(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array at an odd byte offset in a raw buffer (not aligned to its items)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    array = np.ndarray(shape, dtype, buffer=bytearray(count * dtype.itemsize + 1), offset=1)
    array[...] = 0
    return array


def strided(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed array whose last dim takes every other element of a wider buffer."""
    return np.zeros((*shape[:-1], 2 * shape[-1]), dtype)[..., ::2]


def read_only(shape: tuple[int, ...], dtype) -> np.ndarray:
    array = np.zeros(shape, dtype)
    array.flags.writeable = False
    return array


def overlapping(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``shape`` whose memory starts inside ``x`` (``x`` must be the first part of a
    larger buffer, see :func:`with_room`)."""
    start = x.ctypes.data - x.base.ctypes.data + x.nbytes // 2
    return np.ndarray(shape, x.dtype, buffer=x.base, offset=start)


def with_room(x: np.ndarray, extra: int) -> np.ndarray:
    """``x`` copied to the front of a buffer with ``extra`` more elements after it."""
    buffer = np.zeros(x.size + extra, x.dtype)
    front = buffer[: x.size].reshape(x.shape)
    front[...] = x
    return front


# ----- arrays given straight to the engine ---------------------------------------------------------


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("threads", [1, 2])
def test_unfold_into_refuses_a_bad_out(monkeypatch: pytest.MonkeyPatch, layout: str, threads: int) -> None:
    monkeypatch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
    g = geometry()
    x = image()
    shape = matrix_shape(g, layout)
    smaller = (shape[0], shape[1], shape[2] - 1)
    short = (
        (N, shape[1], shape[2] - g.blocks_per_row) if layout == "ncl" else (N, shape[1] - g.blocks_per_row, shape[2])
    )
    cases = {
        "undersized": (np.zeros(smaller, np.float32), "shape"),
        "one block row short": (np.zeros(short, np.float32), "shape"),
        "read-only": (read_only(shape, np.float32), "writeable"),
        "object dtype": (np.zeros(shape, object), "dtype"),
        "structured dtype": (np.zeros(shape, [("a", np.float32)]), "dtype"),
        "string dtype": (np.zeros(shape, "U4"), "dtype"),
    }
    for name, (out, message) in cases.items():
        before = out.copy()
        with pytest.raises(PatchfoldError, match=message):
            cpu.unfold_into(x, g, out, layout, threads=threads)
        np.testing.assert_array_equal(out, before, err_msg=name)
    with pytest.raises(PatchfoldError, match="rows"):  # a band past the last block row
        cpu.unfold_into(x, g, np.zeros(shape, np.float32), layout, rows=(1, g.blocks_per_dim[0] + 1))


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_unfold_into_refuses_an_out_overlapping_the_input(layout: str) -> None:
    g = geometry()
    shape = matrix_shape(g, layout)
    x = with_room(image(), int(np.prod(shape)))
    kept = x.copy()
    with pytest.raises(PatchfoldError, match="overlap"):
        cpu.unfold_into(x, g, overlapping(x, shape), layout)
    np.testing.assert_array_equal(x, kept)
    with pytest.raises(PatchfoldError, match="overlap"):  # band by band, as streaming calls it
        cpu.unfold_into(x, g, overlapping(x, (N, *shape[1:])), layout, rows=(0, g.blocks_per_dim[0]))


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("make", [misaligned, strided])
def test_unfold_into_fills_a_misaligned_or_strided_out_by_the_numpy_copy(layout: str, make) -> None:
    """Such outs are valid (patchfold.unfold accepts them): the C loop is not used for them, so they
    give the right result, not a crash and not an error."""
    g = geometry()
    x = image()
    expected = np.empty(matrix_shape(g, layout), np.float32)
    cpu.unfold_into(x, g, expected, layout)
    out = make(expected.shape, np.float32)
    cpu.unfold_into(x, g, out, layout)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fold_padded_refuses_a_bad_out(monkeypatch: pytest.MonkeyPatch, layout: str, threads: int) -> None:
    monkeypatch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
    g = geometry()
    cols = np.empty(matrix_shape(g, layout), np.float32)
    cpu.unfold_into(image(), g, cols, layout)
    shape = fold_shape(g)
    cases = {
        "undersized": (np.zeros((*shape[:-1], shape[-1] - 1), np.float32), "shape"),
        "rows short": (np.zeros((N, C, shape[2] - 1, shape[3]), np.float32), "shape"),
        "channels short": (np.zeros((N, C - 1, *shape[2:]), np.float32), "shape"),
        "read-only": (read_only(shape, np.float32), "writeable"),
        "integer accumulator for floats": (np.zeros(shape, np.int32), "dtype"),
        "object dtype": (np.zeros(shape, object), "dtype"),
        "not an array": (shape, "numpy array"),
    }
    for name, (out, message) in cases.items():
        before = out.copy() if isinstance(out, np.ndarray) else None
        with pytest.raises(PatchfoldError, match=message):
            cpu.fold_padded(cols, g, layout, out=out, threads=threads)
        if before is not None:
            np.testing.assert_array_equal(out, before, err_msg=name)
    with pytest.raises(PatchfoldError, match="shape"):  # a band of rows
        cpu.fold_padded(cols, g, layout, rows=(3, 9), out=np.zeros((N, C, 5, shape[3]), np.float32))


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_fold_padded_refuses_an_out_overlapping_the_patches(layout: str) -> None:
    g = geometry()
    shape = fold_shape(g)
    filled = np.empty(matrix_shape(g, layout), np.float32)
    cpu.unfold_into(image(), g, filled, layout)
    cols = with_room(filled, int(np.prod(shape)))
    with pytest.raises(PatchfoldError, match="overlap"):
        cpu.fold_padded(cols, g, layout, out=overlapping(cols, shape))
    np.testing.assert_array_equal(cols, filled)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("make", [misaligned, strided])
def test_fold_padded_adds_into_a_misaligned_or_strided_out_by_the_numpy_loop(layout: str, make) -> None:
    g = geometry()
    cols = np.empty(matrix_shape(g, layout), np.float32)
    cpu.unfold_into(image(), g, cols, layout)
    expected = cpu.fold_padded(cols, g, layout)
    out = make(expected.shape, np.float32)
    assert cpu.fold_padded(cols, g, layout, out=out) is out
    np.testing.assert_array_equal(out, expected)


CRASHED_BEFORE = textwrap.dedent(
    """
    import numpy as np, patchfold
    from patchfold.engines import cpu
    from patchfold.errors import PatchfoldError

    g = patchfold.Geometry.create((256, 256), kernel_size=16, stride=2)
    x = np.ones((4, 3, 256, 256), np.float32)
    refused = 0
    for layout in ("ncl", "nlc"):
        n, a, b = g.unfold_shape(4, 3, layout)
        for shape in ((n, a, b // 16), (n, a // 16, b)):  # a sixteenth of the matrix
            try:
                cpu.unfold_into(x, g, np.empty(shape, np.float32), layout, threads=2)
            except PatchfoldError as error:
                refused += 1
    cols = np.ones(g.unfold_shape(4, 3), np.float32)
    try:
        cpu.fold_padded(cols, g, out=np.empty((4, 3, 16, 16), np.float32), threads=2)
    except PatchfoldError:
        refused += 1
    junk = [np.ones(1 << k) for k in range(20) for _ in range(3)]  # heap traffic: a corrupt heap aborts
    del junk
    print("refused", refused)
    """
)


def test_undersized_out_gives_a_clean_error_in_a_fresh_interpreter() -> None:
    """Before the checks this wrote past the end of ``out`` (``free(): corrupted unsorted chunks``,
    the interpreter killed by a signal), so it runs in a child: a crash fails this test instead of
    ending the session."""
    result = subprocess.run([sys.executable, "-c", CRASHED_BEFORE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.split() == ["refused", "5"], result.stdout


# ----- the checked loops themselves ----------------------------------------------------------------


def unfold_call(layout: str = "ncl", dtype=np.float32, size: tuple[int, ...] = SIZE, **params):
    """A valid call of the checked compiled unfold: (loop, x, out, geometry, rows, kernel rows)."""
    g = geometry(size, **params)
    x = image(dtype, size)
    loop = compiled.unfold(x.dtype.itemsize, g.ndim)
    out = np.zeros(g.unfold_shape(N, C, layout), x.dtype)
    return loop, x, out, g, (0, g.blocks_per_dim[0]), (0, C * g.kernel_size[0])


def fold_call(layout: str = "ncl", dtype=np.float32):
    g = geometry()
    loop = compiled.fold(np.dtype(dtype).name, np.dtype(dtype).name, g.ndim)
    cols = np.ones(g.unfold_shape(N, C, layout), dtype)
    return loop, cols, np.zeros(fold_shape(g), dtype), g, (0, g.padded_size[0])


def test_checked_loops_run_when_everything_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    for layout in ("ncl", "nlc"):
        loop, x, out, g, rows, kernel_rows = unfold_call(layout)
        loop(x, out, g, rows, kernel_rows, layout)
        fold, _, acc, g, rows = fold_call(layout)
        fold(out, acc, g, rows, layout, True)
        with monkeypatch.context() as patch:  # the numpy loops
            patch.setattr(compiled, "unfold", lambda *args: None)
            patch.setattr(compiled, "fold", lambda *args: None)
            expected = np.empty_like(out)
            cpu.unfold_into(x, g, expected, layout)
            summed = cpu.fold_padded(expected, g, layout)
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(acc, summed)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_checked_unfold_refuses_what_the_loop_cannot_take(layout: str) -> None:
    loop, x, out, g, rows, kernel_rows = unfold_call(layout)
    n, a, b = out.shape
    bad_out = {
        "undersized": (np.zeros((n, a, b - 1) if layout == "ncl" else (n, a - 1, b), x.dtype), "out must be"),
        "too few kernel rows": (np.zeros((n, a - 1, b) if layout == "ncl" else (n, a, b - 1), x.dtype), "out must be"),
        "too few items": (np.zeros((n - 1, a, b), x.dtype), "items"),
        "read-only": (read_only(out.shape, x.dtype), "writeable"),
        "another dtype of the same size": (np.zeros(out.shape, np.int32), "dtype"),
        "another item size": (np.zeros(out.shape, np.float64), "dtype"),
        "byte-swapped": (np.zeros(out.shape, ">f4"), "dtype"),
        "misaligned": (misaligned(out.shape, x.dtype), "aligned"),
        "strided": (strided(out.shape, x.dtype), "out must be"),
        "transposed": (np.zeros(out.shape[::-1], x.dtype).T, "out must be"),
        "not 3-D": (np.zeros(out.shape[1:], x.dtype), "dims"),
    }
    for name, (bad, message) in bad_out.items():
        with pytest.raises(PatchfoldError, match=message):
            loop(x, bad, g, rows, kernel_rows, layout)
        assert not bad.any(), name  # nothing written
    bad_x = {
        "strided": (x[..., ::2], "spatial size|contiguous"),
        "non-contiguous": (np.asfortranarray(x), "contiguous"),
        "misaligned": (misaligned(x.shape, x.dtype), "aligned"),
        "byte-swapped": (x.astype(">f4"), "dtype"),
        "another size": (image(size=(20, 23)), "spatial size"),
    }
    for name, (bad, message) in bad_x.items():
        with pytest.raises(PatchfoldError, match=message):
            loop(bad, out, g, rows, kernel_rows, layout)
        assert not out.any(), name
    past = (0, g.blocks_per_dim[0] + 1)
    for bad_rows, bad_kernel_rows in ((past, kernel_rows), ((3, 2), kernel_rows), (rows, (0, kernel_rows[1] + 1))):
        with pytest.raises(PatchfoldError, match="rows"):
            loop(x, out, g, bad_rows, bad_kernel_rows, layout)
    with pytest.raises(PatchfoldError, match="zeros"):
        loop(x, out, patchfold.Geometry.create(SIZE, **PARAMS, padding_mode="reflect"), rows, kernel_rows, layout)
    with pytest.raises(PatchfoldError, match="layout"):
        loop(x, out, g, rows, kernel_rows, "lnc")
    assert not out.any()
    shared = with_room(x, out.size)
    with pytest.raises(PatchfoldError, match="overlap"):
        loop(shared, overlapping(shared, out.shape), g, rows, kernel_rows, layout)


def test_checked_unfold_takes_a_band_with_any_row_stride() -> None:
    """ncl bands are column slices of a wider matrix: rows far apart are fine, rows closer than the
    band is wide are not."""
    loop, x, full, g, _, kernel_rows = unfold_call("ncl")
    per_row = g.blocks_per_row
    band = full[:, :, 2 * per_row : 5 * per_row]
    loop(x, band, g, (2, 5), kernel_rows, "ncl")
    expected = np.zeros_like(full)
    loop(x, expected, g, (0, g.blocks_per_dim[0]), kernel_rows, "ncl")
    np.testing.assert_array_equal(band, expected[:, :, 2 * per_row : 5 * per_row])
    squeezed = np.lib.stride_tricks.as_strided(full, (N, full.shape[1], 3 * per_row), (full.strides[0], 4, 4))
    with pytest.raises(PatchfoldError, match="apart"):
        loop(x, squeezed, g, (2, 5), kernel_rows, "ncl")


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_checked_fold_refuses_what_the_loop_cannot_take(layout: str) -> None:
    loop, cols, acc, g, rows = fold_call(layout)
    shape = acc.shape
    bad_acc = {
        "undersized": (np.zeros((*shape[:-1], shape[-1] - 1), acc.dtype), "reach past"),
        "rows short": (np.zeros((N, C, shape[2] - 1, shape[3]), acc.dtype), "out must be"),
        "channels short": (np.zeros((N, C - 1, *shape[2:]), acc.dtype), "cols must be"),
        "too few items": (np.zeros((N - 1, *shape[1:]), acc.dtype), "out must be"),
        "read-only": (read_only(shape, acc.dtype), "writeable"),
        "another accumulator": (np.zeros(shape, np.float64), "float32"),
        "byte-swapped": (np.zeros(shape, ">f4"), "float32|byte order"),
        "misaligned": (misaligned(shape, acc.dtype), "aligned"),
        "strided rows": (strided(shape, acc.dtype), "packed"),
        "channels overlapping": (
            np.lib.stride_tricks.as_strided(acc, shape, (acc.strides[0], 4, *acc.strides[2:])),
            "apart",
        ),
    }
    for name, (bad, message) in bad_acc.items():
        with pytest.raises(PatchfoldError, match=message):
            loop(cols, bad, g, rows, layout, False)
        assert not bad.any(), name
    bad_cols = {
        "truncated": (cols[:, :-1], "cols must be"),
        "non-contiguous": (np.asfortranarray(cols), "contiguous"),
        "misaligned": (misaligned(cols.shape, cols.dtype), "aligned"),
        "another dtype": (cols.astype(np.float64), "float32"),
    }
    for name, (bad, message) in bad_cols.items():
        with pytest.raises(PatchfoldError, match=message):
            loop(bad, acc, g, rows, layout, True)
        assert not acc.any(), name
    with pytest.raises(PatchfoldError, match="rows"):
        loop(cols, acc, g, (5, 4), layout, True)
    with pytest.raises(PatchfoldError, match="out must be"):
        loop(cols, acc, g, (0, shape[2] + 1), layout, True)
    shared = with_room(cols, acc.size)
    with pytest.raises(PatchfoldError, match="overlap"):
        loop(shared, overlapping(shared, shape), g, rows, layout, True)


def test_mismatched_library_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A _kernels built from other sources (structs of another size) must not be called."""

    class Elsewhere(compiled.UnfoldDims):
        _fields_ = [("extra", compiled.ctypes.c_int64)]  # noqa: RUF012

    compiled._library.cache_clear()
    monkeypatch.setattr(compiled, "UnfoldDims", Elsewhere)
    try:
        assert compiled._library() is None
    finally:
        monkeypatch.undo()
        compiled._library.cache_clear()
    assert compiled.available()


# ----- the compiled loops give the numpy loops' results --------------------------------------------
# test_ops.py checks every dispatch of the C loops against the reference implementation; this checks
# the two CPU paths against each other directly, on random problems and the dtypes of both.


@st.composite
def cpu_problems(draw):
    nd = draw(st.sampled_from([2, 3]))
    size = tuple(draw(st.integers(3, 12 if nd == 2 else 6)) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    size = tuple(max(s, r) for s, r in zip(size, reach))
    return size, dict(kernel_size=kernel, dilation=dilation, stride=stride, padding=padding)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem=cpu_problems(),
    layout=st.sampled_from(["ncl", "nlc"]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]),
    threads=st.integers(1, 3),
)
def test_compiled_loops_match_the_numpy_loops(problem, layout, dtype, threads) -> None:
    size, params = problem
    g = patchfold.Geometry.create(size, **params)
    x = np.random.default_rng(5).integers(0, 250, (2, 2, *size)).astype(dtype)
    shape = g.unfold_shape(2, 2, layout)

    def both() -> tuple[np.ndarray, np.ndarray]:
        cols = np.empty(shape, dtype)
        cpu.unfold_into(x, g, cols, layout, threads=threads)
        return cols, cpu.fold_padded(cols, g, layout, threads=threads)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
        cols, summed = both()
        patch.setattr(compiled, "unfold", lambda *args: None)
        patch.setattr(compiled, "fold", lambda *args: None)
        numpy_cols, numpy_summed = both()
    np.testing.assert_array_equal(cols, numpy_cols)
    assert summed.dtype == numpy_summed.dtype
    np.testing.assert_array_equal(summed, numpy_summed)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
@pytest.mark.parametrize(
    "channels, size, params",
    [
        # nlc unfold cuts ncl rows a few channels at a time (64 KiB tiles) and transposes them:
        # 40 channels of 3x3 blocks over 203-block rows take several channel tiles
        (40, (9, 205), dict(kernel_size=3)),
        (5, (31, 64), dict(kernel_size=(3, 5), dilation=(1, 3), stride=(2, 1), padding=2)),
        # a block row whose one channel passes a tile: the direct loop
        (2, (40, 1400), dict(kernel_size=(5, 3))),
        # long runs: the direct copy; the fold's transposed tile holds only 8 patches
        (3, (30, 70), dict(kernel_size=(16, 40), stride=(4, 3))),
        # runs of >= 32 contiguous bytes: the fold adds them straight from each patch, across bands
        # of output rows (a 3-D volume's planes too) and with strides below, at and above the run
        (3, (80, 90), dict(kernel_size=8, stride=4)),
        (2, (70, 75), dict(kernel_size=(5, 9), stride=(3, 11), padding=(2, 1), dilation=(3, 1))),
        (1, (40, 64), dict(kernel_size=(2, 33), stride=(1, 8))),
        (2, (40, 90), dict(kernel_size=(3, 8), dilation=(1, 2), stride=(2, 3))),
        (2, (6, 20, 24), dict(kernel_size=(2, 3, 8), stride=(2, 2, 2))),
        (3, (11, 30, 33), dict(kernel_size=(3, 2, 9), stride=(2, 3, 4), dilation=(2, 1, 1), padding=(1, 0, 2))),
        (1, (9, 12, 40), dict(kernel_size=(2, 2, 8), dilation=(1, 1, 3))),
        # half-overlapping kernel rows (stride half the row: 2, 4, 8, 16): chunk by chunk, with
        # padding and across bands of output rows; other overlaps (3 or 4 patches on a chunk) not
        (3, (70, 61), dict(kernel_size=(5, 8), stride=(3, 4))),
        (2, (45, 80), dict(kernel_size=(4, 4), stride=2, padding=(0, 3))),
        (4, (33, 52), dict(kernel_size=(8, 16), stride=8)),
        (1, (40, 99), dict(kernel_size=(2, 32), stride=(1, 16), padding=(1, 5))),
        (2, (45, 80), dict(kernel_size=12, stride=4, padding=(0, 3))),
        (1, (90, 70), dict(kernel_size=(3, 16), stride=(2, 4))),
    ],
)
def test_nlc_loops_match_the_numpy_loops_across_tiles(dtype, channels: int, size, params) -> None:
    g = patchfold.Geometry.create(size, **params)
    x = np.random.default_rng(9).integers(0, 100, (1, channels, *size)).astype(dtype)
    shape = g.unfold_shape(1, channels, "nlc")

    def both() -> tuple[np.ndarray, np.ndarray]:
        cols = np.empty(shape, dtype)
        cpu.unfold_into(x, g, cols, "nlc", threads=2)
        return cols, cpu.fold_padded(cols, g, "nlc", threads=2)

    cols, summed = both()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled, "unfold", lambda *args: None)
        patch.setattr(compiled, "fold", lambda *args: None)
        numpy_cols, numpy_summed = both()
    np.testing.assert_array_equal(cols, numpy_cols)
    np.testing.assert_array_equal(summed, numpy_summed)  # integer-valued sums: exact in any order


def check_nlc_unfold_against_numpy(x: np.ndarray, g: patchfold.Geometry, threads: int) -> None:
    """The compiled nlc unfold of ``x`` (split over ``threads`` however small) equals the numpy
    loop's, and writes nothing past its block rows: ``out`` is a view into a larger array whose
    other values are checked unchanged."""
    shape = g.unfold_shape(*x.shape[:2], "nlc")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
        guarded = np.full((shape[0], shape[1] + 1, shape[2]), 7, x.dtype)  # a block row past the end
        cols = guarded[:, : shape[1]]
        cpu.unfold_into(x, g, cols, "nlc", threads=threads)
        patch.setattr(compiled, "unfold", lambda *args: None)
        expected = np.empty(shape, x.dtype)
        cpu.unfold_into(x, g, expected, "nlc", threads=1)
    np.testing.assert_array_equal(cols, expected)
    assert (guarded[:, shape[1] :] == 7).all()


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64]),
    channels=st.integers(1, 12),
    height=st.integers(1, 12),
    width=st.integers(1, 40),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 7)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 4)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 9)),
    threads=st.sampled_from([1, 2]),
)
def test_nlc_unfold_of_short_runs_matches_the_numpy_loop(
    dtype, channels: int, height: int, width: int, kernel, stride, padding, threads: int
) -> None:
    """The nlc unfold cuts short undilated runs (up to 28 bytes: 3x3 convolutions) patch by patch,
    moving each run as a wider power of two that the next run overwrites: at the row's end, the
    patch's last run, blocks in the padding, a width under one wide move and thread splits must
    still write exactly the patch matrix (and nothing past a block row: ``out`` is a view into a
    larger array whose other values are checked unchanged)."""
    assume(all(s + 2 * p >= k for s, p, k in zip((height, width), padding, kernel)))
    g = patchfold.Geometry.create((height, width), kernel_size=kernel, stride=stride, padding=padding)
    x = np.random.default_rng(3).integers(1, 100, (2, channels, height, width)).astype(dtype)
    check_nlc_unfold_against_numpy(x, g, threads)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from([np.int16, np.float32, np.float64]),
    channels=st.integers(1, 6),
    height=st.integers(1, 14),
    width=st.integers(1, 60),
    kernel=st.tuples(st.integers(1, 4), st.integers(2, 12)),
    dilation=st.tuples(st.integers(1, 3), st.integers(2, 9)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 7)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 12)),
    threads=st.sampled_from([1, 2]),
)
def test_nlc_unfold_of_dilated_runs_matches_the_numpy_loop(
    dtype, channels: int, height: int, width: int, kernel, dilation, stride, padding, threads: int
) -> None:
    """The nlc unfold splits each source row of a dilated kernel (runs of 16 bytes or more) into
    its phases and copies each run whole from one phase: every dilation (the vectorised split of
    2, 4 and 8 and the plain one of the others), a row width that is no multiple of it, blocks in
    the padding and thread splits must still write exactly the patch matrix and nothing past it."""
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    assume(all(s + 2 * p >= r for s, p, r in zip((height, width), padding, reach)))
    g = patchfold.Geometry.create(
        (height, width), kernel_size=kernel, dilation=dilation, stride=stride, padding=padding
    )
    x = np.random.default_rng(4).integers(1, 100, (2, channels, height, width)).astype(dtype)
    check_nlc_unfold_against_numpy(x, g, threads)


# ----- the one-pass normalised (and windowed) fold (issue #16) -----------------------------------


def numpy_normalised(cols: np.ndarray, g: patchfold.Geometry, layout: str, weights) -> np.ndarray:
    """The two-step reference: numpy's overlap-add into float64 (int64 for integers), then the
    division by the full divisor map."""
    accumulator = accumulator_dtype(cols.dtype, exact=True, weighted=weights is not None)
    summed = np.zeros(
        (cols.shape[0], g.check_fold_input(*matrix_dims(cols.shape, layout)), *g.padded_size), accumulator
    )
    fold_rows(cpu.blocks_view(cols, g, layout), g, summed, 0, g.padded_size[0], weights)
    return finish_fold(unpad_adjoint(summed, g, 2), divisor_map(g, weights), cols.dtype, weights is not None)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem=cpu_problems(),
    layout=st.sampled_from(["ncl", "nlc"]),
    dtype=st.sampled_from([np.uint8, np.int16, np.uint16, np.int64, np.uint64, np.float16, np.float32, np.float64]),
    window=st.sampled_from([None, "hann", "triangular", "gaussian"]),
    threads=st.integers(1, 3),
    data=st.data(),
)
def test_one_pass_normalised_fold_equals_the_numpy_two_step_fold(problem, layout, dtype, window, threads, data) -> None:
    size, params = problem
    g = patchfold.Geometry.create(size, **params)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if np.dtype(dtype).kind in "iu":
        if np.dtype(dtype).itemsize == 8:
            window = None  # windowed 64-bit integers take the two-step path
        cols = rng.integers(0, 250, g.unfold_shape(2, 2, layout)).astype(dtype)
    else:  # patches that disagree, in eighths: their sums are exact in any order
        cols = (rng.integers(-30, 30, g.unfold_shape(2, 2, layout)) / 8).astype(dtype)
    weights = window_weights(g, window)
    top = data.draw(st.integers(0, size[0]))
    bottom = data.draw(st.integers(top, size[0]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)
        fused = cpu.fold_normalised(cols, g, layout, weights, threads=threads)
        band = cpu.fold_normalised(cols, g, layout, weights, rows=(top, bottom), threads=threads)
    reference = numpy_normalised(cols, g, layout, weights)
    assert fused is not None and fused.dtype == reference.dtype == cols.dtype
    np.testing.assert_array_equal(band, fused[:, :, top:bottom])
    if weights is None:  # the same exact sums and the same division: bit for bit
        np.testing.assert_array_equal(fused, reference)
    elif np.dtype(dtype).kind in "iu":  # weighted means rounded to integers: a float64 sum in
        # another order may round a mean that lies (almost) on a half the other way
        assert np.abs(fused.astype(np.int64) - reference.astype(np.int64)).max(initial=0) <= 1
    else:  # weighted float64 sums added in another order: rounding apart (one unit of the dtype,
        # or of float64 relative to the largest patch value where the weighted terms cancel)
        scale = 16 * float(np.finfo(np.float64).eps) * float(np.abs(cols).max(initial=0))
        np.testing.assert_allclose(fused, reference, rtol=float(np.finfo(dtype).eps), atol=scale)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("spatial", [SIZE, (7, 9, 8)])
def test_windowed_compiled_sum_equals_the_numpy_loop(layout: str, spatial: tuple[int, ...]) -> None:
    g = geometry(spatial, kernel_size=3, stride=2, padding=1, dilation=(2, 1, 1)[: len(spatial)])
    cols = np.random.default_rng(4).standard_normal(g.unfold_shape(N, C, layout)).astype(np.float32)
    weights = window_weights(g, "hann")
    summed = cpu.fold_padded(cols, g, layout, weights)
    reference = np.zeros_like(summed)
    fold_rows(cpu.blocks_view(cols, g, layout), g, reference, 0, g.padded_size[0], weights)
    np.testing.assert_allclose(summed, reference, rtol=1e-14, atol=1e-14)  # another order of the same adds


def test_normalised_fold_holds_no_full_size_float64_array() -> None:
    """Beside its output, the one-pass fold allocates per-dim vectors only: no float64 sums or
    divisor map of the image's size (its scratch band is a fixed, cache-sized C buffer)."""
    g = geometry((512, 512), kernel_size=16, stride=8)
    cols = np.random.default_rng(6).random(g.unfold_shape(1, 3)).astype(np.float32)
    output_bytes = 3 * 512 * 512 * 4
    tracemalloc.start()
    try:
        result = patchfold.fold(cols, (512, 512), 16, stride=8, normalize=True, window="hann")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.dtype == np.float32
    assert peak <= output_bytes * 1.1, peak


def test_a_non_finite_sum_leaves_the_one_pass_fold_to_the_two_step_path() -> None:
    g = geometry((12, 12), kernel_size=4, stride=2)
    near_max = np.full((1, 1, 12, 12), np.finfo(np.float64).max / 2)
    cols = cpu.unfold(near_max, g)
    assert cpu.fold_normalised(cols, g) is None  # the float64 sums overflow
    np.testing.assert_array_equal(patchfold.fold(cols, 12, 4, stride=2, normalize=True), near_max)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_checked_normalised_fold_refuses_what_the_loop_cannot_take(layout: str) -> None:
    g = geometry()
    loop = compiled.fold_extra("float32", "float64", 2)
    cols = np.zeros(matrix_shape(g, layout), np.float32)
    vectors = [v.astype(np.float64) for v in coverage_vectors(g)]
    good = np.empty((N, C, *SIZE), np.float32)
    pad = g.padding[0]
    assert loop.normalised(cols, good, g, (pad, pad + SIZE[0]), layout, vectors) == 0
    bad_calls = {
        "wrong dtype": lambda: loop.normalised(cols, good.astype(np.float64), g, (pad, pad + 4), layout, vectors),
        "too few rows held": lambda: loop.normalised(cols, good[:, :, :4], g, (pad, pad + 5), layout, vectors),
        "rows above out": lambda: loop.normalised(cols, good, g, (0, pad + 4), layout, vectors),
        "rows past the output": lambda: loop.normalised(cols, good, g, (pad, pad + SIZE[0] + 1), layout, vectors),
        "band past the output": lambda: loop.normalised(
            cols, good[:, :, :4], g, (pad + 18, pad + 20), layout, vectors, first_row=18
        ),
        "short divisor": lambda: loop.normalised(cols, good, g, (pad, pad + 4), layout, [vectors[0][:-1], vectors[1]]),
        "int divisor": lambda: loop.normalised(cols, good, g, (pad, pad + 4), layout, coverage_vectors(g)),
        "strided out": lambda: loop.normalised(
            cols, np.empty((N, C, 20, 44), np.float32)[..., ::2], g, (pad, pad + 4), layout, vectors
        ),
        "read-only out": lambda: loop.normalised(
            cols, np.broadcast_to(good, good.shape), g, (pad, pad + 4), layout, vectors
        ),
        "bad weights": lambda: loop.normalised(cols, good, g, (pad, pad + 4), layout, vectors, [np.ones((3, 3))] * 2),
    }
    for name, call in bad_calls.items():
        with pytest.raises(PatchfoldError):
            call()
            pytest.fail(name)


@pytest.mark.parametrize("window", [None, "hann", "gaussian"])
@pytest.mark.parametrize(
    "spatial, params", [((30, 36), dict(kernel_size=6)), ((9, 10, 12), dict(kernel_size=3, stride=4))]
)
def test_non_overlapping_normalised_fold_places_each_value_exactly(window, spatial, params) -> None:
    """Where blocks never overlap each pixel's mean is its one value: placed, not divided, so even
    windowed tiles come back bit for bit (uncovered pixels are 0)."""
    params = {"stride": params["kernel_size"], **params}
    x = np.random.default_rng(8).standard_normal((2, 3, *spatial))
    cols = patchfold.unfold(x, **params, spatial_dims=len(spatial))
    back = patchfold.fold(cols, spatial, **params, normalize=True, window=window)
    covered = patchfold.divisor(spatial, **params) > 0
    np.testing.assert_array_equal(back, np.where(covered, x, 0))
