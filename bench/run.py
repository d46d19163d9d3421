"""Benchmarks for patchfold's CPU engine, in one process, as ratios against references run alongside.

    python bench/run.py            # all cases (a few minutes on 2 cores)
    python bench/run.py --quick    # smaller repeats

For each case: patchfold's time, and its speed-up over torch.nn.functional.unfold/fold, numpy's
sliding_window_view + ascontiguousarray, the peers patchify and empatches where installed, and its
share of the bandwidth floor: an np.copyto of the output's size, into a fresh array for
patchfold allocating its result and into an already-touched one for patchfold writing into
``out=``. All cases are measured in three passes and each contender keeps its best one
(``--passes``). Then the whole-command wall time of `patchfold unfold` against a minimal PIL +
F.unfold + np.save script, and the start-up of `patchfold --help` and `patchfold stats` on a
100000² size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import patchfold
import torch
import torch.nn.functional as F

Timer = Callable[[], object]


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    dtype: str
    kernel: int
    stride: int
    padding: int = 0
    dilation: int = 1


CASES = [
    Case("2048² RGB f32 k16 s8", (1, 3, 2048, 2048), "float32", 16, 8),
    Case("1024² RGB u8 k8 s4", (1, 3, 1024, 1024), "uint8", 8, 4),
    Case("4096² gray f32 k32 s32", (1, 1, 4096, 4096), "float32", 32, 32),
    Case("1024² RGB f32 k8 s4 dil2", (1, 3, 1024, 1024), "float32", 8, 4, dilation=2),
    Case("1024² RGB f32 k16 s8 pad8", (1, 3, 1024, 1024), "float32", 16, 8, padding=8),
    Case("128³ vol f32 k8 s4 (3-D)", (1, 1, 128, 128, 128), "float32", 8, 4),
]


#: How ``best`` summarises repeated runs: the median (default) or, with ``--stat min``, the fastest.
SUMMARY: Callable[[list[float]], float] = statistics.median


def best(fn: Timer, repeats: int, warmups: int = 3) -> float:
    """:data:`SUMMARY` of ``repeats`` runs (more for calls under 30 ms) after ``warmups`` unmeasured
    ones (seconds): the first large allocations of a process pay for the kernel's page zeroing and
    huge-page setup."""
    for _ in range(warmups):
        started = time.perf_counter()
        fn()
        last = time.perf_counter() - started
    if warmups:  # short calls get more repeats (up to about 0.2 s of them), as timeit's autorange does
        repeats = max(repeats, min(200, int(0.2 / max(last, 1e-6))))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return SUMMARY(times)


def make_input(case: Case) -> np.ndarray:
    rng = np.random.default_rng(0)
    if case.dtype == "uint8":
        return rng.integers(0, 256, case.shape, dtype=np.uint8)
    return rng.random(case.shape, dtype=np.float32)


def torch_reference_unfold(x: torch.Tensor, case: Case) -> Timer:
    nd = x.ndim - 2
    if nd == 2:
        xf = x if x.is_floating_point() else x.float()  # F.unfold refuses integer dtypes on CPU
        return lambda: F.unfold(xf, case.kernel, case.dilation, case.padding, case.stride)

    def strided() -> torch.Tensor:  # F.unfold is 4-D only: the best torch alternative
        w = x
        for d in range(nd):
            w = w.unfold(2 + d, case.kernel, case.stride)
        return w.contiguous()

    return strided


def numpy_reference(x: np.ndarray, case: Case) -> Timer | None:
    if case.padding or case.dilation > 1:
        return None
    nd = x.ndim - 2
    axes = tuple(range(2, 2 + nd))
    window = (case.kernel,) * nd
    step = (slice(None), slice(None)) + (slice(None, None, case.stride),) * nd

    def run() -> np.ndarray:
        view = np.lib.stride_tricks.sliding_window_view(x, window, axis=axes)[step]
        return np.ascontiguousarray(view)

    return run


def peers(x: np.ndarray, case: Case) -> dict[str, Timer]:
    found: dict[str, Timer] = {}
    if x.ndim != 4 or case.padding or case.dilation > 1:
        return found
    image = np.ascontiguousarray(np.moveaxis(x[0], 0, -1))  # peers take channels-last images
    try:
        from patchify import patchify

        size = (case.kernel, case.kernel, image.shape[2])
        found["patchify"] = lambda: np.ascontiguousarray(patchify(image, size, step=case.stride))
    except ImportError:
        pass
    try:
        from empatches import EMPatches

        overlap = 1 - case.stride / case.kernel
        found["empatches"] = lambda: EMPatches().extract_patches(image, patchsize=case.kernel, overlap=overlap)
    except ImportError:
        pass
    return found


def settle() -> None:
    """Let torch's OpenMP threads stop spinning after its last parallel region: they would
    otherwise take the cores from the next measurement."""
    time.sleep(0.5)


def time_floor(shape: tuple[int, ...], dtype: np.dtype, repeats: int) -> tuple[float, float]:
    """np.copyto of the output's size into an already-touched array, and into a fresh one (which,
    like any new result, pays for the kernel's first touch of its pages)."""
    source = np.ones(shape, dtype=dtype)
    target = np.empty_like(source)
    touched = best(lambda: np.copyto(target, source), repeats)
    target.resize(0, refcheck=False)  # free it: the fresh copies must not find its pages
    fresh = best(lambda: np.copyto(np.empty_like(source), source), repeats)
    return touched, fresh


def time_unfold(x: np.ndarray, params: dict, layout: str, shape: tuple[int, ...], repeats: int) -> tuple[float, float]:
    """patchfold.unfold allocating its result, and into a preallocated one."""
    nd = x.ndim - 2
    settle()
    allocating = best(lambda: patchfold.unfold(x, **params, layout=layout, spatial_dims=nd), repeats)
    out = np.empty(shape, dtype=x.dtype)
    into = best(lambda: patchfold.unfold(x, **params, layout=layout, spatial_dims=nd, out=out), repeats)
    return allocating, into


def time_fold(x: np.ndarray, params: dict, repeats: int) -> tuple[float, float | None]:
    """patchfold.fold and F.fold (on a float copy of integer patches) of the same patch matrix."""
    cols = patchfold.unfold(x, **params, spatial_dims=x.ndim - 2)
    settle()
    ours = best(lambda: patchfold.fold(cols, x.shape[2:], **params), repeats)
    if x.ndim != 4:
        return ours, None
    cols_t = torch.from_numpy(cols if cols.dtype.kind == "f" else cols.astype(np.float32))
    return ours, best(lambda: F.fold(cols_t, x.shape[2:], **params), repeats)


def measure_case(case: Case, repeats: int) -> dict[str, float | None]:
    """Every contender's time for one case (None where a reference does not apply); every
    measurement allocates (and frees) its own arrays, so the process never holds more than one
    output at a time, as a user's would."""
    x = make_input(case)
    params = dict(kernel_size=case.kernel, dilation=case.dilation, padding=case.padding, stride=case.stride)
    geometry = patchfold.Geometry.create(
        x.shape[2:], case.kernel, stride=case.stride, padding=case.padding, dilation=case.dilation
    )
    out_shape = geometry.unfold_shape(*x.shape[:2])
    t: dict[str, float | None] = {}
    t["floor touched"], t["floor fresh"] = time_floor(out_shape, x.dtype, repeats)
    t["ncl alloc"], t["ncl into"] = time_unfold(x, params, "ncl", out_shape, repeats)
    t["nlc alloc"], t["nlc into"] = time_unfold(x, params, "nlc", geometry.unfold_shape(*x.shape[:2], "nlc"), repeats)
    t["torch"] = best(torch_reference_unfold(torch.from_numpy(x), case), repeats)
    ref_np = numpy_reference(x, case)
    t["numpy swv"] = best(ref_np, repeats) if ref_np else None
    for name, fn in peers(x, case).items():
        t[f"peer {name}"] = best(fn, max(1, repeats // 2))
    t["fold"], t["torch fold"] = time_fold(x, params, repeats)
    return t


def case_rows(case: Case, t: dict[str, float | None]) -> list[str]:
    """The table rows of one case from its contenders' times."""
    geometry = patchfold.Geometry.create(
        case.shape[2:], case.kernel, stride=case.stride, padding=case.padding, dilation=case.dilation
    )
    out_bytes = int(np.prod(geometry.unfold_shape(*case.shape[:2]))) * np.dtype(case.dtype).itemsize
    peer_times = {name.removeprefix("peer "): value for name, value in t.items() if name.startswith("peer ")}

    def unfold_row(layout: str) -> str:
        t_alloc, t_into = t[f"{layout} alloc"], t[f"{layout} into"]
        return (
            f"| | unfold {layout} | {ms(t_alloc)} ({gbs(out_bytes, t_alloc)}) | {ratio(t['torch'], t_alloc)} | "
            f"{ratio(t['numpy swv'], t_alloc)} | {peer_cell(peer_times, t_alloc)} | "
            f"{share(t['floor fresh'], t_alloc)} / {share(t['floor touched'], t_into)} |"
        )

    floor_row = (
        f"| {case.name} | copyto floor | {ms(t['floor fresh'])} fresh / {ms(t['floor touched'])} touched "
        f"({gbs(out_bytes, t['floor fresh'])} / {gbs(out_bytes, t['floor touched'])}) | – | – | – | – |"
    )
    fold_row = (
        f"| | fold | {ms(t['fold'])} ({gbs(out_bytes, t['fold'])} read) | "
        f"{ratio(t['torch fold'], t['fold'])} | – | – | – |"
    )
    return [floor_row, unfold_row("ncl"), unfold_row("nlc"), fold_row]


def best_of_passes(passes: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Each contender's fastest summary over the passes (the same rule for every contender)."""
    return {name: None if passes[0][name] is None else min(p[name] for p in passes) for name in passes[0]}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def gbs(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.2f} GB/s"


def ratio(reference: float | None, ours: float) -> str:
    return "–" if reference is None else f"{reference / ours:.1f}×"


def share(floor: float, ours: float) -> str:
    return f"{floor / ours:.0%}"


def peer_cell(peer_times: dict[str, float], ours: float) -> str:
    return ", ".join(f"{name} {ratio(t, ours)}" for name, t in peer_times.items()) or "–"


def command_times(repeats: int) -> list[str]:
    """Whole-command wall times, each the median of ``repeats`` fresh processes."""
    from PIL import Image

    patchfold_cmd = [sys.executable, "-m", "patchfold"]
    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "big.png"
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8)).save(image_path, compress_level=1)
        script = Path(tmp) / "minimal_torch.py"
        script.write_text(
            "import sys, numpy as np, torch, torch.nn.functional as F\n"
            "from PIL import Image\n"
            "x = torch.from_numpy(np.asarray(Image.open(sys.argv[1]))).permute(2, 0, 1)[None].float() / 255\n"
            "np.save(sys.argv[2], F.unfold(x, 16, stride=8).numpy())\n"
        )
        stats_args = ["stats", "--size", "100000,100000", "-k", "64", "-s", "32", "--json"]
        runs = {
            "patchfold unfold 2048² RGB -k 16 -s 8 --dtype float32": [
                *patchfold_cmd,
                "unfold",
                str(image_path),
                "-k",
                "16",
                "-s",
                "8",
                "--dtype",
                "float32",
                "-o",
                f"{tmp}/a.npy",
                "--no-progress",
            ],
            "minimal script: PIL + F.unfold + np.save": [sys.executable, str(script), str(image_path), f"{tmp}/b.npy"],
            "patchfold --help": [*patchfold_cmd, "--help"],
            "patchfold stats --size 100000,100000 -k 64 -s 32 --json": [*patchfold_cmd, *stats_args],
        }
        exe = Path(sys.executable).parent / "patchfold"
        if exe.exists():  # the installed console script, as users run it
            runs["patchfold --help (console script)"] = [str(exe), "--help"]
            runs["patchfold stats … --json (console script)"] = [str(exe), *stats_args]
        times = {}
        for label, argv in runs.items():
            times[label] = best(lambda argv=argv: subprocess.run(argv, check=True, capture_output=True), repeats, 1)
    ours = times["patchfold unfold 2048² RGB -k 16 -s 8 --dtype float32"]
    theirs = times["minimal script: PIL + F.unfold + np.save"]
    lines = [f"| {label} | {seconds:.3f} s |" for label, seconds in times.items()]
    lines.append(f"| **whole-command speed-up of patchfold unfold over the minimal script** | {theirs / ours:.1f}× |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="summary of the repeats, for every contender alike (min: timeit's choice, least hit by stalls)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=3,
        help="passes over all cases; each contender keeps its best pass (a stall phase of this VM seldom "
        "hits the same row in every pass)",
    )
    args = parser.parse_args()
    global SUMMARY
    SUMMARY = min if args.stat == "min" else statistics.median
    repeats = 3 if args.quick else 7
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"patchfold {patchfold.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}; {args.stat} of {repeats} runs, "
        f"best of {args.passes} passes\n"
    )
    print(
        "| case | op | patchfold | vs torch | vs numpy swv | vs peers "
        "| share of copyto floor (alloc÷fresh / into÷touched) |"
    )
    print("|---|---|---|---|---|---|---|")
    passes: dict[str, list[dict[str, float | None]]] = {case.name: [] for case in CASES}
    for number in range(args.passes):
        for case in CASES:
            passes[case.name].append(measure_case(case, repeats))
            if number == args.passes - 1:
                for row in case_rows(case, best_of_passes(passes[case.name])):
                    print(row, flush=True)
    print("\n| command | wall time |\n|---|---|")
    for line in command_times(max(3, repeats)):
        print(line, flush=True)


if __name__ == "__main__":
    main()
