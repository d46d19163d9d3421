"""Every example in every command's ``--help`` runs as written, in an empty folder, with the
installed ``patchfold`` command: help that works anywhere, not only beside ``sample_images/``
(issue #18). Files an example names but cannot make itself (a model, weights, a slide) are
made first, by the table below."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import numpy as np
import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, command_env
from click.testing import CliRunner
from patchfold.cli.main import main

pytestmark = pytest.mark.skipif(not HAS_COMMAND, reason="the patchfold command is not installed beside this Python")


def _model(work: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Conv2d(3, 3, 1)
    torch.jit.script(model).save(str(work / "model.pt"))


def _weights(work: Path) -> None:
    np.save(work / "w.npy", np.random.default_rng(0).random((4, 3, 3, 3)).astype(np.float32))


def _scans(work: Path) -> None:
    (work / "my_scans").mkdir()
    for name in ("a", "b"):
        subprocess.run([COMMAND, "sample", "-q", "-o", work / "my_scans" / f"{name}.png"], check=True, timeout=60)


def _slide(work: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    full = np.random.default_rng(1).integers(0, 255, (1024, 512, 3), np.uint8)
    with tifffile.TiffWriter(work / "slide.ome.tif") as tif:
        tif.write(full, tile=(256, 256), subifds=1, metadata={"axes": "YXS"}, resolution=(2e4, 2e4), resolutionunit=3)
        tif.write(full[::2, ::2], tile=(256, 256), subfiletype=1)


def _photos(work: Path) -> None:
    (work / "photos" / "2024").mkdir(parents=True)
    for name in ("photos/a.png", "photos/2024/b.png"):
        subprocess.run([COMMAND, "sample", "-q", "-o", work / name], check=True, timeout=60)


#: What an example needs that it does not make itself, by a word in it.
NEEDS: dict[str, Callable[[Path], None]] = {
    "model.pt": _model,
    "w.npy": _weights,
    "my_scans/": _scans,
    "slide.ome.tif": _slide,
    "photos/": _photos,
}


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))


def examples(command: click.Command) -> list[str]:
    """The shell lines under ``Example:`` in a command's help text."""
    text = command.help or ""
    if "Example:" not in text:
        return []
    lines = text.split("Example:", 1)[1].splitlines()
    return [line.strip() for line in lines if line.strip().startswith(("patchfold ", "cat ", "python "))]


#: Example lines not run, and why.
SKIPPED = {"--scheduler tcp://head:8786": "sends the work to a Dask cluster (tests/test_batch.py runs a LocalCluster)"}

ALL = [("patchfold",), *(path for path, _ in commands(main))]


def command_at(path: tuple[str, ...]) -> click.Command:
    found: click.Command = main
    for name in path[1:] if path[0] == "patchfold" else path:
        assert isinstance(found, click.Group)
        found = found.get_command(click.Context(found), name)  # type: ignore[assignment]
    return found


def test_every_command_shows_an_example() -> None:
    missing = [" ".join(path) for path in ALL if not examples(command_at(path))]
    assert missing == []


@pytest.mark.parametrize("path", ALL, ids=lambda path: " ".join(path))
def test_the_help_examples_run_in_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: tuple[str, ...]
) -> None:
    lines = examples(command_at(path))
    for word, make in NEEDS.items():
        if any(word in line for line in lines):
            make(tmp_path)
    env = command_env(PATH=f"{COMMAND.parent}{os.pathsep}{os.environ.get('PATH', '')}", NO_COLOR="1")
    for line in lines:
        if any(word in line for word in SKIPPED):
            continue
        for step in line.split(" && "):
            if set(step) & set("|<>") or not step.startswith("patchfold "):  # shell plumbing: a real shell
                done = subprocess.run(
                    ["bash", "-c", f"set -o pipefail; {step}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                    timeout=120,
                )  # fmt: skip
                code, said = done.returncode, done.stderr
            else:  # a plain command: in this process (a fresh interpreter per line would take seconds)
                monkeypatch.chdir(tmp_path)
                result = CliRunner().invoke(main, shlex.split(step)[1:])
                code, said = result.exit_code, f"{result.stderr}{result.exception!r}"
            assert code == 0, f"{' '.join(path)}: `{step}` exited {code}:\n{said}"
