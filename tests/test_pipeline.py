"""Streaming jobs: banded results equal the in-memory ones, and interrupted jobs leave nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import patchfold
import pytest
from patchfold.dtypes import convert_dtype, fold_output_dtype
from patchfold.geometry import Geometry
from patchfold.jobs.fold import fold_to_npy
from patchfold.jobs.plan import DEFAULT_MEMORY_CAP, default_budget, plan_fold, plan_unfold
from patchfold.jobs.unfold import unfold_to_npy

CASES = [
    dict(kernel_size=(5, 4), stride=(2, 3), padding=(1, 2), dilation=(1, 2)),
    dict(kernel_size=3, stride=1),
    dict(kernel_size=(4, 4), stride=(4, 4)),
]


def image(dtype=np.uint8, shape=(2, 3, 29, 31)) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, shape).astype(dtype)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("params", CASES)
@pytest.mark.parametrize("budget", [1, 2000, 10**9])
def test_streamed_unfold_equals_in_memory(tmp_path: Path, params: dict, layout: str, budget: int) -> None:
    x = image()
    geometry = Geometry.create(
        x.shape[2:],
        params["kernel_size"],
        stride=params["stride"],
        padding=params.get("padding", 0),
        dilation=params.get("dilation", 1),
    )
    plan = plan_unfold(x.shape, np.float32, geometry, layout, budget)
    assert plan.streaming == (budget < 10**9)
    events = list(unfold_to_npy(x, plan, tmp_path / "p.npy", scale=1 / 255, sidecar="{}"))
    assert events[-1].done == events[-1].total == plan.bands
    assert events[-1].bytes_done == plan.output_bytes
    expected, _ = convert_dtype(x, "float32")
    reference = patchfold.unfold(expected, layout=layout, **params)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), reference)
    assert (tmp_path / "p.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.npy"]


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
@pytest.mark.parametrize("params", CASES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("window", [None, "hann"])
def test_streamed_fold_equals_in_memory(
    tmp_path: Path, params: dict, layout: str, normalize: bool, window: str | None
) -> None:
    x = image()
    cols = patchfold.unfold(x, layout=layout, **params)
    np.save(tmp_path / "cols.npy", cols)
    mapped = np.load(tmp_path / "cols.npy", mmap_mode="r")
    geometry = Geometry.create(
        x.shape[2:],
        params["kernel_size"],
        stride=params["stride"],
        padding=params.get("padding", 0),
        dilation=params.get("dilation", 1),
    )
    reference = patchfold.fold(cols, x.shape[2:], layout=layout, normalize=normalize, window=window, **params)
    for budget in (1, 10**9):
        dtype = fold_output_dtype(cols.dtype, normalize, window is not None)
        plan = plan_fold(cols.shape, 3, geometry, dtype, budget, layout)
        assert plan.streaming == (budget == 1)
        target = tmp_path / f"out{budget}.npy"
        list(fold_to_npy(mapped, plan, target, normalize=normalize, window=window))
        result = np.load(target)
        assert result.dtype == reference.dtype
        np.testing.assert_array_equal(result, reference)


def test_streamed_fold_with_reflect_padding_is_one_band(tmp_path: Path) -> None:
    x = image()
    cols = patchfold.unfold(x, 5, padding=2, stride=2, padding_mode="reflect")
    geometry = Geometry.create(x.shape[2:], 5, stride=2, padding=2, dilation=1, padding_mode="reflect")
    plan = plan_fold(cols.shape, 3, geometry, np.uint8, 1)
    assert plan.bands == 1
    list(fold_to_npy(cols, plan, tmp_path / "r.npy", normalize=True))
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), x)


def test_interrupted_unfold_leaves_nothing(tmp_path: Path) -> None:
    x = image(shape=(1, 3, 64, 64))
    geometry = Geometry.create((64, 64), 8, stride=1)
    plan = plan_unfold(x.shape, x.dtype, geometry, "ncl", 10_000)
    assert plan.bands > 3
    (tmp_path / "p.npy").write_bytes(b"precious")
    job = unfold_to_npy(x, plan, tmp_path / "p.npy", sidecar="{}")
    next(job)
    assert any(p.name.endswith(".part") for p in tmp_path.iterdir())
    job.close()  # what Ctrl-C does to the job in the command line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy"]
    assert (tmp_path / "p.npy").read_bytes() == b"precious"


def test_interrupted_fold_leaves_nothing(tmp_path: Path) -> None:
    x = image(shape=(1, 3, 64, 64))
    cols = patchfold.unfold(x, 8, stride=2)
    geometry = Geometry.create((64, 64), 8, stride=2)
    plan = plan_fold(cols.shape, 3, geometry, np.uint8, 1)
    job = fold_to_npy(cols, plan, tmp_path / "f.npy")
    next(job)
    job.close()
    assert list(tmp_path.iterdir()) == []


def test_unfold_refuses_when_disk_is_too_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=100))
    x = image(shape=(1, 1, 32, 32))
    plan = plan_unfold(x.shape, x.dtype, Geometry.create((32, 32), 4), "ncl", None)
    with pytest.raises(patchfold.PatchfoldError, match=r"needs .* but only 100 B is free"):
        list(unfold_to_npy(x, plan, tmp_path / "p.npy"))
    assert list(tmp_path.iterdir()) == []


def test_peak_memory_and_default_budget() -> None:
    geometry = Geometry.create((1000, 1000), 10, stride=5)
    plan = plan_unfold((1, 3, 1000, 1000), np.float32, geometry, "ncl", 10**6)
    assert plan.streaming and plan.band_rows * plan.row_bytes <= 10**6
    assert plan.peak_memory(3 * 10**6) == 3 * 10**6 + 2 * plan.band_rows * plan.row_bytes
    assert 0 < default_budget() <= DEFAULT_MEMORY_CAP


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_streamed_unfold_follows_its_plan_layout(tmp_path: Path, layout: str) -> None:
    """The plan carries the layout it was sized for: the job cannot be run with the other one
    (which gave a matrix equal to neither, silently)."""
    x = image()
    geometry = Geometry.create(x.shape[2:], 6, stride=3)
    plan = plan_unfold(x.shape, x.dtype, geometry, layout, 2000)
    assert plan.streaming and plan.layout == layout
    list(unfold_to_npy(x, plan, tmp_path / "p.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), patchfold.unfold(x, 6, stride=3, layout=layout))
