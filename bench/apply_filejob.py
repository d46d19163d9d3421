"""Peak memory of the ``patchfold apply`` file job at SIZE² (issue #15: ≤ ½ of what MONAI's
``sliding_window_inference`` adds, which ``bench/apply.py`` measures in its own venv).

    python bench/apply_filejob.py [--size 4096] [--dir DIR] [--repeats 2]

The float32 ``1×3×SIZE×SIZE`` input of ``bench/apply.py`` is saved as ``x.npy`` and each model of
that script as TorchScript; then, in fresh processes, ``patchfold apply x.npy --model M.pt -k 128
-s 96 --cover --window gaussian --batch-size 16 -o out.npy`` runs in-process and reports its peak
RSS (``VmHWM``), and the same process stopped after torch, patchfold, the model and the input are
loaded gives the base. "added" is the difference: what the job holds beyond its input.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from apply import MODELS, make_input, make_model

CHILD = r"""
import sys
import numpy as np, torch
from patchfold.cli.main import main
folder, name, run = sys.argv[1], sys.argv[2], sys.argv[3] == "run"
model, x = torch.jit.load(f"{folder}/{name}.pt"), np.load(f"{folder}/x.npy")
if run:
    del x  # the job reads its own
    try:
        main(["apply", f"{folder}/x.npy", "--model", f"{folder}/{name}.pt", "-k", "128", "-s", "96", "--cover",
              "--window", "gaussian", "--batch-size", "16", "-o", f"{folder}/out.npy", "-q"])
    except SystemExit as end:
        assert not end.code, end.code
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024)
"""


def peak_mib(folder: Path, name: str, run: bool) -> float:
    args = [sys.executable, "-c", CHILD, str(folder), name, "run" if run else "base"]
    return float(subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        folder = Path(scratch)
        np.save(folder / "x.npy", make_input(args.size).numpy())
        for name in MODELS:
            torch.jit.script(make_model(name)).save(str(folder / f"{name}.pt"))
        print("| model | image | peak RSS (base) | added |\n|---|---|---|---|")
        for name in MODELS:
            runs = [(peak_mib(folder, name, False), peak_mib(folder, name, True)) for _ in range(args.repeats)]
            added = statistics.median(peak - base for base, peak in runs)
            base, peak = runs[-1]
            print(f"| {name} | {args.size}² | {peak:.0f} MiB ({base:.0f}) | {added:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
