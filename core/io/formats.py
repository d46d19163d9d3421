"""The file formats patchfold writes beside its data: the patch matrix's sidecar, the tile manifest and
the dataset manifest, each read back through one validator."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.errors import PatchfoldError
from patchfold.geometry import LAYOUTS, PADDING_MODES, Geometry
from patchfold.io.write import atomic_paths

SIDECAR_FORMAT = "patchfold-patches"


SIDECAR_VERSION = 1


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


def check_against_sidecar(cols: np.ndarray, sidecar: Sidecar, layout: str, path: Path) -> None:
    """The patch matrix must have the shape the sidecar's unfold produced."""
    geometry = sidecar.geometry()
    expected = geometry.unfold_shape(sidecar.input_shape[0], sidecar.input_shape[1], layout)
    if tuple(cols.shape) != expected:
        raise PatchfoldError(
            f"patch matrix '{path}' has shape {list(cols.shape)} but its sidecar ({geometry.describe()}, input_shape "
            f"{sidecar.input_shape}, layout {layout}) describes {list(expected)}"
        )


MANIFEST_FORMAT = "patchfold-tiles"


MANIFEST_VERSION = 1


def manifest_geometry(manifest: dict[str, Any]) -> Geometry:
    m = manifest
    return Geometry.create(
        m["input_shape"][2:], m["kernel_size"], m["stride"], m["padding"], m["dilation"], m["padding_mode"]
    )


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not directory.is_dir():
        raise PatchfoldError(f"tile directory '{directory}' does not exist")
    if not path.exists():
        raise PatchfoldError(f"'{directory}' has no manifest.json: is it a directory written by patchfold tiles?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PatchfoldError(f"manifest '{path}' is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise PatchfoldError(f"'{path}' is not a patchfold tile manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise PatchfoldError(f"'{path}' has version {manifest.get('version')!r}; expected {MANIFEST_VERSION}")
    missing = [k for k in ("kernel_size", "stride", "padding", "dilation", "input_shape", "tiles") if k not in manifest]
    if missing:
        raise PatchfoldError(f"manifest '{path}' lacks field(s) {', '.join(missing)}")
    manifest.setdefault("padding_mode", "zeros")
    tiles = manifest["tiles"]
    if not isinstance(tiles, list) or not all(isinstance(t, dict) and isinstance(t.get("file"), str) for t in tiles):
        raise PatchfoldError(f'manifest \'{path}\': "tiles" must be a list of objects with a "file" name')
    if not isinstance(manifest.get("images", []), list):
        raise PatchfoldError(f"manifest '{path}': \"images\" must be a list")
    shape = manifest["input_shape"]
    if not (isinstance(shape, list) and len(shape) >= 3 and all(type(v) is int and v > 0 for v in shape)):
        raise PatchfoldError(f"manifest '{path}': input_shape must be [N, C, *spatial] of positive ints, got {shape!r}")
    try:
        manifest_geometry(manifest)
    except (PatchfoldError, TypeError) as error:  # a fault in the file, not in an option
        raise PatchfoldError(f"manifest '{path}': {error}") from None
    return manifest


DATASET_FORMAT = "patchfold-dataset"


DATASET_VERSION = 1


def _identity(manifest: dict[str, Any]) -> str:
    keys = ("kernel_size", "stride", "padding", "dilation", "padding_mode", "channels", "dtype", "shards")
    images = [{k: v for k, v in image.items() if k != "error"} for image in manifest.get("images", [])]
    return json.dumps({**{k: manifest.get(k) for k in keys}, "images": images}, sort_keys=True)


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    with atomic_paths(directory / "manifest.json") as (temporary,):
        temporary.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
