"""``patchfold.apply`` against MONAI's ``sliding_window_inference`` on CPU, in one run.

MONAI is not a patchfold dependency; it lives in a separate venv used only for this script
(patchfold itself installed editable into it, without touching the project's venv):

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.13.0 monai numpy pillow click rich
    /tmp/benchvenv/bin/pip install -e . --no-deps
    /tmp/benchvenv/bin/python bench/apply.py              # all tables, ~4 min on 2 cores
    /tmp/benchvenv/bin/python bench/apply.py --quick      # 2048² only, fewer repeats
    /tmp/benchvenv/bin/python bench/apply.py --profile    # cProfile of patchfold.apply, case 1

Both contenders get the same float32 ``1×3×H×W`` input, the same model (``torch.manual_seed(0)``),
the same window (roi) of 128², overlap 0.25 and the same patches per model call (16):

- MONAI: ``sliding_window_inference(x, 128, 16, model, overlap=0.25, mode=...)`` under
  ``torch.inference_mode()``; ``mode="gaussian"`` (``sigma_scale=0.125``) or ``"constant"``.
- patchfold: ``patchfold.apply(x, model, 128, stride=96, cover=True, window=..., batch_size=16)``;
  ``window="gaussian"`` (sigma 0.125 of the window, the default) or ``"none"``. ``stride=96`` is
  ``int(128 * (1 - 0.25))``, MONAI's scan interval, and ``cover=True`` moves the last window of
  each dim inward to end at the border, as MONAI does: both place the very same windows.

patchfold hands a torch model channels-last batches (``memory_format="auto"``: where the first
batch gives the same values both ways), MONAI contiguous ones; "model alone" is timed both ways.

What differs on purpose (so the outputs are close, not equal): MONAI's gaussian map is clamped
below at 1e-3 and is the same for every window; patchfold's windows are edge-aware (a window at an
image border keeps full weight on its outer half) and accumulate in float64. patchfold also fills
the last batch of patches up to ``batch_size`` (for fixed-batch models), a few extra patches.

Timing: contenders interleaved (order alternating per repeat) after one warm-up each, medians;
"speed-up" is MONAI's median over patchfold's. Memory: each contender runs once in a fresh
subprocess and reports its peak RSS (``VmHWM``); from it is subtracted the peak of the same
subprocess stopped just before the run (same imports, model and input), so the number is what the
run itself adds on top of the input.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

ROI = 128
OVERLAP = 0.25
STRIDE = int(ROI * (1 - OVERLAP))  # MONAI's scan interval: 96
BATCH = 16
MODELS = ("conv1x1", "conv3")
BLENDS = {"gaussian": ("gaussian", "gaussian"), "constant": ("constant", "none")}  # name: (MONAI mode, patchfold)
TARGETS = {"conv1x1": 2.0, "conv3": 1.0}  # speed-up wanted
MEMORY_TARGET = 0.5  # patchfold's added peak RSS at most this share of MONAI's


def make_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "conv1x1":
        model = torch.nn.Conv2d(3, 3, 1)
    elif name == "conv3":
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 3, 3, padding=1),
        )
    else:
        raise ValueError(name)
    return model.eval()


def make_input(size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand((1, 3, size, size), generator=generator, dtype=torch.float32)


def run_patchfold(x: torch.Tensor, model: torch.nn.Module, blend: str) -> torch.Tensor:
    import patchfold

    return patchfold.apply(x, model, ROI, stride=STRIDE, cover=True, window=BLENDS[blend][1], batch_size=BATCH)


def run_monai(x: torch.Tensor, model: torch.nn.Module, blend: str) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        return sliding_window_inference(x, ROI, BATCH, model, overlap=OVERLAP, mode=BLENDS[blend][0], sigma_scale=0.125)


CONTENDERS: dict[str, Callable[[torch.Tensor, torch.nn.Module, str], torch.Tensor]] = {
    "patchfold": run_patchfold,
    "monai": run_monai,
}


def model_alone(patches: torch.Tensor, model: torch.nn.Module) -> None:
    """The floor both share: the model on every batch of pre-cut patches, nothing blended."""
    with torch.inference_mode():
        for first in range(0, len(patches), BATCH):
            model(patches[first : first + BATCH])


def all_patches(x: torch.Tensor) -> torch.Tensor:
    from patchfold.patchwise import axis_grid

    starts = axis_grid(x.shape[-1], ROI, STRIDE, 0, 1, True).starts
    return torch.stack([x[0, :, int(i) : int(i) + ROI, int(j) : int(j) + ROI] for i in starts for j in starts])


def as_plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else t  # MONAI may return a MetaTensor


def source_version() -> str:
    """The commit measured, and whether core/ had uncommitted changes (it is being worked on)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "log", "-1", "--format=%h %cI", "--", "core/patchwise.py"],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD", "--", "core"]).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"core/patchwise.py from {head}" + (" (core/ has uncommitted changes)" if dirty else "")


# --- timing -------------------------------------------------------------------------------------


def time_case(model_name: str, size: int, blend: str, repeats: int) -> dict:
    model, x = make_model(model_name), make_input(size)
    with torch.inference_mode():
        whole = model(x)  # the model on the whole image: exact for the 1x1 conv
    patches = all_patches(x)
    patches_cl = patches.contiguous(memory_format=torch.channels_last)  # what patchfold's auto layout gives
    outputs, times = {}, {name: [] for name in [*CONTENDERS, "model", "model_cl"]}
    for name, fn in CONTENDERS.items():  # warm-up, also the outputs compared
        outputs[name] = as_plain(fn(x, model, blend)).float()
    model_alone(patches, model)
    for r in range(repeats):
        order = list(CONTENDERS) if r % 2 == 0 else list(reversed(CONTENDERS))
        for name in [*order, "model", "model_cl"]:
            start = time.perf_counter()
            if name == "model":
                model_alone(patches, model)
            elif name == "model_cl":
                model_alone(patches_cl, model)
            else:
                CONTENDERS[name](x, model, blend)
            times[name].append(time.perf_counter() - start)
    pf, mo = outputs["patchfold"], outputs["monai"]
    inner = (slice(None), slice(None), slice(ROI, -ROI), slice(ROI, -ROI))  # away from the image borders
    return {
        "model": model_name,
        "size": size,
        "blend": blend,
        "patchfold_s": statistics.median(times["patchfold"]),
        "monai_s": statistics.median(times["monai"]),
        "model_s": statistics.median(times["model"]),
        "model_cl_s": statistics.median(times["model_cl"]),
        "times": times,
        "diff": float((pf - mo).abs().max()),
        "diff_inner": float((pf[inner] - mo[inner]).abs().max()),
        "pf_vs_whole": float((pf - whole).abs().max()),
        "monai_vs_whole": float((mo - whole).abs().max()),
        "out_range": float(whole.abs().max()),
    }


# --- memory -------------------------------------------------------------------------------------


def proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def child(contender: str, model_name: str, size: int, blend: str, run: bool) -> None:
    """One fresh process: imports, model, input, then (with ``run``) one call; prints its peaks."""
    import resource

    if contender == "patchfold":
        import patchfold  # noqa: F401
    else:
        import monai.inferers  # noqa: F401
    model, x = make_model(model_name), make_input(size)
    before = proc_status_kib("VmRSS")
    if run:
        out = CONTENDERS[contender](x, model, blend)
        assert out.shape == x.shape
    print(
        json.dumps(
            {
                "hwm_kib": proc_status_kib("VmHWM"),
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "rss_before_kib": before,
            }
        )
    )


def memory_case(model_name: str, size: int, blend: str, repeats: int) -> dict:
    def spawn(contender: str, run: bool) -> dict:
        args = [sys.executable, os.path.abspath(__file__), "--child", contender, model_name, str(size), blend]
        if not run:
            args.append("--no-run")
        done = subprocess.run(args, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    result: dict = {"model": model_name, "size": size, "blend": blend}
    added: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for r in range(repeats):
        order = list(CONTENDERS) if r % 2 == 0 else list(reversed(CONTENDERS))
        for name in order:
            base, peak = spawn(name, run=False), spawn(name, run=True)
            added[name].append((peak["hwm_kib"] - base["hwm_kib"]) / 1024)
            result[f"{name}_peak_mib"] = peak["hwm_kib"] / 1024
            result[f"{name}_base_mib"] = base["hwm_kib"] / 1024
    for name in CONTENDERS:
        result[f"{name}_added_mib"] = statistics.median(added[name])
    return result


# --- profile ------------------------------------------------------------------------------------


def profile(size: int, blend: str) -> None:
    """cProfile of ``patchfold.apply`` (case 1), then the inline pieces of ``_Sink.add``'s per-block
    loop (numpy operators, which cProfile books to ``add`` itself), timed alone on the same shapes."""
    import cProfile
    import pstats

    import numpy as np
    from patchfold.coverage import outer
    from patchfold.patchwise import axis_grid

    model, x = make_model("conv1x1"), make_input(size)
    run_patchfold(x, model, blend)  # warm-up
    start = time.perf_counter()
    run_patchfold(x, model, blend)
    plain = time.perf_counter() - start
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    run_patchfold(x, model, blend)
    profiler.disable()
    total = time.perf_counter() - start
    print(f"patchfold.apply, conv1x1 {size}² {blend}: {plain * 1e3:.0f} ms, {total * 1e3:.0f} ms under cProfile")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(25)

    blocks = axis_grid(size, ROI, STRIDE, 0, 1, True).count ** 2
    w = [np.random.rand(ROI), np.random.rand(ROI)]
    out = np.random.rand(3, ROI, ROI).astype(np.float32)
    band = np.zeros((3, ROI + STRIDE, size))
    weight = outer(w)
    prod = out * weight
    reps = 300

    def per_block(fn: Callable[[], object]) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps

    t_outer = per_block(lambda: outer(w))
    t_mul = per_block(lambda: out * weight)
    t_iadd = per_block(lambda: band[:, 40:168, 96:224].__iadd__(prod))
    print(f"_Sink.add per block ({blocks} blocks): outer() {t_outer * 1e6:.0f} µs, patch * weight (f32*f64 -> f64) "
          f"{t_mul * 1e6:.0f} µs, += into the band {t_iadd * 1e6:.0f} µs "
          f"-> {(t_outer + t_mul + t_iadd) * blocks * 1e3:.0f} ms per image")  # fmt: skip


# --- report -------------------------------------------------------------------------------------


def print_time_table(rows: list[dict]) -> None:
    print(
        "\n| model | image | blend (MONAI / patchfold) | patchfold | MONAI | model alone (contiguous / "
        "channels-last) | speed-up | target "
        "| max abs Δ pf−MONAI (all / ≥128 px inside) | max abs Δ vs model on whole image (pf / MONAI) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["monai_s"] / r["patchfold_s"]
        target = TARGETS[r["model"]]
        blend = "gaussian / gaussian" if r["blend"] == "gaussian" else "constant / none"
        print(
            f"| {r['model']} | {r['size']}² | {blend} | {r['patchfold_s'] * 1e3:.0f} ms "
            f"| {r['monai_s'] * 1e3:.0f} ms | {r['model_s'] * 1e3:.0f} / {r['model_cl_s'] * 1e3:.0f} ms | {ratio:.2f}× "
            f"| ≥{target:g}× {'met' if ratio >= target else 'NOT met'} | {r['diff']:.1e} / {r['diff_inner']:.1e} "
            f"| {r['pf_vs_whole']:.1e} / {r['monai_vs_whole']:.1e} |"
        )


def print_memory_table(rows: list[dict]) -> None:
    print("\n| model | image | blend | patchfold peak RSS (base) | MONAI peak RSS (base) | patchfold added | "
          "MONAI added | patchfold ÷ MONAI | target |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = r["patchfold_added_mib"] / r["monai_added_mib"]
        print(
            f"| {r['model']} | {r['size']}² | {r['blend']} | {r['patchfold_peak_mib']:.0f} MiB "
            f"({r['patchfold_base_mib']:.0f}) | {r['monai_peak_mib']:.0f} MiB ({r['monai_base_mib']:.0f}) | "
            f"{r['patchfold_added_mib']:.0f} MiB | {r['monai_added_mib']:.0f} MiB | {share:.2f} | "
            f"≤{MEMORY_TARGET:g} {'met' if share <= MEMORY_TARGET else 'NOT met'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2048² only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender (default 5, quick 3)")
    parser.add_argument("--profile", type=int, nargs="?", const=2048, metavar="SIZE",
                        help="cProfile patchfold.apply on case 1 at SIZE² (default 2048), then stop")  # fmt: skip
    parser.add_argument("--child", nargs=4, metavar=("CONTENDER", "MODEL", "SIZE", "BLEND"), help=argparse.SUPPRESS)
    parser.add_argument("--no-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        contender, model_name, size, blend = args.child
        child(contender, model_name, int(size), blend, not args.no_run)
        return
    if args.profile:
        profile(args.profile, "gaussian")
        return

    import monai
    import numpy as np
    import patchfold  # noqa: F401

    repeats = args.repeats or (3 if args.quick else 5)
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), monai {monai.__version__}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs; roi {ROI}, overlap {OVERLAP} (stride {STRIDE}), "
        f"batch {BATCH}; {repeats} timed calls per contender, interleaved"
    )
    print(f"patchfold at {source_version()}")
    cases = [(m, 2048, blend) for m in MODELS for blend in BLENDS]
    if not args.quick:
        cases.append(("conv1x1", 4096, "gaussian"))
    rows = []
    for model_name, size, blend in cases:
        started = time.perf_counter()
        calls = repeats if (size, model_name) == (2048, "conv1x1") else max(2, repeats - 2)
        r = time_case(model_name, size, blend, calls)
        rows.append(r)
        print(f"  {model_name} {size}² {blend}: patchfold {r['patchfold_s'] * 1e3:.0f} ms, MONAI "
              f"{r['monai_s'] * 1e3:.0f} ms, model alone {r['model_s'] * 1e3:.0f} ms "
              f"(channels-last {r['model_cl_s'] * 1e3:.0f} ms) "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    print_time_table(rows)

    mem_size = 2048 if args.quick else 4096
    mem_rows = [memory_case(m, mem_size, "gaussian", 1) for m in MODELS]
    print_memory_table(mem_rows)


if __name__ == "__main__":
    main()
