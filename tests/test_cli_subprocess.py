"""The installed ``patchfold`` command, run as a real process on sample_images/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cli_fixtures
import numpy as np
import pytest
from cli_fixtures import as_nchw, command_env, pixels, sample, unfold_ref


def find_command() -> str | None:
    """The command beside this Python, else the one on PATH."""
    return str(cli_fixtures.COMMAND) if cli_fixtures.HAS_COMMAND else shutil.which("patchfold")


COMMAND = find_command()
pytestmark = pytest.mark.skipif(COMMAND is None, reason="the patchfold command is not installed")


def run(*args: object, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert COMMAND is not None
    return subprocess.run(
        [COMMAND, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env or command_env(),
        check=False,
    )


def test_unfold_matches_torch_and_fold_is_bit_exact(tmp_path: Path) -> None:
    done = run(
        "unfold", sample("rgb"), "-k", "16", "-s", "8", "-o", "p.npy", "--no-progress", "--device", "cpu", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", "without --json the summary goes to stderr"
    images = as_nchw(pixels(sample("rgb")))
    cols = np.load(tmp_path / "p.npy", allow_pickle=False)
    assert cols.dtype == np.uint8 and cols.shape == (1, 3 * 16 * 16, 29 * 39)
    np.testing.assert_array_equal(cols, unfold_ref(images, 16, stride=8))
    assert json.loads((tmp_path / "p.json").read_text())["input_shape"] == [1, 3, 240, 320]

    done = run("fold", "p.npy", "-o", "restored.png", "--json", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == ["restored.png"]
    np.testing.assert_array_equal(pixels(tmp_path / "restored.png"), pixels(sample("rgb")))


def test_16bit_round_trip_nlc(tmp_path: Path) -> None:
    done = run(
        "unfold",
        sample("depth16"),
        "-k",
        "8",
        "-s",
        "4",
        "-p",
        "2",
        "--layout",
        "nlc",
        "-o",
        "d.npy",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    cols = np.load(tmp_path / "d.npy", allow_pickle=False)
    assert cols.dtype == np.uint16
    np.testing.assert_array_equal(cols, unfold_ref(as_nchw(pixels(sample("depth16"))), 8, 1, 2, 4, "nlc"))
    done = run("fold", "d.npy", "-o", "d.png", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(pixels(tmp_path / "d.png"), pixels(sample("depth16")))


def test_python_m_patchfold(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "patchfold", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=command_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    for command in ("unfold", "fold", "divisor", "stats"):
        assert command in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "patchfold", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=command_env(),
        check=False,
    )
    assert done.returncode == 0 and "patchfold, version" in done.stdout


def test_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    done = run("unfold", sample("rgb"), "-k", "300", "-o", "x.npy", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "no block fits" in lines[0], done.stderr
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []

    debug = run(
        "unfold", sample("rgb"), "-k", "300", "-o", "x.npy", cwd=tmp_path, env={**command_env(), "PATCHFOLD_DEBUG": "1"}
    )
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr, "PATCHFOLD_DEBUG=1 shows the traceback"


def test_bad_option_exits_2(tmp_path: Path) -> None:
    done = run("stats", "--size", "64,64", "-k", "8", "-s", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--stride" in done.stderr


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
