"""The ``patchfold`` command group."""

from __future__ import annotations

import gc
import importlib
import sys

import click
from patchfold.cli import interrupts

#: Each command, the module and name that define it, and its one-line help (the first sentence of
#: its docstring, kept here so that ``patchfold --help`` lists the commands without importing them:
#: ``tests/test_cli.py`` checks the two agree).
COMMANDS: dict[str, tuple[str, str]] = {
    "apply": (
        "patchfold.cli.cmd_apply",
        "Run a model or function on every patch of INPUTS and blend the results back.",
    ),
    "batch": (
        "patchfold.cli.cmd_batch",
        "Unfold or tile whole datasets of images of different sizes, in parallel, resumably.",
    ),
    "divisor": (
        "patchfold.cli.cmd_stats",
        "Compute the divisor map fold(unfold(ones)) — how many blocks cover each pixel — for INPUT's size (or "
        "--size), write it as .npy and/or a heatmap PNG, and print the overlap statistics.",
    ),
    "fold": ("patchfold.cli.cmd_fold", "Overlap-add a patch matrix PATCHES.npy back into images."),
    "sample": (
        "patchfold.cli.cmd_sample",
        "Write a synthetic test image (gradients, discs, fine stripes) to try the other commands on.",
    ),
    "show": (
        "patchfold.cli.cmd_show",
        "Render pictures: the block grid over an image, a mosaic of patches, or the divisor map beside the image.",
    ),
    "stats": ("patchfold.cli.cmd_stats", "Print overlap statistics for INPUT (or --size) without unfolding anything."),
    "tiles": (
        "patchfold.cli.cmd_tiles",
        "Write every patch of INPUTS as its own file in a new directory OUTPUT, with manifest.json and manifest.csv "
        "listing each tile's file, image, block row/column and pixel box.",
    ),
    "unfold": (
        "patchfold.cli.cmd_unfold",
        "Extract the sliding blocks of INPUTS (images, directories of images, .npy arrays, Zarr or OME-Zarr "
        "stores, pyramidal TIFFs, whole-slide images such as .svs) into a patch matrix: OUTPUT.npy with its "
        "parameters in OUTPUT.json beside it, or OUTPUT.zarr with them in its attributes.",
    ),
    "untile": (
        "patchfold.cli.cmd_tiles",
        "Fold a tile DIRECTORY written by `patchfold tiles` (and possibly processed since) back into images, using "
        "its manifest.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when one is run or asked for (click's lazy-loading
    pattern): the group's help lists them from :data:`COMMANDS`, so ``patchfold --help`` and
    ``patchfold --version`` import neither numpy nor the commands' modules."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            module, _ = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), name), name)
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            # an unloaded command's line is cut as click cuts a loaded one's
            text = (loaded or click.Command(name, help=COMMANDS[name][1])).get_short_help_str(limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-V",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, param, value: _version(ctx, value),
    help="Show the version, the CPU engine that will run (compiled loops or numpy fallback, and why), "
    "torch and CUDA, and exit.",
)
def main() -> None:
    """Sliding-block unfold (im2col) and fold (overlap-add) for images and arrays.

    \b
    Example:
      patchfold sample -o scene.png
      patchfold unfold scene.png -k 16 -s 8 -o p.npy
      patchfold fold p.npy -o restored.png
      patchfold stats --size 512,512 -k 16 -s 8
    """


def _version(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from patchfold.about import engine_report, report_lines

    click.echo("\n".join(report_lines(engine_report())))
    ctx.exit()


def run() -> None:
    """Console entry point: SIGTERM (a cluster's kill) is handled like Ctrl-C, so jobs clean up;
    both wait out the standard library's lock windows (:mod:`patchfold.cli.interrupts`); once the
    command has returned, Ctrl-C is ignored."""
    interrupts.install()
    code: object = 0
    try:
        main(prog_name="patchfold")
    except SystemExit as done:
        code = done.code
        raise
    finally:
        # The command's files are written, closed and renamed by now: what is left is the
        # interpreter's exit, whose garbage collection of every object the imports made took
        # ~20 ms of a 200 ms unfold. Frozen objects are skipped by it (their memory goes back
        # with the process); atexit handlers, thread joins and the flush of stdout still run.
        gc.freeze()
        if interrupts.uninstall() and code in (0, None):  # came as it finished: not dropped
            click.echo("Error: interrupted as the command finished; its output is complete", err=True)
            sys.exit(130)
