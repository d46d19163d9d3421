"""Finding and checking the compiled loops ``patchfold._kernels``, without numpy.

The C structs' mirrors live here, and :func:`load` decides whether a built library is usable: it
is found (``importlib.util.find_spec``), loads (``ctypes.CDLL``) and every struct-size function it
exports agrees with the mirror here (a library built from other sources, older or with other
structs, is not used at all). :mod:`patchfold.engines.compiled` calls it to get the library it runs;
:func:`patchfold.about.engine_report` to say which CPU engine will run (for ``patchfold --version``,
which imports neither numpy nor torch).
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

#: The extension module the loops are built as (setup.py).
MODULE = "patchfold._kernels"

#: Spatial dims the C structs have room for (PF_MAX_DIMS in _kernels.c).
_MAX_DIMS = 3
_Dims = ctypes.c_int64 * _MAX_DIMS


class FoldDims(ctypes.Structure):
    """Mirror of ``pf_fold_dims`` in ``_kernels.c``: one call of ``fold_<src>_<acc>``."""

    _fields_ = [
        ("ndim", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("kernel", _Dims),
        ("blocks", _Dims),
        ("stride", _Dims),
        ("dilation", _Dims),
        ("size", _Dims),  # padded output size; size[0] unused
        ("row_lo", ctypes.c_int64),
        ("row_hi", ctypes.c_int64),
        ("kernel_step", ctypes.c_int64),
        ("block_step", ctypes.c_int64),
        ("channel_stride", ctypes.c_int64),
        ("zero", ctypes.c_int64),
    ]


class UnfoldDims(ctypes.Structure):
    """Mirror of ``pf_unfold_dims`` in ``_kernels.c``: one call of ``unfold_<bits>``."""

    _fields_ = [
        ("ndim", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("size", _Dims),
        ("kernel", _Dims),
        ("blocks", _Dims),
        ("stride", _Dims),
        ("dilation", _Dims),
        ("padding", _Dims),
        ("row_lo", ctypes.c_int64),
        ("row_hi", ctypes.c_int64),
        ("q_lo", ctypes.c_int64),
        ("q_hi", ctypes.c_int64),
        ("nlc", ctypes.c_int64),
        ("row_stride", ctypes.c_int64),
    ]


class FoldExtra(ctypes.Structure):
    """Mirror of ``pf_fold_extra`` in ``_kernels.c``: window weights and the normalisation of one
    call of ``foldx_<src>_<acc>``."""

    _fields_ = [
        ("weights", ctypes.c_void_p * _MAX_DIMS),
        ("divisor", ctypes.c_void_p * _MAX_DIMS),
        ("out_size", _Dims),
        ("offset", _Dims),
        ("out_channel_stride", ctypes.c_int64),
        ("scratch_bytes", ctypes.c_int64),
    ]


class PlaceDims(ctypes.Structure):
    """Mirror of ``pf_place_dims`` in ``_kernels.c``: one call of ``place_<src>``."""

    _fields_ = [
        ("ndim", ctypes.c_int64),
        ("count", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("kernel", _Dims),
        ("dilation", _Dims),
        ("band_size", _Dims),
        ("starts", ctypes.c_void_p),
        ("weights", ctypes.c_void_p * _MAX_DIMS),
        ("row_lo", ctypes.c_int64),
        ("row_hi", ctypes.c_int64),
        ("row0", ctypes.c_int64),
        ("in_strides", ctypes.c_int64 * (2 + _MAX_DIMS)),
    ]


class DivideDims(ctypes.Structure):
    """Mirror of ``pf_divide_dims`` in ``_kernels.c``: one call of ``divide_<dst>``."""

    _fields_ = [
        ("ndim", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("size", _Dims),
        ("sums_strides", ctypes.c_int64 * (1 + _MAX_DIMS)),
        ("out_strides", ctypes.c_int64 * (1 + _MAX_DIMS)),
        ("totals", ctypes.c_void_p * _MAX_DIMS),
        ("clear", ctypes.c_int64),
    ]


class BlendDims(ctypes.Structure):
    """Mirror of ``pf_blend_dims`` in ``_kernels.c``: one call of ``blend_<src>``."""

    _fields_ = [
        ("count", ctypes.c_int64),
        ("outputs", ctypes.c_void_p),
        ("places", ctypes.c_void_p),
        ("chunk_rows", ctypes.c_int64),
        ("row_lo", ctypes.c_int64),
        ("row_hi", ctypes.c_int64),
        ("sums_offset", ctypes.c_int64),
        ("divide", DivideDims),
    ]


class GatherDims(ctypes.Structure):
    """Mirror of ``pf_gather_dims`` in ``_kernels.c``: one call of ``gather_cl_<bits>``."""

    _fields_ = [
        ("ndim", ctypes.c_int64),
        ("count", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("kernel", _Dims),
        ("dilation", _Dims),
        ("src_strides", ctypes.c_int64 * (1 + _MAX_DIMS)),
        ("starts", ctypes.c_void_p),
    ]


class _Call(ctypes.Structure):
    """Mirror of ``pf_call`` in ``_kernels.c``: one recorded loop call."""

    _fields_ = [
        ("function", ctypes.c_void_p),
        ("first", ctypes.c_void_p),
        ("second", ctypes.c_void_p),
        ("dims", ctypes.c_void_p),
    ]


class _BatchStruct(ctypes.Structure):
    """Mirror of ``pf_batch`` in ``_kernels.c``."""

    _fields_ = [
        ("calls", ctypes.POINTER(_Call)),
        ("piece_ends", ctypes.POINTER(ctypes.c_int64)),
        ("pieces", ctypes.c_int64),
        ("next", ctypes.c_int64),
    ]


#: Each struct-size function of ``_kernels`` and the mirror it must agree with.
STRUCTS: tuple[tuple[str, type[ctypes.Structure]], ...] = (
    ("pf_fold_dims_size", FoldDims),
    ("pf_unfold_dims_size", UnfoldDims),
    ("pf_fold_extra_size", FoldExtra),
    ("pf_place_dims_size", PlaceDims),
    ("pf_gather_dims_size", GatherDims),
    ("pf_divide_dims_size", DivideDims),
    ("pf_blend_dims_size", BlendDims),
    ("pf_batch_size", _BatchStruct),
)


@dataclass(frozen=True)
class Loaded:
    """What :func:`load` found: the library where it is usable, else None and why not.

    ``reason`` is ``"not built"`` (no ``_kernels`` beside the package), ``"failed to load"`` or
    ``"struct mismatch"`` (built from other sources); ``detail`` says more, ``path`` is the file
    found (None where none was).
    """

    library: ctypes.CDLL | None
    path: str | None
    reason: str | None = None
    detail: str | None = None


def load(structs: Sequence[tuple[str, type[ctypes.Structure]]] | None = None) -> Loaded:
    """Find, load and check ``patchfold._kernels`` against ``structs`` (pairs of a struct-size
    function's name and the ctypes mirror whose size it must return; default :data:`STRUCTS`)."""
    structs = STRUCTS if structs is None else structs
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError) as error:
        return Loaded(None, None, "not built", str(error))
    if spec is None or not spec.origin:
        return Loaded(None, None, "not built", "the extension was not compiled (no C compiler at install?)")
    path = spec.origin
    try:
        library = ctypes.CDLL(path)
    except OSError as error:
        return Loaded(None, path, "failed to load", str(error))
    for name, struct in structs:
        size = getattr(library, name, None)
        if size is None:
            return Loaded(None, path, "struct mismatch", f"{name} is missing (built from other sources)")
        size.restype, size.argtypes = ctypes.c_int64, []
        found, expected = size(), ctypes.sizeof(struct)
        if found != expected:
            return Loaded(None, path, "struct mismatch", f"{name}() is {found}, patchfold expects {expected}")
    return Loaded(library, path)
