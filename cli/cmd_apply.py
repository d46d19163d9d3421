"""``patchfold apply``."""

from __future__ import annotations

from pathlib import Path

import click
from patchfold.blocks import Blocks
from patchfold.choices import DEFAULT_BATCH, MEMORY_FORMATS, REDUCTIONS
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    PATH,
    ZARR_OUTPUT_HELP,
    DeviceType,
    block_options,
    complete_window,
    compression_option,
    json_option,
    level_options,
    max_pixels_option,
    progress_option,
    recursive_option,
    spatial_dims_option,
    stack_option,
    verbosity_options,
)
from patchfold.cli.present import emit_summary, track
from patchfold.io.levels import Level


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=PATH)
@click.option(
    "-o",
    "--output",
    required=True,
    type=PATH,
    help=ZARR_OUTPUT_HELP.format(c="C'", hw="H', W'"),
)
@compression_option
@click.option(
    "--model",
    type=PATH,
    default=None,
    help="TorchScript (.pt), torch.export (.pt2) or ONNX (.onnx, needs the [onnx] extra) model file.",
)
@click.option("--linear", type=PATH, default=None, help="W.npy: one vector W·patch per patch (C', C, *k).")
@click.option("--bias", type=PATH, default=None, help="B.npy (C',) added to --linear's vectors.")
@click.option("--function", default=None, metavar="MODULE:CALLABLE", help="A Python callable on batches of patches.")
@block_options()
@click.option("--cover", is_flag=True, help="Move each dim's last block inward to end at the border (no padding).")
@click.option(
    "--window",
    default="none",
    show_default=True,
    shell_complete=complete_window,
    help="Blending window (hann, gaussian:SIGMA...).",
)
@click.option("--margin", type=click.IntRange(0), default=0, show_default=True, help="Trim of each output patch.")
@click.option(
    "--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH, show_default=True, help="Patches per call."
)
@click.option("--device", type=DeviceType(), default="auto", show_default=True, help="Where a model runs.")
@click.option(
    "--memory-format",
    type=click.Choice([name.replace("_", "-") for name in MEMORY_FORMATS]),
    default="auto",
    show_default=True,
    help="Layout of a torch model's batches; auto: channels-last where the model gives the same values.",
)
@click.option("--reduce", type=click.Choice(REDUCTIONS), default="none", show_default=True, help="Over channels.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64", "float16"]),
    default="float32",
    show_default=True,
    help="What the patches are given as; integer pixels are scaled into [0, 1].",
)
@spatial_dims_option
@stack_option
@level_options
@recursive_option
@max_pixels_option
@progress_option
@json_option
@verbosity_options
@handle_errors
def apply(
    inputs: tuple[Path, ...],
    output: Path,
    compression: str,
    model: Path | None,
    linear: Path | None,
    bias: Path | None,
    function: str | None,
    blocks: Blocks,
    cover: bool,
    window: str,
    margin: int,
    batch_size: int,
    device: str,
    memory_format: str,
    reduce: str,
    dtype: str,
    spatial_dims: int | None,
    stack: bool,
    level: Level,
    max_pixels: int,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Run a model or function on every patch of INPUTS and blend the results back.

    Each batch of patches (B, C, *k) becomes (B, C', *k·scale), overlap-added with the window, or
    (B, C'), one vector per block, giving the block grid.

    \b
    Example:
      patchfold sample -o scene.png
      patchfold apply scene.png --function numpy:sqrt -k 64 -s 48 --cover -o brighter.png
      patchfold apply scene.png --model model.pt -k 64 -s 48 --cover --margin 8 -o out.png
      patchfold apply scene.png --linear w.npy -k 3 -p 1 -o features.npy
      patchfold apply scene.png --function numpy:sqrt -k 64 -s 48 --cover -o brighter.zarr
    """
    from patchfold.jobs.apply import FunctionSpec, apply_file

    spec = FunctionSpec(model=model, linear=linear, bias=bias, function=function)
    job = apply_file(
        list(inputs), output, blocks, spec, cover=cover, window=window, margin=margin, batch_size=batch_size,
        device=device, reduce=reduce, dtype=dtype, spatial_dims=spatial_dims, stack=stack, max_pixels=max_pixels,
        level=level, compression=compression, memory_format=memory_format.replace("-", "_"),
    )  # fmt: skip
    result = track(job, "apply", not no_progress)
    emit_summary(f"apply → {output}", result.summary(), as_json)
