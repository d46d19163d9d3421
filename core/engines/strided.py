"""Strided views and loops shared by the CPU and torch engines (they work on numpy arrays and torch
tensors alike: reshapes, permutes, slicing and in-place adds only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from patchfold.geometry import Geometry

#: ``reshape(copy=False)`` came with numpy 2.1; before it, an in-place change of a view's shape is
#: what refuses to copy.
_RESHAPE_COPY = np.lib.NumpyVersion(np.__version__) >= "2.1.0"


def reshape_view(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Reshape without ever copying (numpy arrays or torch tensors; the result aliases ``array``);
    ValueError where that needs a copy."""
    if not isinstance(array, np.ndarray):
        return array.view(tuple(shape))
    if _RESHAPE_COPY:
        return array.reshape(tuple(shape), copy=False)
    view = array.view()
    try:
        view.shape = tuple(shape)
    except AttributeError as error:  # numpy < 2.1's word for "would need a copy"
        raise ValueError(str(error)) from None
    return view


def permute(array: np.ndarray, order: Sequence[int]) -> np.ndarray:
    return array.transpose(order) if isinstance(array, np.ndarray) else array.permute(*order)


def window_view(padded: np.ndarray, geometry: Geometry, first: int, last: int) -> np.ndarray:
    """Zero-copy view ``(N, C, *kernel, last-first, *L[1:])`` of the blocks in block rows
    ``[first, last)`` of a padded ``(N, C, *padded_size)`` array."""
    strides = padded.strides
    spatial = strides[2:]
    start = padded[:, :, first * geometry.stride[0] :]
    shape = (*padded.shape[:2], *geometry.kernel_size, last - first, *geometry.blocks_per_dim[1:])
    view_strides = (
        *strides[:2],
        *(st * d for st, d in zip(spatial, geometry.dilation)),
        *(st * s for st, s in zip(spatial, geometry.stride)),
    )
    return np.lib.stride_tricks.as_strided(start, shape=shape, strides=view_strides, writeable=False)


def band_view(band: np.ndarray, geometry: Geometry, channels: int, rows: int, layout: str) -> np.ndarray:
    """View an output band of the patch matrix as ``(N, C, *kernel, rows, *L[1:])``."""
    ndim = geometry.ndim
    inner = geometry.blocks_per_dim[1:]
    if layout == "ncl":
        return reshape_view(band, (band.shape[0], channels, *geometry.kernel_size, rows, *inner))
    view = reshape_view(band, (band.shape[0], rows, *inner, channels, *geometry.kernel_size))
    # (N, rows, *inner, C, *K) -> (N, C, *K, rows, *inner)
    order = (0, ndim + 1, *range(ndim + 2, 2 * ndim + 2), *range(1, ndim + 1))
    return permute(view, order)


def block_columns(geometry: Geometry, first: int, last: int) -> slice:
    """Columns of the patch matrix (block indices) that block rows ``[first, last)`` fill."""
    return slice(first * geometry.blocks_per_row, last * geometry.blocks_per_row)


def select_blocks(matrix: np.ndarray, columns: slice, layout: str) -> np.ndarray:
    return matrix[:, :, columns] if layout == "ncl" else matrix[:, columns, :]


def fold_rows(
    blocks: np.ndarray,
    geometry: Geometry,
    acc: np.ndarray,
    lo: int,
    hi: int,
    weights: list[np.ndarray] | None = None,
) -> None:
    """Add every block's contribution to padded output rows ``[lo, hi)`` of dim 0 into ``acc``.

    ``blocks`` is the patch matrix viewed as ``(N, C, *kernel, *L)``; ``acc`` holds padded rows
    ``[lo, hi)``: ``(N, C, hi-lo, *padded_size[1:])``. ``weights`` are per-dim window weights
    ``(L_d, k_d)``.
    """
    for offset in geometry.kernel_offsets():
        first, last = geometry.blocks_reaching(0, offset[0], lo, hi)
        if last <= first:
            continue
        rows = geometry.positions(0, offset[0], first, last)
        target = (
            slice(None),
            slice(None),
            slice(rows.start - lo, rows.stop - lo, rows.step),  # acc holds padded rows from lo
            *(geometry.positions(dim, offset[dim]) for dim in range(1, geometry.ndim)),
        )
        source = blocks[(slice(None), slice(None), *offset, slice(first, last))]
        if weights is not None:
            source = source * block_weights(weights, offset, first, last)
        view = acc[target]
        view += source if isinstance(source, np.ndarray) else source.to(view.dtype)


def block_weights(weights: Sequence[np.ndarray], offset: tuple[int, ...], first: int, last: int) -> np.ndarray:
    """Window weight of kernel ``offset`` in every block of rows ``[first, last)``: ``(rows, *L[1:])``."""
    ndim = len(weights)
    product = None
    for dim, per_dim in enumerate(weights):
        factor = per_dim[first:last, offset[0]] if dim == 0 else per_dim[:, offset[dim]]
        shaped = factor.reshape([-1 if d == dim else 1 for d in range(ndim)])
        product = shaped if product is None else product * shaped
    return product
