"""Block parameters: the kernel size, stride, padding, dilation and padding mode of a sliding-block
operation, normalised and validated in one place.

:class:`Blocks` is the one value type for them. Every public operation, the command line, the
sidecar, the tile manifest and the dataset manifest use it: ``to_dict`` writes it to JSON and
``from_dict`` is the only validator that reads it back. ``Blocks.at(spatial_size)`` gives the
:class:`~patchfold.geometry.Geometry` of one input.

>>> blocks = Blocks(16, stride=8)
>>> blocks.at((64, 48)).blocks_per_dim
(7, 5)
>>> Blocks.from_dict(blocks.to_dict()) == blocks
True
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from patchfold.errors import PatchfoldError

if TYPE_CHECKING:
    from patchfold.geometry import Geometry

IntOrSeq = int | Sequence[int]

#: How the border is padded before blocks are cut. ``zeros`` is PyTorch's (and the default); the
#: others repeat image content so edge patches are not darkened.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

#: Smallest value of each parameter (and of a spatial size).
MINIMUM = {"kernel_size": 1, "stride": 1, "dilation": 1, "padding": 0, "spatial_size": 1, "output_size": 1}

#: Largest size or parameter accepted: far beyond any real array, and small enough that every
#: product of them the engines form (byte offsets, padded sizes) fits in 64 bits.
MAX_VALUE = 2**40

#: The integer parameters of :class:`Blocks`, in PyTorch's order (``kernel_size, dilation, padding, stride``).
INT_PARAMS = ("kernel_size", "dilation", "padding", "stride")


def _one_int(value: Any, name: str) -> int:
    """``value`` as an int: Python and numpy ints, 0-d integer arrays and tensors; never a bool or
    a float (``operator.index`` refuses floats, so 2.5 is not silently truncated)."""
    dtype = str(getattr(value, "dtype", ""))
    if isinstance(value, bool) or "bool" in dtype:
        raise PatchfoldError(f"{name} must hold ints, got {value!r}", param=name)
    try:
        return operator.index(value)
    except TypeError:
        raise PatchfoldError(f"{name} must hold ints, got {value!r}", param=name) from None


def _is_scalar(value: Any) -> bool:
    return getattr(value, "ndim", 1) == 0 or not hasattr(value, "__iter__")


def as_ints(value: Any, name: str) -> tuple[int, ...]:
    """One int or a sequence of ints (list, tuple, numpy array, tensor) as a tuple, each within
    the parameter's range.

    >>> as_ints(3, "kernel_size"), as_ints([4, 2], "stride")
    ((3,), (4, 2))
    """
    if isinstance(value, str | bytes) or value is None:
        raise PatchfoldError(f"{name} must be an int or a sequence of ints, got {value!r}", param=name)
    if _is_scalar(value):
        values: tuple[int, ...] = (_one_int(value, name),)
    else:
        values = tuple(_one_int(v, name) for v in value)
        if not values:
            raise PatchfoldError(f"{name} must hold at least one int, got {value!r}", param=name)
    minimum = MINIMUM.get(name, 0)
    if any(v < minimum for v in values):
        what = "positive" if minimum == 1 else "non-negative"
        raise PatchfoldError(f"{name} must be {what}, got {list(values)}", param=name)
    if any(v > MAX_VALUE for v in values):
        raise PatchfoldError(f"{name} must be at most 2**40, got {list(values)}", param=name)
    return values


def as_int(value: Any, name: str) -> int:
    """One int (see :func:`as_ints`), not a sequence."""
    values = as_ints(value, name)
    if len(values) != 1 or not _is_scalar(value):
        raise PatchfoldError(f"{name} must be one int, got {value!r}", param=name)
    return values[0]


def per_dim(values: tuple[int, ...], ndim: int, name: str) -> tuple[int, ...]:
    """One value per spatial dim: a single value is replicated, otherwise the count must match.

    >>> per_dim((3,), 2, "kernel_size")
    (3, 3)
    """
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise PatchfoldError(
            f"{name} has {len(values)} values {list(values)} but the input has {ndim} spatial dim(s): "
            f"give one value or {ndim}",
            param=name,
        )
    return values


def to_tuple(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    """:func:`as_ints` then :func:`per_dim`.

    >>> to_tuple(3, 2, "kernel_size")
    (3, 3)
    """
    return per_dim(as_ints(value, name), ndim, name)


@functools.lru_cache(maxsize=256)
def _geometry(blocks: Blocks, size: tuple[int, ...]) -> Geometry:
    """Geometries are immutable: one per (blocks, size), so a training loop that calls the same
    operation every step validates it and computes its block counts once, not at every call."""
    from patchfold.geometry import Geometry

    return Geometry.of(size, blocks)


def np_bool() -> type:
    """numpy's bool type where numpy is loaded (``import patchfold`` does not load it)."""
    numpy = sys.modules.get("numpy")
    return numpy.bool_ if numpy is not None else bool


def check_padding_mode(mode: Any) -> str:
    if mode not in PADDING_MODES:
        raise PatchfoldError(
            f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {mode!r}", param="padding_mode"
        )
    return mode


@dataclass(frozen=True)
class Blocks:
    """The parameters of a sliding-block operation, independent of any input size.

    Each integer parameter is held as a tuple: one value (for every spatial dim) or one per dim.

    Args:
        kernel_size: block size, an int or one int per spatial dim.
        stride, padding, dilation: as in ``torch.nn.Unfold`` (keyword-only here).
        padding_mode: ``zeros`` (PyTorch's), ``reflect``, ``replicate`` or ``circular``.
        cover: cover every pixel: where the blocks of a dim stop short of its end, one more block
            ends exactly at the border (moved inward, as MONAI's sliding windows are), so no
            block reaches outside the image; a dim shorter than one block gets one block, centred,
            over padding in ``padding_mode``. ``padding`` must then be 0. The blocks still form a
            per-axis grid, so the divisor and the statistics stay separable.

    >>> Blocks((4, 2), stride=2)
    Blocks(kernel_size=(4, 2), stride=(2,), padding=(0,), dilation=(1,), padding_mode='zeros', cover=False)
    """

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)
    dilation: tuple[int, ...] = (1,)
    padding_mode: str = "zeros"
    cover: bool = False

    def __init__(
        self,
        kernel_size: IntOrSeq,
        *,
        stride: IntOrSeq = 1,
        padding: IntOrSeq = 0,
        dilation: IntOrSeq = 1,
        padding_mode: str = "zeros",
        cover: bool = False,
    ) -> None:
        values = {"kernel_size": kernel_size, "stride": stride, "padding": padding, "dilation": dilation}
        for name, value in values.items():
            object.__setattr__(self, name, as_ints(value, name))
        object.__setattr__(self, "padding_mode", check_padding_mode(padding_mode))
        if not isinstance(cover, bool | np_bool()):
            raise PatchfoldError(f"cover must be True or False, got {cover!r}", param="cover")
        if cover and any(self.padding):
            raise PatchfoldError(
                "cover places the blocks inside the image (only a dim shorter than one block is padded); "
                f"padding must be 0, got {list(self.padding)}",
                param="padding",
            )
        object.__setattr__(self, "cover", bool(cover))
        self.ndim  # noqa: B018 - the lengths must agree

    @property
    def ndim(self) -> int | None:
        """The number of spatial dims the parameters imply (None when every one is a single value)."""
        order = ("kernel_size", "stride", "padding", "dilation")
        lengths = [len(getattr(self, name)) for name in order]
        dims = [n for n in lengths if n > 1]
        if len(set(dims)) > 1:
            # the first parameter that disagrees with the kernel's (or the first list's) length is at fault
            culprit = next(name for name, n in zip(order, lengths) if n not in (1, dims[0]))
            listing = ", ".join(f"{name}={list(getattr(self, name))}" for name in order)
            raise PatchfoldError(
                f"{culprit} has {len(getattr(self, culprit))} values but the other parameters give {dims[0]} "
                f"spatial dims ({listing}): give one value or {dims[0]}",
                param=culprit,
            )
        return dims[0] if dims else None

    def at(self, spatial_size: IntOrSeq, context: str | None = None) -> Geometry:
        """The geometry of these blocks over an input of ``spatial_size``: one int per spatial dim
        (a sequence), or one int for every dim (as many as the parameters have, else 2). A fault's
        message ends with ``(context)`` when given (what the geometry was computed for)."""
        try:
            size = as_ints(spatial_size, "spatial_size")
            if _is_scalar(spatial_size):  # one int: every spatial dim of the parameters (2-D by default)
                size = size * (self.ndim or 2)
            return _geometry(self, size)
        except PatchfoldError as error:
            if context is None:
                raise
            raise PatchfoldError(f"{error} ({context})", param=error.param) from None

    def merged(self, overrides: Mapping[str, Any]) -> Blocks:
        """These blocks with the parameters in ``overrides`` that are not None replaced."""
        given = {name: value for name, value in overrides.items() if value is not None}
        unknown = set(given) - {f.name for f in fields(self)}
        if unknown:
            raise PatchfoldError(f"unknown block parameter(s) {', '.join(sorted(unknown))}")
        return Blocks(**{**self.to_dict(), **given})

    def replace(self, **changes: Any) -> Blocks:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists of ints and the mode's name (what sidecars and manifests record);
        ``"cover": true`` only where set, so files of plain blocks read as they always did."""
        recorded: dict[str, Any] = {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "padding_mode": self.padding_mode,
        }
        if self.cover:
            recorded["cover"] = True
        return recorded

    @classmethod
    def from_dict(cls, data: Any, where: str = "the block parameters") -> Blocks:
        """The one validator of recorded block parameters (a sidecar's, a manifest's): every field
        must be a non-empty list of JSON ints (or one int) in range; ``padding_mode`` may be absent
        (zeros). Faults raise :class:`PatchfoldError` naming ``where`` and the field."""
        if not isinstance(data, Mapping):
            raise PatchfoldError(f"{where}: expected an object of block parameters, got {type(data).__name__}")
        if "kernel_size" not in data:
            raise PatchfoldError(f"{where} lacks field kernel_size")
        values: dict[str, Any] = {}
        for name in INT_PARAMS:
            if name not in data:
                continue
            value = data[name]
            items = value if isinstance(value, list) else [value]
            if not items or not all(type(v) is int for v in items):
                raise PatchfoldError(f"{where}: {name} must be an int or a non-empty list of ints, got {value!r}")
            values[name] = items
        mode = data.get("padding_mode", "zeros")
        cover = data.get("cover", False)
        if type(cover) is not bool:
            raise PatchfoldError(f"{where}: cover must be true or false, got {cover!r}")
        try:
            return cls(**values, padding_mode=mode, cover=cover)
        except PatchfoldError as error:
            raise PatchfoldError(f"{where}: {error}") from None

    def describe(self) -> str:
        text = " ".join(
            f"{name}={list(getattr(self, name))}" for name in ("kernel_size", "stride", "padding", "dilation")
        )
        return text + (" cover" if self.cover else "")
