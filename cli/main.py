"""The ``patchfold`` command group."""

from __future__ import annotations

import signal

import click
from patchfold import __version__
from patchfold.cli.cmd_apply import apply
from patchfold.cli.cmd_batch import batch
from patchfold.cli.cmd_fold import fold
from patchfold.cli.cmd_show import show
from patchfold.cli.cmd_stats import divisor, stats
from patchfold.cli.cmd_tiles import tiles, untile
from patchfold.cli.cmd_unfold import unfold


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="patchfold")
def main() -> None:
    """Sliding-block unfold (im2col) and fold (overlap-add) for images and arrays.

    \b
    Example:
      patchfold unfold sample_images/scene_rgb.png -k 16 -s 8 -o p.npy
      patchfold fold p.npy -o restored.png
      patchfold stats --size 512,512 -k 16 -s 8
    """


for command in (unfold, fold, apply, divisor, stats, tiles, untile, show, batch):
    main.add_command(command)


def run() -> None:
    """Console entry point: SIGTERM (a cluster's kill) is handled like Ctrl-C, so jobs clean up."""
    signal.signal(signal.SIGTERM, _interrupt)
    main(prog_name="patchfold")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
