"""README.md against the command line, like sqlite-utils' test_docs.py: (a) every command, and
every option of every command, is in the README (found by walking the click group, so a new or
renamed option fails here until the README says it); (b) every shell block of the README runs, line
by line, in a scratch directory this module prepares (the sample images, and placeholders for the
files and directories the README names: my_slices/, slide.tif, scan.svs, photos/, model.pt, ...).
Lines that cannot run here are skipped by name in :data:`SKIPPED`, each with its reason (and the
lines that read scan.svs where OpenSlide is not installed); any other line that does not exit 0
fails. (The README's Python blocks run in test_readme.py.)"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, all_commands, command_env
from patchfold.cli.main import main
from PIL import Image

from tests.slide_files import tissue, write_svs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
SHELL_BLOCKS = re.compile(r"^```(?:bash|sh|console)\n(.*?)^```", re.S | re.M)

#: README lines that are not run, and why (matched exactly, after stripping a trailing comment).
SKIPPED = {
    "./run.sh": "sets up a .venv and runs the demo: the repository's own script, not an installed command",
    "./run.sh test": "runs this test suite",
    "pip install 'patchfold[distributed]'": "needs the network",
    "pip install 'patchfold[slide]'": "needs the network",
    "dask scheduler &": "starts a Dask cluster",
    "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False": "configures the Dask cluster's workers",
    "dask worker tcp://127.0.0.1:8786 --no-nanny --nthreads 1 &": "starts a Dask worker",
    "patchfold batch unfold /shared/photos -k 64 -s 32 -o /shared/dataset --scheduler tcp://127.0.0.1:8786": (
        "needs the Dask cluster above (tests/test_batch.py runs batch on a LocalCluster)"
    ),
}


# ----- (a) every command and option is in the README -------------------------------------------
def _reference_entry(name: str) -> str:
    """The option reference's entry for ``patchfold NAME`` (its bullet, up to the next one)."""
    section = TEXT[TEXT.index("### Option reference") :]
    section = section[: section.index("\n#")]
    head = f"- `patchfold{' ' + name if name else ''}"
    for entry in re.split(r"\n(?=- `patchfold)", section):
        if entry.startswith(head) and entry[len(head)] in "` ":
            return entry
    raise AssertionError(f"README's option reference has no entry for 'patchfold {name}'")


def _options() -> list[tuple[str, str]]:
    """``(command, option)`` for every visible option of every command, the group's own included."""
    found = []
    top = click.Context(main, info_name="patchfold", **main.context_settings)
    for name, command, context in [("", main, top), *all_commands()]:
        for param in command.get_params(context):
            if name and param is command.get_help_option(context):  # every command has one: said once
                continue
            if isinstance(param, click.Option) and not param.hidden:
                found.extend((name, opt) for opt in [*param.opts, *param.secondary_opts])
    return found


OPTIONS = _options()


@pytest.mark.parametrize("name", [name for name, _, _ in all_commands()])
def test_every_command_is_in_the_readme(name: str) -> None:
    assert re.search(rf"`patchfold {re.escape(name)}[ `]", TEXT), f"README never shows `patchfold {name}`"
    _reference_entry(name)


@pytest.mark.parametrize(("name", "option"), OPTIONS, ids=[f"{n or 'patchfold'} {o}" for n, o in OPTIONS])
def test_every_option_is_in_the_readme(name: str, option: str) -> None:
    entry = _reference_entry(name)
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", entry), (
        f"README's option reference for 'patchfold {name}' lacks {option}"
    )


# ----- (b) every shell block runs ------------------------------------------------------------------
def readme_lines() -> list[str]:
    """Each command line of the README's shell blocks, in order, without comments."""
    lines = []
    for block in SHELL_BLOCKS.findall(TEXT):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


LINES = readme_lines()

#: The README's slide (scan.svs, an Aperio-style tiled TIFF here) is read through OpenSlide.
HAS_OPENSLIDE = importlib.util.find_spec("openslide") is not None


def _skipped(line: str) -> str | None:
    """Why ``line`` is not run here, or None."""
    if line in SKIPPED:
        return SKIPPED[line]
    if "scan.svs" in line and not HAS_OPENSLIDE:
        return "reads a slide through OpenSlide, which is not installed (pip install 'patchfold[slide]')"
    return None


def _pyramid(path: Path) -> None:
    """A tiled RGB pyramidal TIFF, 1024² with levels of 512² and 256² (slide.tif)."""
    tifffile = pytest.importorskip("tifffile")
    y, x = np.mgrid[:1024, :1024]
    rgb = np.stack([(x // 4) % 256, (y // 4) % 256, ((x + y) // 8) % 256], axis=-1).astype(np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), subifds=2, photometric="rgb", resolution=(40000, 40000), resolutionunit=3)
        tif.write(rgb[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
        tif.write(rgb[::4, ::4], tile=(128, 128), subfiletype=1, photometric="rgb")


def _prepare(directory: Path) -> None:
    """The scratch directory the README's commands run in."""
    shutil.copytree(ROOT / "sample_images", directory / "sample_images")
    shutil.copytree(ROOT / "demo", directory / "demo")
    for folder in ("out", "docs/img"):  # the README's output folders
        (directory / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    slices = directory / "my_slices"  # a directory of equally sized slices
    slices.mkdir()
    for index in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 40), dtype=np.uint8)).save(slices / f"slice_{index:02d}.png")
    _pyramid(directory / "slide.tif")
    write_svs(directory / "scan.svs", tissue(2048, 1536), levels=3, mpp=0.25, objective=40, tile=128)
    photos = directory / "photos"  # a dataset: RGB photos of different sizes, one in a subfolder
    (photos / "trip").mkdir(parents=True)
    for name, (h, w) in {"a.png": (160, 200), "b.jpg": (130, 170), "trip/c.png": (200, 150)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / name)
    np.save(directory / "w.npy", rng.normal(size=(4, 3, 3, 3)).astype(np.float32))  # --linear (C', C, *k)
    np.save(directory / "b.npy", rng.normal(size=4).astype(np.float32))
    (directory / "mymodule.py").write_text(
        "def segment(patches):\n    return patches  # a stand-in model: one score per channel, argmax picks one\n"
    )
    import torch  # the README's three-line model (the Python block before the apply commands)

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1)
    )
    torch.jit.script(model.eval()).save(str(directory / "model.pt"))


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every line once, in order (later lines read what earlier ones wrote)."""
    if not HAS_COMMAND:
        pytest.skip("the patchfold console script is not installed")
    directory = tmp_path_factory.mktemp("readme")
    _prepare(directory)
    bin_dir = str(Path(sys.executable).parent)  # the console script, and `python` for the demo scripts
    env = command_env(
        PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        PYTHONPATH=str(directory),  # --function mymodule:segment imports the user's module from here
    )
    assert shutil.which("patchfold", path=env["PATH"]) == str(COMMAND)
    results: dict[str, Any] = {}
    for line in LINES:
        if _skipped(line):
            continue
        started = time.perf_counter()
        results[line] = subprocess.run(
            ["bash", "-c", line], cwd=directory, env=env, capture_output=True, text=True, timeout=300
        )
        print(f"{time.perf_counter() - started:6.2f} s  {line}")
    return results


def test_the_readme_has_shell_blocks() -> None:
    assert len(LINES) > 20
    assert set(SKIPPED) <= set(LINES), "a skipped line is no longer in the README"


@pytest.mark.skipif(shutil.which("bash") is None, reason="the README's blocks are bash")
@pytest.mark.parametrize("line", LINES)
def test_readme_line_runs(line: str, readme_runs: dict[str, Any]) -> None:
    if _skipped(line):
        pytest.skip(_skipped(line))
    done = readme_runs[line]
    assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stderr[-2000:]}"


CONFLICT_MARKER = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.M)


@pytest.mark.parametrize(
    "path",
    [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").glob("*.md"))],
    ids=lambda path: path.name,
)
def test_no_merge_conflict_markers(path: Path) -> None:
    """A merge left unresolved must not land in what users read."""
    marker = CONFLICT_MARKER.search(path.read_text(encoding="utf-8"))
    assert marker is None, f"{path.name}: conflict marker at offset {marker.start()}"
