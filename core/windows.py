"""Blending windows for overlap-add: each patch is weighted before the sum, and the result divided
by the folded weights, so untouched patches still give back the image exactly.

Every window here is strictly positive inside the patch (unlike a textbook Hann window, which is 0
at its ends and zeroes image borders when used for blending), and N-d windows are products of 1-D
ones, which keeps the weighted divisor separable.
"""

from __future__ import annotations

import math

import numpy as np
from patchfold.choices import WINDOWS as WINDOWS  # re-exported from patchfold.choices
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry

DEFAULT_GAUSSIAN_SIGMA = 0.125


def parse_window(spec: str | None) -> tuple[str, float | None]:
    """Split ``"gaussian:0.25"`` into a name and a parameter, validating both.

    >>> parse_window("gaussian:0.25")
    ('gaussian', 0.25)
    >>> parse_window(None)
    ('none', None)
    """
    if spec is None:
        return "none", None
    if not isinstance(spec, str):
        raise PatchfoldError(f"window must be a name such as 'hann' or 'gaussian:0.2', got {spec!r}", param="window")
    name, _, raw = spec.partition(":")
    name = name.strip().lower()
    if name not in WINDOWS:
        raise PatchfoldError(f"window must be one of {', '.join(WINDOWS)}, got {spec!r}", param="window")
    if not raw:
        return name, DEFAULT_GAUSSIAN_SIGMA if name == "gaussian" else None
    if name != "gaussian":
        raise PatchfoldError(f"only the gaussian window takes a parameter, got {spec!r}", param="window")
    try:
        sigma = float(raw)
    except ValueError:
        raise PatchfoldError(f"gaussian sigma must be a number, got {raw!r} in {spec!r}", param="window") from None
    if not np.isfinite(sigma) or sigma <= 0:
        raise PatchfoldError(f"gaussian sigma must be positive, got {sigma} in {spec!r}", param="window")
    return name, sigma


def window_1d(name: str, size: int, sigma: float | None = None) -> np.ndarray:
    """A strictly positive 1-D window of ``size`` points with maximum 1 (float64; for a gaussian so
    narrow that it underflows, NaN or 0 entries, which :func:`window_weights` refuses)."""
    with np.errstate(all="ignore"):
        return _window_1d(name, size, sigma)


def _window_1d(name: str, size: int, sigma: float | None) -> np.ndarray:
    centres = (np.arange(size) + 0.5) / size  # in (0, 1), symmetric about 0.5
    if name == "none":
        values = np.ones(size)
    elif name == "hann":
        values = np.sin(np.pi * centres) ** 2
    elif name == "triangular":
        values = 1.0 - np.abs(2.0 * centres - 1.0)
    elif name == "gaussian":
        values = np.exp(-0.5 * ((centres - 0.5) / (sigma or DEFAULT_GAUSSIAN_SIGMA)) ** 2)
    elif name == "pyramid":
        values = np.minimum(np.arange(1, size + 1), np.arange(size, 0, -1)).astype(np.float64)
    else:
        raise PatchfoldError(f"window must be one of {', '.join(WINDOWS)}, got {name!r}", param="window")
    return values / values.max()


#: Smallest weight a window may give a kernel point: products over three dims (1e-300) stay normal
#: float64 numbers, so the weighted divisor is never 0 or subnormal where a block reaches.
MIN_WEIGHT = 1e-100


def _check_weights(base: np.ndarray, spec: str | None, size: int, sigma: float | None) -> None:
    """Refuse a window whose weights are not all finite and at least :data:`MIN_WEIGHT` (a
    gaussian too narrow for the patch underflows to 0 at its edges, and a normalised fold would
    then divide by 0)."""
    if np.isfinite(base).all() and base.min() >= MIN_WEIGHT:
        return
    hint = ""
    if sigma is not None:
        edge = 0.5 - 0.5 / size  # the farthest kernel point's distance from the centre, in patch units
        smallest = edge / np.sqrt(2 * np.log(1 / MIN_WEIGHT))
        hint = f"; for a {size}-point patch sigma must be at least {smallest:.4g}"
    raise PatchfoldError(
        f"window {spec!r} gives weights below {MIN_WEIGHT:.3g} at the patch edges{hint}", param="window"
    )


def window_weights(geometry: Geometry, spec: str | None, edge_aware: bool = True) -> list[np.ndarray] | None:
    """Per-dim weights ``(L_d, k_d)`` of every kernel offset in every block, or None for no window.

    With ``edge_aware`` the first and last block along each dim keep full weight on their outer
    half, so pixels near the image border are never down-weighted to (almost) nothing.
    """
    name, sigma = parse_window(spec)
    if name == "none":
        return None
    weights = []
    for count, size in zip(geometry.blocks_per_dim, geometry.kernel_size):
        base = window_1d(name, size, sigma)
        _check_weights(base, spec, size, sigma)
        per_block = np.tile(base, (count, 1))
        if edge_aware:
            half = (size + 1) // 2
            per_block[0, :half] = 1.0
            per_block[-1, size - half :] = 1.0
        weights.append(per_block)
    return weights


def with_headroom(
    geometry: Geometry, weights: list[np.ndarray] | None, max_coverage: int
) -> tuple[list[np.ndarray], float]:
    """Weights that also scale every patch down by a power of two, so that no (weighted) sum of up
    to ``max_coverage`` patches can overflow, and the factor that undoes it.

    For a normalised fold of floats near the float64 maximum, whose plain sum overflows to inf
    although the mean it is divided into does not; a power of two scales exactly.
    """
    base = (
        weights
        if weights is not None
        else [np.ones((n, k)) for n, k in zip(geometry.blocks_per_dim, geometry.kernel_size)]
    )
    bound = max_coverage * math.prod(float(w.max()) for w in base)
    factor = 2.0 ** max(1, math.ceil(math.log2(max(bound, 1.0))))
    return [base[0] / factor, *base[1:]], factor
