"""Reading inputs: files, directories and globs found, images (Pillow, with one table of modes),
TIFFs (tifffile), ``.npy`` arrays (never unpickled), each shaped ``(N, C, *spatial)``; headers probed
without decoding where the format allows."""

from __future__ import annotations

import contextlib
import glob
import math
import os
import stat
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.choices import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS  # re-exported from patchfold.choices
from patchfold.errors import PatchfoldError
from patchfold.io import leases
from patchfold.io.levels import Level
from patchfold.io.logs import tifffile_messages, with_log
from patchfold.io.png import read_plain_png
from patchfold.io.slides import is_slide, open_slide
from patchfold.io.sources import RegionSource, is_zarr, open_pyramid_tiff, open_zarr
from patchfold.io.streams import is_stdio, stdin_file
from patchfold.memory import check_fits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm")


INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")


#: Every Pillow image mode patchfold reads: the mode it is converted to first (None: as it is), and
#: the channels and dtype it then has. Palette images become RGB, or RGBA when they have
#: transparency (``P`` is decided per image); 16-bit stays 16-bit.
IMAGE_MODES: dict[str, tuple[str | None, int, type]] = {
    "1": ("L", 1, np.uint8),
    "L": (None, 1, np.uint8),
    "LA": (None, 2, np.uint8),
    "P": ("RGB", 3, np.uint8),
    "PA": ("RGBA", 4, np.uint8),
    "RGB": (None, 3, np.uint8),
    "RGBA": (None, 4, np.uint8),
    "RGBX": ("RGB", 3, np.uint8),
    "RGBa": ("RGB", 3, np.uint8),
    "CMYK": ("RGB", 3, np.uint8),
    "YCbCr": ("RGB", 3, np.uint8),
    "LAB": ("RGB", 3, np.uint8),
    "HSV": ("RGB", 3, np.uint8),
    "I;16": (None, 1, np.uint16),
    "I;16L": (None, 1, np.uint16),
    "I;16B": (None, 1, np.uint16),
    "I": (None, 1, np.int32),
    "F": (None, 1, np.float32),
}


#: PNG colour types with several channels (grey + alpha, RGB, RGBA) and their channel counts:
#: Pillow reads such a PNG of 16 bits per sample as 8-bit, so patchfold reads it itself.
_DEEP_PNG_CHANNELS = {4: 2, 2: 3, 6: 4}


def deep_png_channels(image: Any, path: Path) -> int | None:
    """The channel count of a 16-bit grey+alpha, RGB or RGBA PNG (from its IHDR), else None."""
    if image.format != "PNG":
        return None
    with open(path, "rb") as handle:
        header = handle.read(26)  # signature, IHDR length and type, width, height, depth, colour type
    if len(header) < 26 or header[24] != 16:
        return None
    return _DEEP_PNG_CHANNELS.get(header[25])


def read_deep_png(path: Path, channels: int, width: int, height: int) -> np.ndarray:
    """A 16-bit multi-channel PNG as ``(H, W, C)`` uint16, through imagecodecs (never 8-bit)."""
    check_fits(channels * width * height * 2 * 2 + path.stat().st_size, f"decoding '{path}'")
    try:
        import imagecodecs
    except ImportError:
        raise PatchfoldError(
            f"'{path}' is a 16-bit {channels}-channel PNG: reading it without losing 8 bits needs imagecodecs "
            "(pip install 'patchfold[tiff]')"
        ) from None
    try:
        pixels = imagecodecs.png_decode(path.read_bytes())
    except Exception as error:  # imagecodecs raises its own error types
        raise PatchfoldError(f"'{path}' is not a readable PNG: {error}") from None
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)


def image_mode(image: Any, path: Path) -> tuple[str | None, int, type]:
    """How an opened image is read: :data:`IMAGE_MODES`' row for its mode (from its header)."""
    deep = deep_png_channels(image, path)
    if deep is not None:
        return None, deep, np.uint16
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        return "RGBA", 4, np.uint8
    if mode not in IMAGE_MODES:
        raise PatchfoldError(
            f"'{path}' has image mode {mode!r}, which patchfold does not read (supported: {', '.join(IMAGE_MODES)})"
        )
    return IMAGE_MODES[mode]


@dataclass
class Batch:
    """Loaded inputs: ``array`` is ``(N, C, *spatial)``; ``sources`` names each of the N items.
    ``array`` is a :class:`RegionSource` (read region by region) only where the caller asked for
    regions and the batch is one Zarr or pyramid input."""

    array: np.ndarray | RegionSource
    sources: list[str]

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return tuple(self.array.shape[2:])


def find_inputs(inputs: Sequence[str | Path], *, recursive: bool = False, unique: bool = False) -> list[Path]:
    """The input files of a command, in the order given: files as they are, directories as their
    images and ``.npy`` files (all levels with ``recursive``) and glob patterns (``**`` with
    ``recursive``), each directory or pattern sorted by name; ``-`` is standard input (an image or
    ``.npy``, see :mod:`patchfold.io.streams`). ``unique`` drops repeats (a dataset
    holds each image once; a batch may stack one image twice)."""
    paths: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if str(raw) == "":
            raise PatchfoldError("an input is an empty string; give a file, directory or pattern")
        if is_stdio(raw):  # standard input, copied once into a temporary file
            found = [stdin_file()]
        elif is_zarr(path):  # a Zarr array or OME-Zarr image is one input, not a folder of files
            found = [path]
        elif path.is_dir():
            found = [p for p in path.glob("**/*" if recursive else "*") if _is_input(p)]
            if not found:
                deeper = not recursive and any(_is_input(p) for p in path.glob("**/*"))
                hint = ": its sub-directories have some (-r/--recursive reads them)" if deeper else ""
                raise PatchfoldError(
                    f"directory '{path}' has no images or .npy files (looked for {', '.join(INPUT_SUFFIXES)}){hint}"
                )
        elif os.path.lexists(path):
            require_file(path)
            found = [path]
        elif glob.has_magic(str(raw)):
            found = [Path(p) for p in glob.glob(str(raw), recursive=recursive) if Path(p).is_file()]
            if not found:
                raise PatchfoldError(f"pattern '{raw}' matches no files")
        else:
            raise PatchfoldError(f"input '{path}' does not exist")
        paths.extend(sorted(found) if len(found) > 1 else found)
    if not paths:
        raise PatchfoldError("no inputs given")
    return list(dict.fromkeys(paths)) if unique else paths


def _is_input(path: Path) -> bool:
    return path.suffix.lower() in INPUT_SUFFIXES and path.is_file()


@contextlib.contextmanager
def open_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Any]:
    """Pillow's image of ``path`` (header read, pixels not yet decoded), within the pixel limit.
    Every failure inside the block, decoding included, becomes one :class:`PatchfoldError` naming
    the file, with any warning Pillow gave folded into it."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise PatchfoldError(
                        f"'{path}' has {image.width}x{image.height} = {image.width * image.height} pixels, over "
                        f"the limit of {max_pixels} (raise it with max_pixels=)"
                    )
                yield image
        except PatchfoldError:
            raise
        except Image.DecompressionBombError as error:
            raise PatchfoldError(f"'{path}' is over the pixel limit of {max_pixels} (max_pixels=): {error}") from None
        except UnidentifiedImageError:
            raise PatchfoldError(
                f"'{path}' is not an image Pillow can read (PNG, JPEG, TIFF, BMP, WebP...){_noted(caught)}"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as error:
            raise PatchfoldError(f"'{path}' is corrupt or truncated: {error}{_noted(caught)}") from None


def _noted(caught: list[warnings.WarningMessage]) -> str:
    return f" ({caught[0].message})" if caught else ""


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file into ``(C, H, W)`` in its natural dtype (16-bit stays 16-bit)."""
    plain = read_plain_png(path, max_pixels)  # most PNGs: decoded without Pillow, the same pixels
    if plain is not None:
        return np.moveaxis(plain, -1, 0)
    with open_image(path, max_pixels) as image:
        if getattr(image, "n_frames", 1) > 1 and image.format == "TIFF":
            raise PatchfoldError(
                f"'{path}' has {image.n_frames} pages: reading a multi-page TIFF needs tifffile "
                "(pip install 'patchfold[tiff]'); only its first page would be read otherwise"
            )
        convert_to, channels, dtype = image_mode(image, path)
        if deep_png_channels(image, path):
            pixels = read_deep_png(path, channels, image.width, image.height)
            return np.moveaxis(pixels, -1, 0)
        check_fits(channels * image.width * image.height * np.dtype(dtype).itemsize * 2, f"decoding '{path}'")
        pixels = np.asarray(image if convert_to is None else image.convert(convert_to))
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    if pixels.dtype.byteorder == ">":
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)


def require_file(path: Path, what: str = "input") -> os.stat_result:
    """The status of ``path``, which must be a regular file (never a FIFO or a device, which would
    block or never end)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise PatchfoldError(f"{what} '{path}' does not exist") from None
    except OSError as error:
        raise PatchfoldError(f"cannot read {what} '{path}': {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise PatchfoldError(f"{what} '{path}' is a directory; expected a file")
    if not stat.S_ISREG(info.st_mode):
        raise PatchfoldError(f"{what} '{path}' is not a regular file (a FIFO, socket or device)")
    return info


#: ``.npy`` files up to this size are read into memory: a copy another process cannot truncate
#: under us (a memory-mapped file that shrinks kills the reader with SIGBUS). Larger ones are
#: memory-mapped, so they stream in bounded memory, under a read lease (:mod:`patchfold.io.leases`).
MAX_READ_BYTES = 256 << 20


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int, bool]:
    """Shape, dtype, data offset and Fortran order of a ``.npy`` file, from its header alone."""
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                raise PatchfoldError(f"'{path}' is not a .npy file (no NumPy header)")
            handle.seek(0)
            version = tuple(np.lib.format.read_magic(handle))
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise PatchfoldError(f"'{path}' is a .npy of format version {version}; patchfold reads 1.0 and 2.0")
            return tuple(shape), np.dtype(dtype), handle.tell(), bool(fortran)
    except PatchfoldError:
        raise
    except OSError as error:
        raise PatchfoldError(f"cannot read '{path}': {error.strerror or error}") from None
    except (ValueError, SyntaxError, EOFError, TypeError, MemoryError, RecursionError) as error:
        raise PatchfoldError(f"'{path}' has a damaged .npy header: {error}") from None


def read_npy(path: Path, spatial_dims: int | None = None) -> np.ndarray:
    """Read a ``.npy`` (never unpickled; memory-mapped above :data:`MAX_READ_BYTES`) and shape it
    ``(N, C, *spatial)``."""
    return shape_array(read_npy_array(path), path, spatial_dims)


def read_npy_array(path: Path) -> np.ndarray:
    """A ``.npy`` of real numbers as it is stored (never unpickled; bools as uint8), checked
    against its header."""
    size = require_file(path).st_size
    shape, dtype, data_start, _ = npy_header(path)
    if dtype.hasobject:
        raise PatchfoldError(f"'{path}' holds Python objects (a pickled array); patchfold never loads pickles")
    expected = data_start + math.prod(shape) * dtype.itemsize
    if size != expected:
        raise PatchfoldError(
            f"'{path}' is not a valid .npy file: it is {size} bytes but its header ({list(shape)} {dtype}) "
            f"needs {expected} (truncated or damaged)"
        )
    try:
        array = np.load(path, mmap_mode="r" if size > MAX_READ_BYTES else None, allow_pickle=False)
        if isinstance(array, np.memmap) and getattr(array, "_mmap", None) is not None:
            leases.lease(path, array._mmap)  # a writer then waits, and we are told, instead of SIGBUS
    except (ValueError, OSError, EOFError) as error:  # the file changed since its header was read
        raise PatchfoldError(f"'{path}' is not a valid .npy file: {error}") from None
    if not isinstance(array, np.ndarray):
        raise PatchfoldError(f"'{path}' is an .npz archive, not a single .npy array")
    if array.dtype.kind not in "biuf":
        raise PatchfoldError(f"'{path}' has dtype {array.dtype}; expected real numbers (bool, int, uint, float)")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    return array


def shape_array(array: np.ndarray, path: Path | str, spatial_dims: int | None = None) -> np.ndarray:
    """Add missing N and C axes: by rank (1 → 1-D, 2–4 → 2-D, 5 → 3-D) or by ``spatial_dims``."""
    rank = array.ndim
    if spatial_dims is None:
        spatial_dims = {1: 1, 2: 2, 3: 2, 4: 2, 5: 3}.get(rank)
        if spatial_dims is None:
            raise PatchfoldError(
                f"'{path}' has shape {array.shape} (rank {rank}); expected rank 1 to 5, "
                "or say which axes are spatial with spatial_dims="
            )
    if not spatial_dims <= rank <= spatial_dims + 2:
        raise PatchfoldError(
            f"'{path}' has shape {array.shape} (rank {rank}); with {spatial_dims} spatial dim(s) "
            f"expected rank {spatial_dims} to {spatial_dims + 2}"
        )
    if array.size == 0:
        raise PatchfoldError(f"'{path}' is empty (shape {array.shape})")
    return array.reshape((1,) * (spatial_dims + 2 - rank) + array.shape)


def read_tiff(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """Read a TIFF with tifffile, memory-mapped where the file allows (uncompressed, contiguous),
    so a gigapixel TIFF is not decoded into a second copy. Returns ``(C, H, W)``, or ``(C, D, H, W)``
    for a multi-page stack; None when tifffile is not installed (Pillow reads it instead)."""
    header = _tiff_header(path, max_pixels)
    if header is None:
        return None
    import tifffile

    shape, axes, pages, dtype = header
    with tifffile_messages() as messages:
        try:
            data = tifffile.memmap(path, mode="r", series=0)
            if getattr(data, "_mmap", None) is not None:
                leases.lease(path, data._mmap)  # a writer then waits, and we are told, instead of SIGBUS
        except (ValueError, OSError):  # compressed or not contiguous: decode it
            check_fits(math.prod(shape) * dtype.itemsize, f"decoding '{path}'")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    data = _decode_tiff(path)
            except Exception as error:  # tifffile raises many types for a broken or exotic file
                if pages == 1:
                    return None  # a single page Pillow may still read (its codecs differ)
                raise PatchfoldError(f"'{path}' is corrupt or truncated: {with_log(error, messages)}") from None
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    return _tiff_axes_to_channels_first(data, axes, pages)


#: How much of a compressed or tiled TIFF tifffile reads per pass: its default (256 MiB) made the
#: decode of a 768 MiB image peak at three times that size; 16 MiB costs no measurable speed.
TIFF_READ_BUFFER = 16 << 20


def _decode_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        return tifffile.imread(path, series=0, buffersize=TIFF_READ_BUFFER)
    except TypeError:  # a tifffile without buffersize=
        return tifffile.imread(path, series=0)


def _probe_tiff(path: Path, max_pixels: int) -> np.ndarray | None:
    """A zero-stride stand-in for :func:`read_tiff`'s result (only the header is read)."""
    header = _tiff_header(path, max_pixels)
    if header is None:
        return None
    shape, axes, pages, dtype = header
    return _tiff_axes_to_channels_first(np.broadcast_to(np.zeros((), dtype), shape), axes, pages)


def _tiff_header(path: Path, max_pixels: int) -> tuple[tuple[int, ...], str, int, np.dtype] | None:
    """Shape, axes, page count and (native) dtype of a TIFF's first series, checked against the
    pixel limit; None when tifffile is not installed."""
    try:
        import tifffile
    except ImportError:
        return None
    with tifffile_messages() as messages:
        try:
            with tifffile.TiffFile(path) as tiff:
                series = tiff.series[0]
                shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
                pages = len(tiff.pages)
        except Exception as error:  # tifffile raises many types for a broken file
            raise PatchfoldError(f"'{path}' is not a TIFF tifffile can read: {with_log(error, messages)}") from None
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    if height * width > max_pixels:
        raise PatchfoldError(
            f"'{path}' has {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(raise it with max_pixels=)"
        )
    if dtype.kind not in "biuf":
        raise PatchfoldError(f"'{path}' holds {dtype} pixels; expected real numbers")
    return shape, axes, pages, dtype.newbyteorder("=")


def _tiff_axes_to_channels_first(data: np.ndarray, axes: str, pages: int) -> np.ndarray:
    """Reorder tifffile's axes (Y, X, S samples, C channels, and one page axis such as Z/Q/I/T)
    into ``(C, H, W)`` or ``(C, D, H, W)`` views, copying nothing."""
    channel_axes = [i for i, a in enumerate(axes) if a in "SC"]
    page_axes = [i for i, a in enumerate(axes) if a not in "SCYX"]
    if len(channel_axes) > 1 or len(page_axes) > 1:
        raise PatchfoldError(f"TIFF axes {axes!r} are not supported (expected pages, Y, X and samples)")
    order = channel_axes + page_axes + [axes.index("Y"), axes.index("X")]
    result = np.transpose(data, order)
    return result if channel_axes else result[None]


def read_input(
    path: Path,
    spatial_dims: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stack: bool = False,
    level: Level = None,
) -> np.ndarray | RegionSource:
    """One input file as ``(N, C, *spatial)``; a multi-page TIFF is a volume ``(1, C, D, H, W)``
    and needs ``stack=True``. Zarr inputs, whole-slide images, and TIFFs read at a pyramid
    ``level``, come back as a :class:`RegionSource` (nothing read yet)."""
    region = open_region(path, level)
    if region is not None:
        if spatial_dims not in (None, region.ndim - 2):
            raise PatchfoldError(
                f"'{path}' is a {region.ndim - 2}-D image but spatial_dims={spatial_dims} was asked for"
            )
        return region
    if path.suffix.lower() == ".npy":
        return read_npy(path, spatial_dims)
    if require_file(path).st_size == 0:
        raise PatchfoldError(f"'{path}' is an empty file")
    image = read_tiff(path, max_pixels) if path.suffix.lower() in (".tif", ".tiff") else None
    if image is None:
        image = read_image(path, max_pixels)
    return _image_item(image, path, spatial_dims, stack)


def is_tiled_image_tiff(path: Path) -> bool:
    """Whether ``path`` is a one-page tiled TIFF (which can be read tile row by tile row)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff") or not Path(path).is_file():
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            return len(tiff.pages) == 1 and bool(tiff.pages[0].is_tiled)
    except Exception:  # not a TIFF tifffile can open: the ordinary readers say why
        return False


def open_region(path: Path, level: Level = None) -> RegionSource | None:
    """The input at ``path`` as a :class:`RegionSource` where it is read region by region: a Zarr
    store, a whole-slide image (OpenSlide, by suffix), or a TIFF when a pyramid ``level`` (a
    number or a :class:`~patchfold.io.levels.LevelRequest`) is asked for; None for every other
    input."""
    if is_zarr(path):
        return open_zarr(path, level)
    if is_slide(path):
        return open_slide(path, level)
    if level is None:
        return None
    if path.suffix.lower() in (".tif", ".tiff"):
        return open_pyramid_tiff(path, level)
    option = "--level" if isinstance(level, int) else level.option.split()[0]
    raise PatchfoldError(
        f"'{path}' has one resolution; {option} applies to pyramidal TIFF and Zarr inputs and to slides",
        param="level",
    )


def _image_item(image: np.ndarray, path: Path, spatial_dims: int | None, stack: bool) -> np.ndarray:
    """An image ``(C, *spatial)`` as a batch of one, if its dims are what was asked for."""
    if image.ndim == 4 and not stack:
        raise PatchfoldError(
            f"'{path}' has {image.shape[1]} pages: pass stack=True to read it as a 3-D volume (D, H, W)"
        )
    wanted = image.ndim - 1
    if spatial_dims not in (None, wanted):
        raise PatchfoldError(f"'{path}' is a {wanted}-D image but spatial_dims={spatial_dims} was asked for")
    return image[None]


def load_inputs(
    inputs: Sequence[str | Path],
    spatial_dims: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stack: bool = False,
    *,
    level: Level = None,
    regions: bool = False,
) -> Batch:
    """Load inputs into one batch; sizes and channel counts must agree.

    With ``stack``, 2-D images (a directory of slices, or several files) become the slices of one
    3-D volume ``(1, C, D, H, W)`` in the order given, and multi-page TIFFs are volumes. ``level``
    picks the resolution of pyramidal TIFF, Zarr and slide inputs (a number, or a
    :class:`~patchfold.io.levels.LevelRequest`). With ``regions``, a single Zarr, slide or
    pyramid input stays a :class:`RegionSource` for the caller to read band by band; otherwise it
    is read whole (within the memory budget).
    """
    paths = find_inputs(inputs)
    read = [read_input(path, spatial_dims, max_pixels, stack, level) for path in paths]
    if regions and len(read) == 1 and isinstance(read[0], RegionSource):
        return Batch(read[0], [read[0].path] * read[0].shape[0])
    arrays = [item.load() if isinstance(item, RegionSource) else item for item in read]
    slices = stack and all(a.ndim == 4 for a in arrays)  # 2-D images to stack into one volume
    if len(arrays) == 1 and not slices:
        return Batch(arrays[0], [str(paths[0])] * arrays[0].shape[0])
    _check_agree(paths, arrays, "stack into one volume" if slices else "stack into one batch")
    parts = [a.astype(np.result_type(*arrays), copy=False) for a in arrays]
    if slices:
        volume = np.stack([part[0] for part in parts], axis=1)[None]
        return Batch(volume, [str(paths[0].parent if len(paths) > 1 else paths[0])])
    sources = [str(p) for p, a in zip(paths, arrays) for _ in range(a.shape[0])]
    return Batch(np.concatenate(parts), sources)


def _check_agree(paths: Sequence[Path], arrays: Sequence[np.ndarray], purpose: str) -> None:
    if len({a.shape[1:] for a in arrays}) > 1:
        listing = "; ".join(f"'{p}' {_describe(a)}" for p, a in zip(paths, arrays))
        raise PatchfoldError(f"inputs must agree in size and channel count to {purpose}: {listing}")


def _describe(array: np.ndarray) -> str:
    size = "x".join(str(s) for s in array.shape[2:][::-1])
    return f"{size} with {array.shape[1]} channel(s)"


def probe_shape(
    inputs: Sequence[str | Path],
    spatial_dims: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    level: Level = None,
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape ``(N, C, *spatial)`` and dtype the inputs would load as, reading headers only where
    the format allows (``.npy``, Zarr, pyramid levels, and images whose mode needs no conversion)."""
    shapes, dtypes = [], []
    paths = find_inputs(inputs)
    for path in paths:
        region = open_region(path, level)
        if region is not None:
            array: Any = region
        elif path.suffix.lower() == ".npy":
            array = read_npy(path, spatial_dims)
        else:
            image = _probe_tiff(path, max_pixels) if path.suffix.lower() in (".tif", ".tiff") else None
            array = _image_item(_probe_image(path, max_pixels) if image is None else image, path, spatial_dims, False)
        shapes.append(array.shape)
        dtypes.append(array.dtype)
    if len({s[1:] for s in shapes}) > 1:
        listing = "; ".join(f"'{p}' {list(s)}" for p, s in zip(paths, shapes))
        raise PatchfoldError(f"inputs must agree in size and channel count: {listing}")
    return (sum(s[0] for s in shapes), *shapes[0][1:]), np.result_type(*dtypes)


def _probe_image(path: Path, max_pixels: int) -> np.ndarray:
    """A zero-stride stand-in array with the image's shape and dtype (only the header is read)."""
    with open_image(path, max_pixels) as image:
        _, channels, dtype = image_mode(image, path)
        shape = (channels, image.height, image.width)
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def patch_matrix_items(path: Path) -> int:
    """How many items N the patch matrix at ``path`` holds, from its header or Zarr metadata
    (a ``.zarr`` is not read, as :func:`read_patch_matrix` would read it whole)."""
    if is_zarr(path):
        shape = open_zarr(path).array.shape
        return int(shape[0]) if len(shape) == 3 else 1
    return int(read_patch_matrix(path).shape[0])  # memory-mapped: the header only


def read_patch_matrix(path: Path) -> np.ndarray:
    """A patch matrix ``.npy`` (memory-mapped) or ``.zarr`` (read whole, within the memory budget)
    as ``(N, rows, cols)``; unbatched 2-D gains N=1."""
    if is_zarr(path):
        array = open_zarr(path).array
        check_fits(int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize, f"reading '{path}'")
        try:
            values = np.asarray(array[...])
        except Exception as error:  # a damaged chunk: name the store, as the region reads do
            raise PatchfoldError(f"cannot read patch matrix '{path}': {error}") from None
        return shape_array(values, path, spatial_dims=1)
    require_file(path, "patch matrix")
    return read_npy(path, spatial_dims=1)  # one spatial dim: always (N, rows, cols)
