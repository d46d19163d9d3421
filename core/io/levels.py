"""Choosing the resolution level of a pyramid: by number (``--level N``), or by pixel size
(``--mpp X``) or magnification (``--magnification M``) from what the file records.

A request by resolution picks **the coarsest level at or finer than asked**: the level with the
largest pixels that are still no larger than ``X`` micrometres (within :data:`TOLERANCE`, as
scanners record 0.2527 µm for a "0.25 µm" scan), or the lowest magnification still at least
``M``. A patch then never holds less detail than asked for; a request finer than the finest level
is refused rather than quietly given coarser pixels.

A level's magnification is the slide's objective power over the level's downsample where the file
records one (OpenSlide's ``openslide.objective-power``); elsewhere it is :data:`MICRONS_AT_1X` over
its micrometres per pixel (the usual convention: 40x ≈ 0.25 µm, 20x ≈ 0.5 µm per pixel).

>>> scales = lambda: [LevelScale(0.25, 40.0), LevelScale(0.5, 20.0), LevelScale(1.0, 10.0)]
>>> pick_level("s.svs", LevelRequest(mpp=0.5), 3, scales), pick_level("s.svs", LevelRequest(mpp=0.7), 3, scales)
(1, 1)
>>> pick_level("s.svs", LevelRequest(magnification=10), 3, scales), pick_level("s.svs", 2, 3, scales)
(2, 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from patchfold.errors import PatchfoldError

#: How much coarser than asked a level may be and still count as "at or finer" (10 %).
TOLERANCE = 0.1

#: Micrometres per pixel at magnification 1 (10 µm: 40x ≈ 0.25 µm per pixel), for files that
#: record a pixel size but no objective power.
MICRONS_AT_1X = 10.0


@dataclass(frozen=True)
class LevelRequest:
    """A level asked for by resolution: ``mpp`` micrometres per pixel or ``magnification``
    (exactly one, a positive finite number)."""

    mpp: float | None = None
    magnification: float | None = None

    def __post_init__(self) -> None:
        given = list(self.to_dict().items())
        if len(given) != 1:
            raise PatchfoldError("give one of mpp= and magnification= to pick a level by resolution", param="mpp")
        name, value = given[0]
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            raise PatchfoldError(f"{name} must be a positive number, got {value!r}", param=name)

    def to_dict(self) -> dict[str, float]:
        """The request as the sidecar records it (``{"mpp": 0.5}`` or ``{"magnification": 20}``)."""
        return {k: v for k, v in (("mpp", self.mpp), ("magnification", self.magnification)) if v is not None}

    @property
    def option(self) -> str:
        """The request as it is spelled on the command line (``--mpp 0.5``)."""
        ((name, value),) = self.to_dict().items()
        return f"--{name} {value:g}"


#: What picks a level: a number (None: level 0) or a :class:`LevelRequest`.
Level = int | LevelRequest | None


@dataclass(frozen=True)
class LevelScale:
    """What a file records of one level's resolution: micrometres per pixel (the mean of its Y and
    X pixel sizes) and magnification, each None where unknown."""

    mpp: float | None = None
    magnification: float | None = None

    @classmethod
    def of(
        cls, resolution: Sequence[float] | None, objective: float | None = None, downsample: float = 1.0
    ) -> LevelScale:
        """A level's scale from its per-dim micrometres per pixel (the last two: Y and X) and, where
        recorded, the objective power of the full resolution and the level's downsample."""
        mpp = sum(resolution[-2:]) / len(resolution[-2:]) if resolution else None
        if objective is not None:
            return cls(mpp, objective / downsample)
        return cls(mpp, MICRONS_AT_1X / mpp if mpp else None)


def pick_level(path: str | Path, level: Level, levels: int, scales: Callable[[], Sequence[LevelScale]]) -> int:
    """The level ``level`` picks among a file's ``levels``; ``scales`` gives their resolutions
    (one per level, in level order), called only for a :class:`LevelRequest`."""
    if isinstance(level, LevelRequest):
        return _by_resolution(path, level, scales())
    return check_level(path, level, levels)


def check_level(path: str | Path, level: int | None, levels: int) -> int:
    """``level`` (None: 0), which must be one of the ``levels`` the file has."""
    chosen = 0 if level is None else level
    if not 0 <= chosen < levels:
        raise PatchfoldError(
            f"'{path}' has {levels} resolution level(s) (0 to {levels - 1}); --level {chosen} is not one of them",
            param="level",
        )
    return chosen


def _by_resolution(path: str | Path, request: LevelRequest, scales: Sequence[LevelScale]) -> int:
    """The coarsest level at or finer than ``request`` (see the module's text)."""
    by_mpp = request.mpp is not None
    # coarseness: micrometres per pixel, or 1 / magnification; smaller is finer
    values = [s.mpp if by_mpp else (1 / s.magnification if s.magnification else None) for s in scales]
    known = [(value, index) for index, value in enumerate(values) if value is not None]
    if not known:
        what = "pixel size" if by_mpp else "pixel size or objective power"
        raise PatchfoldError(f"'{path}' records no {what}; {request.option} needs one (pick a level with --level N)")
    wanted = request.mpp if by_mpp else 1 / request.magnification  # type: ignore[operator]
    fine = [(value, -index) for value, index in known if value <= wanted * (1 + TOLERANCE)]
    if not fine:
        finest, index = min(known)
        have = f"{finest:.4g} µm per pixel" if by_mpp else f"{1 / finest:.4g}x"
        raise PatchfoldError(
            f"'{path}' is at most {have} (level {index}); {request.option} asks for finer than any of its levels"
        )
    return -max(fine)[1]
