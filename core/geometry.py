"""Block arithmetic: the one place that knows how many blocks fit and where they sit.

Everything else (engines, divisor, statistics, streaming, windows) asks a :class:`Geometry`.
A geometry is computed once from the spatial size and the four block parameters, validated before
any data moves, and then only read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from typing import Any

from patchfold.blocks import Blocks, IntOrSeq, per_dim
from patchfold.errors import PatchfoldError

#: Layouts of the patch matrix. ``ncl`` is PyTorch's ``(N, C·∏k, L)``; ``nlc`` is one row per
#: patch, ``(N, L, C·∏k)``.
LAYOUTS = ("ncl", "nlc")


@dataclass(frozen=True)
class Geometry:
    """Where the sliding blocks of one spatial extent sit.

    Build with :meth:`create` (which normalises and validates); all fields are per spatial dim.

    >>> g = Geometry.create((5, 7), kernel_size=3, stride=2)
    >>> g.blocks_per_dim, g.num_blocks
    ((2, 3), 6)
    >>> g.unfold_shape(1, 3)
    (1, 27, 6)
    """

    spatial_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    padding_mode: str = "zeros"
    #: blocks moved inward to end at the border (see :class:`~patchfold.blocks.Blocks`)
    cover: bool = False

    @classmethod
    def create(
        cls,
        spatial_size: IntOrSeq,
        kernel_size: IntOrSeq,
        *,
        stride: IntOrSeq = 1,
        padding: IntOrSeq = 0,
        dilation: IntOrSeq = 1,
        padding_mode: str = "zeros",
        cover: bool = False,
    ) -> Geometry:
        """``Blocks(kernel_size, ...).at(spatial_size)``: normalise and check that a block fits.

        >>> g = Geometry.create((10,), 4, stride=3, cover=True)
        >>> g.block_starts(0).tolist(), g.blocks_per_dim
        ([0, 3, 6], (3,))
        >>> Geometry.create((11,), 4, stride=3, cover=True).block_starts(0).tolist()
        [0, 3, 6, 7]
        """
        blocks = Blocks(
            kernel_size, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode, cover=cover
        )
        return blocks.at(spatial_size)

    @classmethod
    def of(cls, spatial_size: tuple[int, ...], blocks: Blocks) -> Geometry:
        """The geometry of ``blocks`` over ``spatial_size`` (one int per spatial dim), validated."""
        ndim = len(spatial_size)
        geometry = cls(
            spatial_size=tuple(spatial_size),
            kernel_size=per_dim(blocks.kernel_size, ndim, "kernel_size"),
            stride=per_dim(blocks.stride, ndim, "stride"),
            padding=per_dim(blocks.padding, ndim, "padding"),
            dilation=per_dim(blocks.dilation, ndim, "dilation"),
            padding_mode=blocks.padding_mode,
            cover=blocks.cover,
        )
        geometry._validate()
        return geometry

    @cached_property
    def blocks(self) -> Blocks:
        """The block parameters, per dim."""
        return Blocks(
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            cover=self.cover,
        )

    def _validate(self) -> None:
        widest = [max(a, b) for a, b in self.pad_widths]
        what = "cover's padding of the dims shorter than one block" if self.cover else "padding"
        if self.padding_mode == "reflect" and any(p >= s for p, s in zip(widest, self.spatial_size)):
            raise PatchfoldError(
                f"reflect {what} {[list(w) for w in self.pad_widths] if self.cover else list(self.padding)} "
                f"must be smaller than the input size {list(self.spatial_size)} in every dim"
            )
        if self.padding_mode == "circular" and any(p > s for p, s in zip(widest, self.spatial_size)):
            raise PatchfoldError(
                f"circular {what} {[list(w) for w in self.pad_widths] if self.cover else list(self.padding)} "
                f"must not exceed the input size {list(self.spatial_size)} in any dim"
            )
        counts = self.blocks_per_dim
        if any(c < 1 for c in counts):
            raise PatchfoldError(
                f"no block fits: kernel_size={list(self.kernel_size)} dilation={list(self.dilation)} "
                f"stride={list(self.stride)} "
                f"spans {list(self.span)} but the input size {list(self.spatial_size)} padded by "
                f"{list(self.padding)} is {list(self.padded_size)}; blocks per dim "
                f"L_d = floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1 = "
                f"{list(counts)} (each must be >= 1)"
            )

    def over_padded(self, size: tuple[int, ...] | None = None) -> Geometry:
        """The same blocks over an array that is already padded (the whole padded input by
        default, or a slab of it of ``size``): no padding of its own."""
        blocks = self.blocks.replace(padding=(0,), padding_mode="zeros")
        return blocks.at(self.padded_size if size is None else tuple(size))

    # ----- derived sizes (computed once: the hot loops of the engines and tiles read them) ----
    @property
    def ndim(self) -> int:
        return len(self.spatial_size)

    @cached_property
    def pad_widths(self) -> tuple[tuple[int, int], ...]:
        """Padding ``(before, after)`` per dim: ``(padding, padding)``, or with ``cover`` what a
        dim shorter than one block needs to hold its one centred block (0 elsewhere)."""
        if not self.cover:
            return tuple((p, p) for p in self.padding)
        extra = [max(0, span - size) for size, span in zip(self.spatial_size, self.span)]
        return tuple((e // 2, e - e // 2) for e in extra)

    @cached_property
    def padded_size(self) -> tuple[int, ...]:
        return tuple(s + a + b for s, (a, b) in zip(self.spatial_size, self.pad_widths))

    @cached_property
    def span(self) -> tuple[int, ...]:
        """Extent of one dilated block per dim: ``dilation·(kernel − 1) + 1``."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    @cached_property
    def blocks_per_dim(self) -> tuple[int, ...]:
        """``L_d = floor((size_d + 2·pad_d − dil_d·(k_d − 1) − 1) / stride_d) + 1`` (may be < 1
        before :meth:`create` has validated the geometry); with ``cover``, one more where those
        blocks stop short of the dim's end."""
        return tuple(count + (moved is not None) for count, moved in self.even_grid)

    @cached_property
    def even_grid(self) -> tuple[tuple[int, int | None], ...]:
        """Per dim: how many blocks sit every ``stride`` from the padded start, and where the
        extra last block that ``cover`` moved inward starts (None where there is none)."""
        result = []
        for padded, span, stride in zip(self.padded_size, self.span, self.stride):
            count = (padded - span) // stride + 1
            moved = self.cover and count >= 1 and (count - 1) * stride + span < padded
            result.append((count, padded - span if moved else None))
        return tuple(result)

    def block_starts(self, dim: int) -> Any:
        """The padded position where each block along ``dim`` starts (int64 numpy array)."""
        import numpy as np

        count, moved = self.even_grid[dim]
        starts = np.arange(max(count, 0), dtype=np.int64) * self.stride[dim]
        return starts if moved is None else np.append(starts, np.int64(moved))

    def band_extent(self, first: int, last: int) -> tuple[int, int]:
        """The first padded row and the number of rows that block rows ``[first, last)`` read
        (with ``cover``, the last block row may have been moved inward: a cover grid's rows)."""
        starts = self.block_starts(0)
        top = int(starts[first])
        return top, int(starts[last - 1]) + self.span[0] - top

    @cached_property
    def is_regular(self) -> bool:
        """Whether every dim's blocks are evenly spaced: always without ``cover``; with it, where
        no block had to be moved inward."""
        return all(moved is None for _, moved in self.even_grid)

    @cached_property
    def num_blocks(self) -> int:
        return math.prod(self.blocks_per_dim)

    @cached_property
    def blocks_per_row(self) -> int:
        """Blocks in one row of blocks along dim 0 (the columns a band of block rows fills per row)."""
        return math.prod(self.blocks_per_dim[1:])

    @cached_property
    def kernel_volume(self) -> int:
        return math.prod(self.kernel_size)

    @cached_property
    def pixels(self) -> int:
        return math.prod(self.spatial_size)

    @property
    def covered_extent(self) -> tuple[int, ...]:
        """Padded-coordinate extent actually reached by some block (the rest is dropped)."""
        return tuple(
            (n - 1) * s + span if moved is None else moved + span
            for (n, moved), s, span in zip(self.even_grid, self.stride, self.span)
        )

    def patch_length(self, channels: int) -> int:
        return channels * self.kernel_volume

    def unfold_shape(self, batch: int, channels: int, layout: str = "ncl") -> tuple[int, int, int]:
        check_layout(layout)
        if layout == "ncl":
            return (batch, self.patch_length(channels), self.num_blocks)
        return (batch, self.num_blocks, self.patch_length(channels))

    def fold_shape(self, batch: int, channels: int) -> tuple[int, ...]:
        return (batch, channels, *self.spatial_size)

    def redundancy(self) -> float:
        """Patch elements per input element."""
        return self.kernel_volume * self.num_blocks / self.pixels

    # ----- block positions -----------------------------------------------------------------
    def kernel_offsets(self) -> Iterable[tuple[int, ...]]:
        """Kernel offsets in row-major order (the order of the rows within one channel)."""
        return product(*(range(k) for k in self.kernel_size))

    def block_box(self, index: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Per-dim ``(start, stop)`` in unpadded coordinates of the block at a multi-index.

        Stops are exclusive and may fall outside the image where padding is used.
        """
        starts = [
            moved if moved is not None and i == count else i * s
            for i, (count, moved), s in zip(index, self.even_grid, self.stride)
        ]
        return tuple((start - a, start - a + span) for start, (a, _), span in zip(starts, self.pad_widths, self.span))

    def positions(self, dim: int, offset: int, first: int = 0, last: int | None = None) -> Any:
        """Padded positions along ``dim`` that kernel ``offset`` reaches in blocks ``[first, last)``
        (all blocks by default): a slice, or an index array where ``cover`` moved a block inward."""
        last = self.blocks_per_dim[dim] if last is None else last
        step = self.stride[dim]
        start = offset * self.dilation[dim] + first * step
        if not self.is_regular:
            return self.block_starts(dim)[first:last] + offset * self.dilation[dim]
        return slice(start, start + (last - first - 1) * step + 1, step)

    def blocks_reaching(self, dim: int, offset: int, lo: int, hi: int) -> tuple[int, int]:
        """Block range ``[i0, i1)`` whose kernel ``offset`` along ``dim`` lands in padded ``[lo, hi)``."""
        base = offset * self.dilation[dim]
        step = self.stride[dim]
        count, moved = self.even_grid[dim]
        first = max(0, -((base - lo) // step))
        last = min(count, -((base - hi) // step))
        if moved is not None:  # the moved block sits after all the others
            if first >= count and not lo <= moved + base:
                first = count + 1
            elif first >= count:
                first = count
            if lo <= moved + base < hi:
                last = count + 1
        return first, max(first, last)

    def check_fold_input(self, patch_length: int, num_blocks: int) -> int:
        """Validate a patch matrix against this geometry; return its channel count."""
        if num_blocks != self.num_blocks:
            raise PatchfoldError(
                f"the patch matrix has L={num_blocks} blocks but output_size={list(self.spatial_size)} "
                f"with kernel_size={list(self.kernel_size)} stride={list(self.stride)} "
                f"padding={list(self.padding)} dilation={list(self.dilation)} gives "
                f"L={self.num_blocks} (blocks per dim {list(self.blocks_per_dim)})"
            )
        if patch_length % self.kernel_volume:
            raise PatchfoldError(
                f"the patch matrix has {patch_length} values per patch, not a multiple of "
                f"prod(kernel_size)={self.kernel_volume} (kernel_size={list(self.kernel_size)})"
            )
        return patch_length // self.kernel_volume

    def describe(self) -> str:
        return self.blocks.describe()


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise PatchfoldError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}", param="layout")
    return layout


def matrix_dims(shape: Sequence[int], layout: str) -> tuple[int, int]:
    """(patch length, number of blocks) of a batched patch matrix's shape in either layout."""
    return (shape[1], shape[2]) if check_layout(layout) == "ncl" else (shape[2], shape[1])
