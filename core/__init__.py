"""patchfold: sliding-block unfold (im2col) and fold (overlap-add) for images and arrays.

>>> import numpy as np, patchfold
>>> x = np.arange(2 * 3 * 6 * 6, dtype=np.uint8).reshape(2, 3, 6, 6)
>>> cols = patchfold.unfold(x, kernel_size=4, stride=2)
>>> cols.shape
(2, 48, 4)
>>> bool((patchfold.fold(cols, (6, 6), 4, stride=2, normalize=True) == x).all())
True

Every public name loads on first use (see :func:`__getattr__`): ``import patchfold`` itself
imports neither numpy nor torch, so the command line starts fast and ``patchfold --help`` needs
neither; ``patchfold.PatchDataset`` imports torch where it is installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from patchfold._version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from patchfold.blocks import PADDING_MODES, Blocks
    from patchfold.choices import WINDOWS
    from patchfold.datasets.reader import PatchDataset, load_dataset
    from patchfold.engines import ENGINES
    from patchfold.errors import PatchfoldError
    from patchfold.geometry import LAYOUTS, Geometry
    from patchfold.ops import divisor, fold, overlap_stats, unfold
    from patchfold.patchwise import apply

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

#: Each public name and the module that defines it, imported on first use.
_LAZY = {
    "ENGINES": "patchfold.engines",
    "LAYOUTS": "patchfold.geometry",
    "PADDING_MODES": "patchfold.blocks",
    "WINDOWS": "patchfold.choices",
    "Blocks": "patchfold.blocks",
    "Geometry": "patchfold.geometry",
    "PatchfoldError": "patchfold.errors",
    "apply": "patchfold.patchwise",
    "divisor": "patchfold.ops",
    "fold": "patchfold.ops",
    "overlap_stats": "patchfold.ops",
    "unfold": "patchfold.ops",
    # the dataset reader subclasses torch's Dataset when torch is installed (a second to import)
    "PatchDataset": "patchfold.datasets.reader",
    "load_dataset": "patchfold.datasets.reader",
}


def __getattr__(name: str) -> Any:
    """A public name of patchfold, imported when first asked for (``patchfold.nn`` too).

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
