"""The torch engine: PyTorch's own unfold/fold where they apply (2-D, zero padding, float), and
generic strided torch code elsewhere (N-d, integer dtypes, padding modes, windows). It serves CUDA
devices and is the reference the CPU engine is tested against. Imported only when used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from patchfold import cover
from patchfold.coverage import divisor_map, source_index, unpad_adjoint
from patchfold.dtypes import accumulator_dtype
from patchfold.engines.strided import band_view, fold_rows
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry, check_layout, matrix_dims


def _native_ok(x: torch.Tensor, geometry: Geometry) -> bool:
    return geometry.ndim == 2 and geometry.padding_mode == "zeros" and x.is_floating_point()


def pad(x: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Pad the spatial dims of ``(N, C, *spatial)`` by the geometry's widths and mode, for any dtype."""
    widths = geometry.pad_widths
    if not any(a or b for a, b in widths):
        return x
    if geometry.padding_mode == "zeros":
        padded = x.new_zeros((*x.shape[:2], *geometry.padded_size))
        inner = (slice(None), slice(None), *(slice(a, a + s) for (a, _), s in zip(widths, geometry.spatial_size)))
        padded[inner] = x
        return padded
    for dim, (size, p) in enumerate(zip(geometry.spatial_size, widths)):
        index = torch.from_numpy(source_index(size, p, geometry.padding_mode)).to(x.device)
        x = x.index_select(2 + dim, index)
    return x


def take(x: Any, device: str | None = None) -> torch.Tensor:
    """The engine's own array for ``x``: the tensor itself, or a tensor holding a numpy array's
    values (sharing its memory where it is writeable and contiguous), moved to ``device`` if given."""
    check_dtype(x.dtype if isinstance(x, torch.Tensor) else np.asarray(x).dtype)
    if not isinstance(x, torch.Tensor):
        array = np.asarray(x)
        writeable = array.flags.writeable and array.flags.c_contiguous and array.dtype.isnative
        x = torch.from_numpy(array if writeable else np.array(array, order="C", dtype=array.dtype.newbyteorder("=")))
    if device is None:
        return x
    try:
        return x.to(resolve_device(device))
    except RuntimeError as error:  # out of memory on the device, most often
        raise PatchfoldError(f"cannot move the patch matrix to {device}: {error}") from None


def check_dtype(dtype: Any) -> None:
    """Refuse, before any work, data torch has no arithmetic for (float128, uint64)."""
    if dtype == torch.uint64 or (isinstance(dtype, np.dtype) and (dtype.itemsize > 8 or dtype == np.uint64)):
        raise PatchfoldError(f"the torch engine has no {dtype} arithmetic; use engine=cpu")


def unfold(
    x: torch.Tensor, geometry: Geometry, layout: str = "ncl", *, out: Any = None, threads: int | None = None
) -> torch.Tensor:
    """Unfold ``(N, C, *spatial)`` into a patch matrix in ``layout`` (``out`` and ``threads`` are
    the CPU engine's; PyTorch allocates its own result and threads)."""
    check_layout(layout)
    if out is not None:
        raise PatchfoldError("out= is for the CPU engine (numpy input)", param="engine")
    if cover.needs_parts(geometry):  # blocks moved inward: each evenly spaced part on its own
        result = x.new_empty(geometry.unfold_shape(*x.shape[:2], layout))
        return cover.unfold_parts(pad(x, geometry), geometry, result, layout, lambda part, g: unfold(part, g, layout))
    geometry = cover.plain(geometry)
    if _native_ok(x, geometry) and layout == "ncl":
        return F.unfold(x, geometry.kernel_size, geometry.dilation, geometry.padding, geometry.stride)
    windows = pad(x, geometry)
    for dim in range(geometry.ndim):
        windows = windows.unfold(2 + dim, geometry.span[dim], geometry.stride[dim])
    # (N, C, *L, *span) -> (N, C, *L, *kernel) by taking every dilation-th point of each span.
    dilated = (..., *(slice(None, None, d) for d in geometry.dilation))
    windows = windows[dilated]
    n, c, ndim = x.shape[0], x.shape[1], geometry.ndim
    if layout == "ncl":
        order = (0, 1, *range(2 + ndim, 2 + 2 * ndim), *range(2, 2 + ndim))
        return windows.permute(order).reshape(n, c * geometry.kernel_volume, geometry.num_blocks)
    order = (0, *range(2, 2 + ndim), 1, *range(2 + ndim, 2 + 2 * ndim))
    return windows.permute(order).reshape(n, geometry.num_blocks, c * geometry.kernel_volume)


def fold(
    cols: torch.Tensor,
    geometry: Geometry,
    layout: str = "ncl",
    weights: list[np.ndarray] | None = None,
    *,
    exact: bool = False,
    threads: int | None = None,
) -> torch.Tensor:
    """Overlap-add a patch matrix into ``(N, C, *spatial)``: sums, in the accumulation dtype
    (float64 for floats with ``exact``, as the CPU engine does for normalised folds)."""
    check_layout(layout)
    if exact and cols.is_floating_point():
        cols = cols.to(torch.float64)
    if cover.needs_parts(geometry):  # blocks moved inward: each evenly spaced part on its own

        def fold_part(part: torch.Tensor, g: Geometry, w: list[np.ndarray] | None) -> torch.Tensor:
            return fold(part, g, layout, w, exact=exact)

        geometry.check_fold_input(*matrix_dims(cols.shape, layout))
        return unpad_adjoint(cover.fold_parts(cols, geometry, layout, weights, fold_part), geometry, axis_offset=2)
    geometry = cover.plain(geometry)
    channels = geometry.check_fold_input(*matrix_dims(cols.shape, layout))
    single_or_double = cols.dtype in (torch.float32, torch.float64)  # halves accumulate in float32 below
    if _native_ok(cols, geometry) and single_or_double and layout == "ncl" and weights is None:
        return F.fold(
            cols, geometry.spatial_size, geometry.kernel_size, geometry.dilation, geometry.padding, geometry.stride
        )
    blocks = band_view(cols, geometry, channels, geometry.blocks_per_dim[0], layout)
    dtype = accumulator_dtype(cols.dtype, weighted=weights is not None)
    acc = cols.new_zeros((cols.shape[0], channels, *geometry.padded_size), dtype=dtype)
    torch_weights = None
    if weights is not None:
        torch_weights = [torch.from_numpy(w).to(cols.device) for w in weights]
    fold_rows(blocks, geometry, acc, 0, geometry.padded_size[0], torch_weights)
    return unpad_adjoint(acc, geometry, axis_offset=2)


def fold_normalised(
    cols: Any,
    geometry: Geometry,
    layout: str = "ncl",
    weights: list[np.ndarray] | None = None,
    *,
    threads: int | None = None,
) -> None:
    """No fused normalised fold here: the caller sums with :func:`fold` and divides by :func:`divisor`."""
    return None


def divisor(geometry: Geometry, weights: list[np.ndarray] | None, like: torch.Tensor) -> torch.Tensor:
    """The (weighted) divisor map on ``like``'s device."""
    return torch.from_numpy(divisor_map(geometry, weights)).to(like.device)


def resolve_device(name: str) -> torch.device:
    """Validate a device string against what this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise PatchfoldError(f"device {name!r} is not a device name: {error}", param="device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PatchfoldError(
                f"device {name!r} was asked for but CUDA is not available on this machine", param="device"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise PatchfoldError(
                f"device {name!r} does not exist: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})",
                param="device",
            )
    return device
