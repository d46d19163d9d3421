"""An in-memory unfold to a ``.npy`` in pieces that are contiguous in the file, each computed
while the one before is written.

A patch matrix that fits the budget in one band was computed whole into a fresh array and then
written: the whole output's first touch (which on these VMs stalls when two threads fault fresh
memory at once: 14-160 ms for 200 MB, run to run) and then the write, one after the other. In
pieces of about :data:`PIECE_BYTES` (two reused buffers) the pages are touched once, and the
writes overlap the copies. A piece is one run of the file:

- ``ncl`` ``(N, C·∏k, L)``: the rows of kernel rows ``[k0, k0 + g)`` of one channel of one item,
  which are the unfold of that channel's rows ``k0·d0 ...`` with a kernel of ``g`` rows (block row
  ``i`` of kernel row ``k0 + j`` reads padded row ``i·s0 + (k0 + j)·d0``);
- ``nlc`` ``(N, L, C·∏k)``: block rows ``[b0, b1)`` of one item.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from patchfold.engines.cpu import unfold_into
from patchfold.geometry import Geometry
from patchfold.io.write import write_at
from patchfold.jobs.plan import Progress, UnfoldPlan

#: About how large a piece is: large enough that one write a piece costs nothing, small enough
#: that two of them stay in cache-friendly, reused memory (2048² RGB k16 s8: 4 MB pieces took
#: 14 ms against 21 ms whole for uint8, 60 against 72 ms for float32, computed and written).
PIECE_BYTES = 4 * 2**20


@dataclass(frozen=True)
class Piece:
    """One contiguous run of the patch matrix: items ``[item, item + items)``; for ``ncl`` channels
    ``[channel, channel + channels)`` and their kernel rows ``[first, first + count)`` (all of them
    unless the run is one channel), for ``nlc`` block rows ``[first, first + count)`` (all of them
    unless the run is one item); the run's ``shape`` and where it starts (bytes from the matrix's
    first value)."""

    item: int
    items: int
    channel: int
    channels: int
    first: int
    count: int
    shape: tuple[int, int, int]
    offset: int


def _runs(total: int, unit_bytes: int, piece_bytes: int) -> list[tuple[int, int]]:
    """``(first, count)`` runs over ``total`` units of ``unit_bytes``: as many together as fit in
    ``piece_bytes``, at least one."""
    group = max(1, min(total, piece_bytes // max(1, unit_bytes)))
    return [(first, min(group, total - first)) for first in range(0, total, group)]


def plan_pieces(plan: UnfoldPlan, piece_bytes: int | None = None) -> list[Piece]:
    """The pieces of ``plan``'s patch matrix, of about ``piece_bytes`` (default
    :data:`PIECE_BYTES`), in file order: whole items together where they fit, else (``ncl``) whole
    channels of an item, else kernel rows of a channel; (``nlc``) block rows of an item."""
    piece_bytes = PIECE_BYTES if piece_bytes is None else piece_bytes
    n, a, b = plan.output_shape
    geometry, itemsize = plan.geometry, plan.dtype.itemsize
    item_bytes = a * b * itemsize
    if plan.layout == "ncl":
        rows, channels = geometry.kernel_size[0], a // geometry.kernel_volume
        per_row = geometry.kernel_volume // rows  # matrix rows of one kernel row
    else:
        rows, channels, per_row = geometry.blocks_per_dim[0], 1, geometry.blocks_per_row
    row_bytes = per_row * b * itemsize
    if item_bytes <= piece_bytes:  # (items, every channel, every row)
        runs = [(item, count, 0, channels, 0, rows) for item, count in _runs(n, item_bytes, piece_bytes)]
    elif plan.layout == "ncl" and item_bytes // channels <= piece_bytes:
        by_channel = _runs(channels, item_bytes // channels, piece_bytes)
        runs = [(item, 1, c, count, 0, rows) for item in range(n) for c, count in by_channel]
    else:
        by_row = _runs(rows, row_bytes, piece_bytes)
        runs = [(item, 1, c, 1, r, count) for item in range(n) for c in range(channels) for r, count in by_row]
    pieces = []
    for item, items, channel, count_channels, first, count in runs:
        start = channel * rows * per_row + first * per_row  # the piece's first row (ncl) or block (nlc)
        shape = (items, count_channels * count * per_row, b)
        pieces.append(
            Piece(item, items, channel, count_channels, first, count, shape, (item * a + start) * b * itemsize)
        )
    return pieces


def _kernel_rows(padded: np.ndarray, geometry: Geometry, piece: Piece) -> tuple[np.ndarray, Geometry]:
    """The slab of ``padded`` (the whole padded input, ``geometry`` over it unpadded) that the
    kernel rows ``[first, first + count)`` of the piece's items and channels read, and the geometry
    that unfolds it into exactly those matrix rows: a kernel of ``count`` rows, the same blocks."""
    s0, d0 = geometry.stride[0], geometry.dilation[0]
    top = piece.first * d0
    height = (piece.count - 1) * d0 + (geometry.blocks_per_dim[0] - 1) * s0 + 1
    items = slice(piece.item, piece.item + piece.items)
    slab = padded[items, piece.channel : piece.channel + piece.channels, top : top + height]
    blocks = geometry.blocks.replace(kernel_size=(piece.count, *geometry.kernel_size[1:]))
    sliced = blocks.at(slab.shape[2:])
    assert sliced.blocks_per_dim == geometry.blocks_per_dim, (sliced.blocks_per_dim, geometry.blocks_per_dim)
    return slab, sliced


def unfold_pieces(
    padded: np.ndarray, geometry: Geometry, plan: UnfoldPlan, fd: int, header: int, threads: int | None = None
) -> Iterator[Progress]:
    """Unfold ``padded`` (the input padded, in the output's dtype and scale; ``geometry`` over it
    without padding) into the ``.npy`` open as ``fd`` whose data starts at ``header``, piece by
    piece, each written by a second thread while the next is computed; :class:`Progress` per piece."""
    pieces = plan_pieces(plan)
    largest = max(math.prod(piece.shape) for piece in pieces)
    buffers = [np.empty(largest, dtype=plan.dtype) for _ in range(min(2, len(pieces)))]
    written = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchfold-writer") as writer:
        pending: Future[None] | None = None
        for index, piece in enumerate(pieces):
            out = buffers[index % 2][: math.prod(piece.shape)].reshape(piece.shape)  # its last write is done
            if plan.layout == "ncl":
                slab, sliced = _kernel_rows(padded, geometry, piece)
                unfold_into(slab, sliced, out, "ncl", threads=threads)
            else:
                items = padded[piece.item : piece.item + piece.items]
                unfold_into(items, geometry, out, "nlc", rows=(piece.first, piece.first + piece.count), threads=threads)
            if pending is not None:
                pending.result()
                yield Progress(index, len(pieces), written, plan.output_bytes)
            pending = writer.submit(write_at, fd, out, header + piece.offset)
            written += out.nbytes
        if pending is not None:
            pending.result()
            yield Progress(len(pieces), len(pieces), written, plan.output_bytes)
