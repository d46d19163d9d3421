"""Public operations: unfold, fold, divisor, overlap_stats.

Arrays in, arrays out: numpy arrays give numpy results; torch tensors give tensors on their own
device. CPU data goes through the CPU engine (:mod:`patchfold.cpu`), CUDA tensors through the torch
engine. torch is imported only when a tensor is passed or ``engine="torch"`` is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from patchfold import coverage
from patchfold.dtypes import check_real_dtype, finish_fold
from patchfold.engines import cpu, is_tensor, select
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry, IntOrSeq, check_layout, infer_spatial_dims
from patchfold.windows import window_weights

_DEFAULT_SPATIAL_DIMS = {3: 2, 4: 2, 5: 3}


def _spatial_dims(ndim: int, given: int | None, *params: IntOrSeq | None) -> int:
    if given is not None:
        return given
    inferred = infer_spatial_dims(*params, default=0)
    if inferred:
        return inferred
    if ndim not in _DEFAULT_SPATIAL_DIMS:
        raise PatchfoldError(
            f"cannot tell the spatial dims of a {ndim}-D input from int parameters: pass "
            "spatial_dims= or one kernel_size value per spatial dim",
            param="spatial_dims",
        )
    return _DEFAULT_SPATIAL_DIMS[ndim]


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
        layout: ``ncl`` for PyTorch's ``(N, C·∏k, L)``, ``nlc`` for ``(N, L, C·∏k)``.
        spatial_dims: needed only when it cannot be told from the parameters and ``x.ndim``.
        engine: ``auto``, ``cpu`` or ``torch``.
        threads: CPU threads (default: all cores this process may use).
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
    """
    layout = check_layout(layout)
    nd = _spatial_dims(x.ndim, spatial_dims, kernel_size, dilation, padding, stride)
    batch, unbatched = _batched(x, nd, "unfold input")
    check_real_dtype(getattr(batch, "dtype", None), "unfold input")
    geometry = _geometry(batch.shape, nd, kernel_size, stride, padding, dilation, padding_mode)
    if select(batch, engine) == "torch":
        from patchfold.engines import torch_engine

        result = _unlike(torch_engine.unfold(_as_tensor(batch), geometry, layout), batch)
    else:
        source = _as_numpy(batch)
        result = _output_for(out, geometry.unfold_shape(*source.shape[:2], layout), source.dtype, unbatched, source)
        cpu.unfold_into(source, geometry, result, layout, threads=threads)
        result = _like(result, batch)
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
    nd = (
        len(output_size)
        if isinstance(output_size, Sequence)
        else infer_spatial_dims(kernel_size, dilation, padding, stride)
    )
    batch, unbatched = _batched(cols, 1, "fold input (patch matrix)")
    check_real_dtype(getattr(batch, "dtype", None), "fold input")
    try:
        geometry = Geometry.create(
            output_size if not isinstance(output_size, int) else (output_size,) * nd,
            kernel_size,
            stride,
            padding,
            dilation,
            padding_mode,
        )
    except PatchfoldError as error:
        raise PatchfoldError(f"{error} (fold of patch matrix shape {tuple(batch.shape)})", param=error.param) from None
    weights = window_weights(geometry, window)
    if select(batch, engine) == "torch":
        from patchfold.engines import torch_engine

        tensor = _as_tensor(batch)
        summed = torch_engine.fold(tensor, geometry, layout, weights, exact=normalize)
        divisor_map = torch_engine.divisor(geometry, weights, tensor.device) if normalize else None
        result = _unlike(finish_fold(summed, divisor_map, tensor.dtype, weights is not None), batch)
    else:
        source = _as_numpy(batch)
        summed = coverage.unpad_adjoint(
            cpu.fold_padded(source, geometry, layout, weights, threads=threads, exact=normalize), geometry, 2
        )
        divisor_map = coverage.divisor_map(geometry, weights) if normalize else None
        result = _like(finish_fold(summed, divisor_map, source.dtype, weights is not None), batch)
    return result[0] if unbatched else result


def _output_for(
    out: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype, unbatched: bool, source: np.ndarray
) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if unbatched or not isinstance(out, np.ndarray) or tuple(out.shape) != tuple(shape):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise PatchfoldError(f"out must be a numpy array of shape {tuple(shape)} for batched input, got {got}")
    if not out.flags.writeable:
        raise PatchfoldError(f"out must be writeable, got a read-only array of shape {tuple(out.shape)}")
    if np.may_share_memory(out, source):
        raise PatchfoldError(f"out must not overlap the input (shape {tuple(source.shape)})")
    return out


def fold_with(cols: Any, geometry: Geometry, normalize: bool = False, **options: Any) -> Any:
    """:func:`fold` with the output size and block parameters of a :class:`Geometry`."""
    return fold(
        cols,
        geometry.spatial_size,
        geometry.kernel_size,
        geometry.dilation,
        geometry.padding,
        geometry.stride,
        normalize,
        padding_mode=geometry.padding_mode,
        **options,
    )


def divisor(
    spatial_size: IntOrSeq,
    kernel_size: IntOrSeq,
    dilation: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    stride: IntOrSeq = 1,
    *,
    padding_mode: str = "zeros",
    window: str | None = None,
) -> np.ndarray:
    """The divisor map ``fold(unfold(ones))`` for one channel, shape ``spatial_size``.

    Computed as an outer product of per-dim coverage vectors: O(H + W) work plus the map itself.
    int64 counts, or float64 summed window weights when ``window`` is given.

    >>> divisor((1, 5), kernel_size=(1, 3)).tolist()
    [[1, 2, 3, 2, 1]]
    """
    geometry = Geometry.create(spatial_size, kernel_size, stride, padding, dilation, padding_mode)
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
) -> dict[str, Any]:
    """Overlap statistics, exact and in O(sum of sizes) time and memory.

    Returns a dict with ``input_shape``, ``kernel_size``, ``stride``, ``padding``, ``dilation``,
    ``blocks_per_dim``, ``num_blocks``, ``patch_length``, ``output_shape``, ``output_bytes``,
    ``coverage`` (``min``, ``max``, ``mean``, ``histogram`` {"count": pixels}),
    ``uncovered_pixels``, ``uncovered_fraction``, ``redundancy`` and ``invertible``.

    >>> overlap_stats((4, 4), 2, stride=2)["coverage"]["histogram"]
    {'1': 16}
    """
    if channels < 1 or batch < 1:
        raise PatchfoldError(f"channels and batch must be positive, got channels={channels} batch={batch}")
    geometry = Geometry.create(spatial_size, kernel_size, stride, padding, dilation, padding_mode)
    return stats_with(geometry, channels=channels, batch=batch, dtype=dtype, layout=layout)


def stats_with(
    geometry: Geometry, *, channels: int = 1, batch: int = 1, dtype: Any = "float32", layout: str = "ncl"
) -> dict[str, Any]:
    """:func:`overlap_stats` for a :class:`Geometry` (``channels`` and ``batch`` at least 1)."""
    summary = coverage.coverage_summary(geometry)
    output_shape = geometry.unfold_shape(batch, channels, layout)
    itemsize = np.dtype(dtype).itemsize
    return {
        "input_shape": [batch, channels, *geometry.spatial_size],
        "kernel_size": list(geometry.kernel_size),
        "stride": list(geometry.stride),
        "padding": list(geometry.padding),
        "dilation": list(geometry.dilation),
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


def _geometry(
    shape: Sequence[int],
    nd: int,
    kernel_size: IntOrSeq,
    stride: IntOrSeq,
    padding: IntOrSeq,
    dilation: IntOrSeq,
    padding_mode: str,
) -> Geometry:
    try:
        return Geometry.create(tuple(shape[-nd:]), kernel_size, stride, padding, dilation, padding_mode)
    except PatchfoldError as error:
        raise PatchfoldError(f"{error} (input shape {tuple(shape)})", param=error.param) from None


def _as_numpy(x: Any) -> np.ndarray:
    if is_tensor(x):
        return x.detach().numpy()
    return np.asarray(x)


def _as_tensor(x: Any) -> Any:
    import torch

    return x if is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))


def _unlike(result: Any, original: Any) -> Any:
    """Give a torch-engine result back as numpy when the caller passed numpy."""
    return result if is_tensor(original) else result.cpu().numpy()


def _like(result: np.ndarray, original: Any) -> Any:
    """Give a CPU result back as the caller's type."""
    if is_tensor(original):
        import torch

        return torch.from_numpy(result)
    return result
