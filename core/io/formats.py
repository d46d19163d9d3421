"""The file formats patchfold writes beside its data: the patch matrix's sidecar, the tile manifest and
the dataset manifest.

Each records its block parameters with :meth:`Blocks.to_dict` and reads them back through
:meth:`Blocks.from_dict`, the one validator; every JSON file is read through :func:`read_json`, the
one error path for a file that is missing, not a regular file, too large, not JSON or too deeply
nested.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.blocks import Blocks
from patchfold.errors import PatchfoldError
from patchfold.geometry import LAYOUTS, Geometry
from patchfold.io.read import require_file
from patchfold.io.write import atomic_paths

SIDECAR_FORMAT = "patchfold-patches"
SIDECAR_VERSION = 1
TILES_FORMAT = "patchfold-tiles"
TILES_VERSION = 1
DATASET_FORMAT = "patchfold-dataset"
DATASET_VERSION = 1
TILE_DATASET_FORMAT = "patchfold-tile-dataset"

#: Largest JSON file read (a manifest of a million tiles is about 150 MB).
MAX_JSON_BYTES = 1 << 30


# ----- JSON in and out -----------------------------------------------------------------------------
def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in the regular file ``path`` (``what`` names it in messages: "sidecar")."""
    info = require_file(path, what)
    if info.st_size > MAX_JSON_BYTES:
        raise PatchfoldError(f"{what} '{path}' is {info.st_size} bytes, over the {MAX_JSON_BYTES} a {what} may have")
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except OSError as error:
        raise PatchfoldError(f"cannot read {what} '{path}': {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise PatchfoldError(f"cannot read {what} '{path}': it is not UTF-8 text ({error})") from None
    except ValueError as error:  # JSONDecodeError, and ints of more than 4300 digits
        raise PatchfoldError(f"{what} '{path}' is not valid JSON: {error}") from None
    except RecursionError:
        raise PatchfoldError(f"{what} '{path}' is nested too deeply to be a patchfold file") from None
    if not isinstance(data, dict):
        raise PatchfoldError(f"{what} '{path}' is not a patchfold {what} (it holds a JSON {type(data).__name__})")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_paths(path) as (temporary,):
        temporary.write_text(dumps(data), encoding="utf-8")


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1) + "\n"


def check_format(data: dict[str, Any], where: str, name: str, version: int, kind: str) -> None:
    """``"format"`` and ``"version"`` must be what this patchfold writes (``kind``: "sidecar"...)."""
    if data.get("format") != name:
        raise PatchfoldError(f'{where} is not a patchfold {kind} (expected "format": "{name}")')
    if data.get("version") != version:
        raise PatchfoldError(f"{where} has version {data.get('version')!r}; this patchfold reads version {version}")


def require(data: dict[str, Any], where: str, *names: str) -> None:
    missing = [name for name in names if name not in data]
    if missing:
        raise PatchfoldError(f"{where} lacks field(s) {', '.join(missing)}")


def shape_field(value: Any, where: str, name: str, minimum_rank: int = 3) -> tuple[int, ...]:
    """A recorded shape: a list of at least ``minimum_rank`` positive JSON ints."""
    if not (isinstance(value, list) and len(value) >= minimum_rank and all(type(v) is int and v > 0 for v in value)):
        raise PatchfoldError(f"{where}: {name} must be a list of {minimum_rank} or more positive ints, got {value!r}")
    return tuple(value)


def dtype_field(value: Any, where: str, name: str) -> np.dtype:
    """A recorded dtype name of real numbers."""
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except (TypeError, ValueError, SyntaxError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise PatchfoldError(f"{where}: {name} must be the name of a real numpy dtype, got {value!r}")
    return dtype


def geometry_field(blocks: Blocks, spatial_size: Sequence[int], where: str) -> Geometry:
    try:
        return blocks.at(tuple(spatial_size))
    except PatchfoldError as error:  # a fault in the file, not in an option
        raise PatchfoldError(f"{where}: the parameters do not fit: {error}") from None


def string_list(value: Any, where: str, name: str) -> tuple[str, ...]:
    if not (isinstance(value, list) and all(isinstance(v, str) and "\0" not in v for v in value)):
        raise PatchfoldError(f"{where}: {name} must be a list of strings, got {value!r}"[:300])
    return tuple(value)


# ----- the patch matrix's sidecar ------------------------------------------------------------------
@dataclass(frozen=True)
class Sidecar:
    """What ``fold`` needs to undo an ``unfold``: stored as ``OUT.json`` beside ``OUT.npy``."""

    blocks: Blocks
    input_shape: tuple[int, ...]
    input_dtype: str
    output_dtype: str
    scale: float = 1.0
    layout: str = "ncl"
    sources: tuple[str, ...] = field(default=())
    #: the pyramid level (and its resolution) read, where the input was a Zarr or pyramid source
    source_level: dict[str, Any] | None = None

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return tuple(self.input_shape[2:])

    @cached_property
    def geometry(self) -> Geometry:
        return geometry_field(self.blocks, self.spatial_size, "the sidecar")

    def matrix_shape(self) -> tuple[int, int, int]:
        """The shape of the patch matrix this sidecar describes."""
        return self.geometry.unfold_shape(self.input_shape[0], self.input_shape[1], self.layout)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.blocks.to_dict(),
            "input_shape": list(self.input_shape),
            "input_dtype": self.input_dtype,
            "output_dtype": self.output_dtype,
            "scale": self.scale,
            "layout": self.layout,
            "sources": list(self.sources),
            **({"source_level": self.source_level} if self.source_level is not None else {}),
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Sidecar:
        check_format(data, where, SIDECAR_FORMAT, SIDECAR_VERSION, "sidecar")
        require(
            data, where, "kernel_size", "stride", "padding", "dilation", "input_shape", "input_dtype", "output_dtype"
        )
        scale = data.get("scale", 1.0)
        if type(scale) not in (int, float) or not math.isfinite(scale) or scale <= 0:
            raise PatchfoldError(f"{where}: scale must be a positive number, got {scale!r}")
        layout = data.get("layout", "ncl")
        if layout not in LAYOUTS:
            raise PatchfoldError(f"{where}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        sidecar = cls(
            blocks=Blocks.from_dict(data, where),
            input_shape=shape_field(data["input_shape"], where, "input_shape"),
            input_dtype=str(dtype_field(data["input_dtype"], where, "input_dtype")),
            output_dtype=str(dtype_field(data["output_dtype"], where, "output_dtype")),
            scale=float(scale),
            layout=layout,
            sources=string_list(data.get("sources", []), where, "sources"),
            source_level=_level_field(data.get("source_level"), where),
        )
        sidecar.geometry  # noqa: B018 - the parameters must fit the recorded size
        return sidecar


def _level_field(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or type(value.get("level")) is not int or value["level"] < 0:
        raise PatchfoldError(f"{where}: source_level must be an object with a level (a whole number >= 0)")
    return value


#: Where a Zarr patch matrix keeps its sidecar: this key of the array's attributes.
ZARR_SIDECAR_KEY = "patchfold"


def sidecar_path(npy_path: Path) -> Path:
    return npy_path.with_suffix(".json")


def read_sidecar(npy_path: Path) -> Sidecar | None:
    """The sidecar beside a patch matrix (in its attributes for a Zarr one), or None when there is none."""
    if npy_path.suffix.lower() == ".zarr":
        from patchfold.io.sources import open_zarr

        attrs = open_zarr(npy_path).array.attrs
        data = attrs.get(ZARR_SIDECAR_KEY)
        return None if data is None else Sidecar.from_dict(dict(data), f"the sidecar in '{npy_path}'")
    path = sidecar_path(npy_path)
    if not os.path.lexists(path):
        return None
    return Sidecar.from_dict(read_json(path, "sidecar"), f"sidecar '{path}'")


def check_against_sidecar(cols: Any, sidecar: Sidecar, path: Path) -> None:
    """The patch matrix must have the shape the sidecar's unfold produced."""
    expected = sidecar.matrix_shape()
    if tuple(cols.shape) != expected:
        raise PatchfoldError(
            f"patch matrix '{path}' has shape {list(cols.shape)} but its sidecar ({sidecar.blocks.describe()}, "
            f"input_shape {list(sidecar.input_shape)}, layout {sidecar.layout}) describes {list(expected)}"
        )


# ----- the tile manifest ---------------------------------------------------------------------------
def tile_manifest(
    geometry: Geometry,
    input_shape: Sequence[int],
    dtype: Any,
    tile_format: str,
    images: list[dict[str, Any]],
    tiles: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ``manifest.json`` of a tile directory."""
    return {
        "format": TILES_FORMAT,
        "version": TILES_VERSION,
        **geometry.blocks.to_dict(),
        "blocks_per_dim": list(geometry.blocks_per_dim),
        "input_shape": list(input_shape),
        "dtype": str(dtype),
        "tile_format": tile_format,
        "images": images,
        "tiles": tiles,
    }


@dataclass(frozen=True)
class TileManifest:
    """A tile directory's manifest, validated: the geometry and every tile's file and block index."""

    geometry: Geometry
    input_shape: tuple[int, ...]
    dtype: np.dtype
    tiles: list[dict[str, Any]]
    images: list[dict[str, Any]]
    #: the keep rules the tiles were written with (``tiles --min-foreground``...): blocks they
    #: skipped have no tile, which a manifest without rules does not allow
    keep: dict[str, Any] | None = None

    @property
    def sources(self) -> list[str]:
        return [str(image.get("source", "")) for image in self.images]


def read_manifest(
    directory: Path, kind: str, name: str, version: int, *fields: str, absent: str
) -> tuple[dict[str, Any], str]:
    """The ``manifest.json`` of ``directory`` (a ``kind`` such as "tile manifest"): its data, of
    format ``name`` and ``version`` with ``fields``, and how messages name it. ``absent`` says what
    the directory is not when the file is missing."""
    path = directory / "manifest.json"
    if not os.path.lexists(path):
        raise PatchfoldError(f"'{directory}' {absent} (no manifest.json)")
    if path.resolve().parent != directory.resolve():
        raise PatchfoldError(f"'{path}' links outside '{directory}'; a manifest must be a file inside it")
    data = read_json(path, kind)
    where = f"{kind} '{path}'"
    check_format(data, where, name, version, kind)
    require(data, where, *fields)
    return data, where


def read_tile_manifest(directory: Path) -> TileManifest:
    if not directory.is_dir():
        raise PatchfoldError(f"tile directory '{directory}' does not exist")
    data, where = read_manifest(
        directory, "tile manifest", TILES_FORMAT, TILES_VERSION,
        "kernel_size", "stride", "padding", "dilation", "input_shape", "tiles",
        absent="is not a tile directory written by patchfold tiles",
    )  # fmt: skip
    shape = shape_field(data["input_shape"], where, "input_shape")
    geometry = geometry_field(Blocks.from_dict(data, where), shape[2:], where)
    tiles, images = data["tiles"], data.get("images", [])
    if not isinstance(tiles, list) or not all(isinstance(t, dict) and isinstance(t.get("file"), str) for t in tiles):
        raise PatchfoldError(f'{where}: "tiles" must be a list of objects with a "file" name')
    if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        raise PatchfoldError(f'{where}: "images" must be a list of objects')
    string_list([image.get("source", "") for image in images], where, "the images' sources")
    dtype = dtype_field(data.get("dtype", "uint8"), where, "dtype")
    keep = data.get("keep")
    if keep is not None and not isinstance(keep, dict):
        raise PatchfoldError(f'{where}: "keep" must be an object (the keep rules the tiles were written with)')
    return TileManifest(geometry, shape, dtype, tiles, images, keep)


# ----- the dataset manifest ------------------------------------------------------------------------
def source_max_value(dtype: Any) -> int | float:
    """An image entry's ``"max_value"``: the largest value of the dtype a source is read as (255
    for 8-bit images, 65535 for 16-bit, ``np.iinfo(dtype).max`` for any integer dtype, 1 for bool),
    and 1.0 for float sources, which are taken as already scaled. ``PatchDataset(to_float=True)``
    divides each patch by its own source's value, so 8- and 16-bit images in one dataset both give
    [0, 1]."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return int(np.iinfo(dtype).max)
    return 1 if dtype.kind == "b" else 1.0


def dataset_identity(manifest: dict[str, Any]) -> str:
    """What two runs must share to write the same dataset: parameters, shards and images (an
    image's ``max_value`` aside: datasets written before it was recorded stay resumable, and a
    source whose bit depth changed is redone by its fingerprint; and its keep record aside, whose
    threshold follows its pixels: a changed source keeping as many blocks is redone in place)."""
    keys = (
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "padding_mode",
        "channels",
        "dtype",
        "shards",
        "level",
        "keep",
    )
    unshared = ("error", "fingerprint", "max_value", "keep")
    images = [{k: v for k, v in image.items() if k not in unshared} for image in manifest["images"]]
    return json.dumps({**{k: manifest.get(k) for k in keys}, "images": images}, sort_keys=True)


_KEEP_COUNTS = ("kept", "skipped")


def identity_difference(existing: dict[str, Any], planned: dict[str, Any]) -> str:
    """Why a planned dataset is not the one a manifest holds, in words (for the refusal): the
    parameters that differ, other images, or images whose kept blocks changed (with keep rules an
    edited source keeps another number of blocks, which moves every later row)."""
    recorded, asked = json.loads(dataset_identity(existing)), json.loads(dataset_identity(planned))
    for manifest in (recorded, asked):  # the rules are parameters; the counts follow the images
        if manifest.get("keep"):
            manifest["keep"] = {k: v for k, v in manifest["keep"].items() if k not in _KEEP_COUNTS}
    differ = [key for key in sorted(recorded) if key not in ("images", "shards") and recorded[key] != asked.get(key)]
    if differ:
        return "other parameters (" + ", ".join(f"{key} {recorded[key]} -> {asked.get(key)}" for key in differ) + ")"
    sources = [image.get("source") for image in recorded["images"]]
    if sources != [image.get("source") for image in asked["images"]]:
        return "other images"
    moved = [
        f"'{old.get('source')}' {old.get('rows')} -> {new.get('rows')}"
        for old, new in zip(recorded["images"], asked["images"])
        if old.get("rows") != new.get("rows")
    ]
    if moved:
        return (
            "sources whose kept blocks changed (" + ", ".join(moved) + "), which moves every later row; "
            "only an unchanged row layout is redone in place"
        )
    return "other shards"


def read_dataset_manifest(directory: Path) -> dict[str, Any]:
    """A dataset's ``manifest.json``, validated enough to open its shards and index."""
    data, where = read_manifest(
        directory, "dataset manifest", DATASET_FORMAT, DATASET_VERSION, absent="is not a patchfold dataset"
    )
    return check_dataset_manifest(data, where)


def check_dataset_manifest(data: dict[str, Any], where: str, zarr: bool = False) -> dict[str, Any]:
    """A dataset manifest (a shard directory's ``manifest.json``, or with ``zarr`` the one in a Zarr
    store's attributes, whose one "shard" is its ``patches`` array), validated enough to open it."""
    check_format(data, where, DATASET_FORMAT, DATASET_VERSION, "dataset manifest")
    require(data, where, "kernel_size", "channels", "dtype", "index_columns", "shards", "images")
    expected = "zarr" if zarr else "npy"
    if data.get("store", "npy") != expected:
        raise PatchfoldError(f"{where}: store is {data.get('store')!r}, expected {expected!r}"[:300])
    Blocks.from_dict(data, where)
    if type(data["channels"]) is not int or data["channels"] < 1:
        raise PatchfoldError(f"{where}: channels must be a positive int, got {data['channels']!r}")
    dtype_field(data["dtype"], where, "dtype")
    columns = data["index_columns"]
    if not (isinstance(columns, list) and len(columns) >= 4 and all(isinstance(c, str) for c in columns)):
        raise PatchfoldError(f"{where}: index_columns must be a list of at least 4 names, got {columns!r}"[:300])
    (_check_zarr_shards if zarr else _check_shards)(data["shards"], where)
    images = data["images"]
    if not isinstance(images, list) or not all(
        isinstance(i, dict) and type(i.get("id")) is int and isinstance(i.get("source"), str) for i in images
    ):
        raise PatchfoldError(f'{where}: "images" must be a list of objects with an int "id" and a "source" name')
    scale = data.get("scale", 1.0)
    if not _number_in(scale, 1.0):
        raise PatchfoldError(f"{where}: scale must be a number in (0, 1], got {scale!r}"[:300])
    for image in images:  # absent in datasets written before it was recorded: see PatchDataset
        if "max_value" in image and not _number_in(image["max_value"], 2**64):
            raise PatchfoldError(
                f"{where}: image {image['id']}'s max_value must be a positive number up to 2**64 "
                f"(its source dtype's maximum), got {image['max_value']!r}"[:300]
            )
    return data


def _check_shards(shards: Any, where: str) -> None:
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("file"), str) and type(s.get("rows")) is int for s in shards
    ):
        raise PatchfoldError(f'{where}: "shards" must be a list of objects with a "file" name and "rows"')
    for shard in shards:
        if Path(shard["file"]).name != shard["file"] or not shard["file"].endswith(".npy"):
            raise PatchfoldError(f"{where}: shard file {shard['file']!r} must be a .npy name inside the dataset")


def _check_zarr_shards(shards: Any, where: str) -> None:
    """A Zarr store's one "shard" is its ``patches`` array."""
    one = shards[0] if isinstance(shards, list) and len(shards) == 1 and isinstance(shards[0], dict) else {}
    if set(one) != {"array", "rows"} or one["array"] != "patches" or type(one["rows"]) is not int:
        raise PatchfoldError(f'{where}: "shards" must be one object naming the "patches" array and its "rows"')


def _number_in(value: Any, most: float) -> bool:
    """A JSON int or float (not a bool) in ``(0, most]`` (NaN and infinities are not)."""
    return type(value) in (int, float) and 0 < value <= most
