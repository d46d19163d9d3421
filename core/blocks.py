"""Block parameters: the kernel size, stride, padding, dilation and padding mode of a sliding-block
operation, normalised and validated in one place."""

from __future__ import annotations

from collections.abc import Sequence

from patchfold.errors import PatchfoldError

IntOrSeq = int | Sequence[int]


#: How the border is padded before blocks are cut. ``zeros`` is PyTorch's (and the default); the
#: others repeat image content so edge patches are not darkened.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


_PARAM_MINIMUM = {"kernel_size": 1, "stride": 1, "dilation": 1, "padding": 0}


#: Largest size or parameter accepted: far beyond any real array, and small enough that every
#: product of them the engines form (byte offsets, padded sizes) fits in 64 bits.
MAX_VALUE = 2**40


def to_tuple(value: IntOrSeq, ndim: int, name: str) -> tuple[int, ...]:
    """Normalise an int or a sequence to one int per spatial dim (length-1 sequences replicate).

    >>> to_tuple(3, 2, "kernel_size")
    (3, 3)
    >>> to_tuple((4, 2), 2, "stride")
    (4, 2)
    """
    if isinstance(value, bool):
        raise PatchfoldError(f"{name} must be an int or a sequence of ints, got {value!r}", param=name)
    if isinstance(value, int) or hasattr(value, "__index__"):
        values: tuple[int, ...] = (int(value),) * ndim
    else:
        try:
            values = tuple(_as_int(v, name) for v in value)
        except TypeError:
            raise PatchfoldError(f"{name} must be an int or a sequence of ints, got {value!r}", param=name) from None
        if len(values) == 1:
            values = values * ndim
        elif len(values) != ndim:
            raise PatchfoldError(
                f"{name} has {len(values)} values {list(values)} but the input has {ndim} spatial "
                f"dim(s): give one value or {ndim}",
                param=name,
            )
    minimum = _PARAM_MINIMUM.get(name)
    if minimum is not None and any(v < minimum for v in values):
        what = "positive" if minimum == 1 else "non-negative"
        raise PatchfoldError(f"{name} must be {what}, got {list(values)}", param=name)
    if any(v > MAX_VALUE for v in values):
        raise PatchfoldError(f"{name} must be at most 2**40, got {list(values)}", param=name)
    return values


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise PatchfoldError(f"{name} must hold ints, got {value!r}", param=name)
    return int(value)  # type: ignore[call-overload]


def infer_spatial_dims(*params: IntOrSeq | None, default: int = 2) -> int:
    """The number of spatial dims implied by the longest parameter sequence (ints imply none)."""
    lengths = [len(p) for p in params if p is not None and not isinstance(p, int) and hasattr(p, "__len__")]
    longest = max(lengths, default=1)
    return longest if longest > 1 else default
