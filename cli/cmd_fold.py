"""``patchfold fold``."""

from __future__ import annotations

from pathlib import Path

import click
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    PATH,
    POSITIVE,
    block_options,
    device_options,
    fold_output_options,
    json_option,
    max_memory_option,
    progress_option,
)
from patchfold.cli.present import emit_summary, track
from patchfold.geometry import LAYOUTS


@click.command()
@click.argument("patches", type=PATH)
@fold_output_options
@click.option("--output-size", type=POSITIVE, default=None, help="Spatial size H,W (default: from the sidecar).")
@block_options(required=False)
@click.option(
    "--layout", type=click.Choice(LAYOUTS), default=None, help="Layout of PATCHES (default: sidecar, else ncl)."
)
@device_options
@max_memory_option
@progress_option
@json_option
@handle_errors
def fold(
    patches: Path,
    output: Path,
    normalize: bool,
    output_size: int | tuple[int, ...] | None,
    blocks: dict,
    layout: str | None,
    window: str,
    device: str,
    engine: str,
    max_memory: int | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Overlap-add a patch matrix PATCHES.npy back into images.

    Parameters come from the sidecar PATCHES.json written by unfold; options given here override
    it. Without a sidecar, -k and --output-size are required.

    \b
    Example:
      patchfold unfold sample_images/scene_rgb.png -k 16 -s 8 -o p.npy
      patchfold fold p.npy -o restored.png
      patchfold fold p.npy --window hann -o blended.png
    """
    from patchfold.jobs.fold import fold_file

    job = fold_file(
        patches, output, blocks, output_size=output_size, layout=layout, normalize=normalize, window=window,
        device=device, engine=engine, max_memory=max_memory,
    )  # fmt: skip
    result = track(job, "fold", not no_progress)
    emit_summary(f"fold → {output}", result.summary(), as_json)
