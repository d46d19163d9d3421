"""Byte counts in words, and sizes such as ``2GB`` parsed."""

from __future__ import annotations

import math

from patchfold.errors import PatchfoldError


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def parse_bytes(text: str) -> int:
    """``"2GB"``, ``"512MiB"``, ``"1e9"`` → bytes (``1T``, ``1TB`` and ``1TiB`` alike: decimal
    units with or without ``B``, binary ones with ``iB``).

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
        "T": 10**12,
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
