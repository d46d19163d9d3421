"""Shared helpers for the command-line tests (test_cli*.py, test_hostile.py, test_fuzz.py, ...).

Plain functions rather than pytest fixtures, so the test modules can import them without
shadowing warnings; each test module wraps what it needs in its own fixtures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner, Result
from patchfold.cli.main import main
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
#: name -> (file, PIL mode, (width, height), numpy dtype)
SAMPLE_IMAGES = {
    "rgb": ("scene_rgb.png", "RGB", (320, 240), np.uint8),
    "gray": ("scene_gray.png", "L", (160, 120), np.uint8),
    "rgba": ("badge_rgba.png", "RGBA", (128, 128), np.uint8),
    "depth16": ("depth_16bit.png", "I;16", (128, 120), np.uint16),
}
VOLUME = SAMPLES / "volume_stack.tif"


#: The installed ``patchfold`` console script beside this Python, for tests that run it for real.
COMMAND = Path(sys.executable).parent / "patchfold"
HAS_COMMAND = COMMAND.is_file() and os.access(COMMAND, os.X_OK)


def command_env(**extra: str) -> dict[str, str]:
    """This environment for a real run, without PATCHFOLD_DEBUG (it turns errors into tracebacks),
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PATCHFOLD_DEBUG"}
    env.update(extra)
    return env


def sample(name: str) -> Path:
    return SAMPLES / SAMPLE_IMAGES[name][0]


def invoke(*args: Any, env: dict[str, str] | None = None) -> Result:
    """Run ``patchfold ARGS`` in-process (stdout and stderr kept apart)."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def describe(result: Result) -> str:
    return (
        f"exit {result.exit_code}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n"
        f"--- exception ---\n{result.exception!r}"
    )


def ok(*args: Any, env: dict[str, str] | None = None) -> Result:
    """Run and require success."""
    result = invoke(*args, env=env)
    assert result.exit_code == 0, describe(result)
    return result


def ok_json(*args: Any) -> dict[str, Any]:
    """Run with ``--json`` and parse stdout."""
    return json.loads(ok(*args, "--json").stdout)


def pixels(path: Path) -> np.ndarray:
    """An image file's pixels as PIL decodes them (H, W) or (H, W, C)."""
    with Image.open(path) as image:
        return np.asarray(image).copy()


def as_nchw(values: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) pixels as a batch of one (1, C, H, W)."""
    return (values[None] if values.ndim == 2 else np.moveaxis(values, -1, 0))[None]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error: ")]


def assert_runtime_error(result: Result, *fragments: str) -> str:
    """Exit 1, stderr exactly one ``Error: `` line (no traceback), nothing on stdout; returns the line."""
    assert result.exit_code == 1, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), describe(result)
    assert result.stdout == "", describe(result)
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def part_files(directory: Path) -> list[Path]:
    """Temporary files an interrupted write could leave (``.<name>.*.part``)."""
    return sorted(p for p in directory.rglob("*") if p.name.endswith(".part"))


def unfold_ref(
    images: np.ndarray, kernel: Any, dilation: Any = 1, padding: Any = 0, stride: Any = 1, layout: str = "ncl"
) -> np.ndarray:
    """torch.nn.functional.unfold of (N, C, H, W) integer or float images, in float64."""
    import torch
    import torch.nn.functional as F

    cols = F.unfold(
        torch.from_numpy(np.ascontiguousarray(images)).to(torch.float64),
        kernel,
        dilation=dilation,
        padding=padding,
        stride=stride,
    ).numpy()
    return cols.transpose(0, 2, 1) if layout == "nlc" else cols


def fold_ref(
    cols: np.ndarray,
    size: tuple[int, int],
    kernel: Any,
    dilation: Any = 1,
    padding: Any = 0,
    stride: Any = 1,
    layout: str = "ncl",
) -> np.ndarray:
    """torch.nn.functional.fold of a patch matrix, summed in float64."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(cols)).to(torch.float64)
    if layout == "nlc":
        tensor = tensor.transpose(1, 2)
    return F.fold(tensor, size, kernel, dilation=dilation, padding=padding, stride=stride).numpy()


def divisor_ref(size: tuple[int, int], kernel: Any, dilation: Any = 1, padding: Any = 0, stride: Any = 1) -> np.ndarray:
    """PyTorch's ``fold(unfold(ones))`` for one channel, ``(H, W)`` float64."""
    ones = np.ones((1, 1, *size))
    return fold_ref(unfold_ref(ones, kernel, dilation, padding, stride), size, kernel, dilation, padding, stride)[0, 0]


def all_commands() -> list[tuple[str, Any, Any]]:
    """Every command the ``patchfold`` group has, group members included (``batch unfold``,
    ``show grid``...), as ``(name, click.Command, click.Context)``, found by walking the group
    (commands load lazily: asking for each imports it). Each context descends from the group's, as
    in a real run: a command caches its help option from the first context it is asked with, so a
    bare context would leave it without ``-h`` for the tests after."""
    import click

    found: list[tuple[str, Any, Any]] = []

    def walk(group: click.Group, context: click.Context, prefix: str) -> None:
        for name in group.list_commands(context):
            command = group.get_command(context, name)
            if command is None or command.hidden:
                continue
            child = click.Context(command, info_name=name, parent=context)
            found.append((f"{prefix}{name}", command, child))
            if isinstance(command, click.Group):
                walk(command, child, f"{prefix}{name} ")

    walk(main, click.Context(main, info_name="patchfold", **main.context_settings), "")
    return found
