"""Which blocks hold something: per-block foreground fractions and the keep rules that skip blank ones.

A pixel's **grey level** is the mean of its channels (every channel weighs the same, whatever the
image holds: RGB, RGBA, a stack of bands). An image's grey levels are split in two classes at one
**threshold** ``t``: *dark* (``grey < t``) and *light* (``grey >= t``). ``t`` is Otsu's threshold
of the image (256 bins between its darkest and brightest grey level, computed on a strided subsample
of at most :data:`OTSU_SAMPLES` pixels), so it adapts to each image. The **background** is the
light class by default (slides: tissue is darker than the glass), or the class that a given
``background`` grey level falls in (``background=0`` for a dark background). Every other pixel is
**foreground**; so are none of the non-finite ones (NaN is background), and an image of one grey
level is all background unless ``background`` is given below it.

A block's **foreground fraction** is its foreground pixels over all of its pixels
(``∏ kernel_size``), its dilated positions only; padding pixels count as background, whatever the
padding mode. Counts come from a summed-area table built one axis at a time (a cumulative sum with
step ``dilation``), read at the blocks' positions: no loop over blocks or pixels.

Rules (a block is kept when it satisfies every rule given): ``min_foreground=F`` keeps blocks whose
foreground fraction is at least ``F``; ``max_blank=B`` keeps blocks whose blank fraction (background
and padding pixels over all pixels, ``1 - foreground fraction``) is at most ``B``. Both compare
pixel counts: ``foreground >= F·∏k`` and ``∏k - foreground <= B·∏k``, in exact arithmetic on the
decimal given (``0.55`` of 100 pixels is 55, where ``0.55 * 100`` in floats is just over 55).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry

#: Most pixels Otsu's threshold is computed from; larger images are subsampled with one stride per axis.
OTSU_SAMPLES = 1 << 20

#: Histogram bins of Otsu's threshold, between the darkest and the brightest grey level.
OTSU_BINS = 256

#: Pixels turned into grey levels at a time (float64), so a large image needs no float copy of itself.
_BAND_PIXELS = 1 << 22


def _decimal(fraction: float) -> Fraction:
    """A rule's fraction as the decimal it was written as, exactly: ``0.55`` is 55/100, not the
    binary float just above it, so a block with exactly 55 of 100 pixels meets ``0.55`` (the
    shortest repr of a float is the decimal that gave it)."""
    return Fraction(repr(fraction))


def _fraction(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise PatchfoldError(f"{name} must be a number in [0, 1], got {value!r}", param=name)
    if not 0 <= float(value) <= 1:  # NaN fails too
        raise PatchfoldError(f"{name} must be a fraction in [0, 1], got {value!r}", param=name)
    return float(value)


@dataclass(frozen=True)
class KeepRules:
    """Which blocks to keep: ``min_foreground`` and/or ``max_blank`` (fractions in [0, 1]), with
    ``background`` the background's grey level (None: the light class, see the module's text).

    >>> KeepRules(min_foreground=0.25).to_dict()
    {'min_foreground': 0.25, 'max_blank': None, 'background': 'auto'}
    """

    min_foreground: float | None = None
    max_blank: float | None = None
    background: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_foreground", _fraction(self.min_foreground, "min_foreground"))
        object.__setattr__(self, "max_blank", _fraction(self.max_blank, "max_blank"))
        if self.min_foreground is None and self.max_blank is None:
            if self.background is not None:
                raise PatchfoldError(
                    "background= only matters with a rule: min_foreground= or max_blank=", param="background"
                )
            raise PatchfoldError("give a keep rule: min_foreground= or max_blank=", param="min_foreground")
        if self.background is not None:
            value = self.background
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise PatchfoldError(f"background must be a grey level (a number), got {value!r}", param="background")
            if not math.isfinite(value):
                raise PatchfoldError(f"background must be a finite grey level, got {value!r}", param="background")
            object.__setattr__(self, "background", float(value))

    def keeps(self, counts: np.ndarray, volume: int) -> np.ndarray:
        """Which blocks with ``counts`` foreground pixels out of ``volume`` pass every rule.

        Args:
            counts: foreground pixels per block (any shape, integers).
            volume: pixels per block (``∏ kernel_size``).
        Returns:
            bool array of ``counts``' shape.
        """
        keep = np.ones(np.shape(counts), dtype=bool)
        if self.min_foreground is not None:
            keep &= counts >= math.ceil(_decimal(self.min_foreground) * volume)
        if self.max_blank is not None:
            keep &= volume - counts <= math.floor(_decimal(self.max_blank) * volume)
        return keep

    def to_dict(self) -> dict[str, Any]:
        """The rules as manifests and summaries record them (``background``: ``"auto"`` or the level)."""
        background = "auto" if self.background is None else self.background
        return {"min_foreground": self.min_foreground, "max_blank": self.max_blank, "background": background}


@dataclass(frozen=True)
class Threshold:
    """The split of one image's grey levels: dark ``grey < level``, light ``grey >= level``, and
    which of the two is the background."""

    level: float
    light_background: bool

    def foreground(self, grey: np.ndarray) -> np.ndarray:
        """The foreground mask of grey levels (NaN is never foreground: both comparisons are false)."""
        return grey < self.level if self.light_background else grey >= self.level

    def to_dict(self) -> dict[str, Any]:
        level = self.level if math.isfinite(self.level) else None  # JSON has no NaN
        return {"threshold": level, "background_class": "light" if self.light_background else "dark"}


def grey_levels(image: np.ndarray) -> np.ndarray:
    """The mean over channels of ``image``, in float64.

    Args:
        image: ``(C, *spatial)`` of any real dtype.
    Returns:
        ``(*spatial)`` float64.
    """
    return np.mean(image, axis=0, dtype=np.float64)


def otsu_bin(counts: np.ndarray) -> int:
    """Otsu's split of a histogram: the last bin ``k`` of the lower class (bins ``0..k`` against
    ``k+1..``), maximising the between-class variance ``(N·s0 − S·n0)² / (n0·n1)`` (``n0``, ``n1``:
    pixels per class; ``s0``, ``S``: bin-index sums of the lower class and of all), the first such
    ``k`` on ties. A histogram with fewer than two non-empty bins has no split: its last non-empty
    bin is returned (or 0 when all are empty).

    Args:
        counts: ``(bins,)`` non-negative counts.
    Returns:
        ``k`` in ``[0, bins - 1]``.

    >>> otsu_bin(np.array([5, 3, 0, 0, 4, 6]))
    1
    """
    counts = np.asarray(counts, dtype=np.float64)
    index = np.arange(counts.size)
    total, weighted = float(counts.sum()), float(counts @ index)  # whole numbers below 2**53: exact
    n0 = np.cumsum(counts)[:-1]
    s0 = np.cumsum(counts * index)[:-1]
    n1 = total - n0
    valid = (n0 > 0) & (n1 > 0)
    if not valid.any():
        nonzero = np.flatnonzero(counts)
        return int(nonzero[-1]) if nonzero.size else 0
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(valid, (total * s0 - weighted * n0) ** 2 / (n0 * n1), -1.0)
    return int(np.argmax(score))


def otsu_threshold(grey: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of grey levels: halfway across the empty bins between the two classes of
    :func:`otsu_bin` (the upper edge of the lower class's last bin where the next bin is not empty),
    so the classes are ``grey < t`` and ``grey >= t`` and levels in the gap that the sample missed
    fall on the nearer side. NaN and infinities are left out; one grey level gives that level
    (every pixel light), none gives NaN.

    Args:
        grey: grey levels, any shape.
        bins: histogram bins between the smallest and the largest finite level.
    Returns:
        the threshold ``t``.
    """
    finite = grey[np.isfinite(grey)]
    if finite.size == 0:
        return math.nan
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        return high
    counts, edges = np.histogram(finite, bins=bins, range=(low, high))
    last = otsu_bin(counts)
    upper = last + 1 + int(np.argmax(counts[last + 1 :] > 0)) if last + 1 < bins else last + 1
    return float((edges[last + 1] + edges[upper]) / 2)


def subsample_step(spatial: Sequence[int], most: int = OTSU_SAMPLES) -> int:
    """The one stride of every spatial axis that leaves at most ``most`` of ``spatial``'s pixels
    (1 when there are no more than that)."""
    step = max(1, math.ceil((math.prod(spatial) / most) ** (1 / max(1, len(spatial)))))
    while math.prod(-(-n // step) for n in spatial) > most:  # the root may round down
        step += 1
    return step


def subsample(image: np.ndarray, most: int = OTSU_SAMPLES) -> np.ndarray:
    """``image`` ``(C, *spatial)`` with every spatial axis strided by one step
    (:func:`subsample_step`), so at most about ``most`` pixels remain (the whole image when it is
    that small): the pixels at multiples of the step along every axis."""
    step = subsample_step(image.shape[1:], most)
    return image[(slice(None), *(slice(None, None, step) for _ in image.shape[1:]))]


def find_threshold(image: np.ndarray, background: float | None = None) -> Threshold:
    """The threshold of ``image`` ``(C, *spatial)`` (Otsu's, on a subsample) and its background class:
    light by default, else the class that the grey level ``background`` falls in."""
    level = otsu_threshold(grey_levels(subsample(image)))
    light = True if background is None else bool(background >= level)
    return Threshold(level, light)


def foreground_mask(image: np.ndarray, threshold: Threshold) -> np.ndarray:
    """Which pixels of ``image`` are foreground.

    Args:
        image: ``(C, *spatial)``.
        threshold: from :func:`find_threshold`.
    Returns:
        ``(*spatial)`` bool.
    """
    mask = np.empty(image.shape[1:], dtype=bool)
    if mask.ndim == 0 or mask.size == 0:
        return mask
    table = _foreground_table(image.dtype, image.shape[0], threshold)
    rows = max(1, _BAND_PIXELS // max(1, math.prod(image.shape[2:])))
    for start in range(0, mask.shape[0], rows):
        part, out = image[:, start : start + rows], mask[start : start + rows]
        if table is None:
            out[...] = threshold.foreground(grey_levels(part))
        else:  # each channel sum looks its answer up: the same float64 sum / C as grey_levels
            np.take(table[0], np.add.reduce(part, axis=0, dtype=table[1]), out=out, mode="clip")
    return mask


#: Most entries of the table of :func:`_foreground_table` (one per channel sum an image can have).
_TABLE_ENTRIES = 1 << 20


def _foreground_table(dtype: np.dtype, channels: int, threshold: Threshold) -> tuple[np.ndarray, type] | None:
    """Whether each channel sum ``s`` of an unsigned-integer (or bool) image is foreground, from
    the grey level ``float64(s) / channels`` exactly as :func:`grey_levels` makes it, and the
    dtype the sums fit in; None where the dtype is another or the sums are too many to tabulate."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "bu" or dtype.itemsize > 2:
        return None
    entries = channels * (1 if dtype.kind == "b" else int(np.iinfo(dtype).max)) + 1
    if entries > _TABLE_ENTRIES:
        return None
    table = threshold.foreground(np.arange(entries, dtype=np.float64) / channels)
    return table, np.uint16 if entries <= 1 << 16 else np.uint32


def block_counts(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Foreground pixels of every block, exactly (dilated positions only; padding counts as background).

    Args:
        mask: ``(*spatial_size)`` bool, the foreground of one image.
        geometry: the blocks.
    Returns:
        ``(*blocks_per_dim)`` integer counts, each in ``[0, ∏ kernel_size]``.

    >>> g = Geometry.create((4, 4), 2, stride=2, padding=1)
    >>> block_counts(np.ones((4, 4), bool), g)  # corner blocks: 3 of their 4 pixels are padding
    array([[1, 2, 1],
           [2, 4, 2],
           [1, 2, 1]])
    """
    if mask.shape != geometry.spatial_size:
        shapes = f"{list(mask.shape)} for input size {list(geometry.spatial_size)}"
        raise PatchfoldError(f"the foreground mask must have the input's size, got shape {shapes}")
    dtype = np.int32 if math.prod(geometry.padded_size) < 2**31 else np.int64
    counts = np.pad(mask, list(geometry.pad_widths)).astype(dtype)
    for axis in range(geometry.ndim):
        starts = geometry.block_starts(axis)  # a cover grid's last block may sit closer than stride
        counts = _window_sums(counts, axis, starts, geometry.kernel_size[axis], geometry.dilation[axis])
    return counts.astype(np.int64)


def band_mask(band: np.ndarray, geometry: Geometry, top: int, threshold: Threshold) -> np.ndarray:
    """The foreground of a band of the padded image: padding pixels are background.

    Args:
        band: ``(C, height, *padded_size[1:])``, padded rows ``[top, top + height)`` of one image
            padded by ``geometry.pad_widths`` (in any padding mode).
        geometry: the blocks.
        top: the band's first row, in padded coordinates.
        threshold: from :func:`find_threshold`.
    Returns:
        ``(height, *padded_size[1:])`` bool.
    """
    (before, _), size = geometry.pad_widths[0], geometry.spatial_size[0]
    lo, hi = max(top, before) - top, min(top + band.shape[1], before + size) - top
    inside = (
        slice(max(0, lo), max(0, hi)),
        *(slice(a, a + n) for (a, _), n in zip(geometry.pad_widths[1:], geometry.spatial_size[1:])),
    )
    mask = np.zeros(band.shape[1:], dtype=bool)
    mask[inside] = foreground_mask(band[(slice(None), *inside)], threshold)
    return mask


def band_counts(mask: np.ndarray, geometry: Geometry, top: int, first: int, last: int) -> np.ndarray:
    """Foreground pixels of the blocks of block rows ``[first, last)`` (along dim 0) from the mask
    of the padded band they read, the same counts :func:`block_counts` gives those rows.

    Args:
        mask: ``(height, *padded_size[1:])`` bool from :func:`band_mask`, padded rows from ``top``.
        geometry: the blocks.
        top: the band's first row, in padded coordinates.
        first: the first block row.
        last: one past the last block row; every block of them must lie in the band.
    Returns:
        ``(last - first, *blocks_per_dim[1:])`` int64 counts.
    """
    span, dilation = geometry.span[0], geometry.dilation[0]
    starts = geometry.block_starts(0)[first:last] - top
    counts = np.stack([np.add.reduce(mask[s : s + span : dilation], axis=0, dtype=np.int64) for s in starts])
    for axis in range(1, geometry.ndim):
        starts = geometry.block_starts(axis)
        counts = _window_sums(counts, axis, starts, geometry.kernel_size[axis], geometry.dilation[axis])
    return counts


def _window_sums(values: np.ndarray, axis: int, starts: np.ndarray, kernel: int, dilation: int) -> np.ndarray:
    """``Σ_{j<kernel} values[start + j·dilation]`` along ``axis`` for every block start.

    The table ``T[i] = values[i − d] + values[i − 2d] + …`` (a cumulative sum of each residue
    modulo ``d`` on its own) gives every such sum as ``T[start + kernel·d] − T[start]``.
    """
    moved = np.moveaxis(values, axis, 0)
    length, rest = moved.shape[0], moved.shape[1:]
    rows = -(-(length + dilation) // dilation)
    table = np.zeros((rows * dilation, *rest), dtype=values.dtype)
    table[dilation : dilation + length] = moved
    table = np.cumsum(table.reshape(rows, dilation, *rest), axis=0, dtype=values.dtype).reshape(table.shape)
    return np.moveaxis(table[starts + kernel * dilation] - table[starts], 0, axis)


@dataclass(frozen=True)
class Selection:
    """The blocks of one image that the rules keep: ``counts`` and ``keep`` are ``(L,)``, in the
    blocks' row-major order (the patch matrix's columns)."""

    rules: KeepRules
    threshold: Threshold
    counts: np.ndarray
    keep: np.ndarray
    volume: int

    @property
    def fractions(self) -> np.ndarray:
        """Foreground fraction per block, ``(L,)`` float64."""
        return self.counts / self.volume

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    def summary(self) -> dict[str, Any]:
        return {**self.threshold.to_dict(), "kept": self.kept, "skipped": int(self.keep.size) - self.kept}


def select_blocks(image: np.ndarray, geometry: Geometry, rules: KeepRules) -> Selection:
    """The blocks of one image that satisfy ``rules``.

    Args:
        image: ``(C, *spatial_size)`` of any real dtype.
        geometry: the blocks over ``spatial_size``.
        rules: the keep rules.
    Returns:
        the :class:`Selection` (threshold, foreground counts, kept blocks).

    >>> image = np.full((3, 4, 6), 255, np.uint8)
    >>> image[:, :, :2] = 40  # dark tissue in the two left columns of a white slide
    >>> g = Geometry.create((4, 6), 2, stride=2)
    >>> chosen = select_blocks(image, g, KeepRules(min_foreground=0.5))
    >>> chosen.keep.reshape(g.blocks_per_dim)
    array([[ True, False, False],
           [ True, False, False]])
    """
    threshold = find_threshold(image, rules.background)
    counts = block_counts(foreground_mask(image, threshold), geometry).reshape(-1)
    return Selection(rules, threshold, counts, rules.keeps(counts, geometry.kernel_volume), geometry.kernel_volume)


def keep_record(rules: KeepRules, selections: Sequence[Selection]) -> dict[str, Any]:
    """What manifests and summaries record of a run with ``rules``: the rules, how grey levels are
    made, and how many blocks of the images (one :class:`Selection` each) were kept and skipped."""
    kept = sum(chosen.kept for chosen in selections)
    blocks = sum(int(chosen.keep.size) for chosen in selections)
    return {**rules.to_dict(), "grey": "mean of channels", "kept": kept, "skipped": blocks - kept}
