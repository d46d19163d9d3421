"""The names and defaults the options choose from, in a module that imports nothing but the
standard library: the command line offers them (``--help``, choices, completion) without loading
numpy or torch, which only the command that runs needs. Each is re-exported by the module whose
behaviour it names (:mod:`patchfold.dtypes`, :mod:`patchfold.windows`, :mod:`patchfold.patchwise`,
:mod:`patchfold.io.read`), where it is documented with that behaviour."""

from __future__ import annotations

#: Target dtypes of ``--dtype``; ``keep`` keeps the input's, floats scale integers to [0, 1].
DTYPES = ("keep", "float32", "float64", "float16")

#: Window names accepted by ``fold(window=...)`` and ``--window``; ``gaussian`` takes an optional
#: sigma as a fraction of the kernel size, ``gaussian:0.25`` (default 0.125, MONAI's).
WINDOWS = ("none", "hann", "triangular", "gaussian", "pyramid")

#: What ``reduce`` accepts: per pixel (or block) over the output channels.
REDUCTIONS = ("none", "argmax", "max")

#: How a batch of patches is laid out in memory for a torch ``fn`` (``memory_format``); see
#: :data:`patchfold.patchwise.MEMORY_FORMATS`.
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")

#: How many patches go to ``fn`` at once by default.
DEFAULT_BATCH = 64

#: Tile file formats: ``png`` (uint8 with 1-4 channels, or one 16-bit channel), ``tif`` (also one
#: channel of float32/int32, and volumes), ``npy`` (anything, exact).
TILE_FORMATS = ("png", "tif", "npy")

#: Default limit for decoded pixels (Pillow's decompression-bomb guard), raised from Pillow's 89 M.
DEFAULT_MAX_PIXELS = 2**32
