"""The memory layout of the batches a torch ``fn`` gets in ``apply`` (``memory_format``): ``auto``
gives channels-last batches only where ``fn`` takes them and gives the same values; the result
never depends on the layout beyond float rounding. The last part keeps the red-team pass's
findings: in-place models, blank first batches, channels of other scales, big-endian inputs,
unaligned outputs and starts whose reach would wrap around int64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import invoke, ok
from hypothesis import given, settings
from hypothesis import strategies as st
from patchfold import PatchfoldError
from patchfold.engines import compiled
from patchfold.patchwise import _Runner, apply, same_values


def convolutions(ndim: int) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(3, 6, 3, padding=1), torch.nn.ReLU(), conv(6, 2, 1)).eval()


class Flattens(torch.nn.Module):
    """A per-patch classifier that views its input flat: it fails on a channels-last batch."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(inputs, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.view(x.shape[0], -1))


class Misreads(torch.nn.Module):
    """A model that reads its input's memory as if it were contiguous: wrong values for a
    channels-last batch (the probe must see that and keep contiguous batches)."""

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return patches.as_strided(patches.shape, patches.contiguous().stride()) * 1.0


misreads = Misreads().eval()  # models are probed in eval mode only


def chosen(fn, patches: np.ndarray, memory_format: str = "auto") -> tuple[np.ndarray, str]:
    runner = _Runner(fn, patches, "cpu", memory_format=memory_format)
    return runner(patches, len(patches)), runner.layout


@pytest.mark.parametrize("ndim", [2, 3])
def test_auto_takes_channels_last_for_convolutions_with_the_same_result(ndim: int) -> None:
    model = convolutions(ndim)
    x = torch.rand(1, 3, *([20] * ndim))
    results = {f: apply(x, model, 8, stride=5, cover=True, memory_format=f, batch_size=3) for f in
               ("auto", "contiguous", "channels_last")}  # fmt: skip
    for value in results.values():
        assert value.is_contiguous() and value.shape == results["contiguous"].shape
        assert (value - results["contiguous"]).abs().max() <= 1e-6
    patches = np.random.default_rng(0).random((4, 3, *([8] * ndim)), dtype=np.float32)
    assert chosen(model, patches)[1] == "channels_last"


@pytest.mark.parametrize("fn", [Flattens(3 * 8 * 8).eval(), misreads], ids=["fails", "misreads"])
def test_auto_keeps_contiguous_batches_where_fn_fails_or_differs_on_channels_last(fn) -> None:
    x = torch.rand(1, 3, 24, 24)
    patches = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    result, layout = chosen(fn, patches)
    assert layout == "contiguous"
    with torch.inference_mode():
        assert np.array_equal(result, fn(torch.from_numpy(patches)).numpy())
    got = apply(x, fn, 8, stride=8, memory_format="auto")
    assert torch.equal(got, apply(x, fn, 8, stride=8, memory_format="contiguous"))


def test_misread_layout_would_change_the_result() -> None:
    """The probe's check is not vacuous: forced channels-last batches give ``misreads`` other values."""
    x = torch.rand(1, 3, 16, 16)
    forced = apply(x, misreads, 8, stride=8, memory_format="channels_last")
    assert not torch.allclose(forced, x)
    assert torch.equal(apply(x, misreads, 8, stride=8), x)


def test_forced_channels_last_reports_the_model_failing() -> None:
    with pytest.raises(PatchfoldError, match="failed on a batch of patches"):
        apply(torch.rand(1, 3, 16, 16), Flattens(3 * 8 * 8), 8, stride=8, memory_format="channels_last")


def test_numpy_functions_and_1d_patches_are_not_touched() -> None:
    seen = []

    def record(p):
        seen.append(type(p))
        return p

    x = np.random.default_rng(0).random((1, 3, 16, 16))
    assert np.array_equal(apply(x, record, 8, stride=8, memory_format="channels_last"), x)
    assert seen and all(t is np.ndarray for t in seen)
    line = torch.rand(1, 2, 30)
    got = apply(line, torch.nn.Identity(), 6, stride=3, memory_format="channels_last", spatial_dims=1)
    assert torch.equal(got, line)


@pytest.mark.parametrize(
    ("second", "same"),
    [
        (lambda a: a + 1e-7 * np.abs(a).max(), True),  # rounding of another order of adds
        (lambda a: a[::-1].copy(), False),  # patches swapped
        (lambda a: a.astype(np.float64), False),
        (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a).astype(a.dtype), False),
    ],
    ids=["rounding", "swapped", "dtype", "nan"],
)
def test_same_values_tells_rounding_from_other_values(second, same: bool) -> None:
    first = np.random.default_rng(2).standard_normal((4, 3, 5, 5)).astype(np.float32)
    assert same_values(first, second(first)) is same
    assert same_values(np.arange(6), np.arange(6)) and not same_values(np.arange(6), np.arange(6) + 1)


def test_the_command_gives_the_same_image_in_every_memory_format(tmp_path: Path) -> None:
    x = np.random.default_rng(3).random((1, 3, 40, 36), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    torch.jit.script(convolutions(2)).save(str(tmp_path / "model.pt"))
    results = {}
    for fmt in ("auto", "contiguous", "channels-last"):
        out = tmp_path / f"{fmt}.npy"
        ok("apply", tmp_path / "x.npy", "--model", tmp_path / "model.pt", "-k", 16, "-s", 12, "--cover",
           "--memory-format", fmt, "-o", out)  # fmt: skip
        results[fmt] = np.load(out)
    for value in results.values():
        assert np.abs(value - results["contiguous"]).max() <= 1e-6
    result = invoke("apply", tmp_path / "x.npy", "--function", "numpy:sqrt", "-k", 8, "--memory-format", "nhwc",
                    "-o", tmp_path / "bad.npy")  # fmt: skip
    assert result.exit_code == 2 and "--memory-format" in result.stderr and not (tmp_path / "bad.npy").exists()


# ----- the compiled loops behind the channels-last batches ---------------------------------------
LOOPS = pytest.mark.skipif(not compiled.available(), reason="the optional C loops were not built here")


@LOOPS
@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]),
    st.integers(1, 5),
    st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=2, max_size=3),
    st.integers(1, 2),
    st.integers(0, 2**32 - 1),
)
def test_the_channels_last_gather_cuts_the_patches_numpy_cuts(dtype, channels, dims, step, seed) -> None:
    """``gather_cl`` on an image of any strides equals slicing each patch, in channels-last memory."""
    rng = np.random.default_rng(seed)
    kernel, dilation = [k for k, _ in dims], [d for _, d in dims]
    spans = [(k - 1) * d + 1 for k, d in dims]
    size = [s + int(rng.integers(0, 4)) for s in spans]
    image = (rng.random((channels, *[n * step for n in size])) * 200).astype(dtype)[
        (slice(None), *[slice(None, None, step)] * len(size))
    ]
    starts = np.stack([rng.integers(0, n - s + 1, 4) for n, s in zip(size, spans)], axis=1).astype(np.int64)
    got = compiled.gather_cl(image.itemsize)(image, starts, kernel, dilation)
    expected = np.stack([image[(slice(None), *[slice(a, a + s, d) for a, s, d in zip(start, spans, dilation)])]
                         for start in starts])  # fmt: skip
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert np.moveaxis(got, 1, -1).flags.c_contiguous


@LOOPS
def test_the_channels_last_gather_refuses_a_patch_outside_the_image() -> None:
    loop, image = compiled.gather_cl(4), np.zeros((3, 10, 12), np.float32)
    for starts in ([[0, 0], [7, 0]], [[0, -1]], [[0, 9]]):
        with pytest.raises(PatchfoldError, match="inside the image"):
            loop(image, np.array(starts, np.int64), (4, 4), (1, 1))
    with pytest.raises(PatchfoldError, match="out must"):
        loop(image, np.zeros((2, 2), np.int64), (4, 4), (1, 1), out=np.zeros((2, 4, 4, 2), np.float32))


@LOOPS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [(5, 37), (3, 6, 11)], ids=["2d", "3d"])
def test_the_compiled_divide_equals_numpys_divide_by_the_outer_product(dtype, size) -> None:
    from patchfold.coverage import outer

    rng = np.random.default_rng(4)
    band = rng.standard_normal((2, size[0] + 3, *[n + 4 for n in size[1:]]))
    sums = band[(slice(None), slice(1, 1 + size[0]), *[slice(2, 2 + n) for n in size[1:]])]
    totals = [rng.random(n) + 0.5 for n in size]
    totals[-1][3] = np.inf  # a point no block covers: 0
    out = np.empty((2, *size), dtype)[(slice(None), slice(None), *[slice(None)] * (len(size) - 1))]
    compiled.divide(np.dtype(dtype).name)(sums, totals, out)
    expected = np.empty_like(out)
    np.divide(sums, outer(totals), out=expected, casting="same_kind")
    assert np.array_equal(out, expected) and (out[..., 3] == 0).all()
    with pytest.raises(PatchfoldError, match="must not overlap"):
        flat = np.zeros((1, 4, 3))
        compiled.divide("float64")(flat[:, :2], [np.ones(2), np.ones(3)], flat[:, 1:3])


@LOOPS
@pytest.mark.parametrize("size", [(5, 37), (3, 6, 11)], ids=["2d", "3d"])
@pytest.mark.parametrize("strided", [False, True], ids=["rows", "strided"])
def test_the_compiled_divide_clears_exactly_the_sums_it_read(size, strided: bool) -> None:
    """``clear=True`` (the band's finished rows, reused): the same quotients, every sum it read
    zeroed and nothing else touched; a read-only band is refused before anything is written."""
    from patchfold.coverage import outer

    rng = np.random.default_rng(5)
    band = rng.standard_normal((2, size[0] + 3, *[2 * n + 4 for n in size[1:]])) + 3
    # every second point (the loop's element-strided case) or whole rows (its memset)
    inner = [slice(2, 2 + 2 * n, 2) for n in size[1:]] if strided else [slice(None)] * (len(size) - 1)
    rows = slice(1, 1 + size[0])
    sums = band[(slice(None), rows, *inner)]
    totals = [rng.random(n) + 0.5 for n in sums.shape[1:]]
    expected = sums / outer(totals)
    before = band.copy()
    out = np.empty(sums.shape, np.float32)
    compiled.divide("float32")(sums, totals, out, clear=True)
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert (sums == 0).all()
    untouched = np.ones(band.shape, bool)
    untouched[(slice(None), rows, *inner)] = False
    np.testing.assert_array_equal(band[untouched], before[untouched])
    frozen = before.copy()
    frozen.flags.writeable = False
    with pytest.raises(PatchfoldError, match="writeable"):
        compiled.divide("float32")(frozen[:, rows], [np.ones(n) for n in frozen[:, rows].shape[1:]],
                                   np.empty(frozen[:, rows].shape, np.float32), clear=True)  # fmt: skip


def test_a_streamed_tiled_tiff_gives_the_same_image_in_every_memory_format(tmp_path: Path) -> None:
    """Band-by-band reading cuts channels-last batches from uint8 rows (converted a batch at a
    time, the layout kept): the same output as contiguous batches of the image in memory."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("zarr")
    pixels = np.random.default_rng(5).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tiled.tif", pixels, tile=(32, 32), photometric="rgb")
    np.save(tmp_path / "same.npy", np.moveaxis(pixels, -1, 0)[None])
    torch.jit.script(convolutions(2)).save(str(tmp_path / "model.pt"))
    common = ["--model", tmp_path / "model.pt", "-k", 16, "-s", 12, "--cover", "--window", "hann", "-q"]
    ok("apply", tmp_path / "tiled.tif", *common, "-o", tmp_path / "streamed.npy")
    ok("apply", tmp_path / "same.npy", *common, "--memory-format", "contiguous", "-o", tmp_path / "memory.npy")
    streamed, memory = np.load(tmp_path / "streamed.npy"), np.load(tmp_path / "memory.npy")
    assert streamed.shape == memory.shape and np.abs(streamed - memory).max() <= 1e-6


def test_auto_calls_a_plain_torch_function_once_per_batch_with_contiguous_batches() -> None:
    """Only models are probed (the first batch runs twice); a function sees each batch once."""
    seen: list[bool] = []

    def record(patches: torch.Tensor) -> torch.Tensor:
        seen.append(patches.is_contiguous())
        return patches * 2

    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(apply(x, record, 8, stride=4, batch_size=3), x * 2)
    assert len(seen) == 3 and all(seen)  # 9 blocks in batches of 3


# ----- the red-team pass over the layout probe and its loops ------------------------------------
class DoublesInPlace(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2)


@pytest.mark.parametrize(("channels", "kernel"), [(1, 8), (3, 1)], ids=["one-channel", "1x1-kernel"])
def test_a_model_that_changes_its_input_in_place_gives_the_same_result_in_every_format(channels, kernel) -> None:
    """Where channels-last is the same memory (one channel, 1×1 patches) the probe must still run
    on copies: the in-place model doubled the first batch twice (4×)."""
    x = np.random.default_rng(6).random((1, channels, 16, 16), dtype=np.float32)
    for memory_format in ("auto", "contiguous", "channels_last"):
        y = apply(x, DoublesInPlace().eval(), kernel, stride=kernel, device="cpu", memory_format=memory_format)
        assert np.array_equal(y, 2 * x), memory_format


def test_a_misreading_model_is_caught_even_when_the_first_batch_is_uniform() -> None:
    """A blank first batch (background) reads the same in any order: the probe runs on random values."""
    x = np.random.default_rng(7).random((1, 3, 64, 64), dtype=np.float32)
    x[:, :, :32] = 0.5
    auto = apply(x, misreads, 8, stride=8, device="cpu", batch_size=8)
    assert np.array_equal(auto, x)


def test_same_values_compares_each_channel_at_its_own_scale() -> None:
    first = np.stack([np.full((4, 5, 5), 65535.0), np.random.default_rng(8).random((4, 5, 5))], axis=1)
    second = first.copy()
    second[:, 1] = second[:, 1, ::-1]  # a misread small channel beside a large one
    assert not same_values(first.astype(np.float32), second.astype(np.float32))
    assert same_values(first.astype(np.float32), first.astype(np.float32))


def test_a_big_endian_input_goes_through_a_torch_model(tmp_path: Path) -> None:
    x = np.random.default_rng(9).random((3, 40, 36)).astype(">f4")
    np.save(tmp_path / "be.npy", x)
    torch.jit.script(convolutions(2)).save(str(tmp_path / "model.pt"))
    outputs = {}
    for fmt in ("auto", "contiguous"):
        ok("apply", tmp_path / "be.npy", "--model", tmp_path / "model.pt", "-k", 16, "-s", 12, "--cover",
           "--memory-format", fmt, "-o", tmp_path / f"{fmt}.npy", "-q")  # fmt: skip
        outputs[fmt] = np.load(tmp_path / f"{fmt}.npy")
    assert np.abs(outputs["auto"] - outputs["contiguous"]).max() <= 1e-6
    library = apply(x[None], convolutions(2), 16, stride=12, cover=True, device="cpu")
    assert np.abs(library[0] - outputs["contiguous"]).max() <= 1e-6


def test_a_module_of_the_users_own_gets_tensors_for_numpy_input() -> None:
    class Checks(torch.nn.Module):
        def forward(self, p: torch.Tensor) -> torch.Tensor:
            assert isinstance(p, torch.Tensor)
            return p + 1

    x = np.random.default_rng(10).random((1, 3, 20, 20), dtype=np.float32)
    y = apply(x, Checks(), 8, stride=4, cover=True)
    assert isinstance(y, np.ndarray) and np.allclose(y, x + 1)


def test_unaligned_outputs_of_a_plain_function_take_the_numpy_blend() -> None:
    def field(p: np.ndarray) -> np.ndarray:
        packed = np.zeros(p.shape, [("a", "f4"), ("b", "u1")])
        packed["a"] = p
        return packed["a"]  # a view at 5-byte strides: not aligned

    x = np.random.default_rng(11).random((1, 3, 20, 20), dtype=np.float32)
    assert np.array_equal(apply(x, field, 5, stride=3, cover=True), x)


@LOOPS
def test_the_loops_refuse_starts_whose_reach_would_wrap_around() -> None:
    image = np.zeros((1, 16, 16), np.uint8)
    for starts, dilation in (([[0, 2**63 - 1]], (1, 1)), ([[0, 1]], (1, 2**63 - 1)), ([[0, 1]], (1, 2**62))):
        with pytest.raises(PatchfoldError, match="inside the image"):
            compiled.gather_cl(1)(image, np.array(starts, np.int64), (1, 3), dilation)
    with pytest.raises(PatchfoldError, match="inside the band"):
        compiled.place("float32")(np.ones((1, 1, 2, 2), np.float32), np.zeros((1, 8, 8)),
                                  np.array([[0, 2**63 - 1]], np.int64), [np.ones((1, 2))] * 2, (1, 1))  # fmt: skip
    with pytest.raises(PatchfoldError, match="numpy array"):
        compiled.gather_cl(1)([[1]], np.zeros((1, 2), np.int64), (1, 1), (1, 1))
    with pytest.raises(PatchfoldError, match="numpy array"):
        compiled.divide("float32")([1.0], [np.ones(1)], np.zeros((1, 1, 1), np.float32))


class FlattensBeyondOne(torch.nn.Module):
    """Views its input flat only where it holds a value over 1.5: neither the first batch nor the
    probe's values in [0, 1) do, so auto chooses channels-last and meets the view later."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 1.5).any()):
            x = x.view(x.shape[0], -1).view(x.shape)
        return x * 2


def test_auto_goes_contiguous_where_a_later_batch_fails_on_channels_last() -> None:
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[:, :, 16:] = 2.0
    y = apply(x, FlattensBeyondOne().eval(), 8, stride=8, device="cpu", batch_size=4)
    assert np.array_equal(y, 2 * x)
    with pytest.raises(PatchfoldError, match="failed on a batch"):
        apply(x, FlattensBeyondOne(), 8, stride=8, device="cpu", batch_size=4, memory_format="channels_last")


def test_a_model_in_training_mode_is_not_probed() -> None:
    """The probe's random values would go into batch-norm statistics: a training model gets
    contiguous batches, each once (its statistics see exactly the image's patches)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)).train()
    x = torch.rand(1, 3, 16, 16)
    apply(x, model, 8, stride=4, cover=True, batch_size=3)  # 9 blocks: 3 batches
    assert int(model[1].num_batches_tracked) == 3
    patches = np.random.default_rng(12).random((3, 3, 8, 8), dtype=np.float32)
    assert chosen(model, patches)[1] == "auto"  # undecided: never probed
    assert chosen(model.eval(), patches)[1] == "channels_last"


def test_bfloat16_inputs_and_outputs_go_through() -> None:
    """numpy has no bfloat16: inputs are cut as float32 and given back to fn as bfloat16; bfloat16
    outputs are blended as float32 (every bfloat16 value is exact there), not a raw TypeError."""
    x = torch.rand(1, 3, 16, 16).to(torch.bfloat16)
    seen: list[torch.dtype] = []

    def identity(p: torch.Tensor) -> torch.Tensor:
        seen.append(p.dtype)
        return p

    y = apply(x, identity, 8, stride=4, cover=True, window="hann")
    assert set(seen) == {torch.bfloat16} and y.dtype == torch.float32 and torch.equal(y, x.float())
    model = torch.nn.Conv2d(3, 2, 3, padding=1).to(torch.bfloat16).eval()
    assert apply(x, model, 8, stride=4, cover=True).shape == (1, 2, 16, 16)


class FixedBatch(torch.nn.Module):
    """A 1×1 convolution exported for one batch size (None: any): it fails on any other, as such
    programs do."""

    def __init__(self, size: int | None) -> None:
        super().__init__()
        self.size, self.seen = size, []
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((len(x), x.is_contiguous()))
        if self.size is not None and len(x) != self.size:
            raise RuntimeError(f"expected a batch of {self.size}, got {len(x)}")
        return self.conv(x)


def test_the_probe_is_a_few_patches_or_the_whole_batch_for_a_fixed_batch_model() -> None:
    """auto decides on PROBE_PATCHES patches of random values before the first batch; a model that
    takes no smaller batch is probed with a whole batch's worth, and still gets channels-last."""
    x = torch.rand(1, 3, 24, 24)  # 25 blocks: 7 batches of 4
    expected = apply(x, FixedBatch(None).eval(), 8, stride=4, cover=True, batch_size=4, memory_format="contiguous")
    for size, probes in ((None, [(2, True), (2, False)]), (4, [(2, True), (4, True), (4, False)])):
        model = FixedBatch(size).eval()
        result = apply(x, model, 8, stride=4, cover=True, batch_size=4)
        assert (result - expected).abs().max() <= 1e-6
        assert model.seen == [*probes, *[(4, False)] * 7]  # then every batch channels-last, once
