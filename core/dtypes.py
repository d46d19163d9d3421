"""The dtype policy, in one place: what dtype each operation accumulates in and writes, and how
``--dtype`` converts (integers scaled into [0, 1] when going to float, and back)."""

from __future__ import annotations

from typing import Any

import numpy as np
from patchfold.choices import DTYPES as DTYPES  # re-exported from patchfold.choices
from patchfold.errors import PatchfoldError


def target_dtype(dtype: np.dtype, target: str) -> tuple[np.dtype, float]:
    """The dtype ``--dtype target`` gives for input of ``dtype``, and the scale integers get
    (1/max of the integer type when going to float, else 1.0)."""
    if target not in DTYPES:
        raise PatchfoldError(f"dtype must be one of {', '.join(DTYPES)}, got {target!r}", param="dtype")
    dtype = np.dtype(dtype)
    if target == "keep":
        return dtype, 1.0
    scale = 1.0 / np.iinfo(dtype).max if dtype.kind in "iu" else 1.0
    return np.dtype(target), scale


def convert_dtype(array: np.ndarray, target: str) -> tuple[np.ndarray, float]:
    """Cast to ``target`` (one of :data:`DTYPES`); integers going to float are scaled into [0, 1].

    Returns the array and the scale applied (1.0 when none).
    """
    dtype, scale = target_dtype(array.dtype, target)
    return cast_scaled(array, dtype, scale), scale


def cast_scaled(array: np.ndarray, dtype: np.dtype, scale: float) -> np.ndarray:
    """``array`` as ``dtype`` (itself when it already is), multiplied by ``scale`` unless 1."""
    if dtype == array.dtype:
        return array
    if scale != 1.0 and dtype.itemsize < 4:  # 65535 is inf in float16: scale in float32 first
        return (array.astype(np.float32) * np.float32(scale)).astype(dtype)
    converted = array.astype(dtype)
    if scale != 1.0:
        converted *= dtype.type(scale)
    return converted


def restore_dtype(images: np.ndarray, input_dtype: str, scale: float) -> np.ndarray:
    """Undo ``convert_dtype``: scaled floats back to the integer dtype they came from."""
    target = np.dtype(input_dtype)
    if scale == 1.0 or target.kind not in "iu" or images.dtype.kind != "f":
        return images
    info = np.iinfo(target)
    return np.clip(np.rint(images.astype(np.float64) / scale), info.min, info.max).astype(target)


def fold_output_dtype(
    cols_dtype: Any, normalize: bool, weighted: bool, restore: tuple[str, float] | None = None
) -> Any:
    """The dtype a fold of ``cols_dtype`` patches gives (numpy or torch dtypes; see
    :func:`patchfold.fold`): normalised folds keep the patches' dtype, or give back the integer
    dtype ``restore = (input_dtype, scale)`` names when floats were scaled from it; sums of
    integers are int64 (uint64 for uint64), float64 when weighted; sums of floats keep their dtype."""
    if not isinstance(cols_dtype, np.dtype | type | str):  # a torch dtype
        if normalize or cols_dtype.is_floating_point:
            return cols_dtype
        return _torch_dtype(fold_output_dtype(_numpy_name(cols_dtype), normalize, weighted))
    cols_dtype = np.dtype(cols_dtype)
    if normalize:
        if restore is not None and restore[1] != 1.0 and cols_dtype.kind == "f" and np.dtype(restore[0]).kind in "iu":
            return np.dtype(restore[0])
        return cols_dtype
    if cols_dtype.kind in "biu":
        return np.dtype(np.float64) if weighted else np.dtype(np.uint64 if cols_dtype == np.uint64 else np.int64)
    return cols_dtype


def accumulator_dtype(dtype: Any, *, exact: bool = False, weighted: bool = False) -> Any:
    """The dtype a fold of ``dtype`` patches sums in, for numpy and torch dtypes alike (a torch
    dtype gives a torch dtype): integers in int64 (uint64 in uint64), weighted folds in float64,
    floats in their own precision as F.fold does (halves in float32), or in float64 with ``exact``:
    then a normalised fold of untouched patches gives the input back bit-exactly and near-maximal
    values cannot overflow."""
    if not isinstance(dtype, np.dtype | type | str):
        return _torch_dtype(accumulator_dtype(_numpy_name(dtype), exact=exact, weighted=weighted))
    dtype = np.dtype(dtype)
    if dtype.kind in "biu" and not weighted:
        return np.dtype(np.int64) if dtype != np.uint64 else np.dtype(np.uint64)
    if exact or weighted:  # float64, or the wider long double
        return np.dtype(np.float64) if dtype.itemsize <= 8 or dtype.kind != "f" else dtype
    if dtype == np.float16:
        return np.dtype(np.float32)
    return dtype


def _numpy_name(torch_dtype: Any) -> str:
    """A torch dtype's numpy name; bfloat16 (which numpy lacks) is a half for this policy."""
    name = str(torch_dtype).removeprefix("torch.")
    return "float16" if name == "bfloat16" else name


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    return getattr(torch, dtype.name)


def check_real_dtype(dtype: Any, what: str) -> None:
    if isinstance(dtype, np.dtype | type):
        kind = np.dtype(dtype).kind
    else:  # a torch dtype
        kind = "c" if getattr(dtype, "is_complex", False) else None
    if kind is not None and kind not in "biuf":
        raise PatchfoldError(f"{what} must hold real numbers (bool, int, uint or float), got dtype {dtype}")


def finish_fold(summed: Any, divisor_map: Any, dtype: Any, weighted: bool) -> Any:
    """Normalise (or not) and pick the output dtype; works for numpy arrays and tensors."""
    integer = not _is_float(dtype)
    if divisor_map is None:
        target = fold_output_dtype(dtype, False, weighted)
        return summed.astype(target, copy=False) if isinstance(summed, np.ndarray) else summed.to(target)
    covered = divisor_map > 0
    safe = divisor_map + (divisor_map == 0)
    if integer and not weighted:  # integer sums by integer counts: exact, whatever the magnitude
        values = _rounded_quotient(summed, safe) * covered
        return values.astype(dtype) if isinstance(values, np.ndarray) else values.to(dtype)
    if isinstance(summed, np.ndarray):
        work = np.float64 if integer else np.result_type(summed.dtype, np.float64 if weighted else summed.dtype)
        values = np.divide(summed, safe, dtype=work) * covered
        if integer:
            low, high = _integer_range(dtype)
            values = np.clip(np.rint(values), low, high)
        return values.astype(dtype)
    import torch

    values = summed.to(torch.float64 if integer or weighted else summed.dtype) / safe * covered
    if integer:
        low, high = _integer_range(dtype)
        values = values.round().clamp(low, high)
    return values.to(dtype)


def overflowed(summed: Any) -> bool:
    """True when a float sum holds inf or NaN (numpy or torch): a normalised fold then sums again
    with headroom (the inputs may have been finite values near the dtype's maximum)."""
    if not _is_float(summed.dtype):
        return False
    if isinstance(summed, np.ndarray):
        return not bool(np.isfinite(summed).all())
    import torch
    from patchfold.engines import tracing

    if tracing(summed):  # a recorded graph has no data-dependent branch: no second sum there
        return False
    return not bool(torch.isfinite(summed).all())


def undo_headroom(values: Any, factor: float) -> Any:
    """``values * factor`` for means computed from sums scaled by ``1 / factor`` (see
    :func:`patchfold.windows.with_headroom`). A true mean is never beyond the dtype's maximum, so
    a mean that rounding put one ulp past ``maximum / factor`` is held there (infinities in the
    input stay infinite)."""
    if isinstance(values, np.ndarray):
        limit = float(np.finfo(values.dtype).max) / factor
        return np.where(np.isinf(values), values, np.clip(values, -limit, limit)) * factor
    import torch

    limit = float(torch.finfo(values.dtype).max) / factor
    return torch.where(torch.isinf(values), values, values.clamp(-limit, limit)) * factor


def where_overflowed(summed: Any, finished: Any, rescued: Any) -> Any:
    """``rescued`` (a mean from sums with headroom) where ``summed`` overflowed, else ``finished``:
    pixels whose plain sum was finite keep that exact mean (headroom would flush subnormals)."""
    if isinstance(finished, np.ndarray):
        return np.where(np.isfinite(summed), finished, rescued)
    import torch

    return torch.where(torch.isfinite(summed), finished, rescued)


def _rounded_quotient(summed: Any, counts: Any) -> Any:
    """``summed / counts`` rounded half to even, in integer arithmetic (numpy or torch): exact for
    int64 and uint64 sums of any size (a float64 quotient is not above 2**53)."""
    if isinstance(summed, np.ndarray):
        quotient, remainder = np.divmod(summed, counts.astype(summed.dtype, copy=False))
    else:
        counts = counts.to(summed.dtype)
        quotient = summed.div(counts, rounding_mode="floor")
        remainder = summed - quotient * counts
    twice = remainder * 2  # remainder < counts (a block count): never overflows
    return quotient + ((twice > counts) | ((twice == counts) & (quotient % 2 == 1)))


#: Largest magnitude a float64 holds exactly: weighted integer sums must stay below it.
_EXACT_FLOAT = 2**53


def canonical_bool(array: Any) -> Any:
    """Bool data whose bytes are 0 and 1: numpy bools made from other bytes (a view of raw memory)
    would otherwise be summed by their byte values."""
    if isinstance(array, np.ndarray) and array.dtype == np.bool_:
        return array.view(np.uint8).astype(np.bool_)
    return array


def check_integer_sum(cols: Any, max_coverage: int, weighted: bool) -> None:
    """Refuse, before any work, a fold of integer patches whose sums could overflow the int64
    (uint64) accumulator, or, when weighted, leave the float64 range of exact integers. Decided
    from the dtype's range where that suffices, else from the data's own extremes."""
    dtype = cols.dtype
    if _is_float(dtype) or str(dtype) in ("bool", "torch.bool"):
        return
    unsigned_64 = str(dtype) in ("uint64", "torch.uint64")
    limit = _EXACT_FLOAT if weighted else (2**64 - 1 if unsigned_64 else 2**63 - 1)
    low, high = _integer_range(dtype)
    if max(high, -low) * max_coverage <= limit:
        return
    low, high = _extremes(cols)
    largest = max(high, -low)
    if largest * max_coverage > limit:
        what = "exactly in float64 (2**53)" if weighted else f"in {'uint64' if unsigned_64 else 'int64'}"
        raise PatchfoldError(
            f"folding these {dtype} patches could overflow: values up to {largest} summed over up to "
            f"{max_coverage} blocks exceed what fits {what}; fold a smaller range (or floats)"
        )


def _extremes(cols: Any) -> tuple[int, int]:
    """The smallest and largest value of an integer array or tensor (torch has no min/max for
    uint64: a CPU tensor is read through numpy, which shares its memory)."""
    if str(cols.dtype) == "torch.uint64":
        if cols.device.type != "cpu":
            raise PatchfoldError(f"torch has no uint64 arithmetic on {cols.device}; move the tensor to the CPU")
        cols = cols.numpy()
    return int(cols.min()), int(cols.max())


def _integer_range(dtype: Any) -> tuple[int, int]:
    """Smallest and largest value of an integer (or bool) numpy or torch dtype."""
    if str(dtype) in ("bool", "torch.bool"):
        return 0, 1
    if isinstance(dtype, np.dtype):
        info = np.iinfo(dtype)
    else:
        import torch

        info = torch.iinfo(dtype)
    return int(info.min), int(info.max)


def _is_float(dtype: Any) -> bool:
    if isinstance(dtype, np.dtype):
        return dtype.kind == "f"
    return bool(getattr(dtype, "is_floating_point", False))
