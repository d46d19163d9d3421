"""The names and defaults the options choose from, in a module that imports nothing but the
standard library: the command line offers them (``--help``, choices, completion) without loading
numpy or torch, which only the command that runs needs. Each is re-exported by the module whose
behaviour it names, so the older imports keep working (:mod:`patchfold.dtypes`,
:mod:`patchfold.windows`, :mod:`patchfold.patchwise`, :mod:`patchfold.io.read`,
:mod:`patchfold.jobs.tiles`)."""

from __future__ import annotations

#: Target dtypes of ``--dtype``; ``keep`` keeps the input's, floats scale integers to [0, 1].
DTYPES = ("keep", "float32", "float64", "float16")

#: Window names accepted by ``fold(window=...)`` and ``--window``; ``gaussian`` takes an optional
#: sigma as a fraction of the kernel size, ``gaussian:0.25`` (default 0.125, MONAI's).
WINDOWS = ("none", "hann", "triangular", "gaussian", "pyramid")

#: What ``reduce`` accepts: per pixel (or block) over the output channels.
REDUCTIONS = ("none", "argmax", "max")

#: How a batch of 2-D or 3-D patches is laid out in memory for a torch ``fn`` (``memory_format``):
#: ``auto`` gives a ``torch.nn.Module`` in eval mode (TorchScript and exported programs too)
#: channels-last batches (``torch.channels_last``, ``channels_last_3d``) where it takes them and
#: returns the same values as for contiguous ones (checked on a probe of random patches before the
#: first batch), else, and to other callables, contiguous ones; the other two force one. The values
#: do not depend on it (to float rounding); the speed does: PyTorch's CPU convolutions ran 1.7-3x
#: faster on channels-last batches here (bench/apply.py).
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")

#: How many patches go to ``fn`` at once by default.
DEFAULT_BATCH = 64

#: Tile file formats: ``png`` (uint8 with 1-4 channels, or one 16-bit channel), ``tif`` (also one
#: channel of float32/int32, and volumes), ``npy`` (anything, exact).
TILE_FORMATS = ("png", "tif", "npy")

#: Default limit for decoded pixels (Pillow's decompression-bomb guard), raised from Pillow's 89 M.
DEFAULT_MAX_PIXELS = 2**32
