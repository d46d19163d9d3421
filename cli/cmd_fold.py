"""``patchfold fold``."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
from patchfold import ops
from patchfold.cli.errors import handle_errors
from patchfold.cli.options import (
    POSITIVE,
    block_options,
    device_options,
    fold_output_options,
    json_option,
    max_memory_option,
    progress_option,
    typed_size,
)
from patchfold.cli.present import emit_summary, geometry_fields, track
from patchfold.dtypes import fold_output_dtype, restore_dtype
from patchfold.engines import is_tensor, resolve
from patchfold.errors import PatchfoldError
from patchfold.geometry import LAYOUTS, matrix_dims
from patchfold.io.formats import check_against_sidecar, read_sidecar, sidecar_path
from patchfold.io.read import read_patch_matrix
from patchfold.io.write import check_output_path, image_targets, save_images, save_npy
from patchfold.jobs.fold import fold_to_npy
from patchfold.jobs.plan import plan_fold


@click.command()
@click.argument("patches", type=click.Path(path_type=Path))
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
    output_size: tuple[int, ...] | None,
    block,
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
    started = time.perf_counter()
    cols = read_patch_matrix(patches)
    sidecar = read_sidecar(patches)
    recorded = vars(sidecar) if sidecar else {}
    block = block.merged(recorded)
    layout = layout or (sidecar.layout if sidecar else "ncl")
    if block.kernel_size is None:
        raise click.UsageError(f"no sidecar '{sidecar_path(patches)}' found: give -k/--kernel-size (and --output-size)")
    # one typed value means a square; the sidecar's size is used as recorded (it may be 1-D)
    size = typed_size(output_size, block.kernel_size) if output_size else (sidecar.spatial_size if sidecar else None)
    if size is None:
        raise click.UsageError(f"no sidecar '{sidecar_path(patches)}' found: give --output-size")
    geometry = block.geometry(tuple(size))
    if sidecar is not None and geometry == sidecar.geometry() and layout == sidecar.layout:
        check_against_sidecar(cols, sidecar, layout, patches)
    targets = output_targets(output, cols.shape[0], sidecar.sources if sidecar else ())
    device, engine = resolve(device, engine)
    restore = (sidecar.input_dtype, sidecar.scale) if normalize and sidecar is not None else None
    streamed = None
    if targets is None and engine == "cpu":
        channels = geometry.check_fold_input(*matrix_dims(cols.shape, layout))
        dtype = fold_output_dtype(cols.dtype, normalize, window not in (None, "none"), restore)
        plan = plan_fold(cols.shape, channels, geometry, dtype, max_memory)
        job = fold_to_npy(cols, plan, output, layout, normalize=normalize, window=window, restore=restore)
        track(job, "fold", not no_progress)
        output_shape, output_dtype, streamed = plan.output_shape, dtype, plan.bands
    else:
        images = _fold_in_memory(cols, geometry, normalize, layout, window, device, engine)
        if restore is not None:
            images = restore_dtype(images, *restore)
        write_images(output, targets, images)
        output_shape, output_dtype = images.shape, images.dtype
    summary = {
        "output": written_to(output, targets),
        "patches": str(patches),
        "patches_shape": list(cols.shape),
        "output_shape": list(output_shape),
        "output_dtype": str(output_dtype),
        **geometry_fields(geometry),
        "layout": layout,
        "normalize": normalize,
        "window": window,
        "device": device,
        "engine": engine,
        "bands": streamed or 1,
        "seconds": round(time.perf_counter() - started, 4),
    }
    emit_summary(f"fold → {output}", summary, as_json)


def _fold_in_memory(cols, geometry, normalize: bool, layout: str, window: str, device: str, engine: str) -> np.ndarray:
    tensor_in = _to_device(cols, device) if engine == "torch" else cols
    images = ops.fold_with(tensor_in, geometry, normalize, layout=layout, window=window, engine=engine)
    return images.cpu().numpy() if is_tensor(images) else images


def output_targets(output: Path, count: int, names: tuple[str, ...] | list[str] = ()) -> list[Path] | None:
    """None for a .npy output, else the image files to write (shared with ``untile``)."""
    if output.suffix.lower() == ".npy":
        check_output_path(output)
        return None
    if not output.suffix and not output.is_dir() and not str(output).endswith("/"):
        raise click.BadParameter(
            f"'{output}' has no file type: use .npy, an image suffix (.png, .tif...) or an existing directory",
            param_hint="'-o' / '--output'",
        )
    return image_targets(output, count, names)


def write_images(output: Path, targets: list[Path] | None, images: np.ndarray) -> None:
    """Write folded images where :func:`output_targets` said: one .npy, or image files."""
    if targets is None:
        save_npy(output, images)
    else:
        save_images(targets, images)


def written_to(output: Path, targets: list[Path] | None) -> str | list[str]:
    """What a summary reports as the output: the .npy, or the image files."""
    return [str(t) for t in targets] if targets else str(output)


def _to_device(cols: np.ndarray, device: str):
    import torch

    try:
        return torch.from_numpy(np.array(cols, copy=True)).to(device)
    except RuntimeError as error:
        raise PatchfoldError(f"cannot move the patch matrix to {device}: {error}") from None
