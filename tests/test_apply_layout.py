"""The memory layout of the batches a torch ``fn`` gets in ``apply`` (``memory_format``): ``auto``
gives channels-last batches only where ``fn`` takes them and gives the same values; the result
never depends on the layout beyond float rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import invoke, ok
from patchfold import PatchfoldError
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


def misreads(patches: torch.Tensor) -> torch.Tensor:
    """A function that reads its input's memory as if it were contiguous: wrong values for a
    channels-last batch (the probe must see that and keep contiguous batches)."""
    return patches.as_strided(patches.shape, patches.contiguous().stride()) * 1.0


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


@pytest.mark.parametrize("fn", [Flattens(3 * 8 * 8), misreads], ids=["fails", "misreads"])
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
