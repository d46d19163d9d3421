"""Public operations: unfold, fold, divisor, overlap_stats.

Arrays in, arrays out: numpy arrays give numpy results; torch tensors give tensors on their own
device. Arguments are normalised once at the top (one :class:`~patchfold.blocks.Blocks`, one
:class:`~patchfold.geometry.Geometry`), then :func:`patchfold.engines.select` picks the engine that
runs: patchfold's CPU engine for CPU data, PyTorch's for CUDA tensors and tensors that need
gradients. torch is imported only when a tensor is passed or ``engine="torch"`` is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from patchfold import coverage, engines
from patchfold.blocks import Blocks, IntOrSeq, as_int
from patchfold.dtypes import (
    canonical_bool,
    check_integer_sum,
    check_real_dtype,
    finish_fold,
    overflowed,
    undo_headroom,
    where_overflowed,
)
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry, check_layout
from patchfold.windows import window_weights, with_headroom

#: Spatial dims of an input by its rank when ``spatial_dims`` is not given (PyTorch's rule for
#: 2-D: ``(C, H, W)`` unbatched, ``(N, C, H, W)``; 5-D is ``(N, C, D, H, W)``).
SPATIAL_DIMS_BY_RANK = {3: 2, 4: 2, 5: 3}


def blocks_of(
    kernel_size: IntOrSeq | Blocks,
    dilation: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    stride: IntOrSeq = 1,
    padding_mode: str = "zeros",
    cover: bool = False,
) -> Blocks:
    """The :class:`Blocks` of an operation's arguments; ``kernel_size`` may be a Blocks itself."""
    if isinstance(kernel_size, Blocks):
        if (dilation, padding, stride, padding_mode, cover) != (1, 0, 1, "zeros", False):
            raise PatchfoldError("give block parameters either as a Blocks or as arguments, not both")
        return kernel_size
    return Blocks(
        kernel_size, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode, cover=cover
    )


def spatial_dims_of(x: Any, spatial_dims: int | None, blocks: Blocks) -> int:
    """How many trailing axes of ``x`` are spatial: ``spatial_dims`` when given, else by rank
    (:data:`SPATIAL_DIMS_BY_RANK`); other ranks take the length of the parameter lists. A
    parameter list of another length is then an error, as in PyTorch."""
    if spatial_dims is not None:
        if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int | np.integer) or spatial_dims < 1:
            raise PatchfoldError(f"spatial_dims must be a positive int, got {spatial_dims!r}", param="spatial_dims")
        return int(spatial_dims)
    rank = x.ndim
    if rank in SPATIAL_DIMS_BY_RANK:
        return SPATIAL_DIMS_BY_RANK[rank]
    if blocks.ndim is not None and rank in (blocks.ndim + 1, blocks.ndim + 2):
        return blocks.ndim
    raise PatchfoldError(
        f"cannot tell the spatial dims of an input of shape {tuple(x.shape)}: pass spatial_dims= "
        "(inputs are (N, C, *spatial) or (C, *spatial))",
        param="spatial_dims",
    )


def _array(x: Any, what: str) -> Any:
    """A tensor as it is; anything else as a numpy array (nested lists too), which must hold numbers."""
    if engines.is_tensor(x):
        if getattr(x, "is_nested", False) or str(getattr(x, "layout", "torch.strided")) != "torch.strided":
            raise PatchfoldError(f"{what} must be a dense (strided) tensor, got a {x.layout} tensor")
        return x
    if isinstance(x, np.ndarray):
        return x
    try:
        array = np.asarray(x)
    except (ValueError, TypeError) as error:  # ragged lists
        raise PatchfoldError(f"{what} must be an array or tensor, got {type(x).__name__}: {error}") from None
    if array.dtype.kind not in "biuf":
        raise PatchfoldError(f"{what} must be an array or tensor of real numbers, got {type(x).__name__}")
    return array


def check_threads(threads: Any) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1):
        raise PatchfoldError(f"threads must be a positive int or None, got {threads!r}", param="threads")


def _batched(x: Any, spatial_dims: int, what: str) -> tuple[Any, bool]:
    """Return ``x`` with a batch axis and whether one was added (PyTorch's unbatched form)."""
    if x.ndim == spatial_dims + 2:
        return x, False
    if x.ndim == spatial_dims + 1:
        return x[None], True
    raise PatchfoldError(
        f"{what} must have {spatial_dims + 2} dims (N, C, *spatial) or {spatial_dims + 1} (C, *spatial) "
        f"for {spatial_dims} spatial dim(s), got shape {tuple(x.shape)}"
    )


def unfold(
    x: Any,
    kernel_size: IntOrSeq,
    dilation: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    stride: IntOrSeq = 1,
    *,
    padding_mode: str = "zeros",
    cover: bool = False,
    layout: str = "ncl",
    spatial_dims: int | None = None,
    engine: str = "auto",
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> Any:
    """Extract sliding blocks, like ``torch.nn.functional.unfold`` but for any real dtype and any
    number of spatial dims.

    Args:
        x: numpy array or torch tensor ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``.
        kernel_size, dilation, padding, stride: an int (replicated) or one int per spatial dim.
        padding_mode: one of ``zeros`` (PyTorch's), ``reflect``, ``replicate``, ``circular``.
        cover: cover every pixel: where the blocks stop short of a dim's end, one more block ends
            at the border (moved inward); padding must be 0, and only a dim shorter than one block
            is padded (in ``padding_mode``). :func:`fold` with the same ``cover`` puts them back.
        layout: ``ncl`` for PyTorch's ``(N, C·∏k, L)``, ``nlc`` for ``(N, L, C·∏k)``.
        spatial_dims: needed only when it cannot be told from the parameters and ``x.ndim``.
        engine: ``auto``, ``cpu`` or ``torch``.
        threads: CPU threads (default: all cores this process may use; for torch tensors,
            ``torch.get_num_threads()``, run on torch's own thread team where it has one).
        out: a preallocated numpy array (or memory-mapped ``.npy``) of the result's shape to fill
            (batched numpy input, CPU engine); it may differ in dtype (values are cast).

    Returns:
        The patch matrix, same type, device and dtype as ``x`` (``out`` itself when given).

    Shape:
        ``(N, C, H, W) → (N, C·kh·kw, L)``; rows are ``c·∏k + offset`` (kernel offsets row-major),
        columns are blocks in row-major order. Unbatched input gives ``(C·∏k, L)``.

    >>> import numpy as np
    >>> unfold(np.arange(16).reshape(1, 1, 4, 4), kernel_size=2, stride=2)[0, :, 0]
    array([0, 1, 4, 5])
    >>> unfold(np.arange(5).reshape(1, 1, 5), 2, stride=2, cover=True, spatial_dims=1)[0].tolist()  # last one moved in
    [[0, 2, 3], [1, 3, 4]]
    """
    layout = check_layout(layout)
    x = _array(x, "unfold input")
    check_threads(threads)
    blocks = blocks_of(kernel_size, dilation, padding, stride, padding_mode, cover)
    batch, unbatched = _batched(x, spatial_dims_of(x, spatial_dims, blocks), "unfold input")
    check_real_dtype(getattr(batch, "dtype", None), "unfold input")
    geometry = blocks.at(batch.shape[2:], f"input shape {tuple(batch.shape)}")
    name = engines.select(batch, engine)
    if out is not None and (name != "cpu" or unbatched):
        raise PatchfoldError("out= is for batched numpy input on the CPU engine (the result is written into it)")
    engine_module = engines.load(name)
    with engines.scheduled(batch):
        result = engine_module.unfold(engine_module.take(batch), geometry, layout, out=out, threads=threads)
    result = engines.give_back(result, batch)
    return result[0] if unbatched else result


def fold(
    cols: Any,
    output_size: IntOrSeq,
    kernel_size: IntOrSeq,
    dilation: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    stride: IntOrSeq = 1,
    normalize: bool = False,
    *,
    padding_mode: str = "zeros",
    cover: bool = False,
    layout: str = "ncl",
    window: str | None = None,
    engine: str = "auto",
    threads: int | None = None,
) -> Any:
    """Overlap-add a patch matrix back into images, like ``torch.nn.functional.fold``.

    Args:
        cols: patch matrix ``(N, C·∏k, L)`` (``ncl``) or ``(N, L, C·∏k)`` (``nlc``), or unbatched.
        output_size: spatial size of the images, an int (2-D) or one int per spatial dim.
        kernel_size, dilation, padding, stride: as given to :func:`unfold`.
        normalize: divide by the (weighted) divisor so ``fold(unfold(x), normalize=True) == x``;
            pixels no block covers become 0. Integer input comes back rounded, in its own dtype.
        padding_mode: the mode used by :func:`unfold`; non-zero modes add what fell on the padding
            back onto the pixels it repeated, so the normalised round trip stays exact.
        cover: the blocks of :func:`unfold` with ``cover=True``.
        window: blend with a window (``hann``, ``triangular``, ``gaussian[:sigma]``, ``pyramid``):
            each patch is weighted before the sum (edge-aware: border patches keep full weight
            toward the image border).

    Returns:
        ``(N, C, *output_size)``. Unnormalised sums are int64 for integer input and the input's float
        dtype otherwise (float64 when windowed).

    Shape:
        ``(N, C·kh·kw, L) → (N, C, H, W)``.

    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> bool((fold(unfold(x, 3), 4, 3, normalize=True) == x).all())
    True
    """
    layout = check_layout(layout)
    blocks = blocks_of(kernel_size, dilation, padding, stride, padding_mode, cover)
    geometry = blocks.at(output_size, f"fold of patch matrix shape {tuple(getattr(cols, 'shape', ()))}")
    return fold_with(cols, geometry, normalize, layout=layout, window=window, engine=engine, threads=threads)


def fold_with(
    cols: Any,
    geometry: Geometry,
    normalize: bool = False,
    *,
    layout: str = "ncl",
    window: str | None = None,
    engine: str = "auto",
    threads: int | None = None,
) -> Any:
    """:func:`fold` with the output size and block parameters of a :class:`Geometry`."""
    layout = check_layout(layout)
    check_threads(threads)
    cols = _array(cols, "fold input (patch matrix)")
    if cols.ndim not in (2, 3):
        rows = "(N, C·∏k, L) or (C·∏k, L)" if layout == "ncl" else "(N, L, C·∏k) or (L, C·∏k)"
        raise PatchfoldError(f"fold input (patch matrix) must be {rows} ({layout}), got shape {tuple(cols.shape)}")
    batch, unbatched = _batched(cols, 1, "fold input (patch matrix)")
    check_real_dtype(getattr(batch, "dtype", None), "fold input")
    batch = canonical_bool(batch)
    weights = window_weights(geometry, window)
    max_coverage = coverage.max_coverage(geometry)
    check_integer_sum(batch, max_coverage, weights is not None)
    engine_module = engines.load(engines.select(batch, engine))
    data = engine_module.take(batch)

    def sum_with(weights: list[np.ndarray] | None) -> Any:
        return engine_module.fold(data, geometry, layout, weights, exact=normalize, threads=threads)

    with engines.scheduled(batch):
        fused = engine_module.fold_normalised(data, geometry, layout, weights, threads=threads) if normalize else None
        if fused is not None:  # summed and divided in one pass
            result = engines.give_back(fused, batch)
            return result[0] if unbatched else result
        with np.errstate(over="ignore"):  # an overflowing sum is summed again, not reported
            summed = sum_with(weights)
        if normalize:
            divisor_map = engine_module.divisor(geometry, weights, like=data)
            finished = finish_normalised(summed, sum_with, divisor_map, data.dtype, geometry, weights, max_coverage)
        else:
            finished = finish_fold(summed, None, data.dtype, weights is not None)
    result = engines.give_back(finished, batch)
    return result[0] if unbatched else result
    return result[0] if unbatched else result


def finish_normalised(
    summed: Any,
    sum_with: Callable[[list[np.ndarray] | None], Any],
    divisor_map: Any,
    dtype: Any,
    geometry: Geometry,
    weights: list[np.ndarray] | None,
    max_coverage: int,
) -> Any:
    """The normalised fold of ``summed`` (the sums with ``weights``) by ``divisor_map``. Where a
    float sum overflowed (values near the dtype's maximum), ``sum_with`` sums again with power-of-two
    headroom and those pixels take that mean; the others keep the exact one."""
    finished = finish_fold(summed, divisor_map, dtype, weights is not None)
    if not overflowed(summed):
        return finished
    scaled, factor = with_headroom(geometry, weights, max_coverage)
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN inputs stay as they are
        again = sum_with(scaled)
    rescued = undo_headroom(finish_fold(again, divisor_map, dtype, weights is not None), factor)
    return where_overflowed(summed, finished, rescued)


def divisor(
    spatial_size: IntOrSeq,
    kernel_size: IntOrSeq,
    dilation: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    stride: IntOrSeq = 1,
    *,
    padding_mode: str = "zeros",
    cover: bool = False,
    window: str | None = None,
) -> np.ndarray:
    """The divisor map ``fold(unfold(ones))`` for one channel, shape ``spatial_size``.

    Computed as an outer product of per-dim coverage vectors: O(H + W) work plus the map itself.
    int64 counts, or float64 summed window weights when ``window`` is given.

    >>> divisor((1, 5), kernel_size=(1, 3)).tolist()
    [[1, 2, 3, 2, 1]]
    >>> divisor((1, 5), kernel_size=(1, 2), stride=2, cover=True).tolist()
    [[1, 1, 1, 2, 1]]
    """
    blocks = blocks_of(kernel_size, dilation, padding, stride, padding_mode, cover)
    geometry = blocks.at(spatial_size, f"size {spatial_size}")
    return coverage.divisor_map(geometry, window_weights(geometry, window))


def overlap_stats(
    spatial_size: IntOrSeq,
    kernel_size: IntOrSeq,
    dilation: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    stride: IntOrSeq = 1,
    *,
    channels: int = 1,
    batch: int = 1,
    dtype: Any = "float32",
    layout: str = "ncl",
    padding_mode: str = "zeros",
    cover: bool = False,
) -> dict[str, Any]:
    """Overlap statistics, exact and in O(sum of sizes) time and memory.

    Returns a dict with ``input_shape``, ``kernel_size``, ``stride``, ``padding``, ``dilation``,
    ``blocks_per_dim``, ``num_blocks``, ``patch_length``, ``output_shape``, ``output_bytes``,
    ``coverage`` (``min``, ``max``, ``mean``, ``histogram`` {"count": pixels}),
    ``uncovered_pixels``, ``uncovered_fraction``, ``redundancy`` and ``invertible``.

    >>> overlap_stats((4, 4), 2, stride=2)["coverage"]["histogram"]
    {'1': 16}
    """
    channels, batch = as_int(channels, "channels"), as_int(batch, "batch")
    if channels < 1 or batch < 1:
        raise PatchfoldError(f"channels and batch must be positive, got channels={channels} batch={batch}")
    blocks = blocks_of(kernel_size, dilation, padding, stride, padding_mode, cover)
    geometry = blocks.at(spatial_size, f"size {spatial_size}")
    return stats_with(geometry, channels=channels, batch=batch, dtype=dtype, layout=layout)


def stats_with(
    geometry: Geometry, *, channels: int = 1, batch: int = 1, dtype: Any = "float32", layout: str = "ncl"
) -> dict[str, Any]:
    """:func:`overlap_stats` for a :class:`Geometry` (``channels`` and ``batch`` at least 1)."""
    try:
        itemsize = np.dtype(dtype).itemsize
    except (TypeError, ValueError, SyntaxError):
        raise PatchfoldError(f"dtype must be a numpy dtype such as 'float32', got {dtype!r}", param="dtype") from None
    summary = coverage.coverage_summary(geometry)
    output_shape = geometry.unfold_shape(batch, channels, layout)
    return {
        "input_shape": [batch, channels, *geometry.spatial_size],
        **geometry.blocks.to_dict(),
        "blocks_per_dim": list(geometry.blocks_per_dim),
        "num_blocks": geometry.num_blocks,
        "patch_length": geometry.patch_length(channels),
        "output_shape": list(output_shape),
        "output_bytes": int(np.prod(output_shape, dtype=object)) * itemsize,
        "coverage": {key: summary[key] for key in ("min", "max", "mean", "histogram")},
        "uncovered_pixels": summary["uncovered_pixels"],
        "uncovered_fraction": summary["uncovered_fraction"],
        "redundancy": geometry.redundancy(),
        "invertible": summary["uncovered_pixels"] == 0,
    }
