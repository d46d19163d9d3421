"""Bad inputs found by red-teaming the #18 CLI habits: each one a single ``Error:`` line, no
traceback, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, command_env, describe, error_lines, invoke, ok, sample
from patchfold.io import write

RGB = sample("rgb")


@pytest.mark.skipif(not HAS_COMMAND, reason="needs the installed patchfold command")
def test_closed_standard_input_is_one_error_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(COMMAND), "unfold", "-", "-k", "4", "-o", str(tmp_path / "p.npy")],
        capture_output=True,
        text=True,
        env=command_env(),
        close_fds=True,
        preexec_fn=lambda: os.close(0),
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == [result.stderr.strip()]
    assert "closed" in result.stderr and "'-'" in result.stderr
    assert not (tmp_path / "p.npy").exists()


def test_a_file_name_too_long_in_a_new_folder_is_one_error_line(tmp_path: Path) -> None:
    output = tmp_path / "new" / ("x" * 300 + ".npy")
    result = invoke("unfold", RGB, "-k", "16", "-s", "16", "-o", output)
    assert result.exit_code == 1, describe(result)
    assert "Traceback" not in result.stderr and len(error_lines(result.stderr)) == 1, describe(result)
    assert "File name too long" in result.stderr
    assert not (tmp_path / "new").exists()  # the folder made for it is gone again


@pytest.mark.parametrize("link_to", ["loop", "nowhere"])
def test_an_output_folder_under_a_broken_symlink_says_so(tmp_path: Path, link_to: str) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / link_to)
    result = invoke("unfold", RGB, "-k", "16", "-o", tmp_path / "loop" / "b" / "p.npy")
    assert result.exit_code == 1, describe(result)
    assert error_lines(result.stderr) == [result.stderr.strip()]
    assert "symbolic link" in result.stderr


def test_runs_making_the_same_output_folder_at_once_both_succeed(tmp_path: Path, monkeypatch) -> None:
    """Two runs both see the folder missing; the second mkdir must not fail with 'File exists'."""
    folder = tmp_path / "a" / "b"
    real_mkdir = Path.mkdir
    barrier = threading.Barrier(2, timeout=10)

    def racing_mkdir(self: Path, *args, **kwargs) -> None:
        if self == folder:
            barrier.wait()  # both threads checked exists() and now mkdir together
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    errors: list[BaseException] = []

    def make(name: str) -> None:
        try:
            with write.made_parents(folder / name):
                (folder / name).write_bytes(b"x")
        except BaseException as error:
            errors.append(error)

    (tmp_path / "a").mkdir()
    threads = [threading.Thread(target=make, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in folder.iterdir()) == ["one", "two"]


def test_sample_size_with_three_values_is_a_bad_option() -> None:
    result = invoke("sample", "--size", "1,2,3", "-o", "never.png")
    assert result.exit_code == 2, describe(result)
    assert "Traceback" not in result.stderr and "--size" in result.stderr and "2-D" in result.stderr


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_sample_writes_any_channels_of_uint16_and_float32_as_tif(tmp_path: Path, dtype: str, channels: int) -> None:
    """sample --help promises 'any as .tif'; the .tif reads back to the .npy's pixels."""
    pytest.importorskip("tifffile")
    ok("sample", "--dtype", dtype, "--channels", channels, "--size", "24,32", "-o", tmp_path / "s.tif", "-q")
    ok("sample", "--dtype", dtype, "--channels", channels, "--size", "24,32", "-o", tmp_path / "s.npy", "-q")
    ok("unfold", tmp_path / "s.tif", "-k", "8", "-s", "8", "-o", tmp_path / "p.npy", "-q")
    ok("fold", tmp_path / "p.npy", "-o", tmp_path / "back.npy", "-q")
    back = np.load(tmp_path / "back.npy")
    assert back.dtype == np.dtype(dtype)
    assert np.array_equal(back[0], np.load(tmp_path / "s.npy"))
