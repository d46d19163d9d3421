"""Forward + backward through patchfold.nn against torch.nn, on CPU, in one process.

    python bench/torch_nn.py              # both tables, 15 interleaved rounds
    python bench/torch_nn.py --rounds 5   # quicker

Table 1: ``Fold(Unfold(x))`` forward and backward (``y.backward(g)``), patchfold.nn against
torch.nn with the same parameters; the input gradients are checked equal first.
Table 2: the whole step ``Unfold -> Linear -> Fold`` with a loss, forward and backward:
PyTorch's modules with the transposes ``ncl`` needs, against patchfold's with ``layout="nlc"``
(the Linear applies to each patch row as it is).

Contenders run interleaved, one call each per round, and each reports its median; the ratio is
torch's median over patchfold's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import patchfold
import torch
from patchfold import nn


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int, int]
    kernel: int
    stride: int
    padding: int = 0


CASES = [
    Case("1×3×512² k8 s4", (1, 3, 512, 512), 8, 4),
    Case("8×16×128² k3 p1 (im2col)", (8, 16, 128, 128), 3, 1, 1),
]


def fold_unfold_step(unfold: torch.nn.Module, fold: torch.nn.Module, x: torch.Tensor, seed: torch.Tensor) -> Callable:
    def step() -> torch.Tensor:
        x.grad = None
        fold(unfold(x)).backward(seed)
        return x.grad

    return step


def linear_step(
    unfold: torch.nn.Module, fold: torch.nn.Module, linear: torch.nn.Linear, x: torch.Tensor, nlc: bool
) -> Callable:
    def step() -> torch.Tensor:
        x.grad = None
        linear.zero_grad(set_to_none=True)
        cols = unfold(x)
        out = fold(linear(cols)) if nlc else fold(linear(cols.transpose(1, 2)).transpose(1, 2))
        out.square().mean().backward()
        return x.grad

    return step


def interleaved(contenders: dict[str, Callable], rounds: int) -> dict[str, float]:
    for step in contenders.values():  # warm up: allocations, thread pools, the compiled loops
        step()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def table_fold_unfold(rounds: int) -> None:
    print("\n| case | torch.nn fwd+bwd | patchfold.nn fwd+bwd | speed-up |\n|---|---|---|---|")
    for case in CASES:
        size = case.shape[2:]
        args = {"kernel_size": case.kernel, "stride": case.stride, "padding": case.padding}
        x = torch.randn(case.shape, requires_grad=True)
        seed = torch.randn(case.shape)
        theirs = fold_unfold_step(torch.nn.Unfold(**args), torch.nn.Fold(size, **args), x, seed)
        ours = fold_unfold_step(nn.Unfold(**args), nn.Fold(size, **args), x, seed)
        torch.testing.assert_close(ours(), theirs(), rtol=1e-5, atol=1e-4)
        medians = interleaved({"torch": theirs, "patchfold": ours}, rounds)
        print(
            f"| {case.name} | {medians['torch'] * 1e3:.1f} ms | {medians['patchfold'] * 1e3:.1f} ms "
            f"| {medians['torch'] / medians['patchfold']:.2f}× |"
        )


def table_linear(rounds: int) -> None:
    print(
        "\n| case | torch.nn (ncl + transposes) | patchfold.nn (nlc) | speed-up | linear alone (fwd+bwd) |"
        "\n|---|---|---|---|---|"
    )
    for case in CASES:
        size = case.shape[2:]
        args = {"kernel_size": case.kernel, "stride": case.stride, "padding": case.padding}
        length = case.shape[1] * case.kernel**2
        linear = torch.nn.Linear(length, length)
        x = torch.randn(case.shape, requires_grad=True)
        theirs = linear_step(torch.nn.Unfold(**args), torch.nn.Fold(size, **args), linear, x, nlc=False)
        ours = linear_step(nn.Unfold(**args, layout="nlc"), nn.Fold(size, **args, layout="nlc"), linear, x, nlc=True)
        torch.testing.assert_close(ours(), theirs(), rtol=1e-4, atol=1e-6)
        rows = torch.randn(case.shape[0], patchfold.Blocks(**args).at(size).num_blocks, length, requires_grad=True)

        def linear_alone(linear: torch.nn.Linear = linear, rows: torch.Tensor = rows) -> None:
            linear.zero_grad(set_to_none=True)
            linear(rows).square().mean().backward()

        medians = interleaved({"torch": theirs, "patchfold": ours, "linear": linear_alone}, rounds)
        print(
            f"| {case.name} | {medians['torch'] * 1e3:.1f} ms | {medians['patchfold'] * 1e3:.1f} ms "
            f"| {medians['torch'] / medians['patchfold']:.2f}× | {medians['linear'] * 1e3:.1f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds, medians")
    table_fold_unfold(args.rounds)
    table_linear(args.rounds)


if __name__ == "__main__":
    main()
