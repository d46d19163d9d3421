"""Dataset-scale benchmark: `patchfold batch unfold` over generated images of mixed sizes with one
local worker, two local workers, and a two-worker Dask LocalCluster (loopback only).

    python bench/batch.py [--images 2000] [--dir DIR]

Images are RGB PNGs from 256² to 1024² (sizes drawn at random, seeded). Every run writes a fresh
dataset with -k 32 -s 32; the three datasets are checked to be byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(256, 1025, 2))
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 3 % 256)], axis=-1)
        noisy = base + rng.integers(0, 16, (height, width, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:05d}.png", compress_level=1)


def digest(directory: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file():
            hasher.update(path.name.encode())
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    hasher.update(chunk)
    return hasher.hexdigest()


def batch_command(images: Path, out: Path, *extra: str) -> float:
    """Wall seconds of one `patchfold batch unfold` run."""
    exe = Path(sys.executable).parent / "patchfold"
    started = time.perf_counter()
    subprocess.run(
        [
            str(exe),
            "batch",
            "unfold",
            str(images),
            "-k",
            "32",
            "-s",
            "32",
            "-o",
            str(out),
            "--no-progress",
            "--json",
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def run_cli(images: Path, out: Path, workers: int) -> float:
    return batch_command(images, out, "--workers", str(workers))


def run_dask(images: Path, out: Path) -> float:
    """A two-worker LocalCluster set up as one would for CPU-bound tasks on a small machine: worker
    processes without nannies and without the statistical profiler (both take CPU from the work on
    2 cores), given a second to settle before the run is timed."""
    os.environ["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"
    from dask.distributed import LocalCluster, Worker

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, worker_class=Worker, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        time.sleep(1)
        return batch_command(images, out, "--scheduler", cluster.scheduler_address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    base = args.dir or Path(__file__).parent
    images = base / f"batch-images-{args.images}"  # kept between runs: making them takes minutes
    if not (images / "done").exists():
        shutil.rmtree(images, ignore_errors=True)
        started = time.perf_counter()
        make_images(images, args.images)
        (images / "done").write_text("")
        print(f"made {args.images} images in {time.perf_counter() - started:.0f} s")
    pixels = sum(np.prod(Image.open(p).size) for p in images.glob("*.png"))
    print(f"{args.images} RGB PNGs of 256² to 1024², {pixels / 1e9:.2f} gigapixels")
    with tempfile.TemporaryDirectory(dir=base, prefix="batch-") as tmp:
        work = Path(tmp)
        times, digests = {}, {}
        for label, runner in (
            ("1 local worker", lambda o: run_cli(images, o, 1)),
            ("2 local workers", lambda o: run_cli(images, o, 2)),
            ("Dask LocalCluster, 2 workers", lambda o: run_dask(images, o)),
        ):
            runs = []
            for _ in range(2):  # best of two, each starting with no dirty pages left by the one before
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                runs.append(runner(out))
            times[label] = min(runs)
            digests[label] = digest(out)
            manifest = json.loads((out / "manifest.json").read_text())
            rows = sum(s["rows"] for s in manifest["shards"])
            print(
                f"{label}: {times[label]:.1f} s, best of {', '.join(f'{r:.1f}' for r in runs)} "
                f"({rows:,} patches, {len(manifest['shards'])} shards)",
                flush=True,
            )
            shutil.rmtree(out)
        one, two, dask = times.values()
        print(
            f"2 workers vs 1: {one / two:.2f}x; Dask vs local pool: {dask / two:.2f} of its time "
            f"({(dask / two - 1) * 100:+.0f}%)"
        )
        print("datasets byte-identical:", len(set(digests.values())) == 1)


if __name__ == "__main__":
    main()
