"""Access to the compiled loops in ``_kernels`` (through ctypes), or None where they did not build.

The C loops trust their arguments: a pointer, a struct of dims and nothing else. So they are only
reachable through :class:`UnfoldLoop` and :class:`FoldLoop`, which take numpy arrays, build the
struct themselves from the arrays' shapes and strides, and check, before any call and whoever the
caller, everything the loop relies on: dtypes, native byte order, alignment, the contiguity the
loop assumes, a writeable destination, that every element the loop touches lies inside each
array, and that source and destination do not overlap. A violation raises
:class:`~patchfold.errors.PatchfoldError` naming the array.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache, lru_cache
from typing import Any, NamedTuple

import numpy as np
from patchfold.engines import native
from patchfold.engines.native import (
    _MAX_DIMS,
    BlendDims,
    DivideDims,
    FoldDims,
    FoldExtra,
    GatherDims,
    PlaceDims,
    UnfoldDims,
    _BatchStruct,
    _Call,
    _Dims,
)
from patchfold.errors import PatchfoldError

#: (patch dtype, accumulator dtype) -> suffix of the compiled fold for that pair.
_SOURCE_NAMES = {
    ("float32", "float32"): "f32_f32",
    ("float32", "float64"): "f32_f64",
    ("float64", "float64"): "f64_f64",
    ("float16", "float32"): "f16_f32",
    ("float16", "float64"): "f16_f64",
    ("uint8", "int64"): "u8_i64",
    ("bool", "int64"): "u8_i64",
    ("int8", "int64"): "i8_i64",
    ("uint16", "int64"): "u16_i64",
    ("int16", "int64"): "i16_i64",
    ("uint32", "int64"): "u32_i64",
    ("int32", "int64"): "i32_i64",
    ("int64", "int64"): "i64_i64",
    ("uint64", "uint64"): "u64_u64",
    # windowed folds of integer patches sum in float64
    ("uint8", "float64"): "u8_f64",
    ("bool", "float64"): "u8_f64",
    ("int8", "float64"): "i8_f64",
    ("uint16", "float64"): "u16_f64",
    ("int16", "float64"): "i16_f64",
    ("uint32", "float64"): "u32_f64",
    ("int32", "float64"): "i32_f64",
}

#: Bound on every size, step and padding handed to C (patchfold's documented limit on parameters), so
#: no product the loops form overflows int64.
_LIMIT = 1 << 40


#: Accumulator bytes one foldx call sums a band of rows into before dividing it (cache-sized).
SCRATCH_BYTES = 1 << 20


def _structs() -> tuple[tuple[str, type[ctypes.Structure]], ...]:
    """:data:`native.STRUCTS`, each mirror as this module calls the loops with it (looked up by
    name here, at call time, so a test can swap a struct for one of another size)."""
    names = globals()
    return tuple((size, names.get(struct.__name__, struct)) for size, struct in native.STRUCTS)


@cache
def _library() -> ctypes.CDLL | None:
    return native.load(_structs()).library


def available() -> bool:
    return _library() is not None


class Batch:
    """Loop calls recorded (already checked) instead of made, in pieces, to run later on an OpenMP
    team: see :func:`recording` and :meth:`run`. It holds every array its calls point into."""

    def __init__(self) -> None:
        self._calls: list[tuple[int, int, int, Any]] = []
        self._ends: list[int] = []
        self._held: list[Any] = []

    def add(self, function: Any, first: int, second: int, dims: ctypes.Structure, *arrays: Any) -> None:
        address = ctypes.cast(function, ctypes.c_void_p).value
        self._calls.append((address or 0, first, second, dims))
        self._held.extend(arrays)

    def end_piece(self) -> None:
        """Close the current piece: its calls run in order, on one thread."""
        self._ends.append(len(self._calls))

    def run(self, parallel: int | None, threads: int) -> None:
        """Make every recorded call once: the pieces over ``threads`` threads of the OpenMP team
        whose ``GOMP_parallel`` is at address ``parallel`` (None: all on this thread)."""
        if (self._ends[-1] if self._ends else 0) != len(self._calls):
            raise PatchfoldError("a batch of loop calls must end its last piece before it runs")
        runner = _batch_runner()
        if runner is None:  # pragma: no cover - a Batch is only made where the library built
            raise PatchfoldError("the compiled loops are not available to run a batch")
        calls = (_Call * max(1, len(self._calls)))()
        for index, (function, first, second, dims) in enumerate(self._calls):
            calls[index] = _Call(function, first, second, ctypes.addressof(dims))
        ends = (ctypes.c_int64 * max(1, len(self._ends)))(*self._ends)
        batch = _BatchStruct(calls, ends, len(self._ends), 0)
        runner(ctypes.byref(batch), parallel, threads)


_recording = threading.local()


@contextmanager
def recording(batch: Batch) -> Iterator[Batch]:
    """Within this block (on this thread) the checked loops record their calls into ``batch``
    instead of making them; the caller then runs it with :meth:`Batch.run`."""
    previous = getattr(_recording, "batch", None)
    _recording.batch = batch
    try:
        yield batch
    finally:
        _recording.batch = previous


def _make(function: Any, first: int, second: int, dims: ctypes.Structure, *arrays: Any) -> None:
    """Call a checked loop now, or record the call where :func:`recording` is active."""
    batch = getattr(_recording, "batch", None)
    if batch is None:
        function(first, second, ctypes.byref(dims))
    else:
        batch.add(function, first, second, dims, *arrays)


@cache
def _batch_runner() -> Any:
    library = _library()
    function = getattr(library, "pf_run_batch", None) if library is not None else None
    if function is not None:
        function.restype = None
        function.argtypes = [ctypes.POINTER(_BatchStruct), ctypes.c_void_p, ctypes.c_int64]
    return function


def batches() -> bool:
    """Whether recorded batches can run (the compiled library built)."""
    return _batch_runner() is not None


@cache
def fold(dtype_name: str, accumulator_name: str, ndim: int = 2) -> FoldLoop | None:
    """The checked C overlap-add of ``ndim`` (2 or 3) spatial dims for patches of one dtype into an
    accumulator of another, or None."""
    suffix = _SOURCE_NAMES.get((dtype_name, accumulator_name))
    if suffix is None or ndim not in (2, 3):
        return None
    function = _bind(f"fold_{suffix}", FoldDims)
    if function is None:
        return None
    return FoldLoop(function, np.dtype(dtype_name), np.dtype(accumulator_name), ndim)


@cache
def fold_extra(dtype_name: str, accumulator_name: str, ndim: int = 2) -> FoldExtraLoop | None:
    """The checked C overlap-add with window weights and a fused normalisation (``foldx_``), or None."""
    suffix = _SOURCE_NAMES.get((dtype_name, accumulator_name))
    if suffix is None or ndim not in (2, 3):
        return None
    function = _bind(f"foldx_{suffix}", FoldDims, FoldExtra)
    if function is None:
        return None
    return FoldExtraLoop(function, np.dtype(dtype_name), np.dtype(accumulator_name), ndim)


@cache
def place(dtype_name: str) -> PlaceLoop | None:
    """The checked C placement of weighted patches (``place_f32``/``place_f64``), or None."""
    suffix = {"float32": "f32", "float64": "f64"}.get(dtype_name)
    function = None if suffix is None else _bind(f"place_{suffix}", PlaceDims)
    return None if function is None else PlaceLoop(function, np.dtype(dtype_name))


class Placement:
    """A batch of outputs checked for :class:`BlendLoop`, made by :meth:`PlaceLoop.placement`: the
    outputs, private read-only copies of the starts and weights, and the struct pointing into them.
    The loop refuses one whose arrays are no longer those the struct was made from."""

    __slots__ = ("_dims", "_made_from", "extent", "first", "outputs", "starts", "stop", "weights")

    def __init__(self, outputs: np.ndarray, starts: np.ndarray, weights: tuple[np.ndarray, ...],
                 extent: tuple[int, ...], dims: PlaceDims, first: int, stop: int) -> None:  # fmt: skip
        self.outputs, self.starts, self.weights, self.extent = outputs, starts, weights, extent
        self.first, self.stop = first, stop  # the dim-0 positions the patches reach: [first, stop)
        self._dims = dims
        self._made_from = self._arrays()

    def _arrays(self) -> tuple[Any, ...]:
        """What the struct relies on: the arrays (their memory, shape, strides, dtype)."""
        arrays = [
            (id(a), a.ctypes.data, a.shape, a.strides, a.dtype.str) if isinstance(a, np.ndarray) else (id(a),)
            for a in (self.outputs, self.starts, *self.weights)
        ]
        return (*arrays, self.extent)

    def checked_dims(self) -> PlaceDims:
        """A copy of the struct, once the arrays are checked to be those it was made from."""
        if not isinstance(self.weights, tuple) or self._arrays() != self._made_from:
            raise PatchfoldError("a placement's arrays were replaced after placement() made it")
        return PlaceDims.from_buffer_copy(self._dims)


class PlaceLoop:
    """``place_<src>`` behind its checks: ``loop(outputs, band, starts, weights, dilation)``, or
    :meth:`placement` for :class:`BlendLoop`."""

    def __init__(self, function: Any, source: np.dtype) -> None:
        self._function = function
        self.source = source

    def takes(self, outputs: np.ndarray) -> bool:
        """Whether this loop reads ``outputs`` as they are (its dtype, memory it takes)."""
        return outputs.dtype == self.source and takes(outputs)

    def _placed(
        self,
        outputs: np.ndarray,
        starts: np.ndarray,
        weights: Sequence[np.ndarray],
        dilation: Sequence[int],
        extent: tuple[int, ...],
        inside: str,
        private: bool = False,
    ) -> tuple[PlaceDims, np.ndarray, np.ndarray, Sequence[np.ndarray]]:
        """The struct for ``outputs`` ``(B, C, *k)`` placed at ``starts`` inside ``extent``, every
        argument checked; with the checked starts, each patch's reach per dim and the weights.
        With ``private``, the struct points into read-only copies of the starts and weights
        (read later, which the caller then cannot change)."""
        ndim = len(extent)
        if ndim not in (2, 3) or not isinstance(outputs, np.ndarray) or outputs.ndim != ndim + 2:
            raise PatchfoldError(f"outputs must be (B, C, *kernel) of {ndim} spatial dims, got "
                                 f"{getattr(outputs, 'shape', type(outputs).__name__)}")  # fmt: skip
        _check_memory(outputs, "outputs", writeable=False)
        if outputs.dtype != self.source:
            raise PatchfoldError(f"outputs must be {self.source}, got {outputs.dtype} {outputs.shape}")
        count, channels, kernel = outputs.shape[0], outputs.shape[1], tuple(outputs.shape[2:])
        in_strides = element_strides(outputs, "outputs")  # any layout: the loop reads by these
        dilation = tuple(int(d) for d in dilation)
        if len(dilation) != ndim or min(dilation) < 1:
            raise PatchfoldError(f"dilation must give {ndim} values >= 1, got {dilation}")
        _check_limits(extent, dilation)
        starts, reach = _checked_starts(starts, count, kernel, dilation, extent, inside)
        if len(weights) != ndim:
            raise PatchfoldError(f"weights must give {ndim} per-dim arrays, got {len(weights)}")
        for dim, per_dim in enumerate(weights):
            _check_vector(per_dim, (count, kernel[dim]), f"weights of dim {dim}")
        if private:
            starts, weights = _frozen(starts), tuple(_frozen(per_dim) for per_dim in weights)
        dims = PlaceDims(ndim, count, channels, _padded(kernel), _padded(dilation), _padded(extent))
        dims.in_strides[: len(in_strides)] = in_strides
        dims.starts = starts.ctypes.data
        for dim, per_dim in enumerate(weights):
            dims.weights[dim] = per_dim.ctypes.data
        return dims, starts, reach, weights

    def placement(
        self,
        outputs: np.ndarray,
        starts: np.ndarray,
        weights: Sequence[np.ndarray],
        dilation: Sequence[int],
        extent: Sequence[int],
    ) -> Placement:
        """``outputs`` ``(B, C, *k)``, each patch times the product of its per-dim weights
        (``weights[d]`` is ``(B, k_d)``), with patch ``b``'s first point at ``starts[b]`` of the
        padded output of size ``extent`` and its points ``dilation`` apart: checked once, for
        :class:`BlendLoop` to add chunk by chunk of rows."""
        extent = tuple(int(n) for n in extent)
        dims, starts, reach, weights = self._placed(outputs, starts, weights, dilation, extent, "padded output",
                                                    private=True)  # fmt: skip
        first = int(starts[:, 0].min()) if len(starts) else 0
        stop = int(starts[:, 0].max() + reach[0]) + 1 if len(starts) else 0
        return Placement(outputs, starts, weights, extent, dims, first, stop)

    def __call__(
        self,
        outputs: np.ndarray,
        band: np.ndarray,
        starts: np.ndarray,
        weights: Sequence[np.ndarray],
        dilation: Sequence[int],
        split: Callable[[Callable[[int, int], None], int, int], None] | None = None,
    ) -> None:
        """Add ``outputs`` ``(B, C, *k)``, each patch times the product of its per-dim weights
        (``weights[d]`` is ``(B, k_d)``), into ``band`` ``(C, *size)`` float64 with patch ``b``'s
        first point at ``starts[b]`` ``(B, ndim)`` and its points ``dilation`` apart. Everything is
        checked once; then ``split(add_rows, lo, hi)`` (when given) may call ``add_rows`` on
        disjoint pieces of the band rows ``[lo, hi)`` the patches touch, from several threads."""
        _check_array(band, "band", band.ndim)
        if band.ndim not in (3, 4) or band.dtype != np.float64:
            raise PatchfoldError(f"band must be (C, *size) float64 of 2 or 3 dims, got {band.dtype} {band.shape}")
        _check_memory(band, "band", writeable=True)
        dims, starts, reach, _ = self._placed(outputs, starts, weights, dilation, tuple(band.shape[1:]), "band")
        if not band.flags.c_contiguous or band.shape[0] != outputs.shape[1]:
            raise PatchfoldError(f"band must be C-contiguous with {outputs.shape[1]} channels, got shape {band.shape}")
        _check_apart(outputs, "outputs", band)
        if not dims.count or not dims.channels:
            return
        first, last = int(starts[:, 0].min()), int(starts[:, 0].max() + reach[0]) + 1

        def add_rows(lo: int, hi: int) -> None:
            piece = PlaceDims.from_buffer_copy(dims)  # each thread its own struct
            piece.row_lo, piece.row_hi = _check_range((lo, hi), band.shape[1], "band rows")
            self._function(outputs.ctypes.data, band.ctypes.data, ctypes.byref(piece))

        if split is None:
            add_rows(first, last)
        else:
            split(add_rows, first, last)


@cache
def blend(dtype_name: str) -> BlendLoop | None:
    """The checked C loop that finishes rows of blended outputs (``blend_f32``/``blend_f64``):
    each chunk of rows summed from the batches that reach it and divided in cache, or None."""
    suffix = {"float32": "f32", "float64": "f64"}.get(dtype_name)
    placing = place(dtype_name)
    function = None if placing is None else _bind(f"blend_{suffix}", BlendDims)
    return None if function is None else BlendLoop(function, placing)


class BlendLoop:
    """``blend_<dst>`` behind its checks: ``loop(placements, chunk, rows, totals, out, lead)``."""

    def __init__(self, function: Any, placing: PlaceLoop) -> None:
        self._function = function
        self.target = placing.source
        self.takes, self.placement = placing.takes, placing.placement

    def __call__(
        self,
        placements: Sequence[Placement],
        chunk: np.ndarray,
        rows: tuple[int, int],
        totals: Sequence[np.ndarray],
        out: np.ndarray,
        lead: Sequence[int],
    ) -> None:
        """The padded output's positions ``rows`` ``[lo, hi)`` of dim 0, finished from
        ``placements`` (added in their order) into ``out`` ``(C, hi - lo, *size)``: each point's
        weighted sum divided by its total weight, ``outer(totals)`` (``totals[0]`` for the rows,
        then one vector per other dim). The image's points start ``lead[d]`` into the padded
        output's other dims. ``chunk`` ``(C, R, *extent[1:])`` float64 (any values: each use
        starts by zeroing the rows it takes) holds ``R`` rows' sums at a time."""
        _check_array(chunk, "chunk", chunk.ndim)
        ndim = chunk.ndim - 1
        if ndim not in (2, 3) or chunk.dtype != np.float64 or not chunk.flags.c_contiguous or chunk.shape[1] < 1:
            raise PatchfoldError(f"chunk must be (C, rows >= 1, *size) float64, C-contiguous, of 2 or 3 dims, "
                                 f"got {chunk.dtype} {chunk.shape}")  # fmt: skip
        _check_memory(chunk, "chunk", writeable=True)
        channels, extent = chunk.shape[0], tuple(chunk.shape[2:])
        lo, hi = rows
        if not (isinstance(lo, int | np.integer) and isinstance(hi, int | np.integer) and 0 <= lo <= hi <= _LIMIT):
            raise PatchfoldError(f"rows must be integers 0 <= lo <= hi, got {rows}")
        _check_memory(out, "out", writeable=True)
        if out.dtype != self.target or out.ndim != ndim + 1 or out.shape[:2] != (channels, hi - lo):
            raise PatchfoldError(f"out must be {self.target} of shape ({channels}, {hi - lo}, ...), got "
                                 f"{out.dtype} {out.shape}")  # fmt: skip
        size = tuple(out.shape[2:])
        lead = tuple(int(n) for n in lead)
        if len(lead) != ndim - 1 or any(a < 0 or a + n > e for a, n, e in zip(lead, size, extent)):
            raise PatchfoldError(f"lead {lead} and out's size {size} must lie inside the chunk's rows {extent}")
        totals = _checked_totals(totals, (hi - lo, *size))
        places = (PlaceDims * max(len(placements), 1))()
        pointers = (ctypes.c_void_p * max(len(placements), 1))()
        for i, placement in enumerate(placements):
            if not isinstance(placement, Placement):
                raise PatchfoldError(f"placements must come from placement(), got {type(placement).__name__}")
            places[i] = placement.checked_dims()
            if placement.extent[1:] != extent or places[i].channels != channels:
                raise PatchfoldError(
                    f"a placement in a padded output of {placement.extent} with {places[i].channels} "
                    f"channels does not fit the chunk {chunk.shape}"
                )
            if placement.outputs.dtype != self.target:
                raise PatchfoldError(f"placements must be of {self.target} outputs, got {placement.outputs.dtype}")
            _check_apart(placement.outputs, "outputs", chunk)
            _check_apart(placement.outputs, "outputs", out)
            places[i].band_size[0] = chunk.shape[1]
            pointers[i] = placement.outputs.ctypes.data
        _check_apart(chunk, "chunk", out)
        if lo == hi or not channels:
            return
        chunk_strides = element_strides(chunk, "chunk")
        divide = _divide_dims(channels, (chunk.shape[1], *size), chunk_strides, element_strides(out, "out"), totals)
        dims = BlendDims(len(placements), ctypes.addressof(pointers), ctypes.addressof(places), chunk.shape[1])
        dims.row_lo, dims.row_hi = int(lo), int(hi)
        dims.sums_offset = sum(a * s for a, s in zip(lead, chunk_strides[2:]))
        dims.divide = divide
        held = [places, pointers, *totals, *placements]  # what the call points into, for a recorded call
        _make(self._function, chunk.ctypes.data, out.ctypes.data, dims, chunk, out, *held)


@cache
def divide(dtype_name: str) -> DivideLoop | None:
    """The checked C division of finished band rows by their total weight (``divide_f32`` /
    ``divide_f64``), or None."""
    suffix = {"float32": "f32", "float64": "f64"}.get(dtype_name)
    function = None if suffix is None else _bind(f"divide_{suffix}", DivideDims)
    return None if function is None else DivideLoop(function, np.dtype(dtype_name))


class DivideLoop:
    """``divide_<dst>`` behind its checks: ``loop(sums, totals, out, clear=False)``."""

    def __init__(self, function: Any, target: np.dtype) -> None:
        self._function = function
        self.target = target

    def __call__(self, sums: np.ndarray, totals: Sequence[np.ndarray], out: np.ndarray, *, clear: bool = False) -> None:
        """``out[c, r, ...] = sums[c, r, ...] / outer(totals)[r, ...]`` for float64 ``sums`` and
        ``out`` of this loop's dtype, both ``(C, *size)`` of 2 or 3 spatial dims at any
        non-negative strides, ``totals[d]`` float64 of ``size[d]`` values; with ``clear``,
        ``sums`` is zeroed as it is read."""
        _check_memory(sums, "sums", writeable=clear)
        _check_memory(out, "out", writeable=True)
        ndim = sums.ndim - 1
        if ndim not in (2, 3) or sums.dtype != np.float64 or out.dtype != self.target or out.shape != sums.shape:
            raise PatchfoldError(f"sums (C, *size) float64 of 2 or 3 dims and out {self.target} of its shape, got "
                                 f"{sums.dtype} {sums.shape} and {out.dtype} {out.shape}")  # fmt: skip
        totals = _checked_totals(totals, sums.shape[1:])
        _check_apart(sums, "sums", out)
        if not sums.size:
            return
        sums_strides, out_strides = element_strides(sums, "sums"), element_strides(out, "out")
        dims = _divide_dims(sums.shape[0], sums.shape[1:], sums_strides, out_strides, totals)
        dims.clear = int(clear)
        self._function(sums.ctypes.data, out.ctypes.data, ctypes.byref(dims))


def _checked_totals(totals: Sequence[Any], size: Sequence[int]) -> list[np.ndarray]:
    """One float64 vector of total weights per dim of ``size``, contiguous (copied where not)."""
    if len(totals) != len(size):
        raise PatchfoldError(f"totals must give {len(size)} per-dim vectors, got {len(totals)}")
    totals = [np.ascontiguousarray(t, dtype=np.float64) for t in totals]
    for dim, (total, n) in enumerate(zip(totals, size)):
        _check_vector(total, (n,), f"totals of dim {dim}")
    return totals


def _divide_dims(
    channels: int, size: Sequence[int], sums_strides: Sequence[int], out_strides: Sequence[int],
    totals: Sequence[np.ndarray],
) -> DivideDims:  # fmt: skip
    """The struct of a division of sums ``(channels, *size)`` into out, both at these element
    strides, by the outer product of ``totals`` (checked by the caller)."""
    dims = DivideDims(len(size), channels, _padded(size))
    dims.sums_strides[: len(sums_strides)] = sums_strides
    dims.out_strides[: len(out_strides)] = out_strides
    for dim, total in enumerate(totals):
        dims.totals[dim] = total.ctypes.data
    return dims


def _checked_starts(
    starts: Any, count: int, kernel: Sequence[int], dilation: Sequence[int], extent: Sequence[int], inside: str
) -> tuple[np.ndarray, np.ndarray]:
    """``starts`` ``(count, ndim)`` int64 (contiguous), every patch from there lying inside
    ``extent``; with the reach of a patch per dim."""
    ndim = len(extent)
    if not isinstance(starts, np.ndarray) or starts.dtype != np.int64 or starts.shape != (count, ndim):
        raise PatchfoldError(
            f"starts must be int64 of shape {(max(count, 0), ndim)}, got {getattr(starts, 'shape', starts)}"
        )
    starts = np.ascontiguousarray(starts)
    reach = [(int(k) - 1) * int(d) for k, d in zip(kernel, dilation)]  # Python ints: no wrap-around
    # the last start a patch may have per dim, formed without overflow (a start plus its reach
    # could pass int64 and wrap around to a small number)
    last = [int(n) - 1 - r for n, r in zip(extent, reach)]
    if count and (min(last) < 0 or (starts < 0).any() or (starts > np.array(last, dtype=np.int64)).any()):
        raise PatchfoldError(f"every patch must lie inside the {inside} {tuple(extent)}, got starts {starts.tolist()}")
    return starts, np.array(reach if count else [0] * ndim, dtype=np.int64)


def element_strides(array: np.ndarray, name: str) -> list[int]:
    """``array``'s strides in elements (numpy's own, so every element they reach is the array's),
    refused where one is not a whole number of items or is negative."""
    strides = [s // array.itemsize for s in array.strides]
    if any(s % array.itemsize or s < 0 for s in array.strides):
        raise PatchfoldError(f"{name} must have non-negative strides of whole items, got {array.strides}")
    return strides


@cache
def gather_cl(itemsize: int) -> GatherLoop | None:
    """The checked C gather of patches into a channels-last batch, for items of this many bytes, or None."""
    if itemsize not in (1, 2, 4, 8):
        return None
    function = _bind(f"gather_cl_{itemsize * 8}", GatherDims)
    return None if function is None else GatherLoop(function, itemsize)


class GatherLoop:
    """``gather_cl_<bits>`` behind its checks: ``loop(image, starts, kernel, dilation)``."""

    def __init__(self, function: Any, itemsize: int) -> None:
        self._function = function
        self.itemsize = itemsize

    def __call__(
        self,
        image: np.ndarray,
        starts: np.ndarray,
        kernel: Sequence[int],
        dilation: Sequence[int],
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The patches of ``image`` ``(C, *size)`` (2 or 3 spatial dims, any strides) whose first
        points are ``starts`` ``(B, ndim)``, each ``kernel`` points ``dilation`` apart per dim, as
        ``(B, C, *kernel)`` in channels-last memory (a transposed view of a contiguous
        ``(B, *kernel, C)``: ``out`` where given, else a new one). Every point is checked to lie
        inside ``image`` before the call."""
        _check_memory(image, "image", writeable=False)
        ndim = image.ndim - 1
        if ndim not in (2, 3) or image.itemsize != self.itemsize:
            raise PatchfoldError(f"image must be (C, *size) of 2 or 3 dims and {self.itemsize}-byte items, "
                                 f"got {image.dtype} {image.shape}")  # fmt: skip
        kernel, dilation = tuple(int(k) for k in kernel), tuple(int(d) for d in dilation)
        if len(kernel) != ndim or len(dilation) != ndim or min(kernel) < 1 or min(dilation) < 1:
            raise PatchfoldError(f"kernel and dilation must give {ndim} values >= 1, got {kernel}, {dilation}")
        count = len(starts) if isinstance(starts, np.ndarray) and starts.ndim == 2 else -1
        starts, _ = _checked_starts(starts, count, kernel, dilation, image.shape[1:], "image")
        shape = (len(starts), *kernel, image.shape[0])
        batch = np.empty(shape, dtype=image.dtype) if out is None else out
        if not isinstance(batch, np.ndarray) or batch.shape != shape or batch.dtype != image.dtype:
            raise PatchfoldError(f"out must be {image.dtype} of shape {shape}, got {getattr(batch, 'shape', batch)}")
        _check_memory(batch, "out", writeable=True)
        if not batch.flags.c_contiguous:
            raise PatchfoldError(f"out must be C-contiguous, got strides {batch.strides}")
        _check_apart(image, "image", batch)
        if batch.size:
            dims = GatherDims(ndim, len(starts), image.shape[0], _padded(kernel), _padded(dilation))
            strides = element_strides(image, "image")
            dims.src_strides[: len(strides)] = strides
            dims.starts = starts.ctypes.data
            _make(self._function, image.ctypes.data, batch.ctypes.data, dims, image, batch, starts)
        return np.moveaxis(batch, -1, 1)


@cache
def unfold(itemsize: int, ndim: int = 2) -> UnfoldLoop | None:
    """The checked C block copy of ``ndim`` (2 or 3) spatial dims for items of this many bytes, or
    None."""
    if itemsize not in (1, 2, 4, 8) or ndim not in (2, 3):
        return None
    function = _bind(f"unfold_{itemsize * 8}", UnfoldDims)
    return None if function is None else UnfoldLoop(function, itemsize, ndim)


def _bind(name: str, struct: type[ctypes.Structure], extra: type[ctypes.Structure] | None = None) -> Any | None:
    """The library's function ``name(void *, void *, const struct *)`` (returning nothing), or with
    ``extra`` ``name(void *, void *, const struct *, const extra *)`` returning an int64; None where
    not built."""
    library = _library()
    function = getattr(library, name, None) if library is not None else None
    if function is None:
        return None
    function.restype = None if extra is None else ctypes.c_int64
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(struct)]
    if extra is not None:
        function.argtypes.append(ctypes.POINTER(extra))
    return function


class UnfoldLoop:
    """``unfold_<bits>`` behind its checks: call it as ``loop(x, out, geometry, rows, kernel_rows,
    layout)``."""

    def __init__(self, function: Any, itemsize: int, ndim: int) -> None:
        self._function = function
        self.itemsize = itemsize
        self.ndim = ndim

    def __call__(
        self,
        x: np.ndarray,
        out: np.ndarray,
        geometry: Any,
        rows: tuple[int, int],
        kernel_rows: tuple[int, int],
        layout: str,
    ) -> None:
        """Copy block rows ``rows`` (of dim 0) and kernel rows ``kernel_rows`` (``q = c·k0 + offset
        in dim 0``) of ``x`` ``(N, C, *spatial)``, zero padded as ``geometry`` says, into ``out``:
        the band of the patch matrix that holds those block rows, ``(N, C·∏k, ≥ band)`` (``ncl``,
        any row stride) or ``(N, ≥ band, C·∏k)`` (``nlc``)."""
        dims = self.check(x, out, geometry, rows, kernel_rows, layout)
        items = x.shape[0]
        if items == 0 or dims.row_lo == dims.row_hi or dims.q_lo == dims.q_hi:
            return
        x_data, x_step = x.ctypes.data, x.strides[0]
        out_data, out_step = out.ctypes.data, out.strides[0]
        for item in range(items):
            _make(self._function, x_data + item * x_step, out_data + item * out_step, dims, x, out)

    def check(
        self,
        x: np.ndarray,
        out: np.ndarray,
        geometry: Any,
        rows: tuple[int, int],
        kernel_rows: tuple[int, int],
        layout: str,
    ) -> UnfoldDims:
        """The struct for this call, after checking that the loop stays inside both arrays (raises
        :class:`PatchfoldError` otherwise)."""
        _check_array(x, "x", self.ndim + 2)
        _check_array(out, "out", 3)
        if x.dtype.itemsize != self.itemsize:
            raise PatchfoldError(f"x must have {self.itemsize}-byte items for this loop, got {x.dtype}")
        if out.dtype != x.dtype:
            raise PatchfoldError(f"out must have x's dtype {x.dtype}, got {out.dtype} of shape {out.shape}")
        _check_memory(x, "x", writeable=False)
        _check_memory(out, "out", writeable=True)
        if not _packed(x, 1):
            raise PatchfoldError(f"x must be C-contiguous in each item, got strides {x.strides} for shape {x.shape}")
        if layout not in ("ncl", "nlc"):
            raise PatchfoldError(f"layout must be 'ncl' or 'nlc', got {layout!r}")
        plan = _cached(_unfold_plan, geometry, self.ndim, x.shape[1:])
        lo, hi = _check_range(rows, plan.block_rows, "block rows")
        q0, q1 = _check_range(kernel_rows, plan.kernel_rows, "kernel rows")
        if out.shape[0] != x.shape[0]:
            raise PatchfoldError(f"out must hold x's {x.shape[0]} items, got shape {out.shape}")
        itemsize, (_, first, second), (_, step1, step2) = self.itemsize, out.shape, out.strides
        touched = (q1 - q0) * plan.per_q  # matrix rows (ncl) or columns (nlc) written
        band = (hi - lo) * plan.per_row  # blocks of the band: columns (ncl) or rows (nlc)
        if layout == "ncl":
            # element (r, j) of an item at r·rs + j for r in [q0·per_q, q1·per_q), j < band: rows may
            # lie anywhere, but apart (the loop reads back rows it wrote, threads write their own)
            rs = step1 // itemsize
            fits = first >= q1 * plan.per_q and second >= band
            strided = (second <= 1 or step2 == itemsize) and step1 % itemsize == 0 and (touched <= 1 or rs >= band)
            if not (fits and strided):
                raise PatchfoldError(
                    f"out must be (N, ≥ {q1 * plan.per_q}, ≥ {band}) with contiguous rows at least {band} "
                    f"elements apart for block rows [{lo}, {hi}) and kernel rows [{q0}, {q1}) (ncl), got shape "
                    f"{out.shape} with strides {out.strides}"
                )
        else:
            # element (j, r) of an item at j·width + r for j < band, r in [q0·per_q, q1·per_q)
            rs = 0
            fits = first >= band and second >= q1 * plan.per_q
            strided = (second <= 1 or step2 == itemsize) and (first <= 1 or step1 == plan.width * itemsize)
            if not (fits and strided):
                raise PatchfoldError(
                    f"out must be (N, ≥ {band}, ≥ {q1 * plan.per_q}) with packed rows of {plan.width} elements "
                    f"for block rows [{lo}, {hi}) and kernel rows [{q0}, {q1}) (nlc), got shape {out.shape} "
                    f"with strides {out.strides}"
                )
        _check_apart(x, "x", out)
        dims = UnfoldDims.from_buffer_copy(plan.dims)
        dims.row_lo, dims.row_hi, dims.q_lo, dims.q_hi = lo, hi, q0, q1
        dims.nlc, dims.row_stride = int(layout == "nlc"), rs
        return dims


class FoldLoop:
    """``fold_<src>_<acc>`` behind its checks: call it as ``loop(cols, acc, geometry, rows, layout,
    zero)``."""

    def __init__(self, function: Any, source: np.dtype, accumulator: np.dtype, ndim: int) -> None:
        self._function = function
        self.source = source
        self.accumulator = accumulator
        self.ndim = ndim

    def __call__(
        self, cols: np.ndarray, acc: np.ndarray, geometry: Any, rows: tuple[int, int], layout: str, zero: bool
    ) -> None:
        """Add every block of ``cols`` (the whole patch matrix, ``ncl`` or ``nlc``) to padded output
        rows ``rows`` of dim 0 in ``acc`` ``(N, C, ≥ hi-lo, *padded_size[1:])``, zeroing them first
        with ``zero``."""
        dims = self.check(cols, acc, geometry, rows, layout, zero)
        if cols.shape[0] == 0 or dims.row_lo == dims.row_hi:
            return
        cols_data, cols_step = cols.ctypes.data, cols.strides[0]
        acc_data, acc_step = acc.ctypes.data, acc.strides[0]
        for item in range(cols.shape[0]):
            _make(self._function, cols_data + item * cols_step, acc_data + item * acc_step, dims, cols, acc)

    def check(
        self, cols: np.ndarray, acc: np.ndarray, geometry: Any, rows: tuple[int, int], layout: str, zero: bool
    ) -> FoldDims:
        """The struct for this call, after checking that the loop stays inside both arrays (raises
        :class:`PatchfoldError` otherwise)."""
        _check_array(cols, "cols", 3)
        _check_array(acc, "out", self.ndim + 2)
        if cols.dtype != self.source:
            raise PatchfoldError(f"cols must be {self.source} for this loop, got {cols.dtype}")
        if acc.dtype != self.accumulator:
            raise PatchfoldError(
                f"out must be {self.accumulator} to sum {cols.dtype} patches here, got {acc.dtype} of shape {acc.shape}"
            )
        _check_memory(cols, "cols", writeable=False)
        _check_memory(acc, "out", writeable=True)
        if not _packed(cols, 1):
            raise PatchfoldError(
                f"cols must be C-contiguous in each item, got strides {cols.strides} for shape {cols.shape}"
            )
        if layout not in ("ncl", "nlc"):
            raise PatchfoldError(f"layout must be 'ncl' or 'nlc', got {layout!r}")
        # the loop's row length (size[d] for d >= 1) is out's own: the plan checks every block lands
        # inside it (in dim 0 the loop only adds rows in [lo, hi), checked against out below)
        plan = _cached(_fold_plan, geometry, self.ndim, acc.shape[1], acc.shape[3:])
        channels = acc.shape[1]
        matrix = (plan.width, plan.count) if layout == "ncl" else (plan.count, plan.width)
        if cols.shape[1:] != matrix:
            raise PatchfoldError(
                f"cols must be (N, {matrix[0]}, {matrix[1]}) for {channels} channels ({layout}), got {cols.shape}"
            )
        lo, hi = _check_range(rows, _LIMIT, "output rows")
        itemsize = acc.itemsize
        # channels anywhere (any sign of stride), but apart; rows of dim 0 packed inside each
        apart = channels <= 1 or abs(acc.strides[1]) >= (hi - lo) * plan.plane * itemsize
        if (
            acc.shape[0] != cols.shape[0]
            or acc.shape[2] < hi - lo
            or not _packed(acc, 2)
            or acc.strides[1] % itemsize
            or not apart
        ):
            raise PatchfoldError(
                f"out must be (N={cols.shape[0]}, C={channels}, ≥ {hi - lo}, *padded size) with each channel's "
                f"rows packed and channels apart, for output rows [{lo}, {hi}), got shape {acc.shape} with "
                f"strides {acc.strides}"
            )
        _check_apart(cols, "cols", acc)
        dims = FoldDims.from_buffer_copy(plan.dims)
        dims.row_lo, dims.row_hi, dims.zero = lo, hi, int(bool(zero))
        dims.kernel_step, dims.block_step = (plan.count, 1) if layout == "ncl" else (1, plan.width)
        dims.channel_stride = acc.strides[1] // itemsize
        return dims


class FoldExtraLoop(FoldLoop):
    """``foldx_<src>_<acc>`` behind its checks: :meth:`sum` adds window-weighted blocks into an
    accumulator as :class:`FoldLoop` does; :meth:`normalised` writes the normalised fold itself."""

    def sum(
        self,
        cols: np.ndarray,
        acc: np.ndarray,
        geometry: Any,
        rows: tuple[int, int],
        layout: str,
        zero: bool,
        weights: Sequence[np.ndarray],
    ) -> None:
        """:meth:`FoldLoop.__call__` with each block weighted by the per-dim ``weights`` ``(L_d, k_d)``."""
        dims = self.check(cols, acc, geometry, rows, layout, zero)
        extra = FoldExtra()
        _set_weights(extra, weights, dims, self.ndim)
        self._run(cols, acc, dims, extra)

    def normalised(
        self,
        cols: np.ndarray,
        out: np.ndarray,
        geometry: Any,
        rows: tuple[int, int],
        layout: str,
        divisor: Sequence[np.ndarray],
        weights: Sequence[np.ndarray] | None = None,
        first_row: int = 0,
    ) -> int:
        """Write padded rows ``rows`` of dim 0 of the normalised fold of ``cols`` into ``out``, which
        holds output rows ``[first_row, first_row + band)`` of dim 0: ``(N, C, band,
        *spatial_size[1:])`` in the patches' dtype, each channel's rows packed; ``rows`` must lie
        in those output rows (offset by the zero padding). The divisor is formed from the per-dim
        ``divisor`` vectors (over the whole output). Zero padding only. Returns the count of sums
        that were not finite (0 when all went well)."""
        _check_array(out, "out", self.ndim + 2)
        _check_memory(out, "out", writeable=True)
        if out.dtype != cols.dtype or cols.dtype != self.source:
            raise PatchfoldError(f"out must be {self.source} like cols for this loop, got {out.dtype} and {cols.dtype}")
        if any(geometry.padding) and geometry.padding_mode != "zeros":
            raise PatchfoldError(f"the fused normalised fold crops zero padding only, not {geometry.padding_mode!r}")
        size, offset = tuple(geometry.spatial_size), tuple(geometry.padding)
        channels = cols.shape[1 if layout == "ncl" else 2] // geometry.kernel_volume
        band = out.shape[2] if out.ndim > 2 else 0
        held = (cols.shape[0], channels, band, *size[1:])
        if out.shape != held or not _packed(out, 2) or out.strides[1] % out.itemsize or first_row + band > size[0]:
            raise PatchfoldError(
                f"out must be (N={cols.shape[0]}, C={channels}, rows, *{size[1:]}) with each channel's rows packed, "
                f"holding output rows from {first_row} within {size[0]}, got shape {out.shape} with strides "
                f"{out.strides}"
            )
        if channels > 1 and abs(out.strides[1]) < band * math.prod(size[1:]) * out.itemsize:
            raise PatchfoldError(f"out's channels must lie apart, got strides {out.strides} for shape {out.shape}")
        top = offset[0] + _check_range((first_row, first_row), size[0], "first row")[0]
        lo, hi = _check_range(rows, top + band, "output rows")
        if lo < top:
            raise PatchfoldError(f"output rows must lie inside out's rows [{top}, {top + band}), got {rows}")
        if len(divisor) != self.ndim:
            raise PatchfoldError(f"divisor must give {self.ndim} per-dim vectors, got {len(divisor)}")
        for dim, vector in enumerate(divisor):
            _check_vector(vector, (size[dim],), f"divisor vector {dim}")
        _check_apart(cols, "cols", out)
        # the struct the sum-only loop would get, for an accumulator of these rows
        plan = _cached(_fold_plan, geometry, self.ndim, channels, tuple(geometry.padded_size[1:]))
        if cols.shape[1:] != ((plan.width, plan.count) if layout == "ncl" else (plan.count, plan.width)):
            raise PatchfoldError(f"cols must match the geometry for {channels} channels ({layout}), got {cols.shape}")
        dims = FoldDims.from_buffer_copy(plan.dims)
        dims.row_lo, dims.row_hi, dims.zero = lo, hi, 1
        dims.kernel_step, dims.block_step = (plan.count, 1) if layout == "ncl" else (1, plan.width)
        extra = FoldExtra()
        if weights is not None:
            _set_weights(extra, weights, dims, self.ndim)
        for dim, vector in enumerate(divisor):
            extra.divisor[dim] = vector.ctypes.data
        extra.divisor[0] += first_row * divisor[0].itemsize  # out's first row is output row first_row
        extra.out_size, extra.offset = _padded((band, *size[1:])), _padded((top, *offset[1:]))
        extra.out_channel_stride = out.strides[1] // out.itemsize
        extra.scratch_bytes = SCRATCH_BYTES
        return self._run(cols, out, dims, extra)

    def _run(self, cols: np.ndarray, dst: np.ndarray, dims: FoldDims, extra: FoldExtra) -> int:
        """Call the loop per item (the caller holds every array the structs point into)."""
        if cols.shape[0] == 0 or dims.row_lo == dims.row_hi:
            return 0
        nonfinite = 0
        for item in range(cols.shape[0]):
            found = self._function(
                cols.ctypes.data + item * cols.strides[0],
                dst.ctypes.data + item * dst.strides[0],
                ctypes.byref(dims),
                ctypes.byref(extra),
            )
            if found < 0:
                raise PatchfoldError("not enough memory for the fold's scratch band")
            nonfinite += found
        return nonfinite


def _set_weights(extra: FoldExtra, weights: Sequence[np.ndarray], dims: FoldDims, ndim: int) -> None:
    """Point ``extra`` at checked per-dim weights ``(L_d, k_d)`` (float64, C-contiguous)."""
    if len(weights) != ndim:
        raise PatchfoldError(f"weights must give {ndim} per-dim arrays, got {len(weights)}")
    for dim, per_dim in enumerate(weights):
        _check_vector(per_dim, (dims.blocks[dim], dims.kernel[dim]), f"weights of dim {dim}")
        extra.weights[dim] = per_dim.ctypes.data


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous copy of ``array``."""
    copy = np.array(array, order="C", copy=True)
    copy.flags.writeable = False
    return copy


def _check_vector(array: Any, shape: tuple[int, ...], name: str) -> None:
    """A float64, C-contiguous, aligned numpy array of exactly ``shape``."""
    if not isinstance(array, np.ndarray) or array.dtype != np.float64 or tuple(array.shape) != shape:
        got = f"{array.dtype} of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise PatchfoldError(f"{name} must be float64 of shape {shape}, got {got}")
    if not array.flags.c_contiguous or not array.flags.aligned:
        raise PatchfoldError(f"{name} must be C-contiguous and aligned, got strides {array.strides}")


class _UnfoldPlan(NamedTuple):
    dims: UnfoldDims  # the fields that do not change between calls
    block_rows: int  # L0
    kernel_rows: int  # C·k0
    per_q: int  # ∏k[1:]: matrix rows (ncl) or columns (nlc) of one kernel row
    per_row: int  # ∏L[1:]: blocks per block row
    width: int  # C·∏k


class _FoldPlan(NamedTuple):
    dims: FoldDims
    width: int  # C·∏k
    count: int  # ∏L
    plane: int  # elements of one padded row of dim 0 (∏ padded size[1:])


def _cached(plan: Any, geometry: Any, *args: Any) -> Any:
    """``plan(geometry, *args)``, from a cache where the geometry is hashable (patchfold's is)."""
    try:
        return plan(geometry, *args)
    except TypeError:
        return plan.__wrapped__(geometry, *args)


@lru_cache(maxsize=256)
def _unfold_plan(geometry: Any, ndim: int, item_shape: tuple[int, ...]) -> _UnfoldPlan:
    channels, size = item_shape[0], tuple(item_shape[1:])
    kernel, stride, dilation, padding, blocks = _geometry_fields(geometry, ndim)
    if getattr(geometry, "padding_mode", "zeros") != "zeros":
        raise PatchfoldError(f"the compiled unfold pads with zeros only, not {geometry.padding_mode!r}")
    spatial_size = tuple(getattr(geometry, "spatial_size", ()))
    if spatial_size != size:
        raise PatchfoldError(f"x must have the geometry's spatial size {spatial_size}, got {size}")
    for dim in range(ndim):
        _check_reach(dim, kernel, stride, dilation, blocks, size[dim] + 2 * padding[dim])
    _check_limits(size, kernel, stride, dilation, padding, blocks)
    dims = UnfoldDims(ndim, channels, *map(_padded, (size, kernel, blocks, stride, dilation, padding)))
    per_q, width = math.prod(kernel[1:]), channels * math.prod(kernel)
    return _UnfoldPlan(dims, blocks[0], channels * kernel[0], per_q, math.prod(blocks[1:]), width)


@lru_cache(maxsize=256)
def _fold_plan(geometry: Any, ndim: int, channels: int, row_shape: tuple[int, ...]) -> _FoldPlan:
    kernel, stride, dilation, _, blocks = _geometry_fields(geometry, ndim)
    size = (0, *row_shape)
    # dim 0 only needs the loop's row arithmetic to stay small (it adds rows in [lo, hi) alone)
    _check_reach(0, kernel, stride, dilation, blocks, 2 * _LIMIT, what="any output")
    for dim in range(1, ndim):
        _check_reach(dim, kernel, stride, dilation, blocks, size[dim], what="out")
    _check_limits(size, kernel, stride, dilation, blocks)
    dims = FoldDims(ndim, channels, *map(_padded, (kernel, blocks, stride, dilation, size)))
    return _FoldPlan(dims, channels * math.prod(kernel), math.prod(blocks), math.prod(row_shape))


def check_unfold_out(x: np.ndarray, geometry: Any, out: Any, layout: str, rows: tuple[int, int]) -> None:
    """Check a caller's ``out`` for block rows ``rows`` of ``x`` (either CPU path): the band's exact
    shape (see :func:`check_out`), and ``x`` and ``rows`` as the geometry says."""
    if tuple(x.shape[2:]) != tuple(geometry.spatial_size):
        raise PatchfoldError(f"x must have the geometry's spatial size {geometry.spatial_size}, got shape {x.shape}")
    first, last = rows
    if not 0 <= first <= last <= geometry.blocks_per_dim[0]:
        raise PatchfoldError(f"rows must satisfy 0 <= first <= last <= {geometry.blocks_per_dim[0]}, got {rows}")
    n, channels = x.shape[:2]
    length, count = channels * geometry.kernel_volume, (last - first) * geometry.blocks_per_row
    shape = (n, length, count) if layout == "ncl" else (n, count, length)
    check_out(out, shape, x, source_name="x", cast_from=x.dtype, casting="unsafe")


def check_fold_out(
    cols: np.ndarray, geometry: Any, out: Any, layout: str, weighted: bool, rows: tuple[int, int]
) -> None:
    """Check a caller's ``out`` for padded output rows ``rows`` of a fold of ``cols`` (either CPU
    path): ``(N, C, hi-lo, *padded_size[1:])`` in a dtype the patches (float64 once weighted) add
    into (see :func:`check_out`)."""
    length = cols.shape[1] if layout == "ncl" else cols.shape[2]
    shape = (cols.shape[0], length // geometry.kernel_volume, rows[1] - rows[0], *geometry.padded_size[1:])
    summed = np.dtype(np.float64) if weighted else cols.dtype  # what the numpy loop adds
    check_out(out, shape, cols, source_name="cols", cast_from=summed, casting="same_kind")


def check_out(
    out: Any, shape: Sequence[int], source: np.ndarray, *, source_name: str, cast_from: np.dtype, casting: str
) -> None:
    """Check a caller's ``out`` for an engine loop, compiled or not: a writeable numpy array of
    ``shape``, of ``source``'s dtype or a real one ``cast_from`` casts to under ``casting``,
    apart from ``source``. Raises :class:`PatchfoldError` naming ``out``."""
    if not isinstance(out, np.ndarray):
        raise PatchfoldError(f"out must be a numpy array of shape {tuple(shape)}, got {type(out).__name__}")
    if out.dtype != cast_from and (out.dtype.kind not in "biuf" or not np.can_cast(cast_from, out.dtype, casting)):
        raise PatchfoldError(
            f"out must have a real dtype {cast_from} casts to ({casting}), got {out.dtype} of shape {out.shape}"
        )
    if tuple(out.shape) != tuple(shape):
        raise PatchfoldError(f"out must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise PatchfoldError(f"out must be writeable, got a read-only array of shape {out.shape}")
    _check_apart(source, source_name, out)


def _check_array(array: Any, name: str, ndim: int) -> None:
    if not isinstance(array, np.ndarray):
        raise PatchfoldError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim != ndim:
        raise PatchfoldError(f"{name} must have {ndim} dims, got shape {array.shape}")


def takes(array: Any) -> bool:
    """Whether the loops that read at any strides (``place``, ``gather_cl``, ``divide``) take
    ``array`` where it is, as :func:`_check_memory` and :func:`element_strides` require: plain
    native values, aligned, at non-negative strides of whole items (else numpy does the work)."""
    try:
        _check_memory(array, "array", writeable=False)
        element_strides(array, "array")
    except PatchfoldError:
        return False
    return True


def _check_memory(array: np.ndarray, name: str, writeable: bool) -> None:
    """Plain native words at aligned addresses (and writeable, for a destination)."""
    if not isinstance(array, np.ndarray):
        raise PatchfoldError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype.hasobject or array.dtype.fields is not None or not array.dtype.isnative:
        raise PatchfoldError(
            f"{name} must hold plain values in native byte order, got dtype {array.dtype!r} of shape {array.shape}"
        )
    if not array.flags.aligned:
        raise PatchfoldError(f"{name} must be aligned to its {array.itemsize}-byte items, got shape {array.shape}")
    if writeable and not array.flags.writeable:
        raise PatchfoldError(f"{name} must be writeable, got a read-only array of shape {array.shape}")


def _packed(array: np.ndarray, first: int) -> bool:
    """Whether dims ``first..`` are C-contiguous (dims of one element excepted, as numpy's flags)."""
    expected = array.itemsize
    for dim in range(array.ndim - 1, first - 1, -1):
        if array.shape[dim] != 1 and array.strides[dim] != expected:
            return False
        expected *= array.shape[dim]
    return True


def _geometry_fields(geometry: Any, ndim: int) -> tuple[tuple[int, ...], ...]:
    """Kernel, stride, dilation, padding and blocks per dim, checked as the loops assume."""
    try:
        fields = tuple(
            tuple(int(v) for v in values)
            for values in (
                geometry.kernel_size,
                geometry.stride,
                geometry.dilation,
                geometry.padding,
                geometry.blocks_per_dim,
            )
        )
    except (AttributeError, TypeError, ValueError) as error:
        raise PatchfoldError(f"geometry must give per-dim kernel, stride, dilation, padding: {error}") from None
    kernel, stride, dilation, padding, blocks = fields
    if any(len(values) != ndim for values in fields):
        raise PatchfoldError(f"geometry must have {ndim} spatial dims for this loop, got kernel {kernel}")
    if min(kernel + stride + dilation) < 1 or min(padding + blocks) < 0:
        raise PatchfoldError(
            f"geometry needs kernel, stride, dilation >= 1 and padding, blocks >= 0, got kernel {kernel} "
            f"stride {stride} dilation {dilation} padding {padding} blocks {blocks}"
        )
    return fields


def _check_reach(
    dim: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    blocks: Sequence[int],
    extent: int,
    what: str = "x",
) -> None:
    """The last block's last element in ``dim`` lies inside ``extent`` (the padded size)."""
    if blocks[dim] and (kernel[dim] - 1) * dilation[dim] + (blocks[dim] - 1) * stride[dim] >= extent:
        raise PatchfoldError(
            f"{blocks[dim]} blocks of kernel {kernel[dim]} (stride {stride[dim]}, dilation {dilation[dim]}) "
            f"reach past the padded size {extent} of {what} in dim {dim}"
        )


def _check_limits(*fields: Sequence[int]) -> None:
    if any(value > _LIMIT for values in fields for value in values):
        raise PatchfoldError(f"sizes and steps must be at most 2**40 for the compiled loops, got {fields}")


def _check_range(bounds: tuple[int, int], stop: int, what: str) -> tuple[int, int]:
    lo, hi = bounds
    if not (isinstance(lo, int | np.integer) and isinstance(hi, int | np.integer) and 0 <= lo <= hi <= stop):
        raise PatchfoldError(f"{what} must be integers 0 <= lo <= hi <= {stop}, got {bounds}")
    return int(lo), int(hi)


def _check_apart(source: np.ndarray, name: str, out: np.ndarray) -> None:
    # np.may_share_memory compares the arrays' memory bounds: never a false "apart"
    if np.may_share_memory(source, out):
        raise PatchfoldError(f"out must not overlap {name} (shape {source.shape}), got shape {out.shape}")


def _padded(values: Sequence[int]) -> Any:
    return _Dims(*values, *[0] * (_MAX_DIMS - len(values)))


__all__ = [
    "SCRATCH_BYTES",
    "Batch",
    "BlendLoop",
    "FoldDims",
    "FoldExtra",
    "FoldExtraLoop",
    "FoldLoop",
    "PlaceDims",
    "PlaceLoop",
    "Placement",
    "UnfoldDims",
    "UnfoldLoop",
    "available",
    "batches",
    "blend",
    "check_fold_out",
    "check_out",
    "check_unfold_out",
    "fold",
    "fold_extra",
    "place",
    "recording",
    "unfold",
]
