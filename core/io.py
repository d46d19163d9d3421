"""Reading inputs, writing outputs atomically, and the patch matrix's JSON sidecar.

Inputs become one ``(N, C, *spatial)`` array. Outputs are written to a temporary file beside the
target and renamed into place, so a failed run never leaves a partial file or clobbers an existing
one. ``.npy`` files are always read with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.errors import PatchfoldError
from patchfold.geometry import LAYOUTS, PADDING_MODES, Geometry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm")
INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
#: Target dtypes of ``--dtype``; ``keep`` keeps the input's, floats scale integers to [0, 1].
DTYPES = ("keep", "float32", "float64", "float16")
#: Default limit for decoded pixels (Pillow's decompression-bomb guard), raised from Pillow's 89 M.
DEFAULT_MAX_PIXELS = 2**32
SIDECAR_FORMAT = "patchfold-patches"
SIDECAR_VERSION = 1

_CONVERT_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"}
_KEEP_MODES = {"L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I", "F"}


# ----- reading -----------------------------------------------------------------------------------
@dataclass
class Batch:
    """Loaded inputs: ``array`` is ``(N, C, *spatial)``; ``sources`` names each of the N items."""

    array: np.ndarray
    sources: list[str]

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return tuple(self.array.shape[2:])


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; directories become their images and ``.npy`` files, sorted by name."""
    paths: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise PatchfoldError(
                    f"directory '{path}' has no images or .npy files (looked for {', '.join(INPUT_SUFFIXES)})"
                )
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise PatchfoldError(f"input '{path}' does not exist")
    if not paths:
        raise PatchfoldError("no inputs given")
    return paths


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file into ``(C, H, W)`` in its natural dtype (16-bit stays 16-bit)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise PatchfoldError(
                    f"'{path}' has {image.width}x{image.height} = {image.width * image.height} pixels, over the "
                    f"limit of {max_pixels} (raise it with --max-pixels)"
                )
            image = _normalise_mode(image, path)
            pixels = np.asarray(image)
    except PatchfoldError:
        raise
    except Image.DecompressionBombError as error:
        raise PatchfoldError(f"'{path}' is over the pixel limit of {max_pixels}: {error}") from None
    except UnidentifiedImageError:
        raise PatchfoldError(f"'{path}' is not an image Pillow can read (PNG, JPEG, TIFF, BMP, WebP...)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise PatchfoldError(f"'{path}' is corrupt or truncated: {error}") from None
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    if pixels.dtype.byteorder == ">":
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)


def _normalise_mode(image: Any, path: Path) -> Any:
    mode = image.mode
    if mode in _KEEP_MODES:
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode in _CONVERT_TO_RGB:
        return image.convert("RGB")
    raise PatchfoldError(
        f"'{path}' has image mode {mode!r}, which patchfold does not read (supported: 1, L, LA, P, "
        "RGB, RGBA, CMYK, YCbCr, I;16, I, F)"
    )


def read_npy(path: Path, spatial_dims: int | None = None) -> np.ndarray:
    """Read a ``.npy`` (memory-mapped, never unpickled) and shape it ``(N, C, *spatial)``."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as error:
        raise PatchfoldError(f"cannot read '{path}': {error.strerror or error}") from None
    if magic != b"\x93NUMPY":
        raise PatchfoldError(f"'{path}' is not a .npy file (no NumPy header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower() or "object" in str(error).lower():
            raise PatchfoldError(
                f"'{path}' holds Python objects (a pickled array); patchfold never loads pickles"
            ) from None
        raise PatchfoldError(f"'{path}' is not a valid .npy file: {error}") from None
    except (OSError, EOFError) as error:
        raise PatchfoldError(f"'{path}' is not a valid .npy file: {error}") from None
    if not isinstance(array, np.ndarray):
        raise PatchfoldError(f"'{path}' is an .npz archive, not a single .npy array")
    if array.dtype.kind not in "biuf":
        raise PatchfoldError(f"'{path}' has dtype {array.dtype}; expected real numbers (bool, int, uint, float)")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    return shape_array(array, path, spatial_dims)


def shape_array(array: np.ndarray, path: Path | str, spatial_dims: int | None = None) -> np.ndarray:
    """Add missing N and C axes: by rank (1 → 1-D, 2–4 → 2-D, 5 → 3-D) or by ``spatial_dims``."""
    rank = array.ndim
    if spatial_dims is None:
        spatial_dims = {1: 1, 2: 2, 3: 2, 4: 2, 5: 3}.get(rank)
        if spatial_dims is None:
            raise PatchfoldError(
                f"'{path}' has shape {array.shape} (rank {rank}); expected rank 1 to 5, "
                "or say which axes are spatial with --spatial-dims"
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

    _, axes, pages, _ = header
    try:
        data = tifffile.memmap(path, mode="r", series=0)
    except (ValueError, OSError):
        try:
            data = tifffile.imread(path, series=0)
        except Exception as error:
            raise PatchfoldError(f"'{path}' is corrupt or truncated: {error}") from None
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    return _tiff_axes_to_channels_first(data, axes, pages)


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
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            pages = len(tiff.pages)
    except Exception as error:  # tifffile raises many types for a broken file
        raise PatchfoldError(f"'{path}' is not a TIFF tifffile can read: {error}") from None
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    if height * width > max_pixels:
        raise PatchfoldError(
            f"'{path}' has {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(raise it with --max-pixels)"
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
    path: Path, spatial_dims: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, stack: bool = False
) -> np.ndarray:
    """One input file as ``(N, C, *spatial)``; a multi-page TIFF is a volume ``(1, C, D, H, W)``
    and needs ``stack=True``."""
    if path.suffix.lower() == ".npy":
        return read_npy(path, spatial_dims)
    if path.stat().st_size == 0:
        raise PatchfoldError(f"'{path}' is an empty file")
    image = read_tiff(path, max_pixels) if path.suffix.lower() in (".tif", ".tiff") else None
    if image is None:
        image = read_image(path, max_pixels)
    return _image_item(image, path, spatial_dims, stack)


def _image_item(image: np.ndarray, path: Path, spatial_dims: int | None, stack: bool) -> np.ndarray:
    """An image ``(C, *spatial)`` as a batch of one, if its dims are what was asked for."""
    if image.ndim == 4 and not stack:
        raise PatchfoldError(f"'{path}' has {image.shape[1]} pages: pass --stack to read it as a 3-D volume (D, H, W)")
    wanted = image.ndim - 1
    if spatial_dims not in (None, wanted):
        raise PatchfoldError(f"'{path}' is a {wanted}-D image but --spatial-dims {spatial_dims} was asked for")
    return image[None]


def load_inputs(
    inputs: Sequence[str | Path],
    spatial_dims: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    stack: bool = False,
) -> Batch:
    """Load inputs into one batch; sizes and channel counts must agree.

    With ``stack``, 2-D images (a directory of slices, or several files) become the slices of one
    3-D volume ``(1, C, D, H, W)`` in the order given, and multi-page TIFFs are volumes.
    """
    paths = expand_inputs(inputs)
    arrays = [read_input(path, spatial_dims, max_pixels, stack) for path in paths]
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
    converted = array.astype(dtype)
    if scale != 1.0:
        converted *= dtype.type(scale)
    return converted


# ----- writing -----------------------------------------------------------------------------------
def check_output_path(path: Path, what: str = "output") -> None:
    """Fail before any work if the file ``path`` cannot be written."""
    if path.is_dir():
        raise PatchfoldError(f"{what} '{path}' is a directory; give a file path")
    check_parent(path, f"{what} directory")


def check_parent(path: Path, what: str) -> Path:
    """The directory that will hold ``path``; it must exist and be writable."""
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise PatchfoldError(f"{what} '{parent}' is a file, not a directory")
    if not parent.is_dir():
        raise PatchfoldError(f"{what} '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise PatchfoldError(f"{what} '{parent}' is not writable")
    return parent


def check_free_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise PatchfoldError(f"'{path}' needs {format_bytes(needed)} but only {format_bytes(free)} is free on its disk")


@contextlib.contextmanager
def atomic_paths(*targets: Path) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``targets``; on success move them all into place, on failure
    delete them. If one move fails, the targets already moved are put back as they were, so a set
    of outputs (a patch matrix and its sidecar) is replaced whole or not at all."""
    for target in targets:
        check_output_path(target)
    temporaries: list[Path] = []
    backups: list[tuple[Path, Path | None]] = []
    try:
        for target in targets:
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            os.close(handle)
            temporaries.append(Path(name))
        try:
            yield temporaries
        except OSError as error:  # disk full, file too large, I/O error: name the file being written
            raise PatchfoldError(f"cannot write '{targets[0]}': {_reason(error)}") from None
        mode = 0o666 & ~_umask()
        try:
            for temporary, target in zip(temporaries, targets):
                backups.append((target, _backup(target)))
                os.chmod(temporary, mode)
                os.replace(temporary, target)
        except OSError as error:
            _restore(backups[:-1])
            raise PatchfoldError(f"cannot write '{backups[-1][0]}': {error.strerror or error}") from None
    finally:
        for temporary in temporaries:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        for _, backup in backups:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()


def _reason(error: OSError) -> str:
    """An OSError in words; numpy's short writes carry no errno, so say what they usually mean."""
    if error.strerror:
        return error.strerror
    return f"{error} (is the disk full?)"


def _backup(target: Path) -> Path | None:
    """A hard link to the file a move is about to replace (None when there is none)."""
    if not target.exists():
        return None
    backup = Path(tempfile.mktemp(prefix=f".{target.name}.", suffix=".bak", dir=target.parent))
    try:
        os.link(target, backup)
    except OSError:
        backup = Path(tempfile.mktemp(prefix=f".{target.name}.", suffix=".bak", dir=target.parent))
        shutil.copy2(target, backup)
    return backup


def _restore(moved: list[tuple[Path, Path | None]]) -> None:
    for target, backup in reversed(moved):
        with contextlib.suppress(OSError):
            if backup is None:
                target.unlink()
            else:
                os.replace(backup, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write one ``.npy`` atomically."""
    with atomic_paths(path) as (temporary,), open(temporary, "wb") as handle:
        np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)


def to_image_array(pixels: np.ndarray, path: Path) -> np.ndarray:
    channels = pixels.shape[0]
    if pixels.ndim != 3:
        raise PatchfoldError(
            f"'{path}': only 2-D images can be written as image files (got shape {pixels.shape}); use .npy"
        )
    if pixels.dtype == np.uint8 and channels in (1, 2, 3, 4):
        return pixels[0] if channels == 1 else np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
    if channels == 1 and pixels.dtype in (np.uint16, np.int32, np.float32):
        return pixels[0]
    raise PatchfoldError(
        f"'{path}': cannot write {channels} channel(s) of {pixels.dtype} as an image "
        "(uint8 with 1-4 channels, or one channel of uint16/int32/float32); write .npy instead"
    )


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def parse_bytes(text: str) -> int:
    """``"2GB"``, ``"512MiB"``, ``"1e9"`` → bytes.

    >>> parse_bytes("2GB"), parse_bytes("512MiB")
    (2000000000, 536870912)
    """
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
        "K": 10**3,
        "M": 10**6,
        "G": 10**9,
    }
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number) :]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise PatchfoldError(f"expected a size like 2GB or 512MiB, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise PatchfoldError(f"expected a positive size, got {text!r}")
    return int(value)


# ----- sidecar -----------------------------------------------------------------------------------
@dataclass
class Sidecar:
    """What ``fold`` needs to undo an ``unfold``: stored as ``OUT.json`` beside ``OUT.npy``."""

    kernel_size: list[int]
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    input_shape: list[int]
    input_dtype: str
    output_dtype: str
    scale: float = 1.0
    layout: str = "ncl"
    padding_mode: str = "zeros"
    sources: list[str] = field(default_factory=list)
    format: str = SIDECAR_FORMAT
    version: int = SIDECAR_VERSION

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return tuple(self.input_shape[2:])

    def geometry(self) -> Geometry:
        try:
            return Geometry.create(
                self.spatial_size, self.kernel_size, self.stride, self.padding, self.dilation, self.padding_mode
            )
        except PatchfoldError as error:  # a fault in the file, not in an option
            raise PatchfoldError(f"the sidecar's parameters do not fit: {error}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path) -> Sidecar:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PatchfoldError(f"sidecar '{path}' is not valid JSON: {error}") from None
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise PatchfoldError(
                f'sidecar \'{path}\' is not a patchfold sidecar (expected "format": "{SIDECAR_FORMAT}")'
            )
        if data.get("version") != SIDECAR_VERSION:
            raise PatchfoldError(
                f"sidecar '{path}' has version {data.get('version')!r}; this patchfold reads version {SIDECAR_VERSION}"
            )
        required = ("kernel_size", "stride", "padding", "dilation", "input_shape", "input_dtype", "output_dtype")
        missing = [key for key in required if key not in data]
        if missing:
            raise PatchfoldError(f"sidecar '{path}' lacks field(s) {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        sidecar = cls(**{k: v for k, v in data.items() if k in known})
        sidecar._validate(path)
        return sidecar

    def _validate(self, path: Path) -> None:
        def int_list(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not (isinstance(value, list) and value and all(type(v) is int and v >= minimum for v in value)):
                raise PatchfoldError(f"sidecar '{path}': {name} must be a list of ints >= {minimum}, got {value!r}")

        for name, minimum in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("padding", 0), ("input_shape", 1)):
            int_list(name, minimum)
        if len(self.input_shape) < 3:
            raise PatchfoldError(f"sidecar '{path}': input_shape must be [N, C, *spatial], got {self.input_shape}")
        for name in ("input_dtype", "output_dtype"):
            try:
                kind = np.dtype(getattr(self, name)).kind
            except TypeError:
                kind = "?"
            if kind not in "biuf":
                raise PatchfoldError(
                    f"sidecar '{path}': {name} must be a real numpy dtype, got {getattr(self, name)!r}"
                )
        if self.layout not in LAYOUTS:
            raise PatchfoldError(f"sidecar '{path}': layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.padding_mode not in PADDING_MODES:
            raise PatchfoldError(
                f"sidecar '{path}': padding_mode must be one of {', '.join(PADDING_MODES)}, got {self.padding_mode!r}"
            )
        if not isinstance(self.scale, int | float) or not math.isfinite(self.scale) or self.scale <= 0:
            raise PatchfoldError(f"sidecar '{path}': scale must be a positive number, got {self.scale!r}")
        try:
            self.geometry()
        except PatchfoldError as error:
            raise PatchfoldError(f"sidecar '{path}': {error}") from None


def sidecar_path(npy_path: Path) -> Path:
    return npy_path.with_suffix(".json")


def read_sidecar(npy_path: Path) -> Sidecar | None:
    """The sidecar beside a patch matrix, or None when there is none."""
    path = sidecar_path(npy_path)
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PatchfoldError(f"cannot read sidecar '{path}': {error}") from None
    return Sidecar.from_json(text, path)


def read_patch_matrix(path: Path) -> np.ndarray:
    """A patch matrix ``.npy`` (memory-mapped) as ``(N, rows, cols)``; unbatched 2-D gains N=1."""
    if not path.exists():
        raise PatchfoldError(f"patch matrix '{path}' does not exist")
    if path.is_dir():
        raise PatchfoldError(f"patch matrix '{path}' is a directory; expected a .npy file")
    return read_npy(path, spatial_dims=1)  # one spatial dim: always (N, rows, cols)


def check_against_sidecar(cols: np.ndarray, sidecar: Sidecar, layout: str, path: Path) -> None:
    """The patch matrix must have the shape the sidecar's unfold produced."""
    geometry = sidecar.geometry()
    expected = geometry.unfold_shape(sidecar.input_shape[0], sidecar.input_shape[1], layout)
    if tuple(cols.shape) != expected:
        raise PatchfoldError(
            f"patch matrix '{path}' has shape {list(cols.shape)} but its sidecar ({geometry.describe()}, input_shape "
            f"{sidecar.input_shape}, layout {layout}) describes {list(expected)}"
        )


def restore_dtype(images: np.ndarray, input_dtype: str, scale: float) -> np.ndarray:
    """Undo ``convert_dtype``: scaled floats back to the integer dtype they came from."""
    target = np.dtype(input_dtype)
    if scale == 1.0 or target.kind not in "iu" or images.dtype.kind != "f":
        return images
    info = np.iinfo(target)
    return np.clip(np.rint(images.astype(np.float64) / scale), info.min, info.max).astype(target)


def fold_output_dtype(
    cols_dtype: np.dtype, normalize: bool, weighted: bool, restore: tuple[str, float] | None = None
) -> np.dtype:
    """The dtype a fold of ``cols_dtype`` patches writes (see :func:`patchfold.fold`)."""
    cols_dtype = np.dtype(cols_dtype)
    integer = cols_dtype.kind in "biu"
    if normalize:
        if restore is not None and restore[1] != 1.0 and cols_dtype.kind == "f" and np.dtype(restore[0]).kind in "iu":
            return np.dtype(restore[0])
        return cols_dtype
    if integer:
        return np.dtype(np.float64) if weighted else np.dtype(np.uint64 if cols_dtype == np.uint64 else np.int64)
    return cols_dtype


def image_targets(output: Path, count: int, names: Sequence[str] = ()) -> list[Path]:
    """Where each of ``count`` images goes: one file, ``{i}``-numbered files, or a directory."""
    if output.is_dir() or str(output).endswith(os.sep):
        stems = [Path(n).stem for n in names]
        if len(stems) != count or len(set(stems)) != count:
            stems = [f"{i:04d}" for i in range(count)]
        return [output / f"{stem}.png" for stem in stems]
    if "{i}" in str(output):
        return [Path(str(output).replace("{i}", f"{i:04d}")) for i in range(count)]
    if count > 1:
        raise PatchfoldError(
            f"output '{output}' is one image file but there are {count} images: put {{i}} in the "
            "name (out_{i}.png), give a directory, or write .npy"
        )
    return [output]


def save_images(targets: Sequence[Path], images: np.ndarray) -> None:
    """Write ``(N, C, H, W)`` as image files (or ``(N, C, D, H, W)`` volumes as multi-page TIFF),
    all or none: temporary files are renamed into place only when every one is written."""
    writers = []
    for target, pixels in zip(targets, images):
        writers.append(_volume_writer(pixels, target) if pixels.ndim == 4 else _image_writer(pixels, target))
    with atomic_paths(*targets) as temporaries:
        for write, temporary, target in zip(writers, temporaries, targets):
            try:
                write(temporary)
            except (KeyError, ValueError, OSError) as error:
                suffix = target.suffix.lower() or "file without suffix"
                raise PatchfoldError(f"cannot write '{target}' as a {suffix} image: {error}") from None


def _image_writer(pixels: np.ndarray, target: Path) -> Any:
    from PIL import Image

    image = Image.fromarray(to_image_array(pixels, target))
    image_format = Image.registered_extensions().get(target.suffix.lower())
    if image_format is None:
        raise PatchfoldError(f"'{target}': unknown image type {target.suffix!r}; use .png, .tif, .jpg, ... or .npy")
    return lambda temporary: image.save(temporary, format=image_format)


def _volume_writer(pixels: np.ndarray, target: Path) -> Any:
    """A 3-D volume ``(C, D, H, W)`` as one multi-page TIFF (one page per slice)."""
    if target.suffix.lower() not in (".tif", ".tiff"):
        raise PatchfoldError(f"'{target}': a 3-D volume is written as .tif (multi-page) or .npy")
    try:
        import tifffile
    except ImportError:
        raise PatchfoldError(f"'{target}': writing a volume as TIFF needs tifffile (pip install tifffile)") from None
    pages = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    return lambda temporary: tifffile.imwrite(temporary, np.ascontiguousarray(pages))


def probe_shape(
    inputs: Sequence[str | Path], spatial_dims: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape ``(N, C, *spatial)`` and dtype the inputs would load as, reading headers only where
    the format allows (``.npy``, and images whose mode needs no conversion)."""
    shapes, dtypes = [], []
    paths = expand_inputs(inputs)
    for path in paths:
        if path.suffix.lower() == ".npy":
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
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(path) as image:
            mode, width, height = image.mode, image.width, image.height
    except Image.DecompressionBombError as error:
        raise PatchfoldError(f"'{path}' is over the pixel limit of {max_pixels} (--max-pixels): {error}") from None
    except UnidentifiedImageError:
        raise PatchfoldError(f"'{path}' is not an image Pillow can read (PNG, JPEG, TIFF, BMP, WebP...)") from None
    except OSError as error:
        raise PatchfoldError(f"'{path}' is corrupt or truncated: {error}") from None
    if width * height > max_pixels:
        raise PatchfoldError(f"'{path}' has {width}x{height} pixels, over the limit of {max_pixels} (--max-pixels)")
    channels, dtype = _MODE_LAYOUT.get(mode, (None, None))
    if channels is None:
        return read_image(path, max_pixels)
    return np.broadcast_to(np.zeros((), dtype=dtype), (channels, height, width))


_MODE_LAYOUT = {
    "1": (1, np.uint8),
    "L": (1, np.uint8),
    "LA": (2, np.uint8),
    "RGB": (3, np.uint8),
    "RGBA": (4, np.uint8),
    "CMYK": (3, np.uint8),
    "YCbCr": (3, np.uint8),
    "I;16": (1, np.uint16),
    "I;16L": (1, np.uint16),
    "I;16B": (1, np.uint16),
    "I": (1, np.int32),
    "F": (1, np.float32),
}
