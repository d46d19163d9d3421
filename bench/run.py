"""Benchmarks for patchfold's CPU engine, in one process, as ratios against references run alongside.

    python bench/run.py            # all cases (a few minutes on 2 cores)
    python bench/run.py --quick    # smaller repeats
    python bench/run.py --commands # only the whole-command and start-up timings

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
import threading
import time
import tracemalloc
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
    # the 3x3-convolution im2col cases, where the nlc layout saves a transpose
    Case("8×3×256² f32 k3 p1 (conv)", (8, 3, 256, 256), "float32", 3, 1, padding=1),
    Case("1×64×128² f32 k3 p1 (conv)", (1, 64, 128, 128), "float32", 3, 1, padding=1),
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


def time_floor(shape: tuple[int, ...], dtype: np.dtype, repeats: int) -> tuple[float, float, float]:
    """np.copyto of the output's size into an already-touched array, into a fresh one (which,
    like any new result, pays for the kernel's first touch of its pages), and into a fresh one
    split over two threads (numpy's copy releases the GIL), the floor for two cores."""
    source = np.ones(shape, dtype=dtype)
    target = np.empty_like(source)
    touched = best(lambda: np.copyto(target, source), repeats)
    target.resize(0, refcheck=False)  # free it: the fresh copies must not find its pages
    fresh = best(lambda: np.copyto(np.empty_like(source), source), repeats)
    flat = source.reshape(-1)
    half = flat.size // 2

    def two_threads() -> np.ndarray:
        out = np.empty_like(flat)
        worker = threading.Thread(target=np.copyto, args=(out[half:], flat[half:]))
        worker.start()
        np.copyto(out[:half], flat[:half])
        worker.join()
        return out

    return touched, fresh, best(two_threads, repeats)


def time_unfold(x: np.ndarray, params: dict, layout: str, shape: tuple[int, ...], repeats: int) -> tuple[float, float]:
    """patchfold.unfold allocating its result, and into a preallocated one."""
    nd = x.ndim - 2
    settle()
    allocating = best(lambda: patchfold.unfold(x, **params, layout=layout, spatial_dims=nd), repeats)
    out = np.empty(shape, dtype=x.dtype)
    into = best(lambda: patchfold.unfold(x, **params, layout=layout, spatial_dims=nd, out=out), repeats)
    return allocating, into


def time_fold(x: np.ndarray, params: dict, repeats: int) -> dict[str, float | None]:
    """patchfold.fold (sum; normalised, on all threads and on one; normalised with a Hann window)
    against F.fold and PyTorch's normalised baseline ``F.fold(cols) / F.fold(F.unfold(ones))``, and
    patchify's ``unpatchify`` where the blocks tile the image; plus the normalised fold's traced
    peak allocation beyond its output, as a share of the output."""
    nd = x.ndim - 2
    cols = patchfold.unfold(x, **params, spatial_dims=nd)
    cols_nlc = patchfold.unfold(x, **params, spatial_dims=nd, layout="nlc")
    size = x.shape[2:]
    settle()
    t: dict[str, float | None] = {
        "fold": best(lambda: patchfold.fold(cols, size, **params), repeats),
        "fold nlc": best(lambda: patchfold.fold(cols_nlc, size, **params, layout="nlc"), repeats),
        "fold norm": best(lambda: patchfold.fold(cols, size, **params, normalize=True), repeats),
        "fold norm 1t": best(lambda: patchfold.fold(cols, size, **params, normalize=True, threads=1), repeats),
        "fold hann": best(lambda: patchfold.fold(cols, size, **params, normalize=True, window="hann"), repeats),
    }
    tracemalloc.start()
    result = patchfold.fold(cols, size, **params, normalize=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t["fold norm extra memory"] = (peak - result.nbytes) / result.nbytes
    t["torch fold"] = t["torch fold norm"] = t["unpatchify"] = None
    if nd == 2:
        cols_t = torch.from_numpy(cols if cols.dtype.kind == "f" else cols.astype(np.float32))
        ones = torch.ones(1, 1, *size)
        settle()
        t["torch fold"] = best(lambda: F.fold(cols_t, size, **params), repeats)
        t["torch fold norm"] = best(
            lambda: F.fold(cols_t, size, **params) / F.fold(F.unfold(ones, **params), size, **params), repeats
        )
        t["unpatchify"] = time_unpatchify(x, params, repeats)
    return t


def time_unpatchify(x: np.ndarray, params: dict, repeats: int) -> float | None:
    """patchify's ``unpatchify`` of the same image's patches, where it applies: blocks that tile
    the image exactly (no overlap, no padding or dilation), the one case it reconstructs."""
    kernel, stride = params["kernel_size"], params["stride"]
    if params["padding"] or params["dilation"] != 1 or stride != kernel or any(n % kernel for n in x.shape[2:]):
        return None
    try:
        from patchify import patchify, unpatchify
    except ImportError:
        return None
    image = np.ascontiguousarray(x[0, 0])
    patches = patchify(image, (kernel, kernel), step=stride)
    return best(lambda: unpatchify(patches, image.shape), max(1, repeats // 2))


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
    t["floor touched"], t["floor fresh"], t["floor fresh 2t"] = time_floor(out_shape, x.dtype, repeats)
    t["ncl alloc"], t["ncl into"] = time_unfold(x, params, "ncl", out_shape, repeats)
    t["nlc alloc"], t["nlc into"] = time_unfold(x, params, "nlc", geometry.unfold_shape(*x.shape[:2], "nlc"), repeats)
    t["torch"] = best(torch_reference_unfold(torch.from_numpy(x), case), repeats)
    ref_np = numpy_reference(x, case)
    t["numpy swv"] = best(ref_np, repeats) if ref_np else None
    for name, fn in peers(x, case).items():
        t[f"peer {name}"] = best(fn, max(1, repeats // 2))
    t.update(time_fold(x, params, repeats))
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
        f"| {case.name} | copyto floor | {ms(t['floor fresh'])} fresh, {ms(t['floor fresh 2t'])} fresh on 2 threads "
        f"/ {ms(t['floor touched'])} touched ({gbs(out_bytes, t['floor fresh'])}, "
        f"{gbs(out_bytes, t['floor fresh 2t'])} / {gbs(out_bytes, t['floor touched'])}) | – | – | – | – |"
    )
    fold_row = (
        f"| | fold | {ms(t['fold'])} ({gbs(out_bytes, t['fold'])} read) | "
        f"{ratio(t['torch fold'], t['fold'])} | – | – | – |"
    )
    fold_nlc_row = (
        f"| | fold nlc | {ms(t['fold nlc'])} ({t['fold'] / t['fold nlc']:.0%} of ncl's speed) | "
        f"{ratio(t['torch fold'], t['fold nlc'])} | – | – | – |"
    )
    unpatchify = t["unpatchify"]
    norm = t["fold norm"]
    norm_row = (
        f"| | fold normalised | {ms(norm)} ({t['fold'] / norm:.0%} of the sum's speed; 1→2 threads "
        f"{t['fold norm 1t'] / norm:.2f}×; extra memory {max(0.0, t['fold norm extra memory']):.2f}× the output) | "
        f"{ratio(t['torch fold norm'], norm)} | – | {'unpatchify ' + ratio(unpatchify, norm) if unpatchify else '–'} "
        "| – |"
    )
    hann = t["fold hann"]
    hann_row = f"| | fold normalised, hann | {ms(hann)} | {ratio(t['torch fold norm'], hann)} | – | – | – |"
    return [floor_row, unfold_row("ncl"), unfold_row("nlc"), fold_row, fold_nlc_row, norm_row, hann_row]


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


#: The five lines a user would write instead of ``patchfold unfold``: PIL, a strided view, np.save.
NUMPY_SCRIPT = (
    "import sys, numpy as np\n"
    "from PIL import Image\n"
    "x = np.asarray(Image.open(sys.argv[1])).transpose(2, 0, 1)[None]{cast}\n"
    "view = np.lib.stride_tricks.sliding_window_view(x, (16, 16), axis=(2, 3))[:, :, ::8, ::8]\n"
    "np.save(sys.argv[2], view.transpose(0, 1, 4, 5, 2, 3).reshape(1, 3 * 256, -1))\n"
)


def _bytecode_compiled() -> None:
    """Compile patchfold's modules to bytecode first, as ``pip install`` does: with
    ``PYTHONDONTWRITEBYTECODE`` set (these machines set it) an editable checkout otherwise
    recompiles its sources in every fresh process (50 ms here), which no installed copy does."""
    import compileall

    for package in ("core", "cli"):
        compileall.compile_dir(str(Path(__file__).resolve().parent.parent / package), quiet=1)


def _interleaved(runs: dict[str, list[str]], repeats: int, clear: list[Path]) -> dict[str, float]:
    """Median wall time of each command over ``repeats`` rounds, the contenders taking turns in
    each round (so a slow phase of the machine hits them alike); ``clear`` is deleted before every
    run (outputs a run would otherwise replace)."""
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, argv in runs.items():
            for path in clear:
                path.unlink(missing_ok=True)
            started = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in times.items()}


def command_times(repeats: int) -> list[str]:
    """Whole-command wall times, each the median of ``repeats`` fresh processes taking turns:
    ``patchfold unfold`` against the PIL + numpy script a user would write instead, for uint8 and
    float32 output (the same patch matrix, checked), writing new files and replacing existing
    ones; and the start-up of ``import``, ``--help`` and a ``stats`` call."""
    from PIL import Image

    _bytecode_compiled()
    patchfold_cmd = [sys.executable, "-m", "patchfold"]
    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "big.png"
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8)).save(image_path, compress_level=1)
        scripts = {}
        for dtype, cast in (("uint8", ""), ("float32", ".astype(np.float32) / 255")):
            scripts[dtype] = Path(tmp) / f"numpy_{dtype}.py"
            scripts[dtype].write_text(NUMPY_SCRIPT.format(cast=cast))
        unfold = [*patchfold_cmd, "unfold", str(image_path), "-k", "16", "-s", "8", "--no-progress", "-o"]
        contenders = {
            "patchfold unfold 2048² RGB -k 16 -s 8 (uint8)": [*unfold, f"{tmp}/pu8.npy"],
            "PIL + sliding_window_view + np.save (uint8)": [sys.executable, str(scripts["uint8"]), str(image_path),
                                                             f"{tmp}/nu8.npy"],
            "patchfold unfold … --dtype float32": [*unfold, f"{tmp}/pf32.npy", "--dtype", "float32"],
            "PIL + sliding_window_view + np.save (float32)": [sys.executable, str(scripts["float32"]),
                                                               str(image_path), f"{tmp}/nf32.npy"],
        }  # fmt: skip
        names = ("pu8", "nu8", "pf32", "nf32")
        outputs = [Path(tmp) / f"{name}.{suffix}" for name in names for suffix in ("npy", "json")]
        new = _interleaved(contenders, repeats, outputs)
        replaced = _interleaved(contenders, repeats, [])
        for ours, theirs in (("pu8", "nu8"), ("pf32", "nf32")):  # the same matrix, or the comparison means nothing
            np.testing.assert_allclose(np.load(f"{tmp}/{ours}.npy"), np.load(f"{tmp}/{theirs}.npy"), rtol=1e-6)
        stats_args = ["stats", "--size", "100000,100000", "-k", "64", "-s", "32", "--json"]
        start_up = {
            "python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
            "python -c 'import patchfold'": [sys.executable, "-c", "import patchfold"],
            "python -c 'import patchfold; patchfold.unfold'": [
                sys.executable,
                "-c",
                "import patchfold; patchfold.unfold",
            ],
            "patchfold --help": [*patchfold_cmd, "--help"],
            "patchfold stats --size 100000,100000 -k 64 -s 32 --json": [*patchfold_cmd, *stats_args],
        }
        exe = Path(sys.executable).parent / "patchfold"
        if exe.exists():  # the installed console script, as users run it
            start_up["patchfold --help (console script)"] = [str(exe), "--help"]
            start_up["patchfold stats … --json (console script)"] = [str(exe), *stats_args]
        started = _interleaved(start_up, repeats, [])
    lines = [
        f"| {label} | {1000 * new[label]:.0f} ms new, {1000 * replaced[label]:.0f} ms replacing |" for label in new
    ]
    lines += [f"| {label} | {seconds * 1000:.0f} ms |" for label, seconds in started.items()]
    for dtype, (ours, theirs) in zip(("uint8", "float32"), (list(contenders)[:2], list(contenders)[2:])):
        lines.append(
            f"| **speed-up of patchfold unfold over the script, {dtype}** | {new[theirs] / new[ours]:.2f}× new "
            f"file, {replaced[theirs] / replaced[ours]:.2f}× replacing one |"
        )
    for label in ("python -c 'import patchfold'", "python -c 'import patchfold; patchfold.unfold'"):
        extra = started[label] - started["python -c 'import numpy'"]
        lines.append(f"| **{label.split(' ', 2)[2]} beyond import numpy** | {extra * 1000:+.0f} ms |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--commands", action="store_true", help="only the whole-command and start-up table")
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
    if args.commands:
        print("| command (median of fresh processes) | wall time |\n|---|---|")
        for line in command_times(max(7, repeats)):
            print(line, flush=True)
        return
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
    print("\n| command (median of fresh processes) | wall time |\n|---|---|")
    for line in command_times(max(7, repeats)):
        print(line, flush=True)


if __name__ == "__main__":
    main()
