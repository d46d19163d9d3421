"""Access to the compiled loops in ``_kernels`` (through ctypes), or None where they did not build."""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache
from typing import Any

#: (patch dtype, accumulator dtype) -> suffix of the compiled fold for that pair.
_SOURCE_NAMES = {
    ("float32", "float32"): "f32_f32",
    ("float32", "float64"): "f32_f64",
    ("float64", "float64"): "f64_f64",
    ("float16", "float32"): "f16_f32",
    ("float16", "float64"): "f16_f64",
    ("uint8", "int64"): "u8_i64",
    ("bool", "int64"): "u8_i64",
    ("int8", "int64"): "i8_i64",
    ("uint16", "int64"): "u16_i64",
    ("int16", "int64"): "i16_i64",
    ("uint32", "int64"): "u32_i64",
    ("int32", "int64"): "i32_i64",
    ("int64", "int64"): "i64_i64",
    ("uint64", "uint64"): "u64_u64",
}


@cache
def _library() -> ctypes.CDLL | None:
    try:
        spec = importlib.util.find_spec("patchfold._kernels")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None


def available() -> bool:
    return _library() is not None


#: Integer arguments (after the two pointers) of the compiled loops, by number of spatial dims.
_FOLD_ARGUMENTS = {2: 16, 3: 21}


_UNFOLD_ARGUMENTS = {2: 18, 3: 24}


@cache
def fold(dtype_name: str, accumulator_name: str, ndim: int = 2) -> Any | None:
    """The C overlap-add of ``ndim`` (2 or 3) spatial dims for patches of one dtype into an
    accumulator of another, or None."""
    suffix = _SOURCE_NAMES.get((dtype_name, accumulator_name))
    if suffix is None or ndim not in _FOLD_ARGUMENTS:
        return None
    return _bind(f"fold{ndim}d_{suffix}", _FOLD_ARGUMENTS[ndim])


@cache
def unfold(itemsize: int, ndim: int = 2) -> Any | None:
    """The C block copy of ``ndim`` (2 or 3) spatial dims for items of this many bytes, or None."""
    if itemsize not in (1, 2, 4, 8) or ndim not in _UNFOLD_ARGUMENTS:
        return None
    return _bind(f"unfold{ndim}d_{itemsize * 8}", _UNFOLD_ARGUMENTS[ndim])


def _bind(name: str, integers: int) -> Any | None:
    """The library's function ``name(void *, void *, int64 × integers)``, or None where not built."""
    library = _library()
    function = getattr(library, name, None) if library is not None else None
    if function is None:
        return None
    function.restype = None
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * integers
    return function
