"""``patchfold unfold``."""

from __future__ import annotations

import time
from pathlib import Path

import click
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    block_options,
    device_options,
    dtype_option,
    json_option,
    max_memory_option,
    max_pixels_option,
    progress_option,
    spatial_dims_option,
    stack_option,
)
from patchfold.cli.present import emit_summary, geometry_fields, human_bytes, track
from patchfold.dtypes import target_dtype
from patchfold.engines import resolve
from patchfold.geometry import LAYOUTS
from patchfold.io.formats import Sidecar, sidecar_path
from patchfold.io.read import load_inputs
from patchfold.io.write import check_output_path
from patchfold.jobs.plan import plan_unfold
from patchfold.jobs.unfold import unfold_to_npy


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Patch matrix .npy to write.")
@block_options()
@dtype_option("Output dtype; floats scale integer images to [0, 1].")
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="ncl",
    show_default=True,
    help="ncl: (N, C·∏k, L), PyTorch's; nlc: (N, L, C·∏k), one row per patch.",
)
@device_options
@spatial_dims_option
@stack_option
@max_pixels_option
@max_memory_option
@progress_option
@json_option
@handle_errors
def unfold(
    inputs: tuple[Path, ...],
    output: Path,
    block,
    dtype: str,
    layout: str,
    device: str,
    engine: str,
    spatial_dims: int | None,
    stack: bool,
    max_pixels: int,
    max_memory: int | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Extract the sliding blocks of INPUTS (images, directories of images, or .npy arrays) into a
    patch matrix OUTPUT.npy, with its parameters in OUTPUT.json beside it.

    Several inputs stack into the batch N and must agree in size and channels.

    \b
    Example:
      patchfold unfold sample_images/scene_rgb.png -k 16 -s 8 -o patches.npy
      patchfold unfold my_scans/ -k 32,16 --layout nlc --dtype float32 -o all.npy
    """
    if output.suffix.lower() != ".npy":
        raise click.BadParameter(f"the patch matrix is written as .npy, got '{output}'", param_hint="'-o/--output'")
    check_output_path(output)
    check_output_path(sidecar_path(output), "sidecar")
    started = time.perf_counter()
    batch = load_inputs(inputs, spatial_dims, max_pixels, stack)
    array = batch.array
    out_dtype, scale = target_dtype(array.dtype, dtype)
    geometry = block.geometry(batch.spatial_size)
    device, engine = resolve(device, engine)
    plan = plan_unfold(array.shape, out_dtype, geometry, layout, max_memory)
    sidecar = Sidecar(
        **geometry_fields(geometry),
        input_shape=list(array.shape),
        input_dtype=str(batch.array.dtype),
        output_dtype=str(out_dtype),
        scale=scale,
        layout=layout,
        sources=[str(Path(s).resolve()) for s in batch.sources],
    )
    job = unfold_to_npy(
        array, plan, output, layout, scale=scale, sidecar=sidecar.to_json(), device=device, engine=engine
    )
    track(job, "unfold", not no_progress)
    seconds = time.perf_counter() - started
    summary = {
        "output": str(output),
        "sidecar": str(sidecar_path(output)),
        "inputs": len(set(batch.sources)),
        "input_shape": list(array.shape),
        "input_dtype": str(batch.array.dtype),
        "output_dtype": str(out_dtype),
        **geometry_fields(geometry),
        "layout": layout,
        "blocks_per_dim": list(geometry.blocks_per_dim),
        "num_blocks": geometry.num_blocks,
        "output_shape": list(plan.output_shape),
        "output_bytes": plan.output_bytes,
        "device": device,
        "engine": engine,
        "streamed": plan.streaming,
        "bands": plan.bands,
        "seconds": round(seconds, 4),
    }
    # the table shows the output's size in words where the JSON has its byte count
    rows = [("size", human_bytes(value)) if key == "output_bytes" else (key, value) for key, value in summary.items()]
    if plan.streaming:
        rows.append(("note", f"streamed in {plan.bands} bands to stay within {human_bytes(plan.budget)}"))
    emit_summary(f"unfold → {output}", summary, as_json, rows)
