"""The CPU engine with gradients: patchfold's own loops inside ``torch.autograd.Function`` s.

unfold and the (weighted) overlap-add sum are linear and adjoint to each other for the same
geometry (padding modes included: the fold adds what fell on the padding back onto the pixels it
repeated, the adjoint of padding). So unfold's backward is a fold of the gradient and fold's
backward is an unfold, each itself one of these Functions: second derivatives work too. A
normalised fold divides this sum by a constant divisor map with torch's own operations, so its
gradient is exact as well.

It serves CPU tensors that need gradients and bfloat16 CPU tensors (numpy has no bfloat16: an
unfold copies their bits as int16; a fold sums them in float32 and rounds once). Imported only
when used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from patchfold.coverage import outer
from patchfold.engines import cpu, scheduled, torch_engine, tracing
from patchfold.geometry import Geometry, check_layout, matrix_dims


def take(x: Any, device: str | None = None) -> torch.Tensor:
    """The tensor itself (it stays in the autograd graph)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def unfold(
    x: torch.Tensor, geometry: Geometry, layout: str = "ncl", *, out: Any = None, threads: int | None = None
) -> torch.Tensor:
    """The patch matrix of ``(N, C, *spatial)`` in ``layout``, differentiable."""
    check_layout(layout)
    return _Unfold.apply(x, geometry, layout, threads)


def fold(
    cols: torch.Tensor,
    geometry: Geometry,
    layout: str = "ncl",
    weights: list[np.ndarray] | None = None,
    *,
    exact: bool = False,
    threads: int | None = None,
) -> torch.Tensor:
    """The (weighted) overlap-add sum, differentiable; in float64 with ``exact`` (as the CPU engine)."""
    check_layout(layout)
    return _Fold.apply(cols, geometry, layout, weights, exact, threads)


#: No one-pass normalised fold with gradients: the caller sums with :func:`fold` and divides by
#: :func:`divisor` (torch's division, which autograd follows), as for the torch engine.
fold_normalised = torch_engine.fold_normalised


def divisor(geometry: Geometry, weights: list[np.ndarray] | None, like: torch.Tensor) -> torch.Tensor:
    """The (weighted) divisor map, a constant of the graph."""
    return torch.from_numpy(cpu.divisor(geometry, weights))


class _Unfold(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, geometry: Geometry, layout: str, threads: int | None) -> torch.Tensor:
        ctx.geometry, ctx.layout, ctx.threads, ctx.dtype = geometry, layout, threads, x.dtype
        return _unfold_values(x, geometry, layout, threads)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        grad = grad.to(ctx.dtype)
        if tracing(grad):  # a vmapped backward (batched gradients): torch's ops, which vmap knows
            return torch_engine.fold(grad, ctx.geometry, ctx.layout).to(ctx.dtype), None, None, None
        summed = _Fold.apply(grad, ctx.geometry, ctx.layout, None, False, ctx.threads)
        return summed.to(ctx.dtype), None, None, None


class _Fold(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        cols: torch.Tensor,
        geometry: Geometry,
        layout: str,
        weights: list[np.ndarray] | None,
        exact: bool,
        threads: int | None,
    ) -> torch.Tensor:
        ctx.geometry, ctx.layout, ctx.weights, ctx.threads, ctx.dtype = geometry, layout, weights, threads, cols.dtype
        return _fold_values(cols, geometry, layout, weights, exact, threads)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        grad = grad.to(ctx.dtype)
        if tracing(grad):  # a vmapped backward (batched gradients): torch's ops, which vmap knows
            cols_grad = torch_engine.unfold(grad, ctx.geometry, ctx.layout)
        else:
            cols_grad = _Unfold.apply(grad, ctx.geometry, ctx.layout, ctx.threads)
        if ctx.weights is not None:  # d(sum of w·col)/d col = w, per kernel offset and block
            cols_grad = _weighted(cols_grad, ctx.geometry, ctx.layout, ctx.weights)
        return cols_grad.to(ctx.dtype), None, None, None, None, None


def _unfold_values(x: torch.Tensor, geometry: Geometry, layout: str, threads: int | None) -> torch.Tensor:
    if x.dtype == torch.bfloat16:  # a copy: the bits move as int16, unchanged
        return _unfold_values(x.detach().resolve_neg().view(torch.int16), geometry, layout, threads).view(
            torch.bfloat16
        )
    with scheduled(x):  # also in backward, outside the op that set it
        return torch.from_numpy(cpu.unfold(cpu.take(x), geometry, layout, threads=threads))  # take: detached, resolved


def _fold_values(
    cols: torch.Tensor,
    geometry: Geometry,
    layout: str,
    weights: list[np.ndarray] | None,
    exact: bool,
    threads: int | None,
) -> torch.Tensor:
    if cols.dtype == torch.bfloat16:  # summed in float32 (float64 with exact), rounded by the caller
        cols = cols.detach().float()
    with scheduled(cols):
        return torch.from_numpy(cpu.fold(cpu.take(cols), geometry, layout, weights, exact=exact, threads=threads))


def _weighted(cols: torch.Tensor, geometry: Geometry, layout: str, weights: list[np.ndarray]) -> torch.Tensor:
    """``cols`` times each kernel offset's window weight in each block (torch ops: differentiable)."""
    ndim = geometry.ndim
    # per-dim weights (L_d, k_d) -> (*L, *k) -> the matrix's (K, L) or (L, K) order
    full = outer(list(weights)).transpose(*range(0, 2 * ndim, 2), *range(1, 2 * ndim, 2))
    per_block = full.reshape(geometry.num_blocks, geometry.kernel_volume)
    n, channels = cols.shape[0], geometry.check_fold_input(*matrix_dims(cols.shape, layout))
    table = torch.from_numpy(per_block).to(cols.dtype)
    blocks, kernel = geometry.num_blocks, geometry.kernel_volume
    if layout == "ncl":
        return (cols.view(n, channels, kernel, blocks) * table.T).view(cols.shape)
    return (cols.view(n, blocks, channels, kernel) * table[:, None, :]).view(cols.shape)
