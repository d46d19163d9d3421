"""Generators of hostile files for tests/test_hostile_matrix.py: broken PNG/TIFF/NPY bytes, JSON
bombs, byte-flip and truncation variants (deterministic seeds), and a small corpus of good inputs
to derive them from.

Every generator returns bytes or writes into a directory it is given; nothing here runs patchfold.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

#: What every pre-existing output starts as; a failed run must leave it byte-identical.
SENTINEL = b"pre-existing output of an earlier run: a failed patchfold run must not touch me\n"


# ----- PNG -----------------------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(width: int, height: int, color_type: int = 6, bit_depth: int = 8) -> bytes:
    """A tiny PNG whose IHDR declares ``width × height`` (colour type 6: RGBA) over 64 zero bytes of
    pixel data: 69 bytes for a 65535×65535 RGBA picture (17 GB decoded)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ----- TIFF ----------------------------------------------------------------------------------------
def tiff_bytes(pixels: np.ndarray, **kwargs: Any) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, **kwargs)
    return buffer.getvalue()


def tiff_header_bomb(width: int, height: int) -> bytes:
    """The first 4 KB of a TIFF whose header declares ``width × height`` uint8 pixels (the pixel
    data itself is cut off)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((16, 16), np.uint8), metadata=None)
    small = buffer.getvalue()
    # rewrite ImageWidth (256) and ImageLength (257) in the first IFD (little-endian classic TIFF)
    data = bytearray(small)
    (offset,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[offset : offset + 2])
    for i in range(count):
        entry = offset + 2 + 12 * i
        (tag,) = struct.unpack("<H", data[entry : entry + 2])
        if tag in (256, 257):
            value = width if tag == 256 else height
            data[entry + 2 : entry + 4] = struct.pack("<H", 4)  # LONG
            data[entry + 4 : entry + 8] = struct.pack("<I", 1)
            data[entry + 8 : entry + 12] = struct.pack("<I", value)
    return bytes(data)[:4096]


# ----- NPY -----------------------------------------------------------------------------------------
def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header_end(data: bytes) -> int:
    """Where the data of a version 1 ``.npy`` starts."""
    (length,) = struct.unpack("<H", data[8:10])
    return 10 + length


def npy_with_header(array: np.ndarray, header: str, version: bytes = b"\x01\x00") -> bytes:
    """``array``'s bytes behind a hand-written header dict text (padded to 64 bytes, as numpy does)."""
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(text)) + text + np.ascontiguousarray(array).tobytes()


def npy_header_stray_byte(array: np.ndarray, marker: bytes = b"'shape'", stray: bytes = b"\x07") -> bytes:
    """A valid ``.npy`` with one stray byte placed inside its header dict, before ``marker``."""
    data = npy_bytes(array)
    position = data.index(marker)
    return data[:position] + stray + data[position + 1 :]


class OpenOnUnpickle:
    """Unpickling this opens (creates) a file: proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def pickle_npy(marker: Path) -> bytes:
    return npy_bytes(np.array([OpenOnUnpickle(marker), 1], dtype=object), allow_pickle=True)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


# ----- JSON ----------------------------------------------------------------------------------------
def deep_json(depth: int = 100_000, opener: str = "[", closer: str = "]") -> str:
    """``[[[[...]]]]`` nested ``depth`` deep (a recursion bomb for a recursive parser)."""
    return opener * depth + closer * depth


def deep_object(depth: int = 100_000) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def json_with(base: dict[str, Any], **changes: Any) -> str:
    """``base`` as JSON with fields changed (a value of :data:`DROP` removes the field)."""
    data = dict(base)
    for key, value in changes.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data)


DROP = object()


# ----- fuzz variants -------------------------------------------------------------------------------
def truncations(data: bytes, count: int, seed: int) -> list[bytes]:
    """``count`` distinct prefixes of ``data`` (0 < length < len), deterministic for ``seed``,
    always including a few structural ones (1 byte, half, all but one)."""
    rng = np.random.default_rng(seed)
    lengths = {1, len(data) // 2, len(data) - 1}
    while len(lengths) < min(count, len(data) - 1):
        lengths.add(int(rng.integers(1, len(data))))
    return [data[:n] for n in sorted(lengths)[:count]]


def byte_flips(data: bytes, count: int, seed: int, start: int = 0, stop: int | None = None) -> list[bytes]:
    """``count`` copies of ``data``, each with 1 to 3 bytes in ``[start, stop)`` XOR-ed with a
    random non-zero value (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    stop = len(data) if stop is None else min(stop, len(data))
    variants = []
    for _ in range(count):
        buffer = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            position = int(rng.integers(start, stop))
            buffer[position] ^= int(rng.integers(1, 256))
        variants.append(bytes(buffer))
    return variants


def fuzz_variants(data: bytes, seed: int, flips: int = 12, cuts: int = 8, start: int = 0) -> list[bytes]:
    """Byte flips then truncations: ``flips + cuts`` variants of ``data``."""
    return byte_flips(data, flips, seed, start) + truncations(data, cuts, seed + 1)


# ----- small good inputs ---------------------------------------------------------------------------
def gray(seed: int = 0, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def rgb(seed: int = 1, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def depth16(seed: int = 2, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
