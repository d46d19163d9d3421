"""The CPU engine: unfold and fold as strided numpy copies, split over threads.

numpy releases the GIL inside array copies and ufunc loops, so splitting the work over block rows
(unfold) or output rows (fold) uses every core without processes. Every function writes into a
caller-provided array, so the same code fills an in-memory result or a band of a memory-mapped
``.npy`` (streaming).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any, NamedTuple

import numpy as np
from patchfold import cover
from patchfold.coverage import NUMPY_PAD_MODE, coverage_vectors, divisor_map, unpad_adjoint
from patchfold.dtypes import accumulator_dtype
from patchfold.engines import compiled, is_tensor
from patchfold.engines.strided import band_view, block_columns, fold_rows, select_blocks, window_view
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry, check_layout, matrix_dims
from patchfold.memory import check_fits

#: Below this many output bytes a second thread costs more than it saves.
_PARALLEL_MIN_BYTES = 4 << 20


def cpu_count() -> int:
    """Cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _executor(workers: int) -> ThreadPoolExecutor:
    # One pool per process: a forked child has none of its parent's worker threads, and work handed
    # to the parent's pool there would wait for ever.
    return _pool(workers, os.getpid())


@cache
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="patchfold")


def split_range(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """Split ``[start, stop)`` into at most ``parts`` contiguous, non-empty, near-equal pieces."""
    total = stop - start
    parts = max(1, min(parts, total))
    edges = [start + total * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo]


class Team(NamedTuple):
    """An OpenMP thread team to run compiled loops on: the address of its runtime's
    ``GOMP_parallel`` and how many threads it runs."""

    parallel: int
    threads: int


#: The team of the current call (see :func:`on_team`), or None for patchfold's own thread pool.
_team: ContextVar[Team | None] = ContextVar("patchfold_team", default=None)


@contextmanager
def on_team(team: Team | None) -> Iterator[None]:
    """Within this block the compiled loops of :func:`unfold_into` and :func:`fold_padded` run on
    ``team`` (None: on patchfold's own threads). Torch tensors run on torch's own OpenMP team, whose
    threads are still spinning from torch's last op: a second pool would fight them for the cores."""
    token = _team.set(team)
    try:
        yield
    finally:
        _team.reset(token)


def run_parallel(
    task: Callable[[int, int], None],
    start: int,
    stop: int,
    nbytes: int,
    threads: int | None,
    *,
    recordable: bool = False,
) -> None:
    """Run ``task(lo, hi)`` over pieces of ``[start, stop)``, threaded when it pays.

    With ``recordable`` (a task whose compiled calls need nothing of each other's results) and a
    team set by :func:`on_team`, each piece's checked calls are recorded and run on that team."""
    team = _team.get() if recordable else None
    if threads is None:
        threads = cpu_count() if team is None else team.threads
    if stop <= start:
        return
    if threads <= 1 or nbytes < _PARALLEL_MIN_BYTES:
        task(start, stop)
        return
    if team is not None and compiled.batches():
        batch = compiled.Batch()
        with compiled.recording(batch):
            for lo, hi in split_range(start, stop, threads):
                task(lo, hi)
                batch.end_piece()
        batch.run(team.parallel, threads)
        return
    (first_lo, first_hi), *others = split_range(start, stop, threads)
    # The calling thread takes the first piece itself: one hand-off fewer per call.
    futures = [_executor(threads - 1).submit(task, lo, hi) for lo, hi in others]
    try:
        task(first_lo, first_hi)
    finally:
        wait(futures)  # never leave a worker writing into an array the caller may free
    for future in futures:
        future.result()  # re-raise a worker's error


def unfold_rows(padded: np.ndarray, geometry: Geometry, out: np.ndarray, layout: str, first: int, last: int) -> None:
    """Copy block rows ``[first, last)`` of ``padded`` (already padded: the geometry's padding is
    ignored) into ``out``, the matching band of the matrix, with numpy's strided copy."""
    channels = padded.shape[1]
    target = band_view(out, geometry, channels, last - first, layout)
    np.copyto(target, window_view(padded, geometry, first, last), casting="unsafe")


def unfold_into(
    x: np.ndarray,
    geometry: Geometry,
    out: np.ndarray,
    layout: str = "ncl",
    rows: tuple[int, int] | None = None,
    threads: int | None = None,
) -> None:
    """Unfold block rows ``rows`` (all by default) of ``x`` ``(N, C, *spatial_size)`` into ``out``:
    the whole patch matrix, or just those rows' band of it when streaming. Values are cast to
    ``out.dtype``. Calls for many bands should pass the result of :func:`prepare_input`, so any
    padding is copied once."""
    check_layout(layout)
    if cover.needs_parts(geometry):
        _unfold_cover(x, geometry, out, layout, rows, threads)
        return
    geometry = cover.plain(geometry)
    source, source_geometry = prepare_input(x, geometry, out.dtype)
    first, last = rows or (0, geometry.blocks_per_dim[0])
    compiled = _compiled_unfold(source, source_geometry, out, layout, (first, last))
    if compiled is None and source is x and any(geometry.padding):  # the numpy copy needs real padding
        source = pad_input(x, geometry)

    kernel_rows = x.shape[1] * geometry.kernel_size[0]
    if compiled is not None and layout == "ncl" and _splits_evenly(kernel_rows, threads):
        # Split over kernel rows: each thread fills (and first touches) its own contiguous rows
        # of the matrix instead of both threads faulting in every page of a fresh result.
        run_parallel(
            lambda lo, hi: compiled(out, first, last, lo, hi), 0, kernel_rows, out.nbytes, threads, recordable=True
        )
        return

    def task(lo: int, hi: int) -> None:
        part = select_blocks(out, block_columns(geometry, lo - first, hi - first), layout)
        if compiled is not None:
            compiled(part, lo, hi, 0, kernel_rows)
        else:
            unfold_rows(source, source_geometry, part, layout, lo, hi)

    run_parallel(task, first, last, out.nbytes, threads, recordable=True)


def _splits_evenly(count: int, threads: int | None) -> bool:
    """Whether ``count`` items share out over the threads with at most 1/8 imbalance."""
    threads = cpu_count() if threads is None else threads
    return count > 1 and (count % threads == 0 or count >= 8 * threads)


def _unfold_cover(
    x: np.ndarray, geometry: Geometry, out: np.ndarray, layout: str, rows: tuple[int, int] | None, threads: int | None
) -> None:
    """:func:`unfold_into` of a cover grid that moved blocks inward: part by part (whole matrices
    only: a band of such a grid is cut from its own slab, whose grid is a cover grid again)."""
    if rows not in (None, (0, geometry.blocks_per_dim[0])):
        raise PatchfoldError(f"a cover grid is unfolded whole or slab by slab, not by block rows {rows}")
    compiled.check_unfold_out(x, geometry, out, layout, (0, geometry.blocks_per_dim[0]))

    def unfold_part(region: np.ndarray, part: Geometry) -> np.ndarray:
        piece = np.empty(part.unfold_shape(*region.shape[:2], layout), dtype=out.dtype)
        unfold_into(np.ascontiguousarray(region), part, piece, layout, threads=threads)
        return piece

    cover.unfold_parts(pad_input(x, geometry), geometry, out, layout, unfold_part)


def pad_input(x: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Pad the spatial dims of ``(N, C, *spatial)`` as the geometry says (a copy only if padded)."""
    return pad_spatial(x, list(geometry.pad_widths), geometry.padding_mode, lead=2)


def pad_spatial(x: np.ndarray, widths: list[tuple[int, int]], mode: str, lead: int) -> np.ndarray:
    """``x`` padded by ``widths`` (before, after) on its axes after the first ``lead`` in the
    padding ``mode``, within the memory budget (``x`` itself when nothing is padded)."""
    if not any(a or b for a, b in widths):
        return x
    size = math.prod(x.shape[:lead]) * math.prod(n + a + b for n, (a, b) in zip(x.shape[lead:], widths))
    check_fits(size * x.itemsize, "the padded copy of the input")
    full = [(0, 0)] * lead + list(widths)
    if mode == "zeros":
        return np.pad(x, full)
    return np.pad(x, full, mode=NUMPY_PAD_MODE[mode])  # type: ignore[call-overload]


def prepare_input(x: np.ndarray, geometry: Geometry, dtype: np.dtype | None = None) -> tuple[np.ndarray, Geometry]:
    """The array and geometry to cut blocks from into an output of ``dtype`` (default: ``x``'s):
    ``x`` itself where the compiled loop pads on the fly (2-D or 3-D, contiguous, zero padding, no cast),
    else a padded copy with an unpadded geometry."""
    if not any(geometry.padding) or _compiled_unfold_fits(x, geometry, dtype):
        return x, geometry
    return pad_input(x, geometry), geometry.over_padded()


def _compiled_unfold_fits(x: np.ndarray, geometry: Geometry, dtype: np.dtype | None = None) -> bool:
    """Whether the C block copy can read ``x`` as it is (into an output of ``dtype``, default x's)."""
    return (
        (dtype is None or np.dtype(dtype) == x.dtype)
        and x.ndim == geometry.ndim + 2
        and x.flags.c_contiguous
        and x.flags.aligned
        and x.dtype.isnative
        and not x.dtype.hasobject
        and x.dtype.fields is None
        and geometry.padding_mode == "zeros"
        and compiled.unfold(x.dtype.itemsize, geometry.ndim) is not None
    )


def _compiled_unfold(
    x: np.ndarray, geometry: Geometry, out: np.ndarray, layout: str, rows: tuple[int, int]
) -> Callable[[np.ndarray, int, int, int, int], None] | None:
    """Check ``out`` for block rows ``rows`` of ``x`` (for either path: raises PatchfoldError), then
    give the C block copy for 2-D and 3-D unfolds without casting, or None to use numpy's. The
    returned ``run(part, lo, hi, q0, q1)`` writes block rows ``[lo, hi)`` (of dim 0) and kernel rows
    ``[q0, q1)`` (``q = c·k0 + offset in dim 0``) into ``part``, the band of the matrix that holds
    those block rows; the loop checks ``part`` again before every call."""
    compiled.check_unfold_out(x, geometry, out, layout, rows)
    if not _compiled_unfold_fits(x, geometry, out.dtype) or out.strides[-1] != out.itemsize or not out.flags.aligned:
        return None
    if layout == "nlc" and out.strides[1] != out.shape[2] * out.itemsize:
        return None
    loop = compiled.unfold(x.dtype.itemsize, geometry.ndim)
    if loop is None:
        return None

    def run(part: np.ndarray, lo: int, hi: int, q0: int, q1: int) -> None:
        loop(x, part, geometry, (lo, hi), (q0, q1), layout)

    return run


def blocks_view(cols: np.ndarray, geometry: Geometry, layout: str) -> np.ndarray:
    """View a whole patch matrix as ``(N, C, *kernel, *L)``."""
    channels = geometry.check_fold_input(*matrix_dims(cols.shape, layout))
    return band_view(cols, geometry, channels, geometry.blocks_per_dim[0], layout)


def fold_padded(
    cols: np.ndarray,
    geometry: Geometry,
    layout: str = "ncl",
    weights: list[np.ndarray] | None = None,
    rows: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
    exact: bool = False,
) -> np.ndarray:
    """Overlap-add ``cols`` into padded output rows ``rows`` (all by default) of dim 0.

    Returns the accumulator ``(N, C, hi-lo, *padded_size[1:])`` in :func:`accumulator_dtype`
    (float64 when weighted or ``exact``).
    """
    check_layout(layout)
    if cover.needs_parts(geometry):
        return _fold_cover(cols, geometry, layout, weights, rows, out, threads, exact)
    geometry = cover.plain(geometry)
    blocks = blocks_view(cols, geometry, layout)
    lo, hi = rows or (0, geometry.padded_size[0])
    fresh = out is None
    if out is None:
        dtype = accumulator_dtype(cols.dtype, exact=exact, weighted=weights is not None)
        shape = (*blocks.shape[:2], hi - lo, *geometry.padded_size[1:])
        check_fits(math.prod(shape) * dtype.itemsize, "the fold's accumulator")
        out = np.empty(shape, dtype=dtype)

    compiled = _compiled_fold(cols, geometry, layout, weights, out, (lo, hi))
    if compiled is not None:

        def task(a: int, b: int) -> None:
            compiled(out[:, :, a - lo : b - lo], a, b, fresh)
    else:
        if fresh:
            out[...] = 0

        def task(a: int, b: int) -> None:
            fold_rows(blocks, geometry, out[:, :, a - lo : b - lo], a, b, weights)

    run_parallel(task, lo, hi, cols.nbytes, threads, recordable=True)
    return out


def _fold_cover(
    cols: np.ndarray,
    geometry: Geometry,
    layout: str,
    weights: list[np.ndarray] | None,
    rows: tuple[int, int] | None,
    out: np.ndarray | None,
    threads: int | None,
    exact: bool,
) -> np.ndarray:
    """:func:`fold_padded` of a cover grid that moved blocks inward: part by part, whole."""
    if rows not in (None, (0, geometry.padded_size[0])) or out is not None:
        raise PatchfoldError("a cover grid is folded whole, not band by band")
    channels = geometry.check_fold_input(*matrix_dims(cols.shape, layout))
    dtype = accumulator_dtype(cols.dtype, exact=exact, weighted=weights is not None)
    values = cols.shape[0] * channels * math.prod(geometry.padded_size)
    check_fits(values * dtype.itemsize * 2, "the fold's accumulator")  # the sums and one part's

    def fold_part(part_cols: np.ndarray, part: Geometry, part_weights: list[np.ndarray] | None) -> np.ndarray:
        return fold_padded(part_cols, part, layout, part_weights, threads=threads, exact=exact)

    return cover.fold_parts(cols, geometry, layout, weights, fold_part)


def _compiled_fold(
    cols: np.ndarray,
    geometry: Geometry,
    layout: str,
    weights: list[np.ndarray] | None,
    out: np.ndarray,
    rows: tuple[int, int],
) -> Callable[[np.ndarray, int, int, bool], None] | None:
    """Check ``out`` for padded output rows ``rows`` (for either path: raises PatchfoldError), then
    give the C loop for 2-D and 3-D unweighted folds of contiguous patch matrices, or None to use
    numpy's. ``out`` must hold whole, contiguous rows of dim 0 (any channel stride) for the C loop,
    which checks each band again before every call."""
    compiled.check_fold_out(cols, geometry, out, layout, weights is not None, rows)
    if not cols.flags.c_contiguous or not cols.flags.aligned or not cols.dtype.isnative:
        return None
    if not out.flags.aligned or not out.dtype.isnative or not _rows_contiguous(out):
        return None
    if weights is not None:
        weighted = compiled.fold_extra(cols.dtype.name, out.dtype.name, geometry.ndim)
        if weighted is None or out.dtype != np.float64:
            return None
        per_dim = [np.ascontiguousarray(w, dtype=np.float64) for w in weights]
        return lambda band, lo, hi, zero: weighted.sum(cols, band, geometry, (lo, hi), layout, zero, per_dim)
    loop = compiled.fold(cols.dtype.name, out.dtype.name, geometry.ndim)
    if loop is None:
        return None
    return lambda band, lo, hi, zero: loop(cols, band, geometry, (lo, hi), layout, zero)


def _rows_contiguous(out: np.ndarray) -> bool:
    """Whether every dim after channels is C-contiguous within the channel (rows of dim 0 packed)."""
    expected = out.itemsize
    for dim in range(out.ndim - 1, 1, -1):
        if out.strides[dim] != expected:
            return False
        expected *= out.shape[dim]
    return True


# ----- the engine interface (as in :mod:`patchfold.engines.torch_engine`) ------------------------
def take(x: Any, device: str | None = None) -> np.ndarray:
    """The engine's own array for ``x``: a numpy view (CPU tensors share their memory)."""
    if is_tensor(x):  # a lazily negated or conjugated view (x.conj().imag) has no numpy form as it is
        return x.detach().resolve_neg().resolve_conj().numpy()
    return np.asarray(x)


def unfold(
    x: np.ndarray, geometry: Geometry, layout: str = "ncl", *, out: np.ndarray | None = None, threads: int | None = None
) -> np.ndarray:
    """The patch matrix of ``x`` ``(N, C, *spatial)``, written into ``out`` when given (any real
    dtype: values are cast)."""
    shape = geometry.unfold_shape(*x.shape[:2], layout)
    if out is None:
        check_fits(math.prod(shape) * x.itemsize, f"the patch matrix {list(shape)}")
    result = np.empty(shape, dtype=x.dtype) if out is None else checked_out(out, shape, x)
    unfold_into(x, geometry, result, layout, threads=threads)
    return result


def checked_out(out: Any, shape: tuple[int, ...], source: np.ndarray) -> np.ndarray:
    """A caller's ``out=``: a writeable numpy array of the result's shape, apart from the input."""
    if not isinstance(out, np.ndarray) or tuple(out.shape) != tuple(shape):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise PatchfoldError(f"out must be a numpy array of shape {tuple(shape)}, got {got}")
    if out.dtype.kind not in "biuf":
        raise PatchfoldError(f"out must hold real numbers, got dtype {out.dtype}")
    if not out.flags.writeable:
        raise PatchfoldError(f"out must be writeable, got a read-only array of shape {tuple(out.shape)}")
    if np.may_share_memory(out, source):
        raise PatchfoldError(f"out must not overlap the input (shape {tuple(source.shape)})")
    return out


def fold(
    cols: np.ndarray,
    geometry: Geometry,
    layout: str = "ncl",
    weights: list[np.ndarray] | None = None,
    *,
    exact: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    """Overlap-add sums ``(N, C, *spatial_size)`` in :func:`patchfold.dtypes.accumulator_dtype`."""
    return unpad_adjoint(fold_padded(cols, geometry, layout, weights, threads=threads, exact=exact), geometry, 2)


def fold_normalised(
    cols: np.ndarray,
    geometry: Geometry,
    layout: str = "ncl",
    weights: list[np.ndarray] | None = None,
    *,
    rows: tuple[int, int] | None = None,
    threads: int | None = None,
) -> np.ndarray | None:
    """The normalised fold ``(N, C, *spatial_size)`` in the patches' dtype (only output rows
    ``rows`` of dim 0 when given), summed and divided in one pass: band by band, split over the
    threads, the sums held only in a cache-sized scratch band per thread and the divisor formed
    from its per-dim vectors (no full-size accumulator or divisor map). The same values as
    :func:`fold` (``exact``) followed by :func:`patchfold.dtypes.finish_fold`. None where this loop
    does not serve (no compiled loop for the dtype, padding modes other than zeros, a longer float,
    windowed 64-bit integers) or a sum was not finite: the caller then takes that two-step path, which
    handles overflow."""
    check_layout(layout)
    if cover.needs_parts(geometry):  # summed part by part, then divided
        return None
    geometry = cover.plain(geometry)
    if any(geometry.padding) and geometry.padding_mode != "zeros":
        return None
    if not (cols.flags.c_contiguous and cols.flags.aligned and cols.dtype.isnative):
        return None
    top, bottom = rows or (0, geometry.spatial_size[0])
    if not 0 <= top <= bottom <= geometry.spatial_size[0]:
        raise PatchfoldError(f"rows must satisfy 0 <= top <= bottom <= {geometry.spatial_size[0]}, got {rows}")
    pad = geometry.padding[0]
    if _apart(geometry) and compiled.fold(cols.dtype.name, cols.dtype.name, geometry.ndim) is not None:
        # no pixel has two blocks: the mean is the one value there (or 0), placed by a plain sum
        placed = fold_padded(cols, geometry, layout, rows=(pad + top, pad + bottom), threads=threads)
        return unpad_adjoint(placed, geometry, 2, first_dim=1)
    accumulator = accumulator_dtype(cols.dtype, exact=True, weighted=weights is not None)
    loop = compiled.fold_extra(cols.dtype.name, accumulator.name, geometry.ndim)
    if loop is None:
        return None
    channels = geometry.check_fold_input(*matrix_dims(cols.shape, layout))
    shape = (cols.shape[0], channels, bottom - top, *geometry.spatial_size[1:])
    check_fits(math.prod(shape) * cols.itemsize, "the fold's output")
    out = np.empty(shape, dtype=cols.dtype)
    per_dim = None if weights is None else [np.ascontiguousarray(w, dtype=np.float64) for w in weights]
    vectors = [np.ascontiguousarray(v, dtype=np.float64) for v in coverage_vectors(geometry, weights)]
    nonfinite = []

    def task(lo: int, hi: int) -> None:
        nonfinite.append(loop.normalised(cols, out, geometry, (lo, hi), layout, vectors, per_dim, first_row=top))

    share = (bottom - top) / max(1, geometry.spatial_size[0])  # of the patches these rows read
    run_parallel(task, pad + top, pad + bottom, int(cols.nbytes * share), threads)
    return None if any(nonfinite) else out


def _apart(geometry: Geometry) -> bool:
    """Whether blocks never overlap: each stride at least the span of a block."""
    return all(stride >= span for stride, span in zip(geometry.stride, geometry.span))


def divisor(geometry: Geometry, weights: list[np.ndarray] | None, like: Any = None) -> np.ndarray:
    """The (weighted) divisor map, from the per-axis coverage vectors."""
    return divisor_map(geometry, weights)
