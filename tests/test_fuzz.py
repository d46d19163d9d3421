"""Hypothesis fuzzing of the block parameter space: the library's geometry and operations, and the
command line's option parser.

Any combination of parameters must either give a correct result or raise ``PatchfoldError`` (the
command line: exit 0, 1 or 2, never an unhandled exception), and quickly. Validity is predicted here
independently (PyTorch's block formula plus the padding-mode limits), so a wrong acceptance or a
wrong refusal fails too.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import patchfold
import pytest
import torch
import torch.nn.functional as F
from cli_fixtures import error_lines, invoke, part_files
from helpers_ref import (
    as_tuple,
    blocks_per_dim,
    geometry_is_valid,
    reference_divisor,
    reference_fold,
    reference_unfold,
)
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from patchfold import PatchfoldError

FUZZ = settings(max_examples=300, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])
CLI_FUZZ = settings(
    max_examples=150,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DTYPES = (np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64)
WINDOWS = (None, "none", "hann", "triangular", "gaussian", "gaussian:0.4", "pyramid")
#: What ``PatchfoldError.param`` may name when the block parameters are refused (None: the fault
#: only shows against the size, such as no block fitting).
BLOCK_PARAMS = (None, "kernel_size", "stride", "padding", "dilation", "padding_mode")


# ----- the model of validity (independent of patchfold: helpers_ref) --------------------------------
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expected_valid(size: tuple[int, ...], k: Any, s: Any, p: Any, d: Any, mode: str) -> bool:
    """Valid when every parameter is an int or a list or tuple of 1 or ``len(size)`` ints (bools,
    floats, strings and None are not ints), the padding mode is known, and a block fits with legal
    padding (PyTorch's rules)."""
    for value in (k, s, p, d):
        if not (is_int(value) or (isinstance(value, list | tuple) and len(value) in (1, len(size)))):
            return False
        if not is_int(value) and not all(is_int(v) for v in value):
            return False
    return mode in patchfold.PADDING_MODES and geometry_is_valid(size, k, d, p, s, mode)


# ----- strategies ----------------------------------------------------------------------------------
#: Values that are not ints (nor lists of them); every one must be refused.
NOT_INTS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(st.floats(0, 3), min_size=1, max_size=3),
)


@st.composite
def parameter(draw: st.DrawFn, nd: int, low: int, high: int, usual: tuple[int, int]) -> Any:
    """Mostly (3 in 4) a usual value: an int or one per dim (a list or a tuple) from the ``usual``
    range, so that enough combinations are valid; else anything from [low, high] (an int, or a list
    of any length to 4) or something that is not an int at all."""
    if draw(st.sampled_from([True, True, True, False])):
        values = st.integers(*usual)
        per_dim = st.lists(values, min_size=nd, max_size=nd)
        return draw(st.one_of(values, per_dim, per_dim.map(tuple)))
    values = st.integers(low, high)
    return draw(st.one_of(values, st.lists(values, min_size=nd, max_size=nd), st.lists(values, max_size=4), NOT_INTS))


@st.composite
def problems(draw: st.DrawFn) -> dict[str, Any]:
    nd = draw(st.integers(1, 3))
    size = tuple(draw(st.lists(st.integers(1, 12), min_size=nd, max_size=nd)))
    return {
        "size": size,
        "batch": draw(st.integers(1, 2)),
        "channels": draw(st.integers(1, 3)),
        "kernel_size": draw(parameter(nd, -2, 6, (1, 4))),
        "stride": draw(parameter(nd, -2, 6, (1, 4))),
        "padding": draw(parameter(nd, -1, 5, (0, 2))),
        "dilation": draw(parameter(nd, -2, 6, (1, 2))),
        "padding_mode": draw(st.sampled_from((*patchfold.PADDING_MODES,) * 3 + ("mirror", ""))),
        "layout": draw(st.sampled_from(patchfold.LAYOUTS)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "integer_valued": draw(st.booleans()),
        "engine": draw(st.sampled_from(["auto", "cpu", "torch"])),
        "window": draw(st.sampled_from(WINDOWS)),
        "stats_dtype": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def make_input(case: dict[str, Any]) -> np.ndarray:
    """Integers over the dtype's whole range (int64: ±2**40, so that sums of a few thousand stay
    exact); floats in [-1000, 1000], integer-valued or not."""
    rng = np.random.default_rng(case["seed"])
    shape = (case["batch"], case["channels"], *case["size"])
    dtype = np.dtype(case["dtype"])
    if dtype.kind == "f":
        if case["integer_valued"]:
            return rng.integers(-1000, 1000, shape).astype(dtype)
        return rng.uniform(-1000, 1000, shape).astype(dtype)
    low, high = (-(2**40), 2**40) if dtype == np.int64 else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    return rng.integers(low, high, shape, dtype=dtype, endpoint=True)


def small_values(shape: tuple[int, ...], dtype: Any, seed: int) -> np.ndarray:
    """Small integers in ``dtype``: any sum of them is exact in every dtype."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape).astype(dtype)
    return rng.integers(-100, 100, shape).astype(dtype)


def block_args(case: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(kernel_size, dilation, padding, stride): the positional order of unfold/fold/divisor."""
    return case["kernel_size"], case["dilation"], case["padding"], case["stride"]


def must_refuse(call: Any, what: str, refused: PatchfoldError) -> None:
    """``call`` raises the error Geometry.create raised for the same parameters: the same ``param``
    and a message that starts with the validator's."""
    with pytest.raises(PatchfoldError) as info:
        call()
        pytest.fail(f"{what} accepted parameters that Geometry.create refuses")
    assert info.value.param == refused.param, f"{what}: {info.value!r} but Geometry.create: {refused!r}"
    assert str(info.value).startswith(str(refused)), f"{what}: {info.value} but Geometry.create: {refused}"


# ----- the library -------------------------------------------------------------------------------------
@FUZZ
@given(problems())
def test_operations_give_a_correct_result_or_a_patchfold_error(case: dict[str, Any]) -> None:
    """Any parameters: unfold, fold (plain, normalised, windowed), divisor and overlap_stats give
    the reference's result, or all refuse them with the validator's PatchfoldError."""
    size, mode, layout, engine, window = (
        case["size"],
        case["padding_mode"],
        case["layout"],
        case["engine"],
        case["window"],
    )
    k, d, p, s = block_args(case)
    nd = len(size)
    valid = expected_valid(size, k, s, p, d, mode)
    x = make_input(case)
    n, c = x.shape[:2]
    options = {"padding_mode": mode, "layout": layout, "engine": engine}
    try:
        geometry = patchfold.Geometry.create(size, k, stride=s, padding=p, dilation=d, padding_mode=mode)
    except PatchfoldError as error:
        assert str(error) and error.param in BLOCK_PARAMS, repr(error)
        assert error.param is None or error.param in str(error), repr(error)
        geometry, refused = None, error
    assert (geometry is not None) == valid, f"Geometry.create {'refused' if valid else 'accepted'} {case}"
    event("valid geometry" if valid else "invalid geometry")

    if geometry is None:
        must_refuse(lambda: patchfold.unfold(x, k, d, p, s, spatial_dims=nd, **options), "unfold", refused)
        volume = max(1, abs(math.prod(as_tuple(k, nd)))) if valid_ints(k) else 1
        cols = np.zeros((n, c * volume, 1), x.dtype)
        must_refuse(lambda: patchfold.fold(cols, size, k, d, p, s, normalize=True, **options), "fold", refused)
        must_refuse(lambda: patchfold.divisor(size, k, d, p, s, padding_mode=mode), "divisor", refused)
        must_refuse(
            lambda: patchfold.overlap_stats(size, k, d, p, s, channels=c, batch=n, padding_mode=mode),
            "overlap_stats",
            refused,
        )
        return

    # unfold: the reference's blocks, in the input's dtype
    expected = reference_unfold(x, k, d, p, s, mode)
    if nd == 2 and mode == "zeros" and x.dtype.kind == "f":  # the reference is PyTorch's unfold
        blocks = (as_tuple(v, nd) for v in (k, d, p, s))
        assert np.array_equal(expected, F.unfold(torch.from_numpy(x), *blocks).numpy())
    cols = patchfold.unfold(x, k, d, p, s, spatial_dims=nd, **options)
    assert isinstance(cols, np.ndarray), "numpy in, numpy out (whatever the engine)"
    assert cols.shape == geometry.unfold_shape(n, c, layout)
    assert cols.dtype == x.dtype
    np.testing.assert_array_equal(cols, expected if layout == "ncl" else expected.transpose(0, 2, 1))

    # fold of any patches: the reference's overlap-add, summed in int64 for integers
    patches = small_values(expected.shape, x.dtype, case["seed"] + 1)
    given = patches if layout == "ncl" else np.ascontiguousarray(patches.transpose(0, 2, 1))
    summed = patchfold.fold(given, size, k, d, p, s, **options)
    assert isinstance(summed, np.ndarray) and summed.shape == x.shape
    assert summed.dtype == (np.int64 if x.dtype.kind in "iu" else x.dtype)
    np.testing.assert_array_equal(summed, reference_fold(patches, size, k, d, p, s, mode))

    # the divisor is fold(unfold(ones)), and fold(unfold(x)) is divisor · x
    div = patchfold.divisor(size, k, d, p, s, padding_mode=mode)
    assert div.shape == size and div.dtype == np.int64
    np.testing.assert_array_equal(div, reference_divisor(size, k, d, p, s, mode))
    ones = patchfold.unfold(np.ones((1, 1, *size), np.uint8), k, d, p, s, padding_mode=mode, spatial_dims=nd)
    np.testing.assert_array_equal(patchfold.fold(ones, size, k, d, p, s, padding_mode=mode)[0, 0], div)
    summed = patchfold.fold(cols, size, k, d, p, s, **options)
    times = div * x.astype(summed.dtype)
    if x.dtype.kind == "f" and not case["integer_valued"]:
        np.testing.assert_allclose(summed, times, rtol=1e-5 if x.dtype == np.float32 else 1e-12)
    else:
        np.testing.assert_array_equal(summed, times)

    # normalised (and windowed) fold gives x back where a block covers it, 0 elsewhere, never NaN
    back = patchfold.fold(cols, size, k, d, p, s, normalize=True, window=window, **options)
    assert isinstance(back, np.ndarray) and back.shape == x.shape and back.dtype == x.dtype
    covered = np.broadcast_to(div > 0, x.shape)
    assert (back[~covered] == 0).all(), "pixels no block covers must fold back to 0"
    if x.dtype.kind in "iu" or (case["integer_valued"] and window in (None, "none")):
        np.testing.assert_array_equal(back[covered], x[covered])
    elif x.dtype == np.float32:
        np.testing.assert_allclose(back[covered], x[covered], rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(back[covered], x[covered], rtol=1e-12, atol=1e-9)

    # overlap_stats agrees with the divisor and the block formula
    dtype = {"dtype": x.dtype} if case["stats_dtype"] else {}  # else float32, the default
    stats = patchfold.overlap_stats(size, k, d, p, s, channels=c, batch=n, layout=layout, padding_mode=mode, **dtype)
    coverage = stats["coverage"]
    histogram = {int(key): count for key, count in coverage["histogram"].items()}
    assert sum(histogram.values()) == math.prod(size)
    assert histogram == dict(Counter(div.ravel().tolist()))
    assert coverage["min"] == div.min() and coverage["max"] == div.max()
    assert math.isclose(coverage["mean"], float(div.mean()), rel_tol=1e-12)
    counts = blocks_per_dim(size, k, d, p, s)
    assert stats["blocks_per_dim"] == list(counts) == list(geometry.blocks_per_dim)
    assert stats["num_blocks"] == math.prod(counts) == geometry.num_blocks
    volume = math.prod(as_tuple(k, nd))
    assert stats["patch_length"] == c * volume
    assert stats["output_shape"] == list(geometry.unfold_shape(n, c, layout))
    assert stats["output_bytes"] == cols.size * (x.dtype.itemsize if case["stats_dtype"] else 4)
    assert stats["uncovered_pixels"] == int((div == 0).sum())
    assert stats["invertible"] == bool((div > 0).all())
    assert math.isclose(stats["redundancy"], volume * math.prod(counts) / math.prod(size))


def valid_ints(value: Any) -> bool:
    """An int or a non-empty list or tuple of ints (of any length)."""
    return is_int(value) or (isinstance(value, list | tuple) and len(value) > 0 and all(map(is_int, value)))


HUGE = [2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 3, 10**23]
#: Paddings only beyond any machine's memory (2**31 would really be allocated, and then written).
HUGE_PADDING = [2**62, 2**63, 2**64, 10**23]

#: Runs in a child interpreter (a crash in compiled code must fail the test, not end the session):
#: argv[1] is JSON [nd, which, [[value, engine, op], ...]]; prints "start I" before and
#: "done I OUTCOME" after each.
_CHILD = """
import json, sys
import numpy as np
import patchfold
nd, which, runs = json.loads(sys.argv[1])
x = np.arange(5**nd, dtype=np.uint8).reshape(1, 1, *(5,) * nd)
first = x[(0, 0, *(slice(0, 2),) * nd)].reshape(-1)
for index, (value, engine, op) in enumerate(runs):
    print("start", index, flush=True)
    params = {"kernel_size": 2, "stride": 1, "padding": 0, "dilation": 1, which: value}
    k, d, p, s = params["kernel_size"], params["dilation"], params["padding"], params["stride"]
    try:
        if op == "unfold":
            cols = patchfold.unfold(x, k, d, p, s, spatial_dims=nd, engine=engine)
            ok = cols.shape == (1, 2**nd, 1) and (cols[0, :, 0] == first).all()
        else:
            cols = np.zeros((1, 2**nd, 1), np.float32)
            cols[0, :, 0] = first
            back = patchfold.fold(cols, (5,) * nd, k, d, p, s, normalize=True, engine=engine)
            ok = back.shape == x.shape and (back[(0, 0, *(slice(0, 2),) * nd)].reshape(-1) == first).all()
        outcome = "result" if ok else "wrong-result"
    except patchfold.PatchfoldError:
        outcome = "PatchfoldError"
    except MemoryError:
        outcome = "MemoryError"
    except Exception as error:
        outcome = f"{type(error).__name__}:{error}"
    print("done", index, outcome.replace(chr(10), " "), flush=True)
"""


def run_in_child(nd: int, which: str, runs: list[tuple[int, str, str]]) -> dict[int, str]:
    """Outcome of each run; a run that killed the child is reported as ``crash:SIGNAL``."""
    import signal
    import subprocess
    import sys

    outcomes: dict[int, str] = {}
    offset = 0
    while offset < len(runs):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps([nd, which, runs[offset:]])],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        started = None
        for line in done.stdout.splitlines():
            word, index, *rest = line.split(" ", 2)
            if word == "start":
                started = offset + int(index)
            else:
                outcomes[offset + int(index)] = rest[0]
                started = None
        if done.returncode == 0:
            break
        if started is None:
            raise AssertionError(f"the child failed outside a run:\n{done.stderr}")
        name = signal.Signals(-done.returncode).name if done.returncode < 0 else f"exit {done.returncode}"
        outcomes[started] = f"crash:{name}"
        offset = started + 1
    return outcomes


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("which", ["kernel_size", "stride", "padding", "dilation"])
def test_huge_parameters_give_a_result_or_a_patchfold_error(nd: int, which: str) -> None:
    """Absurd but well-typed values, for unfold and fold: a huge stride is legal (one block per
    dim at the origin) and must give the right result, unless it is above the documented limit
    of 2**40 (PatchfoldError); a huge kernel or dilation fits nowhere (PatchfoldError); a huge
    padding needs memory nobody has (PatchfoldError or MemoryError). Never an overflow, a numpy
    error, a wrong result or a crash."""
    values = HUGE_PADDING if which == "padding" else HUGE
    runs = [(value, engine, op) for value in values for engine in ("auto", "cpu") for op in ("unfold", "fold")]

    def allowed(value: int) -> set[str]:
        if which == "stride":
            return {"result"} if value <= 2**40 else {"PatchfoldError"}
        return {"PatchfoldError", "MemoryError"} if which == "padding" else {"PatchfoldError"}

    outcomes = run_in_child(nd, which, runs)
    problems = [
        f"{op} {which}={value} engine={engine}: {outcomes.get(index, 'no outcome')}"
        for index, (value, engine, op) in enumerate(runs)
        if outcomes.get(index) not in allowed(value)
    ]
    assert not problems, "\n".join(problems)


# ----- the command line's option parser ---------------------------------------------------------------
SEPARATED = st.lists(st.integers(-12, 40).map(str), min_size=1, max_size=4).flatmap(
    lambda parts: st.sampled_from([",", "x", " , ", ",,", ";"]).map(lambda sep: sep.join(parts))
)
PLAUSIBLE = st.one_of(
    st.integers(1, 4).map(str), st.lists(st.integers(1, 4).map(str), min_size=1, max_size=3).map(",".join)
)
HOSTILE = st.one_of(
    st.text(max_size=10),  # anything at all, unicode and control characters included
    st.text(alphabet="0123456789,x+- \t", max_size=10),
    SEPARATED,
    st.integers(10**18, 10**30).map(str),
)
#: Each option is plausible 3 times in 4 (so whole command lines often parse and run), else hostile.
OPTION_TEXT = st.sampled_from([True, True, True, False]).flatmap(lambda plain: PLAUSIBLE if plain else HOSTILE)
#: Padding (with the kernel it lets fit) decides how much work and memory a run needs, so its fuzzing
#: keeps to short strings: up to 999 for stats (per-axis work), 99 for unfold (which writes the
#: patches). Astronomical paddings are the explicit examples.
PLAUSIBLE_PADDING = st.one_of(
    st.integers(0, 3).map(str), st.lists(st.integers(0, 3).map(str), min_size=1, max_size=3).map(",".join)
)
PADDING_TEXT = st.sampled_from([True, True, True, False]).flatmap(
    lambda plain: (
        PLAUSIBLE_PADDING
        if plain
        else st.one_of(st.text(max_size=3), st.text(alphabet="0123456789,x+- ", max_size=3), SEPARATED)
    )
)
UNFOLD_PADDING_TEXT = st.sampled_from([True, True, True, False]).flatmap(
    lambda plain: PLAUSIBLE_PADDING if plain else st.one_of(st.text(alphabet="0123456789,x+- ", max_size=2), SEPARATED)
)


def check_cli_outcome(result: Any, args: list[str]) -> None:
    where = f"args {args!r}\nexit {result.exit_code}\nstdout {result.stdout}\nstderr {result.stderr}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"unhandled {type(result.exception).__name__}: {result.exception}\n{where}"
    )
    assert result.exit_code in (0, 1, 2), where
    assert "Traceback" not in result.stderr, where
    if result.exit_code != 0:
        assert len(error_lines(result.stderr)) == 1, where
    if result.exit_code == 2:
        named = ("--kernel-size", "--stride", "--padding", "--dilation", "--size", "no such option")
        assert any(option in result.stderr for option in named), where


def stats_args(k: str, s: str, p: str, d: str) -> list[str]:
    return [
        "stats",
        "--size",
        "9,7",
        f"--kernel-size={k}",
        f"--stride={s}",
        f"--padding={p}",
        f"--dilation={d}",
        "--json",
    ]


@pytest.mark.parametrize("padding", ["1" + "0" * 12, str(2**62), "1" + "0" * 21, "1,1" + "0" * 30])
def test_stats_with_astronomical_padding_fails_cleanly(padding: str) -> None:
    """No machine holds the per-axis coverage of such a padding: a clean error, not a crash: out of
    memory (exit 1) up to the limit of 2**40, a bad option value (exit 2) above it."""
    args = stats_args("3", "1", padding, "1")
    result = invoke(*args)
    check_cli_outcome(result, args)
    [line] = error_lines(result.stderr)
    if max(int(v) for v in padding.split(",")) <= 2**40:
        assert result.exit_code == 1 and "out of memory" in line, line
    else:
        assert result.exit_code == 2 and "--padding" in line and "at most 2**40" in line, line


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[str, str, str, str, str]:
    """(command, kernel, stride, padding, dilation): stats of a 9 × 7 size or unfold of a 6 × 5
    image, with option texts from :data:`OPTION_TEXT` (the padding's as the command affords)."""
    command = draw(st.sampled_from(["stats", "unfold"]))
    k, s, d = draw(OPTION_TEXT), draw(OPTION_TEXT), draw(OPTION_TEXT)
    p = draw(PADDING_TEXT if command == "stats" else UNFOLD_PADDING_TEXT)
    return command, k, s, p, d


@pytest.fixture(scope="module")
def small_npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz_cli") / "small.npy"
    np.save(path, np.arange(6 * 5, dtype=np.uint8).reshape(1, 1, 6, 5))
    return path


@settings(CLI_FUZZ, max_examples=300)
@given(line=command_lines())
@example(line=("stats", "3", "1" + "0" * 23, "0", "1"))
@example(line=("stats", "16,8", "2x3", "0, 1", "+1"))
@example(line=("unfold", "3", "1" + "0" * 23, "0", "1"))
@example(line=("unfold", "3", "1", "1" + "0" * 21, "1"))
def test_option_parser(small_npy: Path, line: tuple[str, str, str, str, str]) -> None:
    command, k, s, p, d = line
    out = small_npy.parent / "out.npy"
    if command == "stats":
        args = stats_args(k, s, p, d)
    else:
        args = [str(small_npy), "-o", str(out), f"--kernel-size={k}", f"--stride={s}", f"--padding={p}"]
        args = ["unfold", *args, f"--dilation={d}", "--no-progress", "--device", "cpu"]
    try:
        result = invoke(*args)
        event(f"{command} exit {result.exit_code}")
        check_cli_outcome(result, args)
        if command == "stats":
            if result.exit_code == 0:
                stats = json.loads(result.stdout)
                assert stats["input_shape"][2:] == [9, 7]
                assert sum(stats["coverage"]["histogram"].values()) == 63
            return
        if result.exit_code == 0:
            sidecar = json.loads(out.with_suffix(".json").read_text())
            geometry = patchfold.Geometry.create(
                (6, 5),
                sidecar["kernel_size"],
                stride=sidecar["stride"],
                padding=sidecar["padding"],
                dilation=sidecar["dilation"],
            )
            assert np.load(out).shape == geometry.unfold_shape(1, 1)
        else:
            assert not out.exists()
        assert part_files(small_npy.parent) == []
    finally:
        out.unlink(missing_ok=True)
        out.with_suffix(".json").unlink(missing_ok=True)
