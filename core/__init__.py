"""patchfold: sliding-block unfold (im2col) and fold (overlap-add) for images and arrays.

>>> import numpy as np, patchfold
>>> x = np.arange(2 * 3 * 6 * 6, dtype=np.uint8).reshape(2, 3, 6, 6)
>>> cols = patchfold.unfold(x, kernel_size=4, stride=2)
>>> cols.shape
(2, 48, 4)
>>> bool((patchfold.fold(cols, (6, 6), 4, stride=2, normalize=True) == x).all())
True
"""

from patchfold.blocks import PADDING_MODES, Blocks
from patchfold.datasets.reader import PatchDataset, load_dataset
from patchfold.engines import ENGINES
from patchfold.errors import PatchfoldError
from patchfold.geometry import LAYOUTS, Geometry
from patchfold.ops import divisor, fold, overlap_stats, unfold
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
    "divisor",
    "fold",
    "load_dataset",
    "overlap_stats",
    "unfold",
]
