"""Inputs read region by region: Zarr arrays (v2 and v3), OME-Zarr images, the levels of
pyramidal TIFFs (through tifffile's Zarr view of the file) and whole-slide images (OpenSlide, in
:mod:`patchfold.io.slides`).

A :class:`RegionSource` looks like the ``(N, C, *spatial)`` array the other readers return
(``shape``, ``dtype``, ``ndim``, ``nbytes``) but holds no pixels: the unfold job asks it for the
rows of the first spatial dim that each band needs (:meth:`RegionSource.rows`), so a level much
larger than memory streams through in bounded memory. Jobs that need the whole array take it with
:meth:`RegionSource.load`, which checks the memory budget first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.coverage import NUMPY_PAD_MODE
from patchfold.errors import PatchfoldError
from patchfold.io.levels import Level, LevelRequest, LevelScale, pick_level
from patchfold.io.logs import tifffile_messages, with_log
from patchfold.memory import check_fits

#: Where a Zarr node keeps its metadata: v3 (``zarr.json``) or v2 (``.zarray`` / ``.zgroup``).
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


#: Axis letters, as OME-Zarr and tifffile name them, by the role they take in ``(N, C, *spatial)``.
BATCH_AXES = "TI"
CHANNEL_AXES = "CS"
SPATIAL_AXES = "ZYX"


def convert_channels(array: np.ndarray, channels: int | None, source: str) -> np.ndarray:
    """``(N, C, *spatial)`` to ``channels``: grey↔RGB, alpha dropped; None keeps what there is.
    Grey is ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601), rounded for integers, computed pixel by
    pixel so that a band of rows converts exactly as the whole image does."""
    have = array.shape[1]
    if channels is None or channels == have:
        return array
    if channels == 3 and have in (1, 2):
        return np.repeat(array[:, :1], 3, axis=1)
    if channels == 3 and have == 4:
        return array[:, :3]
    if channels == 1 and have in (3, 4):
        red, green, blue = (array[:, i : i + 1].astype(np.float64) for i in range(3))
        grey = red * 0.299 + green * 0.587 + blue * 0.114
        return np.rint(grey).astype(array.dtype) if array.dtype.kind in "iu" else grey.astype(array.dtype)
    if channels == 1 and have == 2:
        return array[:, :1]
    raise PatchfoldError(f"'{source}' has {have} channel(s); cannot convert to {channels}")


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a Zarr array or group (a directory with Zarr metadata)."""
    return path.is_dir() and any((path / marker).is_file() for marker in ZARR_MARKERS)


def zarr_module() -> Any:
    """The zarr package (3 or later), or one clear error naming the extra that installs it."""
    try:
        import zarr
    except ImportError:
        raise PatchfoldError("reading or writing Zarr needs the zarr package: pip install 'patchfold[zarr]'") from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise PatchfoldError(f"reading or writing Zarr needs zarr 3 or later; this is zarr {zarr.__version__}")
    return zarr


@dataclass
class RegionSource:
    """An image ``(N, C, *spatial)`` read on demand from ``array`` (anything numpy-sliceable whose
    axes are named by ``axes``, e.g. ``"YXS"`` or ``"CYX"``), with where it came from."""

    array: Any
    axes: str
    path: str
    level: int = 0
    levels: int = 1
    #: micrometres per pixel along each spatial dim, where the file records it
    resolution: tuple[float, ...] | None = None
    #: the level's magnification, where the file records an objective power
    magnification: float | None = None
    #: the request by resolution (``--mpp``, ``--magnification``) that picked the level, if any
    asked: LevelRequest | None = None
    #: the channel count read (:func:`convert_channels` of every region), or None for the file's own
    channels: int | None = None
    _order: list[int] = field(init=False, repr=False)
    _shape: tuple[int, ...] = field(init=False, repr=False)
    _first: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        axes = self.axes.upper()
        if len(axes) != self.array.ndim or len(set(axes)) != len(axes):
            raise PatchfoldError(f"'{self.path}' has axes '{self.axes}' for shape {tuple(self.array.shape)}")
        unknown = set(axes) - set(BATCH_AXES + CHANNEL_AXES + SPATIAL_AXES)
        batch = [i for i, a in enumerate(axes) if a in BATCH_AXES]
        channels = [i for i, a in enumerate(axes) if a in CHANNEL_AXES]
        spatial = [axes.index(a) for a in SPATIAL_AXES if a in axes]
        if unknown or len(batch) > 1 or len(channels) > 1 or not spatial:
            raise PatchfoldError(
                f"'{self.path}' has axes '{self.axes}'; expected at most one of T/I (items), one of C/S "
                "(channels) and at least one of Z, Y, X"
            )
        kind = np.dtype(self.array.dtype).kind
        if kind not in "biuf":
            raise PatchfoldError(
                f"'{self.path}' has dtype {self.array.dtype}; expected real numbers (bool, int, uint, float)"
            )
        shape = tuple(int(n) for n in self.array.shape)
        if "Z" in axes and len(spatial) > 1 and shape[axes.index("Z")] == 1:
            spatial.remove(axes.index("Z"))  # a single plane: a 2-D image, its Z axis dropped below
        self._order = batch + channels + spatial
        self._first = spatial[0]
        self._shape = (
            shape[batch[0]] if batch else 1,
            shape[channels[0]] if channels else 1,
            *(shape[i] for i in spatial),
        )
        if 0 in self._shape:
            raise PatchfoldError(f"'{self.path}' is empty (shape {shape})")
        if self.channels is not None:  # checked now: the first read would fail otherwise
            convert_channels(np.zeros((1, self._shape[1], 1), self.dtype), self.channels, self.path)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, C, *spatial)`` as read: ``C`` is :attr:`channels` where that is set."""
        if self.channels is None:
            return self._shape
        return (self._shape[0], self.channels, *self._shape[2:])

    @property
    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.array.dtype)
        return np.dtype(np.uint8) if dtype.kind == "b" else dtype  # bools as uint8, as a .npy is read

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` of the first spatial dim, all items and channels: ``(N, C, hi-lo, ...)``."""
        index = tuple(slice(lo, hi) if axis == self._first else self._kept(axis) for axis in range(self.array.ndim))
        try:
            region = np.asarray(self.array[index])
        except Exception as error:  # a damaged chunk or an unreadable tile: name the file
            raise PatchfoldError(f"cannot read rows {lo}..{hi} of '{self.path}': {error}") from None
        kept = [axis for axis in range(self.array.ndim) if not isinstance(self._kept(axis), int)]
        region = region.transpose([kept.index(axis) for axis in self._order]).astype(self.dtype, copy=False)
        region = region.reshape((*self._shape[:2], hi - lo, *self._shape[3:]))
        return convert_channels(region, self.channels, self.path)

    def _kept(self, axis: int) -> slice | int:
        """The index of a source axis when reading: all of it, or 0 for a dropped single Z plane."""
        return slice(None) if axis in self._order else 0

    def load(self) -> np.ndarray:
        """The whole image in memory, ``(N, C, *spatial)`` (the budget checked first)."""
        check_fits(self.nbytes, f"reading '{self.path}' whole")
        return np.ascontiguousarray(self.rows(0, self._shape[2]))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self.load()
        return array if dtype is None else array.astype(dtype, copy=False)

    def describe(self) -> dict[str, Any]:
        """What the sidecar and manifests record of this source."""
        info: dict[str, Any] = {"path": self.path, "level": self.level, "levels": self.levels}
        if self.resolution is not None:
            info["mpp"] = [round(r, 6) for r in self.resolution]
        if self.magnification is not None:
            info["magnification"] = round(self.magnification, 6)
        if self.asked is not None:
            info["asked"] = self.asked.to_dict()
        return info


def padded_slab(
    source: RegionSource, widths: tuple[tuple[int, int], ...], mode: str, top: int, height: int
) -> np.ndarray:
    """Rows ``[top, top + height)`` of the image padded on every spatial dim by ``widths``
    (before, after) in ``mode``, reading only the source rows they come from."""
    size, (pad, after) = source.shape[2], widths[0]
    positions = np.arange(top, top + height) - pad
    if mode == "zeros":
        inside = (positions >= 0) & (positions < size)
        index = positions.clip(0, size - 1)
    else:  # where each padded row comes from in reflect, replicate or circular padding
        index = np.pad(np.arange(size), (pad, after), mode=NUMPY_PAD_MODE[mode])[top : top + height]  # type: ignore[call-overload]
        inside = np.ones(height, dtype=bool)
    shape = (*source.shape[:2], height, *(n + a + b for n, (a, b) in zip(source.shape[3:], widths[1:])))
    lo, hi = int(index.min()), int(index.max()) + 1
    check_fits((hi - lo + height) * source.nbytes // size + int(np.prod(shape)) * source.dtype.itemsize, "a band")
    rows = source.rows(lo, hi)
    run = inside.all() and np.array_equal(index, np.arange(lo, hi))  # rows as they come: one copy, no gather
    slab = np.array(rows, order="C") if run else rows[:, :, index - lo]
    slab[:, :, ~inside] = 0
    rest = [(0, 0)] * 3 + list(widths[1:])
    if any(a or b for a, b in widths[1:]):
        slab = np.pad(slab, rest) if mode == "zeros" else np.pad(slab, rest, mode=NUMPY_PAD_MODE[mode])  # type: ignore[call-overload]
    return np.ascontiguousarray(slab)


# ----- openers ------------------------------------------------------------------------------------


def open_zarr(path: Path, level: Level = None) -> RegionSource:
    """A Zarr array, an OME-Zarr image (a group with ``multiscales``: ``level`` picks the
    resolution, 0 the full one, or a :class:`~patchfold.io.levels.LevelRequest` the level nearest
    its scale) or a group holding one array, as a :class:`RegionSource`."""
    zarr = zarr_module()
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise PatchfoldError(f"'{path}' is not a readable Zarr store: {error}") from None
    if hasattr(node, "shape"):  # an array
        pick_level(path, level, 1, lambda: [LevelScale()])
        return RegionSource(node, _plain_axes(node, path), str(path))
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        image, datasets = _ome_image(path, multiscales)
        axes = "".join(_axis_name(a) for a in image.get("axes", [])) or None
        chosen = pick_level(
            path, level, len(datasets), lambda: [LevelScale.of(_ome_resolution(image, d, axes)) for d in datasets]
        )
        try:
            array = node[datasets[chosen]["path"]]
        except (KeyError, FileNotFoundError):
            raise PatchfoldError(
                f"'{path}': its OME multiscales name level {chosen} '{datasets[chosen]['path']}', which the store "
                "does not hold (or it is not an array)"
            ) from None
        if not hasattr(array, "shape"):
            raise PatchfoldError(f"'{path}': OME multiscales level {chosen} '{datasets[chosen]['path']}' is a group")
        return RegionSource(
            array,
            axes or _plain_axes(array, path),
            str(path),
            level=chosen,
            levels=len(datasets),
            resolution=_ome_resolution(image, datasets[chosen], axes),
            asked=_asked(level),
        )
    arrays = list(node.array_keys())
    if len(arrays) != 1:
        raise PatchfoldError(
            f"'{path}' is a Zarr group with {len(arrays)} arrays and no OME multiscales; give one of them as "
            f"'{path}/NAME' ({', '.join(arrays[:5]) or 'none'})"
        )
    pick_level(path, level, 1, lambda: [LevelScale()])
    return RegionSource(node[arrays[0]], _plain_axes(node[arrays[0]], path), f"{path}/{arrays[0]}")


def open_pyramid_tiff(path: Path, level: Level) -> RegionSource:
    """Level ``level`` of a pyramidal (tiled, multi-resolution) TIFF, read tile by tile through
    tifffile's Zarr view of the file (a :class:`~patchfold.io.levels.LevelRequest` picks the level
    from the resolution tags)."""
    zarr = zarr_module()
    import tifffile

    with tifffile_messages() as messages:
        return _open_tiff_level(path, level, zarr, tifffile, messages)


def _open_tiff_level(path: Path, level: Level, zarr: Any, tifffile: Any, messages: list[str]) -> RegionSource:
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            levels = len(series.levels)
            chosen = pick_level(
                path, level, levels, lambda: [LevelScale.of(_tiff_resolution(tiff, series, i)) for i in range(levels)]
            )
            axes = series.levels[chosen].axes
            resolution = _tiff_resolution(tiff, series, chosen)
        store = tifffile.imread(path, aszarr=True, series=0, level=chosen)
        array = zarr.open(store, mode="r")
    except PatchfoldError:
        raise
    except Exception as error:
        raise PatchfoldError(f"'{path}' is not a readable TIFF: {with_log(error, messages)}") from None
    return RegionSource(array, axes, str(path), level=chosen, levels=levels, resolution=resolution, asked=_asked(level))


def _asked(level: Level) -> LevelRequest | None:
    return level if isinstance(level, LevelRequest) else None


def _ome_image(path: Path, multiscales: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The first image of OME ``multiscales`` metadata and its datasets, checked for the fields read."""
    image = multiscales[0] if isinstance(multiscales, list) and multiscales else None
    datasets = image.get("datasets") if isinstance(image, dict) else None
    axes = image.get("axes", []) if isinstance(image, dict) else None
    if (
        not isinstance(datasets, list)
        or not datasets
        or not all(isinstance(d, dict) and isinstance(d.get("path"), str) for d in datasets)
        or not isinstance(axes, list)
    ):
        raise PatchfoldError(
            f"'{path}' has OME multiscales metadata without a list of datasets, each with a path "
            "(and axes as a list): it does not follow the OME-Zarr layout"
        )
    return image, datasets


def _plain_axes(array: Any, path: Path) -> str:
    """Axes of a Zarr array without OME names: as a ``.npy`` is read (rank 2: YX; 3: CYX; 4: ICYX;
    5: ICZYX), or the names xarray and OME put in ``_ARRAY_DIMENSIONS`` / ``dimension_names``."""
    names = getattr(getattr(array, "metadata", None), "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    if names and all(isinstance(n, str) and len(n) == 1 for n in names):
        return "".join(names).upper()
    by_rank = {1: "X", 2: "YX", 3: "CYX", 4: "ICYX", 5: "ICZYX"}
    if array.ndim not in by_rank:
        raise PatchfoldError(f"'{path}' has shape {tuple(array.shape)} (rank {array.ndim}); expected rank 1 to 5")
    return by_rank[array.ndim]


def _axis_name(axis: Any) -> str:
    name = axis.get("name", "") if isinstance(axis, dict) else str(axis)
    return {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(name.lower(), name.upper()[:1] or "?")


def _ome_resolution(image: dict[str, Any], dataset: dict[str, Any], axes: str | None) -> tuple[float, ...] | None:
    """Micrometres per pixel of the spatial axes from a dataset's scale transform (OME units)."""
    scale = next(
        (t.get("scale") for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"), None
    )
    if not scale or not axes or len(scale) != len(axes):
        return None
    units = {_axis_name(a): (a.get("unit") if isinstance(a, dict) else None) for a in image.get("axes", [])}
    factor = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, None: 1.0}
    values = []
    for letter, value in zip(axes, scale):
        if letter in SPATIAL_AXES:
            if units.get(letter) not in factor:
                return None
            values.append(float(value) * factor[units.get(letter)])
    return tuple(values) or None


def _tiff_resolution(tiff: Any, series: Any, level: int) -> tuple[float, ...] | None:
    """Micrometres per pixel (Y, X) of a level from the base page's resolution tags, scaled by the
    level's size; None where the file records none (or in inches per pixel without a unit)."""
    page = series.levels[0].pages[0]
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if xres is None or yres is None or unit is None:
        return None
    per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # micrometres per inch / per centimetre
    if per_unit is None:
        return None
    base = tuple(per_unit * v[1] / v[0] for v in (yres.value, xres.value) if v[0])
    if len(base) != 2:
        return None
    full, this = series.levels[0].shape, series.levels[level].shape
    axes = series.levels[level].axes
    fy = full[axes.index("Y")] / this[axes.index("Y")]
    fx = full[axes.index("X")] / this[axes.index("X")]
    return (base[0] * fy, base[1] * fx)
