"""The installed ``patchfold`` command as a real process, only where the process is the point: the
console entry point's one-Error-line contract, ``python -m patchfold``, and which modules a command
imports. (Everything else about the command line runs in-process: test_cli.py, test_hostile.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cli_fixtures
import pytest
from cli_fixtures import command_env, sample


def find_command() -> str | None:
    """The command beside this Python, else the one on PATH."""
    return str(cli_fixtures.COMMAND) if cli_fixtures.HAS_COMMAND else shutil.which("patchfold")


COMMAND = find_command()
pytestmark = pytest.mark.skipif(COMMAND is None, reason="the patchfold command is not installed")


def run(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert COMMAND is not None
    return subprocess.run(
        [COMMAND, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, env=command_env(), check=False
    )


def test_python_m_patchfold(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "patchfold", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=command_env(),
        check=False,
    )
    assert done.returncode == 0 and "patchfold, version" in done.stdout, done.stderr


def test_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    done = run("unfold", sample("rgb"), "-k", "300", "-o", "x.npy", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "no block fits" in lines[0], done.stderr
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


TORCH_PROBE = """
import sys
from patchfold.cli.main import main
code = main(sys.argv[1:], standalone_mode=False)
assert code in (None, 0), code
print("torch" in sys.modules)
"""


@pytest.mark.parametrize(
    ("args", "imported"),
    [
        pytest.param(["--help"], False, id="help"),
        pytest.param(["stats", "--size", "64,64", "-k", "8"], False, id="stats"),
        pytest.param(["divisor", "--size", "64,64", "-k", "8", "--png", "x.png"], False, id="divisor_png"),
        pytest.param(["unfold", "{gray}", "-k", "8", "-o", "x.npy", "--device", "cpu"], False, id="unfold_cpu"),
        # control: the probe does see torch when a command really uses it
        pytest.param(
            ["unfold", "{gray}", "-k", "8", "-o", "x.npy", "--engine", "torch", "--device", "cpu"],
            True,
            id="control_torch_engine",
        ),
    ],
)
def test_torch_is_imported_only_when_needed(tmp_path: Path, args: list[str], imported: bool) -> None:
    argv = [a.format(gray=sample("gray")) for a in args]
    done = subprocess.run(
        [sys.executable, "-c", TORCH_PROBE, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=command_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(imported), done.stdout + done.stderr
    for name in ("x.png", "x.npy"):
        if name in argv:
            assert (tmp_path / name).stat().st_size > 0
