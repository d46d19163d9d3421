"""Obviously-correct, slow reference implementations used by the tests.

Everything here is plain Python loops over blocks and kernel offsets on top of ``np.pad``; it shares
no code with patchfold. Padding modes map to numpy's: zeros=constant, reflect=reflect,
replicate=edge, circular=wrap.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np

NUMPY_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
PADDING_MODES = tuple(NUMPY_MODES)


def as_tuple(value, ndim: int) -> tuple[int, ...]:
    """An int (replicated) or a sequence (length 1 replicated) as one int per spatial dim."""
    if isinstance(value, int):
        return (value,) * ndim
    values = tuple(int(v) for v in value)
    return values * ndim if len(values) == 1 else values


def blocks_per_dim(size, kernel_size, dilation=1, padding=0, stride=1) -> tuple[int, ...]:
    """``L_d = floor((size + 2p - d(k-1) - 1) / s) + 1`` per dim (may be < 1 for invalid geometry)."""
    nd = len(size)
    k, d, p, s = (as_tuple(v, nd) for v in (kernel_size, dilation, padding, stride))
    return tuple((size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd))


def geometry_is_valid(size, kernel_size, dilation=1, padding=0, stride=1, padding_mode="zeros") -> bool:
    """True when at least one block fits in every dim and the padding is legal for the mode
    (PyTorch's rules: reflect needs padding < size, circular padding <= size)."""
    nd = len(size)
    k, d, p, s = (as_tuple(v, nd) for v in (kernel_size, dilation, padding, stride))
    if min(k) < 1 or min(d) < 1 or min(s) < 1 or min(p) < 0 or min(size) < 1:
        return False
    if padding_mode == "reflect" and any(pi >= si for pi, si in zip(p, size)):
        return False
    if padding_mode == "circular" and any(pi > si for pi, si in zip(p, size)):
        return False
    return min(blocks_per_dim(size, k, d, p, s)) >= 1


def source_indices(size: int, pad: int, padding_mode: str) -> np.ndarray:
    """For each padded position along one dim, the input index it shows, or -1 for a zero pad."""
    if padding_mode == "zeros":
        return np.concatenate([np.full(pad, -1), np.arange(size), np.full(pad, -1)])
    return np.pad(np.arange(size), (pad, pad), mode=NUMPY_MODES[padding_mode])


def reference_unfold(x, kernel_size, dilation=1, padding=0, stride=1, padding_mode="zeros") -> np.ndarray:
    """``(N, C, *spatial)`` → ``(N, C·∏k, L)`` in the input's dtype (ncl layout)."""
    x = np.asarray(x)
    nd = x.ndim - 2
    k, d, p, s = (as_tuple(v, nd) for v in (kernel_size, dilation, padding, stride))
    padded = np.pad(x, [(0, 0), (0, 0), *((pi, pi) for pi in p)], mode=NUMPY_MODES[padding_mode])
    counts = blocks_per_dim(x.shape[2:], k, d, p, s)
    assert min(counts) >= 1, counts
    n, c = x.shape[:2]
    columns = []
    for block in product(*(range(count) for count in counts)):
        # the block's kernel points, per dim: start + offset·dilation (kernel offsets row-major)
        index = np.ix_(*(block[i] * s[i] + np.arange(k[i]) * d[i] for i in range(nd)))
        columns.append(padded[(slice(None), slice(None), *index)].reshape(n, c * math.prod(k)))
    return np.stack(columns, axis=-1)


def reference_fold(
    cols, output_size, kernel_size, dilation=1, padding=0, stride=1, padding_mode="zeros", weights=None
) -> np.ndarray:
    """Overlap-add ``(N, C·∏k, L)`` into ``(N, C, *output_size)``.

    A value at a padded position is added onto the input pixel that position repeats (dropped for
    zero padding): the adjoint of :func:`reference_unfold`. Sums are int64 for integer/bool input
    and float64 otherwise. ``weights`` is an optional callable ``(block, offset) -> float``.
    """
    cols = np.asarray(cols)
    nd = len(output_size)
    k, d, p, s = (as_tuple(v, nd) for v in (kernel_size, dilation, padding, stride))
    counts = blocks_per_dim(output_size, k, d, p, s)
    kernel_volume = math.prod(k)
    n, patch_length, num_blocks = cols.shape
    assert num_blocks == math.prod(counts) and patch_length % kernel_volume == 0
    c = patch_length // kernel_volume
    integer = cols.dtype.kind in "biu" and weights is None
    acc_dtype = np.int64 if integer else np.float64
    blocks = cols.reshape(n, c, kernel_volume, num_blocks).astype(acc_dtype)
    out = np.zeros((n, c, *output_size), dtype=acc_dtype)
    sources = [source_indices(output_size[i], p[i], padding_mode) for i in range(nd)]
    for column, block in enumerate(product(*(range(count) for count in counts))):
        for row, offset in enumerate(product(*(range(ki) for ki in k))):
            position = [block[i] * s[i] + offset[i] * d[i] for i in range(nd)]
            source = tuple(int(sources[i][position[i]]) for i in range(nd))
            if min(source) < 0:
                continue  # fell on zero padding
            value = blocks[:, :, row, column]
            if weights is not None:
                value = value * weights(block, offset)
            out[(slice(None), slice(None), *source)] += value
    return out


def reference_divisor(
    output_size, kernel_size, dilation=1, padding=0, stride=1, padding_mode="zeros", weights=None
) -> np.ndarray:
    """``fold(unfold(ones))`` by the reference, one channel, shape ``output_size``."""
    ones = np.ones((1, 1, *output_size), dtype=np.int64)
    cols = reference_unfold(ones, kernel_size, dilation, padding, stride, padding_mode)
    return reference_fold(cols, output_size, kernel_size, dilation, padding, stride, padding_mode, weights)[0, 0]


def to_numpy(value) -> np.ndarray:
    """A numpy copy of a numpy array or a (CPU or CUDA) torch tensor."""
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()


#: The keys of overlap_stats (and of `stats --json`).
STATS_KEYS = {
    "input_shape",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "padding_mode",
    "blocks_per_dim",
    "num_blocks",
    "patch_length",
    "output_shape",
    "output_bytes",
    "coverage",
    "uncovered_pixels",
    "uncovered_fraction",
    "redundancy",
    "invertible",
}
