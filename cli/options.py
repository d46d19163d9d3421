"""Option groups shared by several commands, as decorators (one definition each)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from patchfold.blocks import PADDING_MODES, Blocks
from patchfold.choices import DEFAULT_MAX_PIXELS, DTYPES, WINDOWS
from patchfold.engines import ENGINES
from patchfold.errors import PatchfoldError
from patchfold.io.streams import is_stdio, named_for_user
from patchfold.units import parse_bytes


class NonEmptyPath(click.Path):
    """A path option or argument: click reads an empty value as ``.`` (the current directory), so
    ``-o ''`` would write into it; an empty value is refused instead."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str | bytes) and len(value) == 0:
            self.fail("expected a path, got an empty string", param, ctx)
        return super().convert(value, param, ctx)


#: The type of every path a command takes.
PATH = NonEmptyPath(path_type=Path)


class AliasedOption(click.Option):
    """An option with old spellings that still work but are not shown in ``--help`` (``hidden``:
    the names kept when an option was renamed, so scripts written for them keep running)."""

    def __init__(self, *args: Any, hidden: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_names = hidden

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None or not self.hidden_names:
            return record
        names, text = record
        shown = [part for part in names.split(", ") if part.split(" ")[0] not in self.hidden_names]
        if shown and self.metavar is None and " " in names and " " not in shown[-1]:
            shown[-1] += " " + names.rsplit(" ", 1)[-1]  # the metavar sat on the hidden name
        return ", ".join(shown), text


#: How each library parameter is spelled on the command line (for error messages).
OPTION_NAMES = {
    "kernel_size": "'-k' / '--kernel-size'",
    "stride": "'-s' / '--stride'",
    "padding": "'-p' / '--padding'",
    "dilation": "'-d' / '--dilation'",
    "padding_mode": "'--padding-mode'",
    "spatial_size": "'--size'",
    "output_size": "'--size'",
    "output": "'-o' / '--output'",
    "device": "'--device'",
    "dtype": "'--dtype'",
    "layout": "'--layout'",
    "window": "'--window'",
    "engine": "'--engine'",
    "spatial_dims": "'--spatial-dims'",
    "format": "'--format'",
    "npy": "'--npy'",
    "png": "'--png'",
    "batch": "'--batch'",
    "channels": "'--channels'",
    "model": "'--model'",
    "linear": "'--linear'",
    "bias": "'--bias'",
    "function": "'--function'",
    "margin": "'--margin'",
    "cover": "'--cover'",
    "reduce": "'--reduce'",
    "batch_size": "'--batch-size'",
    "compression": "'--compression'",
    "shard_size": "'--shard-size'",
    "append": "'--append'",
    "min_foreground": "'--min-foreground'",
    "max_blank": "'--max-blank'",
    "background": "'--background'",
}

#: Library parameters as flags, where a message gives them as advice (``stack=True`` → ``--stack``).
FLAGS = {
    "stack": "--stack",
    "max_pixels": "--max-pixels",
    "max_memory": "--max-memory",
    "spatial_dims": "--spatial-dims",
    "channels": "--channels",
    "kernel_size": "-k/--kernel-size",
    "output_size": "--size",
    "spatial_size": "--size",
    "format": "--format",
    "engine": "--engine",
    "scheduler": "--scheduler",
    "min_foreground": "--min-foreground",
    "max_blank": "--max-blank",
    "background": "--background",
}


class IntList(click.ParamType):
    """An int or a comma list of ints (``16`` or ``16,8``), each at least ``minimum``."""

    name = "INT[,INT...]"

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?\d+(\s*,\s*[+-]?\d+)*", text):
            self.fail(f"expected an int or a comma list of ints like 16 or 16,8, got {value!r}", param, ctx)
        parts = re.split(r"\s*,\s*", text)
        if any(
            len(part.lstrip("+-")) > 15 for part in parts
        ):  # int() of 4300+ digits raises, and no size is this large
            self.fail(f"values must be at most 2**40, got {text[:40]}...", param, ctx)
        values = tuple(int(part) for part in parts)
        if any(v < self.minimum for v in values):
            what = "positive" if self.minimum == 1 else "non-negative"
            self.fail(f"every value must be {what}, got {text}", param, ctx)
        return values[0] if len(values) == 1 else values  # one value: every spatial dim


POSITIVE = IntList(1)
NON_NEGATIVE = IntList(0)


def apply_options(command: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """Decorate ``command`` with ``options`` so they appear in ``--help`` in list order."""
    for option in reversed(options):
        command = option(command)
    return command


def block_options(required: bool = True, cover: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-k/-s/-p/-d/--padding-mode`` (and ``--cover`` with ``cover``), gathered into one
    ``blocks`` argument: a :class:`~patchfold.blocks.Blocks`, or with ``required=False`` (fold,
    which reads them from a sidecar) a dict of the options given (None where not given).
    """
    names = ("kernel_size", "stride", "padding", "dilation", "padding_mode", *(("cover",) if cover else ()))

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names}
            try:
                kwargs["blocks"] = Blocks(**given) if required else given
            except PatchfoldError as error:
                raise as_click_error(error) from None
            return command(*args, **kwargs)

        options = [
            click.option(
                "-k",
                "--kernel-size",
                type=POSITIVE,
                required=required,
                help="Block size: an int, or one per spatial dim (16 or 16,8).",
            ),
            click.option(
                "-s",
                "--stride",
                type=POSITIVE,
                default=1 if required else None,
                show_default="1",
                help="Step between blocks, per dim.",
            ),
            click.option(
                "-p",
                "--padding",
                type=NON_NEGATIVE,
                default=0 if required else None,
                show_default="0",
                help="Padding on both sides, per dim.",
            ),
            click.option(
                "-d",
                "--dilation",
                type=POSITIVE,
                default=1 if required else None,
                show_default="1",
                help="Spacing between kernel points, per dim.",
            ),
            click.option(
                "--padding-mode",
                type=click.Choice(PADDING_MODES),
                default="zeros" if required else None,
                show_default="zeros",
                help="How the padding is filled (zeros is PyTorch's).",
            ),
        ]
        if cover:
            options.append(
                click.option(
                    "--cover",
                    is_flag=True,
                    default=False if required else None,
                    help="Cover every pixel: move each dim's last block inward to end at the border "
                    "(padding must be 0; only a dim shorter than a block is padded).",
                )
            )
        return apply_options(wrapper, options)

    return decorate


class FractionType(click.ParamType):
    """A number in [0, 1] (``0.25``); NaN and infinities are refused."""

    name = "FRACTION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            number = float(str(value).strip())
        except ValueError:
            self.fail(f"expected a fraction in [0, 1] such as 0.25, got {value!r}", param, ctx)
        if not 0 <= number <= 1:  # NaN fails too
            self.fail(f"expected a fraction in [0, 1], got {value!r}", param, ctx)
        return number


class BackgroundType(click.ParamType):
    """``auto`` (None) or a finite grey level."""

    name = "auto|LEVEL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | None:
        if value is None or isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return None
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            self.fail(f"expected auto or a grey level such as 255 or 0, got {value!r}", param, ctx)
        return number


def keep_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--min-foreground``, ``--max-blank`` and ``--background``, gathered into one ``keep``
    argument: a :class:`~patchfold.keep.KeepRules`, or None when no rule is given."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from patchfold.keep import KeepRules  # numpy: only for the command that runs

        given = {name: kwargs.pop(name) for name in ("min_foreground", "max_blank", "background")}
        try:
            kwargs["keep"] = None if given == dict.fromkeys(given) else KeepRules(**given)
        except PatchfoldError as error:
            raise as_click_error(error) from None
        return command(*args, **kwargs)

    options = [
        click.option(
            "--min-foreground",
            type=FractionType(),
            default=None,
            help="Keep only blocks with at least this fraction of foreground pixels (0-1; padding is background).",
        ),
        click.option(
            "--max-blank",
            type=FractionType(),
            default=None,
            help="Keep only blocks with at most this fraction of background (blank) pixels (0-1).",
        ),
        click.option(
            "--background",
            type=BackgroundType(),
            default=None,
            show_default="auto",
            help="The background's side of the image's Otsu threshold: auto (the light side, as on a slide) or the "
            "side a grey level falls on (0 for a dark background).",
        ),
    ]
    return apply_options(wrapper, options)


def device_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--device`` and ``--engine``."""
    command = click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="auto",
        show_default=True,
        help="cpu: patchfold's threaded engine; torch: PyTorch (needed for CUDA).",
    )(command)
    return click.option(
        "--device",
        type=DeviceType(),
        default="auto",
        show_default=True,
        help="auto, cpu, cuda or cuda:N (auto picks CUDA when a GPU is present).",
    )(command)


class DeviceType(click.ParamType):
    name = "DEVICE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
            self.fail(f"expected auto, cpu, cuda or cuda:N, got {value!r}", param, ctx)
        return text

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(name) for name in ("auto", "cpu", "cuda") if name.startswith(incomplete)]


def dtype_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--dtype keep|float32|float64|float16``, with the command's own ``help``."""

    return click.option("--dtype", type=click.Choice(DTYPES), default="keep", show_default=True, help=help)


def layout_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--layout ncl|nlc`` (default ncl), with the command's own ``help``."""
    from patchfold.geometry import LAYOUTS

    return click.option("--layout", type=click.Choice(LAYOUTS), default="ncl", show_default=True, help=help)


def check_one_stdout(as_json: bool, output: Any) -> None:
    """``--json`` and ``-o -`` would interleave on standard output: a usage error (exit 2)."""
    if as_json and is_stdio(output):
        raise click.UsageError("--json and -o - would both write to standard output: give one")


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")(command)


#: Where the verbosity chosen by ``-q``/``-v`` is kept in click's context (-1 quiet, 0, 1 verbose).
VERBOSITY_KEY = "patchfold.verbosity"


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value:
        return
    level = -1 if param.name == "quiet" else 1
    if ctx.meta.get(VERBOSITY_KEY, level) != level:
        raise click.UsageError("-q/--quiet and -v/--verbose cannot be given together", ctx)
    ctx.meta[VERBOSITY_KEY] = level


def verbosity_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-q/--quiet`` (errors only: no summary, no progress bar) and ``-v/--verbose`` (also the
    time each stage took), read back by :mod:`patchfold.cli.present`."""
    options = [
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            expose_value=False,
            callback=_set_verbosity,
            help="Print errors only (no summary, no progress bar); --json output still goes to stdout.",
        ),
        click.option(
            "-v",
            "--verbose",
            is_flag=True,
            expose_value=False,
            callback=_set_verbosity,
            help="Also print the time each stage took, on stderr.",
        ),
    ]
    return apply_options(command, options)


def progress_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--no-progress", is_flag=True, help="Never show a progress bar.")(command)


def size_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--size",
        "spatial_size",
        type=POSITIVE,
        default=None,
        help="Spatial size instead of an input file (H,W; or one value per dim).",
    )(command)


def spatial_dims_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--spatial-dims",
        type=click.IntRange(1, 3),
        default=None,
        help="How many trailing .npy axes are spatial (default: from the array's rank).",
    )(command)


def recursive_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-r/--recursive``: directories among ``inputs`` give the images of every level below them,
    and ``**`` in a quoted glob matches any depth (as in ``batch``)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("recursive") and kwargs.get("inputs"):
            from patchfold.io.read import find_inputs

            try:
                kwargs["inputs"] = tuple(find_inputs(kwargs["inputs"], recursive=True))
            except PatchfoldError as error:
                raise as_click_error(error) from None
        return command(*args, **kwargs)

    return click.option(
        "-r", "--recursive", is_flag=True, help="Descend into sub-directories of INPUTS (and ** in quoted globs)."
    )(wrapper)


class PositiveNumber(click.ParamType):
    """A positive finite number (``0.5``); with ``suffix``, that letter may follow it (``20x``)."""

    def __init__(self, name: str, suffix: str = "") -> None:
        self.name, self.suffix = name, suffix

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        if self.suffix and text.lower().endswith(self.suffix):
            text = text[: -len(self.suffix)]
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            self.fail(f"expected a positive number such as {'20' if self.suffix else '0.5'}, got {value!r}", param, ctx)
        return number


def level_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--level``, ``--mpp`` and ``--magnification`` (at most one), gathered into one ``level``
    argument: a level number, a :class:`~patchfold.io.levels.LevelRequest`, or None."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from patchfold.io.levels import LevelRequest

        mpp, magnification = kwargs.pop("mpp"), kwargs.pop("magnification")
        named = {"--level": kwargs["level"], "--mpp": mpp, "--magnification": magnification}
        given = [name for name, value in named.items() if value is not None]
        if len(given) > 1:
            raise click.UsageError(f"{' and '.join(given)} each pick the resolution level: give one of them")
        if mpp is not None or magnification is not None:
            kwargs["level"] = LevelRequest(mpp=mpp, magnification=magnification)
        return command(*args, **kwargs)

    options = [
        click.option(
            "--level",
            type=click.IntRange(0),
            default=None,
            help="Resolution level of a pyramidal TIFF, OME-Zarr or slide input (0: full resolution), read region "
            "by region.",
        ),
        click.option(
            "--mpp",
            type=PositiveNumber("MICRONS"),
            default=None,
            help="Pick the level by pixel size: the coarsest at or finer than this many micrometres per pixel "
            "(from the file's resolution).",
        ),
        click.option(
            "--magnification",
            type=PositiveNumber("MAG", suffix="x"),
            default=None,
            help="Pick the level by magnification (20 or 20x): the lowest at or above it (objective power, or "
            "10 µm over the pixel size).",
        ),
    ]
    return apply_options(wrapper, options)


def max_pixels_option(command: Callable[..., Any]) -> Callable[..., Any]:

    return click.option(
        "--max-pixels",
        type=click.IntRange(1),
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help="Refuse images with more pixels than this (decompression-bomb guard).",
    )(command)


class ByteSize(click.ParamType):
    """A size such as ``2GB`` or ``512MiB``."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from patchfold.errors import PatchfoldError

        try:
            return parse_bytes(str(value))
        except PatchfoldError as error:
            self.fail(str(error), param, ctx)


def max_memory_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--max-memory",
        type=ByteSize(),
        default=None,
        help="Memory budget, e.g. 2GB (default: a quarter of available RAM); larger outputs are streamed in bands.",
    )(command)


def stack_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--stack",
        is_flag=True,
        help="Read a multi-page TIFF as a 3-D volume, or stack 2-D images (a directory of slices) into one.",
    )(command)


def complete_window(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of ``--window``: the window names."""
    return [name for name in WINDOWS if name.startswith(incomplete)]


#: ``-o`` of fold and untile: what each kind of output holds.
FOLD_OUTPUT_HELP = (
    ".npy (N, C, H, W), an image file (for N > 1 put {i} in its name: it becomes each image's index, "
    "zero-padded to four digits: 0000, 0001, ...), or a directory (files named after the inputs)."
)

#: ``-o`` of fold and apply, which also write Zarr (``{c}``, ``{hw}``: what the axes are called).
ZARR_OUTPUT_HELP = (
    ".npy (N, {c}, {hw}); .zarr ({c}, {hw}) for one image, (N, {c}, {hw}) for more; an image file (for N > 1 put "
    "{{i}} in its name: it becomes each image's index, zero-padded to four digits: 0000, 0001, ...); or a "
    "directory (files named after the inputs)."
)


def fold_output_options(zarr: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-o/--output``, ``--normalize/--no-normalize`` and ``--window``: how fold and untile write
    (``zarr``: the command writes ``.zarr`` stores too, and says so)."""
    options = [
        click.option(
            "-o",
            "--output",
            required=True,
            type=PATH,
            help=ZARR_OUTPUT_HELP.format(c="C", hw="H, W") if zarr else FOLD_OUTPUT_HELP,
        ),
        click.option(
            "--normalize/--no-normalize",
            default=True,
            show_default=True,
            help="Divide by the (weighted) divisor map, so untouched patches give back the image; "
            "--no-normalize writes the plain sum (F.fold's).",
        ),
        click.option(
            "--window",
            default="none",
            show_default=True,
            metavar="|".join(WINDOWS),
            shell_complete=complete_window,
            help="Blend overlapping patches with an edge-aware window (gaussian:SIGMA sets its width).",
        ),
    ]
    return lambda command: apply_options(command, options)


#: The codecs of a ``.zarr`` output (as :data:`patchfold.io.zarr_out.ZARR_COMPRESSIONS`, kept here
#: so ``--help`` imports no numpy).
ZARR_COMPRESSIONS = ("default", "none", "zstd", "blosc", "gzip")


def compression_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--compression``: the codec of a ``.zarr`` output (unfold, fold, apply)."""
    return click.option(
        "--compression",
        type=click.Choice(ZARR_COMPRESSIONS),
        default="default",
        show_default=True,
        help="Codec of a .zarr output (default: Zarr's, Zstandard).",
    )(command)


def as_click_error(error: PatchfoldError) -> click.ClickException:
    """A library error as the command line reports it: a bad option (exit 2) when the parameter at
    fault is an option, else a runtime error (exit 1); parameters named as advice become flags."""
    message = named_for_user(str(error)).replace("\n", " ").replace("\r", " ")
    for name, flag in FLAGS.items():
        message = re.sub(rf"\b{name}=True\b", flag, message)
        message = re.sub(rf"\b{name}=(?=[\s),;]|$)", flag, message)
        message = re.sub(rf"\b{name}=(\w+)", rf"{flag} \1", message)
    if error.param in OPTION_NAMES:
        return click.BadParameter(message, param_hint=OPTION_NAMES[error.param])
    return click.ClickException(message)
