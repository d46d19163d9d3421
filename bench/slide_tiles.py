"""Tiles of a gigapixel slide with keep rules (issue #17): ``patchfold tiles`` against an OpenSlide loop.

    python bench/slide_tiles.py --dir DIR [--size 100000x80000] [--kernel 512] [--min-foreground 0.5]

Generates once (cached in DIR as ``slide_WxH_COMPRESSION.tif``) a pyramidal RGB tiled TIFF of
synthetic tissue-like blobs on a white background, written tile by tile with tifffile (never whole
in memory), JPEG-compressed, with its reduced levels as SubIFDs. Then runs

(a) ``patchfold tiles slide.tif --level 0 -k K -s K --min-foreground F -o DIR/patchfold/`` as a real
    process under ``/usr/bin/time -v`` (wall, peak RSS), and
(b) a straightforward OpenSlide loop doing the same work in one process, also under
    ``/usr/bin/time -v``: ``read_region`` per K×K block, the foreground fraction with the threshold
    patchfold recorded in its manifest (grey level = mean of R, G, B; foreground below the
    threshold), and the kept blocks saved as PNG;

and reports both (medians of ``--repeat`` runs), the throughput ratio, and whether the same blocks
were kept (block indices from the manifest and from both sets of names) and written as the same
PNG bytes (both decode the same JPEG tiles and encode with Pillow's defaults). Disk: the TIFF is
about 0.07 bytes per pixel (JPEG, mostly white glass); each run writes its kept tiles as PNG
(about 0.25 MB per 512² tile).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_timed

#: Level-0 pixels per cell of the coarse field the blobs are drawn from.
CELL = 32

#: Background (glass) and tissue colours (RGB).
GLASS = np.array([242.0, 240.0, 244.0], np.float32)
STROMA = np.array([226.0, 150.0, 190.0], np.float32)
NUCLEI = np.array([110.0, 60.0, 150.0], np.float32)


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (or one number for a square) as (width, height)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 256:
        raise argparse.ArgumentTypeError(f"--size is WIDTHxHEIGHT of at least 256 each, got {text!r}")
    return parts[0], parts[1]


def coarse_field(width: int, height: int, seed: int = 0) -> np.ndarray:
    """The tissue field on a grid of CELL-pixel cells: a sum of elliptic blobs, above 0.5 inside tissue."""
    rows, cols = -(-height // CELL) + 2, -(-width // CELL) + 2
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    field = np.zeros((rows, cols), np.float32)
    scale = min(rows, cols)
    for _ in range(14):
        cy, cx = rng.uniform(0.1, 0.9) * rows, rng.uniform(0.1, 0.9) * cols
        ry, rx = rng.uniform(0.04, 0.14) * scale, rng.uniform(0.04, 0.14) * scale
        angle = rng.uniform(0, math.pi)
        dy, dx = y - cy, x - cx
        u = (dy * math.cos(angle) + dx * math.sin(angle)) / ry
        v = (-dy * math.sin(angle) + dx * math.cos(angle)) / rx
        field += np.exp(-(u * u + v * v) * 1.5).astype(np.float32)
    return field


def _weights(start: float, count: int, step: float, cells: int) -> tuple[int, np.ndarray]:
    """Bilinear weights ``(count, n)`` from coarse cells ``first..first+n`` to ``count`` pixels."""
    position = (start + (np.arange(count) + 0.5) * step) / CELL
    first = int(np.floor(position.min()))
    span = min(cells, int(np.floor(position.max())) + 2) - first
    low = np.floor(position).astype(int) - first
    frac = (position - np.floor(position)).astype(np.float32)
    weights = np.zeros((count, span), np.float32)
    weights[np.arange(count), np.minimum(low, span - 1)] += 1 - frac
    weights[np.arange(count), np.minimum(low + 1, span - 1)] += frac
    return first, weights


def render_tile(field: np.ndarray, top: int, left: int, size: int, factor: int, seed: int) -> np.ndarray:
    """The ``size``² RGB tile at level-0 pixel (top, left) of a level ``factor`` times smaller."""
    y0, wy = _weights(top, size, factor, field.shape[0])
    x0, wx = _weights(left, size, factor, field.shape[1])
    tissue = wy @ field[y0 : y0 + wy.shape[1], x0 : x0 + wx.shape[1]] @ wx.T  # (size, size)
    inside = np.clip((tissue - 0.45) * 8, 0, 1)
    if not inside.any():  # glass only (most of a slide)
        return np.broadcast_to(GLASS.astype(np.uint8), (size, size, 3)).copy()
    rng = np.random.default_rng(seed)
    cells = rng.standard_normal((size // 8, 1, size // 8, 1), dtype=np.float32)
    grain = np.broadcast_to(cells, (size // 8, 8, size // 8, 8)).reshape(size, size)  # 8-pixel speckle
    nuclei = np.clip(grain - 0.8, 0, 1)
    noise = rng.integers(-4, 5, (size, size), dtype=np.int8).astype(np.float32)  # per-pixel texture
    texture = (6 * grain + noise)[..., None]
    colour = STROMA + (NUCLEI - STROMA) * nuclei[..., None] + texture
    pixels = GLASS + (colour - GLASS) * inside[..., None]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_slide(path: Path, width: int, height: int, tile: int = 256, compression: str = "jpeg") -> None:
    """The pyramidal TIFF, tile by tile: level 0 and SubIFD levels halving down to about 1024 px."""
    import tifffile

    field = coarse_field(width, height)
    levels = [1]
    while max(width, height) // (levels[-1] * 2) >= 1024:
        levels.append(levels[-1] * 2)
    options = {"compression": compression, "photometric": "rgb", "tile": (tile, tile), "maxworkers": os.cpu_count()}
    if compression == "jpeg":
        options["compressionargs"] = {"level": 85}
    partial = path.with_suffix(".tif.part")
    with tifffile.TiffWriter(partial, bigtiff=True) as tiff:
        for index, factor in enumerate(levels):
            shape = (-(-height // factor), -(-width // factor), 3)
            extra = {"subifds": len(levels) - 1, "resolution": (40000, 40000), "resolutionunit": 3} if not index else {}
            tiff.write(_tiles(field, shape, tile, factor), shape=shape, dtype=np.uint8,
                       subfiletype=1 if index else 0, **extra, **options)  # fmt: skip
    os.replace(partial, path)


def _tiles(field: np.ndarray, shape: tuple[int, ...], tile: int, factor: int) -> Iterator[np.ndarray]:
    rows, cols = -(-shape[0] // tile), -(-shape[1] // tile)
    for r in range(rows):
        for c in range(cols):
            yield render_tile(field, r * tile * factor, c * tile * factor, tile, factor, (factor << 40) + r * cols + c)


def timed(argv: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS in bytes and CPU seconds (user + system) of one command under
    /usr/bin/time -v."""
    seconds, peak, done = run_timed(argv, tail=3000)
    cpu = sum(
        float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", done.stderr).group(1)) for kind in ("User", "System")
    )
    return seconds, peak, cpu


#: The OpenSlide loop, run as its own process: argv = slide, output dir, kernel, threshold, min foreground.
OPENSLIDE_LOOP = r"""
import sys
from pathlib import Path
import numpy as np
import openslide

slide_path, out, k = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
threshold, fraction = float(sys.argv[4]), float(sys.argv[5])
out.mkdir(parents=True)
slide = openslide.OpenSlide(slide_path)
width, height = slide.dimensions
stem = Path(slide_path).stem
kept = 0
for r in range(height // k):
    for c in range(width // k):
        region = slide.read_region((c * k, r * k), 0, (k, k)).convert("RGB")
        rgb = np.asarray(region)
        grey = rgb.mean(axis=2, dtype=np.float64)
        if np.count_nonzero(grey < threshold) >= fraction * k * k:
            region.save(out / f"{stem}_L0_r{r:03d}_c{c:03d}.png")
            kept += 1
print(kept)
"""


def kept_tiles(directory: Path) -> dict[tuple[int, int], bytes]:
    """The PNG tiles of a directory by block (row, column), read from their ``_rRRR_cCCC`` names."""
    found = {}
    for path in directory.glob("*.png"):
        row, col = re.search(r"_r(\d+)_c(\d+)\.png$", path.name).groups()
        found[int(row), int(col)] = path.read_bytes()
    return found


def run_both(slide: Path, work: Path, kernel: int, fraction: float) -> dict:
    """One run of each; the figures and what they kept."""
    ours, theirs = work / "patchfold", work / "openslide"
    for directory in (ours, theirs):
        shutil.rmtree(directory, ignore_errors=True)
    k = str(kernel)
    command = [sys.executable, "-m", "patchfold", "tiles", str(slide), "--level", "0", "-k", k, "-s", k,
               "--min-foreground", str(fraction), "-o", str(ours), "--no-progress", "--json"]  # fmt: skip
    seconds, peak, cpu = timed(command)
    manifest = json.loads((ours / "manifest.json").read_text())
    threshold = manifest["images"][0]["keep"]["threshold"]
    loop = [sys.executable, "-c", OPENSLIDE_LOOP, str(slide), str(theirs), k, repr(threshold), str(fraction)]
    loop_seconds, loop_peak, loop_cpu = timed(loop)
    mine, other = kept_tiles(ours), kept_tiles(theirs)
    indices = {tuple(t["index"]) for t in manifest["tiles"]}
    return {
        "seconds": seconds, "peak": peak, "cpu": cpu, "loop_seconds": loop_seconds, "loop_peak": loop_peak,
        "loop_cpu": loop_cpu,
        "threshold": threshold, "sampled_level": manifest["images"][0]["keep"].get("sampled_level"),
        "kept": len(indices), "same_blocks": indices == set(mine) == set(other),
        "same_bytes": mine == other,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="cache of the generated slide, and the outputs")
    parser.add_argument("--size", type=parse_size, default=(100000, 80000), help="WIDTHxHEIGHT (default 100000x80000)")
    parser.add_argument("--kernel", type=int, default=512)
    parser.add_argument("--min-foreground", type=float, default=0.5)
    parser.add_argument("--compression", choices=["jpeg", "zlib"], default="jpeg")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (medians reported)")
    parser.add_argument("--keep-outputs", action="store_true", help="leave the two tile directories in DIR")
    args = parser.parse_args()
    width, height = args.size
    args.dir.mkdir(parents=True, exist_ok=True)
    slide = args.dir / f"slide_{width}x{height}_{args.compression}.tif"
    if not slide.exists():
        started = time.perf_counter()
        write_slide(slide, width, height, compression=args.compression)
        print(f"generated {slide} ({slide.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s")
    runs = [run_both(slide, args.dir, args.kernel, args.min_foreground) for _ in range(args.repeat)]
    if not args.keep_outputs:
        for directory in (args.dir / "patchfold", args.dir / "openslide"):
            shutil.rmtree(directory, ignore_errors=True)
    seconds = statistics.median(r["seconds"] for r in runs)
    loop_seconds = statistics.median(r["loop_seconds"] for r in runs)
    pixels, last = width * height, runs[-1]
    print(json.dumps({
        "slide": str(slide), "slide_gb": round(slide.stat().st_size / 1e9, 2), "size": [width, height],
        "kernel": args.kernel, "blocks": (height // args.kernel) * (width // args.kernel), "kept": last["kept"],
        "threshold": last["threshold"], "sampled_level": last["sampled_level"],
        "same_blocks_kept": all(r["same_blocks"] for r in runs), "same_png_bytes": all(r["same_bytes"] for r in runs),
        "runs": len(runs),
        "patchfold": {"seconds": [round(r["seconds"], 1) for r in runs],
                      "cpu_seconds": [round(r["cpu"], 1) for r in runs],
                      "peak_rss_gib": round(max(r["peak"] for r in runs) / 2**30, 3),
                      "megapixels_per_s": round(pixels / seconds / 1e6, 1)},
        "openslide_loop": {"seconds": [round(r["loop_seconds"], 1) for r in runs],
                           "cpu_seconds": [round(r["loop_cpu"], 1) for r in runs],
                           "peak_rss_gib": round(max(r["loop_peak"] for r in runs) / 2**30, 3),
                           "megapixels_per_s": round(pixels / loop_seconds / 1e6, 1)},
        "throughput_ratio": round(loop_seconds / seconds, 2),
        "best_run_ratio": round(min(r["loop_seconds"] for r in runs) / min(r["seconds"] for r in runs), 2),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
