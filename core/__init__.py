"""patchfold: sliding-block unfold (im2col) and fold (overlap-add) for images and arrays.

>>> import numpy as np, patchfold
>>> x = np.arange(2 * 3 * 6 * 6, dtype=np.uint8).reshape(2, 3, 6, 6)
>>> cols = patchfold.unfold(x, kernel_size=4, stride=2)
>>> cols.shape
(2, 48, 4)
>>> bool((patchfold.fold(cols, (6, 6), 4, stride=2, normalize=True) == x).all())
True

``PatchDataset`` and ``load_dataset`` load on first use (see :func:`__getattr__`), so importing
patchfold never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from patchfold.blocks import PADDING_MODES, Blocks
from patchfold.engines import ENGINES
from patchfold.errors import PatchfoldError
from patchfold.geometry import LAYOUTS, Geometry
from patchfold.ops import divisor, fold, overlap_stats, unfold
from patchfold.patchwise import apply
from patchfold.windows import WINDOWS

__version__ = "1.0.0"

__all__ = [
    "ENGINES",
    "LAYOUTS",
    "PADDING_MODES",
    "WINDOWS",
    "Blocks",
    "Geometry",
    "PatchDataset",
    "PatchfoldError",
    "__version__",
    "apply",
    "divisor",
    "fold",
    "load_dataset",
    "overlap_stats",
    "unfold",
]

#: Names loaded on first use, and their modules: the dataset reader subclasses torch's ``Dataset``
#: when torch is installed, and torch takes a second or more to import.
_LAZY = {"PatchDataset": "patchfold.datasets.reader", "load_dataset": "patchfold.datasets.reader"}


def __getattr__(name: str) -> Any:
    """``patchfold.PatchDataset`` and ``patchfold.load_dataset``, imported when first asked for.

    Args:
        name: The attribute looked up.

    Returns:
        The object, which stays in the package's namespace from then on.
    """
    if name == "nn":  # the torch modules: a submodule that imports torch
        return importlib.import_module("patchfold.nn")
    if name not in _LAZY:
        raise AttributeError(f"module 'patchfold' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "nn"})
