"""How ``patchfold.apply`` holds its sums until rows are finished: the held outputs summed chunk by
chunk by the compiled blend, the float64 band with the compiled place/divide loops, and the band
with numpy's loops must give the same values bit for bit, in bounded memory (issue #15)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patchfold import PatchfoldError, patchwise
from patchfold.blocks import Blocks
from patchfold.coverage import outer
from patchfold.engines import compiled
from patchfold.patchwise import apply, apply_streamed, plan_apply

STRATEGIES = ["held", "band", "numpy"]
WINDOWS = ["none", "hann", "triangular", "gaussian", "pyramid"]
RNG = np.random.default_rng(11)
needs_loops = pytest.mark.skipif(compiled.blend("float32") is None, reason="the optional C loops were not built here")


def blending(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make the sink hold its sums ``how``: held outputs (whatever their size), a band with the
    compiled loops, or a band with numpy's."""
    if how == "held":
        monkeypatch.setattr(patchwise._Sink, "_held_bytes", lambda self: 0)
        return
    monkeypatch.setattr(patchwise, "compiled_blend", lambda dtype: None)
    if how == "numpy":
        monkeypatch.setattr(patchwise, "compiled_place", lambda dtype: None)
        monkeypatch.setattr(patchwise, "compiled_divide", lambda dtype: None)


def channels_last(array: np.ndarray) -> np.ndarray:
    """``array`` ``(B, C, *k)`` with the same values in channels-last memory."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(array, 1, -1)), -1, 1)


@st.composite
def blend_cases(draw: st.DrawFn) -> dict:
    """A 2-D or 3-D apply: any grid (cover or padded, strides below, at and beyond the span,
    dilation), window, margin, model (values changed, channels mixed, or 2× up-sampled), output
    layout, dtype, batch size, and in memory or streamed row band by row band."""
    ndim = draw(st.sampled_from([2, 3]))
    size = tuple(draw(st.integers(3, 34 if ndim == 2 else 11)) for _ in range(ndim))
    model = draw(st.sampled_from(["affine", "mix", "upsample"]))
    kernel = tuple(draw(st.integers(2, 9 if ndim == 2 else 5)) for _ in range(ndim))
    dilation = (1,) * ndim if model == "upsample" else tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    cover = draw(st.booleans())
    padding = (0,) * ndim if cover else tuple(draw(st.integers(0, k - 1)) for k in kernel)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    if not cover:  # padded enough for one block per dim (a dim shorter than a block is refused)
        padding = tuple(max(p, -(-(s - n) // 2)) for n, p, s in zip(size, padding, span))
    stride = tuple(draw(st.integers(1, s + 2)) for s in span)
    margin = draw(st.integers(0, max(0, (min(kernel) - 1) // 2)))
    return {
        "x": RNG.standard_normal((draw(st.integers(1, 2)), draw(st.integers(1, 5)), *size)),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "blocks": Blocks(kernel, stride=stride, padding=padding, dilation=dilation),
        "cover": cover,
        "window": draw(st.sampled_from(WINDOWS)),
        "margin": margin,
        "model": model,
        "layout": draw(st.sampled_from(["contiguous", "channels_last"])),
        "batch": draw(st.integers(1, 7)),
        "streamed": draw(st.booleans()),
    }


def model_of(case: dict):
    ndim = case["x"].ndim - 2
    mixing = np.random.default_rng(3).standard_normal((3, case["x"].shape[1]))  # the same for every run

    def fn(patches: np.ndarray) -> np.ndarray:
        if case["model"] == "affine":
            result = patches * 2 - 1
        elif case["model"] == "mix":  # C -> 3 channels
            result = np.einsum("oc,bc...->bo...", mixing, patches).astype(patches.dtype)
        else:
            result = patches
            for axis in range(2, 2 + ndim):
                result = np.repeat(result, 2, axis=axis)
        return channels_last(result) if case["layout"] == "channels_last" else np.ascontiguousarray(result)

    return fn


def run(case: dict) -> np.ndarray | str:
    """The case's result (or the refusal's message, which every strategy must give alike)."""
    x = case["x"].astype(case["dtype"])
    fn = model_of(case)
    try:
        plan = plan_apply(x.shape[2:], case["blocks"], cover=case["cover"], window=case["window"],
                          margin=case["margin"])  # fmt: skip
        if not case["streamed"]:
            return apply(x, fn, case["blocks"], cover=case["cover"], window=case["window"], margin=case["margin"],
                         batch_size=case["batch"])  # fmt: skip
        images: dict[int, np.ndarray] = {}

        def rows_out(n: int, first: int, rows: np.ndarray, shape: tuple[int, ...]) -> None:
            image = images.setdefault(n, np.full(shape, np.nan, dtype=rows.dtype))
            assert np.isnan(image[:, first : first + rows.shape[1]]).all()  # each row once
            image[:, first : first + rows.shape[1]] = rows

        patchwise._drain(apply_streamed(x, fn, plan, batch_size=case["batch"], rows_out=rows_out))
        return np.stack([images[n] for n in range(len(x))])
    except PatchfoldError as error:
        return str(error)


@needs_loops
@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=blend_cases())
def test_held_outputs_and_both_bands_give_the_same_values_bit_for_bit(case: dict) -> None:
    results = {}
    for how in STRATEGIES:
        with pytest.MonkeyPatch.context() as monkeypatch:
            blending(monkeypatch, how)
            results[how] = run(case)
    first = results["held"]
    for how in ("band", "numpy"):
        if isinstance(first, str):
            assert results[how] == first
        else:
            assert not isinstance(results[how], str), results[how]
            np.testing.assert_array_equal(results[how], first, err_msg=how)
    blocks = case["blocks"]
    covered = (
        case["cover"] and max(blocks.dilation) == 1 and all(s <= k for s, k in zip(blocks.stride, blocks.kernel_size))
    )
    if not isinstance(first, str) and case["model"] == "affine" and covered:
        x = case["x"].astype(case["dtype"])  # every pixel covered (README): the model's values come back
        np.testing.assert_allclose(first, x * 2 - 1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", STRATEGIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", WINDOWS)
def test_the_identity_round_trip_is_exact_whichever_way_sums_are_held(monkeypatch, how, dtype, window) -> None:
    blending(monkeypatch, how)
    x = RNG.random((2, 3, 41, 37)).astype(dtype)
    y = apply(x, lambda p: p, (9, 7), stride=(6, 4), cover=True, window=window, margin=1, batch_size=5)
    if dtype == np.float32:
        np.testing.assert_array_equal(y, x)
    else:
        np.testing.assert_allclose(y, x, rtol=8 * np.finfo(np.float64).eps, atol=0)


@needs_loops
def test_held_outputs_stay_within_their_bound_and_the_chunk_in_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the batches that reach unfinished rows are held (a few block rows, never the image)
    and the float64 sums are one chunk of rows per thread."""
    seen: list[tuple[int, int, int]] = []
    finish = patchwise._Sink._finish_held

    def recording(self, stop: int) -> None:
        held = sum(placed.outputs.nbytes for placed in self.placed)
        finish(self, stop)
        chunks = [chunk.nbytes for chunk in self.chunks.values()]
        seen.append((held, self._held_bytes(), max(chunks, default=0)))

    monkeypatch.setattr(patchwise._Sink, "_finish_held", recording)
    x = RNG.random((1, 2, 400, 64)).astype(np.float32)
    y = apply(x, lambda p: p, 16, stride=12, cover=True, window="hann", batch_size=4)
    np.testing.assert_array_equal(y, x)
    assert seen
    for held, bound, chunk in seen:
        assert held <= bound < x.nbytes / 4
        assert chunk <= max(patchwise.CHUNK_BYTES, 2 * 64 * 8)


def test_a_large_overlap_keeps_the_band(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stride 1: holding every output that reaches a row would take k² times the image's rows, so
    the band holds the sums; it is about one block tall plus a batch's rows, never the image."""
    heights = []
    hold = patchwise._Sink._hold

    def recording(self, stop: int) -> None:
        hold(self, stop)
        heights.append(self.buffer.shape[1])

    monkeypatch.setattr(patchwise._Sink, "_hold", recording)
    x = RNG.random((1, 2, 400, 24)).astype(np.float32)
    y = apply(x, lambda p: p, 16, stride=1, cover=True, window="hann", batch_size=4)
    np.testing.assert_array_equal(y, x)
    # a batch of 4 blocks spans at most 2 block rows (9 blocks per row): 16 + 1 rows, and one
    # block's height of room ahead (so live rows move seldom); never the image's 400
    assert heights and max(heights) <= 16 + 1 + 16


@pytest.mark.parametrize("how", STRATEGIES)
@pytest.mark.parametrize("mode", ["dense", "vector"])
def test_a_function_that_writes_over_its_last_output_is_refused(monkeypatch, how, mode) -> None:
    """Outputs are read after fn has run on the next batch (held, or blended beside it), so an fn
    that returns the same memory every time would have changed them: refused, never blended."""
    blending(monkeypatch, how)
    kept = np.empty((4, 2, 8, 8) if mode == "dense" else (4, 2))

    def reusing(patches: np.ndarray) -> np.ndarray:
        out = kept[: len(patches)]
        out[...] = patches * 2 if mode == "dense" else patches.mean(axis=(2, 3))
        return out

    with pytest.raises(PatchfoldError, match="returned memory it had returned for an earlier batch"):
        apply(RNG.random((1, 2, 30, 30)), reusing, 8, stride=6, cover=True, batch_size=4)


# ----- the compiled blend itself ----------------------------------------------------------------


def reference(placements, dilation, extent, rows, totals, lead, size) -> np.ndarray:
    """Every placement added into a float64 band of the whole padded output by the checked place
    loop (verified against numpy in test_apply), the rows cut out and divided as numpy does."""
    place = compiled.place(placements[0].outputs.dtype.name)
    band = np.zeros((placements[0].outputs.shape[1], *extent))
    for placed in placements:
        place(placed.outputs, band, placed.starts, list(placed.weights), dilation)
    part = band[(slice(None), slice(*rows), *[slice(a, a + n) for a, n in zip(lead, size)])]
    expected = np.empty(part.shape, dtype=placements[0].outputs.dtype)
    np.divide(part, outer(list(totals)), out=expected, casting="same_kind")
    return expected


@st.composite
def placement_cases(draw: st.DrawFn) -> dict:
    ndim = draw(st.sampled_from([2, 3]))
    extent = tuple(draw(st.integers(4, 30 if ndim == 2 else 9)) for _ in range(ndim))
    channels = draw(st.integers(1, 5))
    kernel = tuple(draw(st.integers(1, min(n, 6))) for n in extent)
    dilation = tuple(draw(st.integers(1, 1 if k == 1 else min(3, (n - 1) // (k - 1)))) for n, k in zip(extent, kernel))
    reach = [(k - 1) * d for k, d in zip(kernel, dilation)]
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        count = draw(st.integers(1, 5))
        starts = np.array([[draw(st.integers(0, n - 1 - r)) for n, r in zip(extent, reach)] for _ in range(count)])
        batches.append((count, starts.astype(np.int64), draw(st.booleans())))
    lo = draw(st.integers(0, extent[0]))
    hi = draw(st.integers(lo, extent[0]))
    lead = tuple(draw(st.integers(0, n - 1)) for n in extent[1:])
    size = tuple(draw(st.integers(1, n - a)) for n, a in zip(extent[1:], lead))
    return {"extent": extent, "channels": channels, "kernel": kernel, "dilation": dilation, "batches": batches,
            "rows": (lo, hi), "lead": lead, "size": size, "chunk_rows": draw(st.integers(1, 6)),
            "dtype": draw(st.sampled_from(["float32", "float64"]))}  # fmt: skip


@needs_loops
@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=placement_cases())
def test_the_compiled_blend_equals_a_whole_band_divided(case: dict) -> None:
    """Any rows of a padded output, chunk by chunk of any height (the chunk holding anything
    before), with or without columns beside the image: the values of one band of the whole output,
    divided; nothing outside ``out`` is written."""
    loop = compiled.blend(case["dtype"])
    channels, kernel, extent = case["channels"], case["kernel"], case["extent"]
    placements = []
    for count, starts, last in case["batches"]:
        values = RNG.standard_normal((count, channels, *kernel)).astype(case["dtype"])
        values = channels_last(values) if last else values
        weights = [RNG.random((count, k)) + 0.1 for k in kernel]
        placements.append(loop.placement(values, starts, weights, case["dilation"], extent))
    (lo, hi), lead, size = case["rows"], case["lead"], case["size"]
    totals = [RNG.random(hi - lo) + 0.5, *[RNG.random(n) + 0.5 for n in size]]
    chunk = np.full((channels, case["chunk_rows"], *extent[1:]), np.nan)  # any values: each use zeroes its rows
    room = np.full((channels, hi - lo + 2, *[n + 2 for n in size]), 7.0, dtype=case["dtype"])
    out = room[(slice(None), slice(1, 1 + hi - lo), *[slice(1, 1 + n) for n in size])]
    loop(placements, chunk, (lo, hi), totals, out, lead)
    np.testing.assert_array_equal(out, reference(placements, case["dilation"], extent, (lo, hi), totals, lead, size))
    outside = np.ones(room.shape, bool)
    outside[(slice(None), slice(1, 1 + hi - lo), *[slice(1, 1 + n) for n in size])] = False
    assert (room[outside] == 7).all()


@needs_loops
def test_the_compiled_blend_refuses_what_does_not_fit_before_any_call() -> None:
    loop = compiled.blend("float32")
    weights = [np.ones((2, 4)), np.ones((2, 4))]
    placed = loop.placement(np.ones((2, 1, 4, 4), np.float32), np.array([[0, 0], [6, 6]], np.int64), weights, (1, 1),
                            (10, 10))  # fmt: skip
    assert (placed.first, placed.stop) == (0, 10)
    totals = [np.ones(10), np.ones(10)]
    chunk, out = np.zeros((1, 3, 10)), np.zeros((1, 10, 10), np.float32)
    loop([placed], chunk, (0, 10), totals, out, (0,))
    np.testing.assert_array_equal(out[0, :4, :4], 1)
    for starts in ([[0, 0], [7, 0]], [[0, -1], [0, 0]], [[0, 0], [0, 7]]):
        with pytest.raises(PatchfoldError, match="inside the padded output"):
            loop.placement(np.ones((2, 1, 4, 4), np.float32), np.array(starts, np.int64), weights, (1, 1), (10, 10))
    with pytest.raises(PatchfoldError, match="outputs must be float32"):
        loop.placement(np.ones((2, 1, 4, 4)), np.zeros((2, 2), np.int64), weights, (1, 1), (10, 10))
    refusals = [
        (([placed], np.zeros((1, 3, 11)), (0, 10), totals, out, (0,)), "does not fit the chunk"),
        (([placed], np.zeros((2, 3, 10)), (0, 10), totals, np.zeros((2, 10, 10), np.float32), (0,)), "does not fit"),
        (([placed], np.zeros((1, 3, 10), np.float32), (0, 10), totals, out, (0,)), "chunk must be"),
        (([placed], np.zeros((1, 0, 10)), (0, 10), totals, out, (0,)), "chunk must be"),
        (([placed], np.zeros((1, 3, 20))[:, :, ::2], (0, 10), totals, out, (0,)), "chunk must be"),
        (([placed], chunk, (5, 4), totals, out, (0,)), "rows must be"),
        (([placed], chunk, (0, 9), totals, out, (0,)), "out must be float32 of shape"),
        (([placed], chunk, (0, 10), totals, out.astype(np.float64), (0,)), "out must be float32"),
        (([placed], chunk, (0, 10), totals, out[:, :, :6], (5,)), "must lie inside"),
        (([placed], chunk, (0, 10), [np.ones(10), np.ones(9)], out, (0,)), "totals of dim 1"),
        (([placed], chunk, (0, 10), totals, np.zeros((1, 10, 10), np.float32)[:, :, ::-1], (0,)), "strides"),
        (([placed.outputs], chunk, (0, 10), totals, out, (0,)), "placements must come from placement"),
        (([placed], chunk, (0, 10), totals, placed.outputs[0], (0,)), "out must be float32 of shape"),
    ]
    for args, match in refusals:
        before = out.copy()
        with pytest.raises(PatchfoldError, match=match):
            loop(*args)
        np.testing.assert_array_equal(out, before)
    frozen = out.copy()
    frozen.flags.writeable = False
    with pytest.raises(PatchfoldError, match="writeable"):
        loop([placed], chunk, (0, 10), totals, frozen, (0,))


@needs_loops
def test_a_placement_cannot_be_changed_after_it_is_checked() -> None:
    """The starts and weights are copied when checked (changing the caller's arrays afterwards
    changes nothing), and a placement whose arrays were replaced is refused before any call."""
    loop = compiled.blend("float32")
    starts, weights = np.array([[0, 0], [6, 6]], np.int64), [np.ones((2, 4)), np.ones((2, 4))]
    placed = loop.placement(np.ones((2, 1, 4, 4), np.float32), starts, weights, (1, 1), (10, 10))
    starts[1, 1] = 10**9
    weights[0][:] = 5.0
    out, totals = np.zeros((1, 10, 10), np.float32), [np.ones(10), np.ones(10)]
    loop([placed], np.zeros((1, 3, 10)), (0, 10), totals, out, (0,))
    assert out.sum() == 32 and not placed.starts.flags.writeable
    for name, value in (("outputs", np.ones((1, 1, 1, 1), np.float32)), ("starts", np.zeros((2, 2), np.int64)),
                        ("weights", (np.ones((2, 4)), np.ones((2, 4))))):  # fmt: skip
        forged = loop.placement(np.ones((2, 1, 4, 4), np.float32), np.array([[0, 0], [6, 6]]), weights, (1, 1),
                                (10, 10))  # fmt: skip
        setattr(forged, name, value)
        with pytest.raises(PatchfoldError, match="replaced after placement"):
            loop([forged], np.zeros((1, 3, 10)), (0, 10), totals, out, (0,))


@pytest.mark.parametrize("how", STRATEGIES)
def test_big_endian_outputs_are_blended_into_a_native_result(monkeypatch, how) -> None:
    blending(monkeypatch, how)
    x = RNG.random((1, 4, 27, 20)).astype(np.float32)
    y = apply(x, lambda p: (p * 2).astype(">f4"), (9, 7), stride=(6, 5), cover=True, window="hann", batch_size=2)
    assert y.dtype == np.float32 and y.dtype.isnative
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6)
