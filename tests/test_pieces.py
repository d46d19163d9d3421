"""core/jobs/pieces.py: an in-memory unfold written to ``.npy`` piece by piece gives the patch
matrix byte for byte, for every layout, 1-3 spatial dims, padding mode, dtype cast and scale, with
pieces as small as one kernel row (or block row) and as large as the whole matrix. The reference is
the in-memory ``patchfold.unfold`` (itself checked against PyTorch in test_ops.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import patchfold
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patchfold.blocks import Blocks
from patchfold.geometry import Geometry
from patchfold.jobs import pieces
from patchfold.jobs.plan import plan_unfold
from patchfold.jobs.unfold import unfold_file


@st.composite
def jobs(draw: st.DrawFn) -> dict:
    ndim = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(4, 14 if ndim < 3 else 8)) for _ in range(ndim))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if mode == "reflect":
        padding = tuple(min(p, n - 1) for p, n in zip(padding, size))
    try:
        Geometry.create(size, kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode)
    except patchfold.PatchfoldError:
        kernel, dilation = (1,) * ndim, (1,) * ndim
    return {
        "shape": (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size),
        "blocks": Blocks(kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode),
        "dtype": draw(st.sampled_from(["keep", "float32"])),
        "source": draw(st.sampled_from(["uint8", "float32", "int16"])),
        "layout": draw(st.sampled_from(["ncl", "nlc"])),
        "piece_bytes": draw(st.sampled_from([1, 7, 64, 1000, 2**30])),
    }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job=jobs())
def test_pieces_write_the_patch_matrix(job: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pieces, "PIECE_BYTES", job["piece_bytes"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 200, job["shape"]).astype(job["source"])
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / f"p{job['piece_bytes']}.npy"
    events = list(
        unfold_file([tmp_path / "x.npy"], out, job["blocks"], dtype=job["dtype"], layout=job["layout"],
                    spatial_dims=x.ndim - 2)
    )  # fmt: skip
    result = events[-1]
    assert result.plan.bands == 1
    expected = x  # what the job unfolds: the input, or cast to float32 and scaled as the sidecar says
    if job["dtype"] == "float32":
        expected = x.astype(np.float32) * np.float32(result.sidecar.scale)
    blocks = job["blocks"]
    params = (blocks.kernel_size, blocks.dilation, blocks.padding, blocks.stride)
    want = patchfold.unfold(
        expected, *params, padding_mode=blocks.padding_mode, layout=job["layout"], spatial_dims=x.ndim - 2
    )
    got = np.load(out)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_pieces_are_the_runs_of_the_file() -> None:
    """Every byte of the matrix in exactly one piece, in file order, each within the piece size
    (or one kernel/block row where that is larger)."""
    for layout in ("ncl", "nlc"):
        geometry = Geometry.create((40, 50), (5, 3), stride=2, padding=1, dilation=(2, 1))
        plan = plan_unfold((2, 3, 40, 50), np.float32, geometry, layout)
        runs = pieces.plan_pieces(plan, piece_bytes=5000)
        assert len(runs) > 6
        position = 0
        for piece in runs:
            assert piece.offset == position
            position += int(np.prod(piece.shape)) * 4
        assert position == plan.output_bytes


@pytest.mark.parametrize("max_memory", [None, 64], ids=["in pieces", "in bands"])
@pytest.mark.parametrize("source", ["uint16", "uint8", "int16"])
def test_half_precision_outputs_are_scaled_before_the_cast(tmp_path: Path, max_memory: int | None, source: str) -> None:
    """65535 is inf in float16: the job scales in float32 first, as ``dtypes.cast_scaled`` does
    (the red-team found inf and numpy's overflow warning on stderr), on both write paths."""
    import warnings

    from patchfold.dtypes import cast_scaled, target_dtype

    info = np.iinfo(source)
    x = np.linspace(info.min, info.max, 2 * 3 * 9 * 11).astype(source).reshape(2, 3, 9, 11)
    np.save(tmp_path / "x.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        events = list(
            unfold_file([tmp_path / "x.npy"], tmp_path / "p.npy", Blocks(3, stride=2), dtype="float16",
                        max_memory=max_memory)
        )  # fmt: skip
    assert (events[-1].plan.bands > 1) == (max_memory is not None)
    dtype, scale = target_dtype(x.dtype, "float16")
    want = patchfold.unfold(cast_scaled(x, dtype, scale), 3, stride=2)
    got = np.load(tmp_path / "p.npy")
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)
