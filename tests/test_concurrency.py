"""Two real ``patchfold`` processes racing for the same output.

Outputs are written to unique temporary files and renamed into place, so two writers of one path
must both finish and leave one complete, valid result (whichever rename came last); two ``tiles``
runs into one new directory must leave one complete directory, the loser failing cleanly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, command_env
from PIL import Image

pytestmark = pytest.mark.skipif(not HAS_COMMAND, reason="the patchfold command is not installed beside this Python")

KERNEL, STRIDE = 8, 2


#: Runs argv[2:] pinned to CPU argv[1]: racers sharing one CPU are interleaved by the scheduler, so
#: they overlap in time however busy the machine is (on separate CPUs one could finish first).
_PINNED_EXEC = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); os.execv(sys.argv[2], sys.argv[2:])"


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    command = [str(COMMAND), *args]
    if hasattr(os, "sched_setaffinity"):
        command = [sys.executable, "-c", _PINNED_EXEC, str(min(os.sched_getaffinity(0))), *command]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=command_env()
    )


def race(commands: list[list[str]], cwd: Path, watch: Path, prefix: str) -> tuple[list[tuple[int, str, str]], int]:
    """Start every command at once; return (exit, stdout, stderr) of each and the most temporaries
    (names starting with ``prefix`` and ending ``.part``) seen in ``watch`` at the same moment."""
    processes = [start(args, cwd) for args in commands]
    most = 0
    try:
        while any(p.poll() is None for p in processes):
            with_prefix = [n for n in os.listdir(watch) if n.startswith(prefix) and n.endswith(".part")]
            most = max(most, len(with_prefix))
            time.sleep(0.002)
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=120)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results, most


def reference_unfold(image: np.ndarray) -> np.ndarray:
    """(H, W) → (1, k·k, L) by numpy's sliding windows (independent of patchfold)."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (KERNEL, KERNEL))[::STRIDE, ::STRIDE]
    return np.ascontiguousarray(windows.reshape(-1, KERNEL * KERNEL).T)[None]


@pytest.fixture(scope="module")
def image_npy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """1200 × 1100 float32: -k 8 -s 2 gives an 84 MB patch matrix, streamed in small bands."""
    path = tmp_path_factory.mktemp("race_input") / "image.npy"
    image = np.random.default_rng(7).random((1200, 1100), dtype=np.float32)
    np.save(path, image[None, None])
    return path, image


def test_two_unfolds_to_one_path_leave_one_valid_matrix(image_npy: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    source, image = image_npy
    out = tmp_path / "out.npy"
    args = [
        "unfold",
        str(source),
        "-k",
        str(KERNEL),
        "-s",
        str(STRIDE),
        "--max-memory",
        "2MB",
        "--no-progress",
        "--json",
        "-o",
        str(out),
    ]
    results, most = race([args, args], tmp_path, tmp_path, ".out.npy.")
    for code, stdout, stderr in results:
        assert code == 0, f"exit {code}\n{stderr}"
        assert "Traceback" not in stderr
        assert json.loads(stdout)["output"] == str(out)
    assert most == 2, "the two writers never overlapped in time: the race was not exercised"

    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.npy"], "temporaries left behind"
    expected = reference_unfold(image)
    with open(out, "rb") as handle:  # one well-formed .npy: header, then exactly the data, nothing more
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        assert (shape, fortran, dtype) == (expected.shape, False, np.dtype(np.float32))
        assert out.stat().st_size == handle.tell() + expected.nbytes
    cols = np.load(out, allow_pickle=False)
    np.testing.assert_array_equal(cols, expected)

    sidecar = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert sidecar["format"] == "patchfold-patches" and sidecar["version"] == 1
    assert sidecar["kernel_size"] == [KERNEL, KERNEL] and sidecar["stride"] == [STRIDE, STRIDE]
    assert sidecar["padding"] == [0, 0] and sidecar["dilation"] == [1, 1]
    assert sidecar["input_shape"] == [1, 1, *image.shape]
    assert sidecar["input_dtype"] == sidecar["output_dtype"] == "float32"
    assert sidecar["layout"] == "ncl" and sidecar["sources"] == [str(source.resolve())]


def test_two_unfolds_over_an_existing_output(image_npy: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """Same race, replacing a previous result: the end state is still exactly one new matrix."""
    source, image = image_npy
    out = tmp_path / "out.npy"
    np.save(out, np.zeros((2, 2), np.uint8))
    (tmp_path / "out.json").write_text("{}")
    args = [
        "unfold",
        str(source),
        "-k",
        str(KERNEL),
        "-s",
        str(STRIDE),
        "--max-memory",
        "2MB",
        "--no-progress",
        "-o",
        str(out),
    ]
    results, _ = race([args, args], tmp_path, tmp_path, ".out.")
    assert [code for code, _, _ in results] == [0, 0], [stderr for _, _, stderr in results]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.npy"], "temporaries or backups left"
    np.testing.assert_array_equal(np.load(out), reference_unfold(image))
    assert json.loads((tmp_path / "out.json").read_text())["input_shape"] == [1, 1, *image.shape]


@pytest.fixture(scope="module")
def tile_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 200 × 240 RGB PNG: -k 8 -s 6 makes 33 × 39 = 1287 tile files."""
    path = tmp_path_factory.mktemp("tile_input") / "scene.png"
    pixels = np.random.default_rng(3).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path, pixels


def check_tile_directory(directory: Path, pixels: np.ndarray) -> None:
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    listed = [tile["file"] for tile in manifest["tiles"]]
    assert len(listed) == len(set(listed)) == 33 * 39
    present = {p.name for p in directory.iterdir()}
    assert present == {*listed, "manifest.json", "manifest.csv"}, "manifest and directory disagree"
    csv_rows = (directory / "manifest.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_rows) == 1 + len(listed) and [row.split(",")[0] for row in csv_rows[1:]] == listed
    for tile in manifest["tiles"][:: len(listed) // 25]:  # a sample of tiles against the image
        (y0, x0), (y1, x1) = tile["start"], tile["stop"]
        with Image.open(directory / tile["file"]) as image:
            np.testing.assert_array_equal(np.asarray(image), pixels[y0:y1, x0:x1])


def check_tiles_race(results: list[tuple[int, str, str]], mention: str = "") -> list[int]:
    """Both runs succeed, or one fails with a single Error line (mentioning ``mention``), no
    traceback and nothing on stdout; returns the sorted exit codes."""
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, 1]), results
    for code, stdout, stderr in results:
        assert "Traceback" not in stderr, stderr
        if code == 1:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: ") and mention in lines[0], stderr
            assert stdout == ""
    return codes


def test_two_tiles_runs_into_one_new_directory(tile_source: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    source, pixels = tile_source
    target = tmp_path / "tiles"
    args = ["tiles", str(source), "-k", "8", "-s", "6", "--no-progress", "-o", str(target)]
    results, most = race([args, args], tmp_path, tmp_path, ".tiles.")
    codes = check_tiles_race(results, mention="tiles")
    if codes == [0, 0]:
        assert most < 2, "both runs claim success although they overlapped: one must have lost"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"], "a staging directory was left behind"
    check_tile_directory(target, pixels)

    done = subprocess.run(
        [str(COMMAND), "untile", str(target), "-o", str(tmp_path / "back.png"), "--no-progress"],
        capture_output=True,
        text=True,
        env=command_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "back.png") as image:
        back = np.asarray(image)
    covered = (200 - 8) // 6 * 6 + 8, (240 - 8) // 6 * 6 + 8
    np.testing.assert_array_equal(back[: covered[0], : covered[1]], pixels[: covered[0], : covered[1]])


def test_two_tiles_runs_into_an_existing_empty_directory(tile_source: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    source, pixels = tile_source
    target = tmp_path / "tiles"
    target.mkdir()
    args = ["tiles", str(source), "-k", "8", "-s", "6", "--no-progress", "-o", str(target)]
    results, _ = race([args, args], tmp_path, tmp_path, ".tiles.")
    check_tiles_race(results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"], "a staging directory was left behind"
    check_tile_directory(target, pixels)


_SLOW_POOL = """
import os, sys, time
from pathlib import Path
from patchfold.scheduling import ImageResult, run_local


def task(n: int) -> ImageResult:
    Path(sys.argv[1], f"{os.getpid()}.pid").write_text("")
    time.sleep(120)
    return ImageResult(n, str(n), 0)


if __name__ == "__main__":
    for _ in run_local(list(range(4)), task, 2):
        pass
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by its parent) has ended
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_workers_end_with_a_run_killed_outright(tmp_path: Path) -> None:
    """A run killed with SIGKILL cannot stop its pool: its workers notice and end by themselves
    (the red-team found 12 still alive a minute after such runs)."""
    (tmp_path / "job.py").write_text(_SLOW_POOL)
    (tmp_path / "pids").mkdir()
    run = subprocess.Popen([sys.executable, "job.py", "pids"], cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "pids").iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p.stem) for p in (tmp_path / "pids").iterdir()]
    assert len(workers) == 2, "the workers did not start"
    run.kill()
    run.wait()
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"workers {left} outlived the run"


_POLLING_WATCH = """
import os, subprocess, threading
import patchfold.scheduling as scheduling

if hasattr(os, "pidfd_open"):
    del os.pidfd_open  # as on a system without pidfds: the watch polls
scheduling._WATCH_INTERVAL = 0.05
run = subprocess.Popen(["sleep", "0.3"])
threading.Thread(target=run.wait, daemon=True).start()  # reaped once it ends, as a shell does
scheduling._end_with(run.pid)
raise SystemExit(0)  # not reached: the watch ends the process with status 1
"""


@pytest.mark.skipif(os.name != "posix", reason="the watch runs on POSIX systems")
def test_the_run_watch_polls_where_there_are_no_pidfds() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _POLLING_WATCH], timeout=30)
    assert done.returncode == 1 and time.monotonic() - started < 20
