"""The habits of well-liked command lines (issue #18): ``-`` for standard input and output,
``-q``/``-v``, reports on stdout at a terminal and pipe-clean elsewhere, output folders made on
demand, renamed options that keep their old spellings."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, command_env, describe, error_lines, invoke, ok, pixels, sample
from click.testing import CliRunner
from patchfold.cli.main import main
from patchfold.io.write import atomic_paths

RGB = sample("rgb")
_buffer = io.BytesIO()
np.save(_buffer, np.zeros((1, 48, 9), np.float32))
MATRIX = _buffer.getvalue()  # a patch matrix with no sidecar
COMMANDS_WRITING = [
    ("unfold", [RGB, "-k", "16", "-s", "8"], "p.npy"),
    ("tiles", [RGB, "-k", "64", "-s", "64"], "tiles"),
    ("divisor", ["--size", "32,32", "-k", "4"], "d.png"),
    ("show-grid", [RGB, "-k", "32"], "g.png"),
]


def run(args: list, stdin: bytes = b"") -> tuple[int, bytes, str]:
    """``patchfold ARGS`` in-process with ``stdin`` bytes: exit code, stdout bytes, stderr text."""
    result = CliRunner().invoke(main, [str(a) for a in args], input=stdin)
    return result.exit_code, result.stdout_bytes, result.stderr


def command_args(name: str, args: list, output: Path) -> list:
    head = ["show", "grid"] if name == "show-grid" else [name]
    return [*head, *args, "-o", output]


# ----- -q and -v -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, args, output", COMMANDS_WRITING)
def test_quiet_prints_nothing_and_verbose_prints_the_stages(tmp_path: Path, name: str, args: list, output: str) -> None:
    quiet = ok(*command_args(name, args, tmp_path / "q" / output), "-q")
    assert quiet.stdout == "" and quiet.stderr == ""
    verbose = ok(*command_args(name, args, tmp_path / "v" / output), "--verbose")
    stages = [line for line in verbose.stderr.splitlines() if line.startswith("time: ")]
    assert all(line.endswith(" s") for line in stages) and "start-up (Python" in stages[0], verbose.stderr
    if name in ("unfold", "tiles"):  # the commands with a job: its stages
        assert len(stages) == 4 and "finishing" in stages[-1], verbose.stderr
    else:  # the others: start-up and the command itself
        assert len(stages) == 2 and "the command" in stages[-1], verbose.stderr


def test_quiet_keeps_the_json_asked_for(tmp_path: Path) -> None:
    result = ok("stats", "--size", "64,64", "-k", "8", "-s", "8", "-q", "--json")
    assert json.loads(result.stdout)["num_blocks"] == 64 and result.stderr == ""


def test_quiet_and_verbose_together_are_a_usage_error() -> None:
    result = invoke("stats", "--size", "64,64", "-k", "8", "-q", "-v")
    assert result.exit_code == 2 and "cannot be given together" in error_lines(result.stderr)[0]


def test_quiet_still_reports_errors() -> None:
    result = invoke("unfold", "missing.png", "-k", "4", "-o", "x.npy", "-q")
    assert result.exit_code == 1 and error_lines(result.stderr) == ["Error: input 'missing.png' does not exist"]


# ----- reports: stdout at a terminal, plain text in a pipe ------------------------------------


def test_a_piped_summary_is_plain_text_without_trailing_spaces(tmp_path: Path) -> None:
    result = ok("unfold", RGB, "-k", "16", "-o", tmp_path / "p.npy")
    lines = result.stderr.splitlines()
    assert lines[0].startswith("unfold → ") and len(lines) > 10
    assert all(line == line.rstrip() for line in lines), [line for line in lines if line != line.rstrip()]
    assert "\x1b[" not in result.stderr  # no colours in a pipe
    assert result.stdout == ""


@pytest.mark.skipif(not HAS_COMMAND, reason="the patchfold command is not installed beside this Python")
@pytest.mark.parametrize("name", ["stats", "divisor"])
def test_stats_and_divisor_print_their_report_on_a_terminal_stdout(tmp_path: Path, name: str) -> None:
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [COMMAND, name, "--size", "64,64", "-k", "8", "-s", "4"],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=command_env(NO_COLOR="1", COLUMNS="100"),
            cwd=tmp_path,
            timeout=60,
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all is read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0, done.stderr
    assert b"blocks per dim" in shown and b"15" in shown
    assert b"blocks per dim" not in done.stderr  # the report went to the terminal, not to stderr


def test_stats_in_a_pipe_leaves_stdout_clean() -> None:
    result = ok("stats", "--size", "64,64", "-k", "8")
    assert result.stdout == "" and "blocks per dim" in result.stderr


# ----- output folders made on demand ------------------------------------------------------------


@pytest.mark.parametrize("name, args, output", [*COMMANDS_WRITING, ("unfold", [RGB, "-k", "16"], "p.zarr")])
def test_outputs_in_new_folders_make_them(tmp_path: Path, name: str, args: list, output: str) -> None:
    if output.endswith(".zarr"):
        pytest.importorskip("zarr")
    target = tmp_path / "new" / "deeper" / output
    ok(*command_args(name, args, target))
    assert target.exists()


def test_fold_into_a_new_folder_gives_the_image_back(tmp_path: Path) -> None:
    ok("unfold", RGB, "-k", "16", "-s", "8", "-o", tmp_path / "p.npy")
    ok("fold", tmp_path / "p.npy", "-o", tmp_path / "a" / "b" / "back.png")
    assert np.array_equal(pixels(tmp_path / "a" / "b" / "back.png"), pixels(RGB))


def test_a_failed_run_leaves_no_folder_behind(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = invoke("unfold", bad, "-k", "4", "-o", tmp_path / "new" / "p.npy")
    assert result.exit_code == 1, describe(result)
    assert not (tmp_path / "new").exists()


def test_folders_made_for_a_write_that_fails_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "one" / "two" / "x.npy"
    with pytest.raises(RuntimeError), atomic_paths(target) as (temporary,):
        assert (tmp_path / "one" / "two").is_dir()
        temporary.write_bytes(b"half")
        raise RuntimeError("the write failed")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_under_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    result = invoke("unfold", RGB, "-k", "4", "-o", RGB.parent / RGB.name / "x" / "p.npy")
    assert result.exit_code == 1
    assert "is a file, not a directory" in error_lines(result.stderr)[0]


# ----- - for standard input and output ----------------------------------------------------------


def test_unfold_reads_an_image_from_standard_input(tmp_path: Path) -> None:
    code, _, stderr = run(["unfold", "-", "-k", "16", "-s", "8", "-o", tmp_path / "piped.npy"], RGB.read_bytes())
    assert code == 0, stderr
    ok("unfold", RGB, "-k", "16", "-s", "8", "-o", tmp_path / "file.npy")
    assert np.array_equal(np.load(tmp_path / "piped.npy"), np.load(tmp_path / "file.npy"))
    sidecar = json.loads((tmp_path / "piped.json").read_text())
    assert sidecar["sources"] == ["-"]


def test_unfold_reads_a_npy_from_standard_input(tmp_path: Path) -> None:
    values = np.random.default_rng(0).random((2, 3, 20, 24)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, values)
    code, _, stderr = run(["unfold", "-", "-k", "4", "-s", "2", "-o", tmp_path / "p.npy"], buffer.getvalue())
    assert code == 0, stderr
    assert np.load(tmp_path / "p.npy").shape == (2, 48, 9 * 11)


def test_unfold_to_standard_output_writes_the_npy_stream_and_says_how_to_fold_it(tmp_path: Path) -> None:
    code, stdout, stderr = run(["unfold", RGB, "-k", "16", "-s", "8", "-o", "-"])
    assert code == 0, stderr
    ok("unfold", RGB, "-k", "16", "-s", "8", "-o", tmp_path / "file.npy")
    assert np.array_equal(np.load(io.BytesIO(stdout)), np.load(tmp_path / "file.npy"))
    hint = next(line for line in stderr.splitlines() if "fold it with" in line)
    assert "patchfold fold - -k 16 -s 8 --size 240,320" in hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json", "file.npy"]  # nothing else left


def test_a_pipe_round_trip_gives_the_image_back(tmp_path: Path) -> None:
    code, matrix, stderr = run(["unfold", "-", "-k", "16", "-s", "8", "-o", "-", "-q"], RGB.read_bytes())
    assert code == 0, stderr
    args = ["fold", "-", "-k", "16", "-s", "8", "--size", "240,320", "-o", "-", "--format", "png", "-q"]
    code, png, stderr = run(args, matrix)
    assert code == 0, stderr
    (tmp_path / "back.png").write_bytes(png)
    assert np.array_equal(pixels(tmp_path / "back.png"), pixels(RGB))


def test_fold_to_standard_output_defaults_to_npy(tmp_path: Path) -> None:
    ok("unfold", RGB, "-k", "16", "-s", "16", "-o", tmp_path / "p.npy")
    code, stdout, stderr = run(["fold", tmp_path / "p.npy", "-o", "-", "-q"])
    assert code == 0, stderr
    assert np.load(io.BytesIO(stdout)).shape == (1, 3, 240, 320)


@pytest.mark.parametrize(
    "args, stdin, says",
    [
        (["unfold", "-", "-k", "4", "-o", "x.npy"], b"", "is empty"),
        (["unfold", "-", "-k", "4", "-o", "x.npy"], b"hello, world", "neither a .npy nor an image"),
        (["fold", "-", "-o", "x.png"], RGB.read_bytes(), "must be a .npy patch matrix, got a PNG image"),
        (["fold", "-", "-k", "4", "--size", "4,4", "-o", "x.png"], b"\x93NUMPY\x01\x00", "'-' (standard input) has"),
        (["fold", "-", "-o", "x.png"], MATRIX, "have no sidecar: give -k/--kernel-size and --size"),
        (["fold", "-", "-k", "4", "-o", "x.png"], MATRIX, "have no sidecar"),
    ],
)
def test_bad_standard_input_is_one_error_line(tmp_path: Path, args: list, stdin: bytes, says: str) -> None:
    os.chdir(tmp_path)
    code, stdout, stderr = run(args, stdin)
    assert code in (1, 2) and stdout == b""
    lines = error_lines(stderr)
    assert len(lines) == 1 and says in lines[0], stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_to_standard_output_sends_nothing() -> None:
    code, stdout, stderr = run(["fold", "-", "-k", "16", "--size", "5,5", "-o", "-"], b"\x93NUMPY garbage")
    assert code == 1 and stdout == b"", stderr


@pytest.mark.parametrize("command", [["unfold", RGB, "-k", "16"], ["fold", "p.npy", "-k", "16", "--size", "8,8"]])
def test_json_and_standard_output_together_are_refused(command: list) -> None:
    code, stdout, stderr = run([*command, "-o", "-", "--json"])
    assert code == 2 and stdout == b"" and "both write to standard output" in stderr


# ----- renamed options keep their old spellings ---------------------------------------------------


def test_fold_size_and_its_old_spelling(tmp_path: Path) -> None:
    ok("unfold", RGB, "-k", "16", "-s", "16", "-o", tmp_path / "p.npy")
    (tmp_path / "p.json").unlink()
    for spelling in ("--size", "--output-size"):
        ok("fold", tmp_path / "p.npy", "-k", "16", "-s", "16", spelling, "240,320", "-o", tmp_path / f"{spelling}.png")
        assert np.array_equal(pixels(tmp_path / f"{spelling}.png"), pixels(RGB))
    shown = ok("fold", "--help").stdout
    assert "--size" in shown and "--output-size" not in shown


def test_divisor_output_and_its_old_spellings(tmp_path: Path) -> None:
    ok("divisor", "--size", "32,32", "-k", "4", "-s", "3", "-o", tmp_path / "a.npy", "-o", tmp_path / "a.png")
    ok("divisor", "--size", "32,32", "-k", "4", "-s", "3", "--npy", tmp_path / "b.npy", "--png", tmp_path / "b.png")
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    shown = ok("divisor", "--help").stdout
    assert "-o, --output" in shown and "--npy" not in shown and "--png" not in shown
    twice = invoke("divisor", "--size", "8", "-k", "2", "-o", tmp_path / "c.npy", "-o", tmp_path / "d.npy")
    assert twice.exit_code == 2 and "two .npy outputs" in twice.stderr


# ----- -r/--recursive wherever inputs are taken ----------------------------------------------------


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    (tmp_path / "scans" / "day1").mkdir(parents=True)
    image = sample("gray").read_bytes()
    (tmp_path / "scans" / "a.png").write_bytes(image)
    (tmp_path / "scans" / "day1" / "b.png").write_bytes(image)
    return tmp_path / "scans"


@pytest.mark.parametrize("command", ["unfold", "tiles", "stats", "divisor"])
def test_recursive_reads_sub_directories(tmp_path: Path, nested: Path, command: str) -> None:
    def images(*flags: str) -> int:
        out = {"unfold": ["-o", tmp_path / f"m{len(flags)}.npy"], "tiles": ["-o", tmp_path / f"t{len(flags)}"]}
        summary = json.loads(ok(command, nested, *flags, "-k", "8", "-s", "8", *out.get(command, []), "--json").stdout)
        return summary["images"] if command == "tiles" else summary["input_shape"][0]

    assert (images(), images("-r")) == (1, 2)


def test_a_directory_with_images_only_below_it_suggests_recursive(tmp_path: Path, nested: Path) -> None:
    (nested / "a.png").unlink()
    result = invoke("unfold", nested, "-k", "8", "-o", tmp_path / "x.npy")
    assert result.exit_code == 1 and "-r/--recursive reads them" in error_lines(result.stderr)[0]
    ok("unfold", nested, "-r", "-k", "8", "-o", tmp_path / "x.npy")


def test_recursive_glob_matches_any_depth(tmp_path: Path, nested: Path) -> None:
    ok("unfold", f"{nested}/**/*.png", "-r", "-k", "8", "-s", "8", "-o", tmp_path / "x.npy")
    assert np.load(tmp_path / "x.npy").shape[0] == 2


def test_several_images_to_standard_output_need_npy(tmp_path: Path) -> None:
    ok("unfold", RGB, RGB, "-k", "16", "-s", "16", "-o", tmp_path / "two.npy")
    code, stdout, stderr = run(["fold", tmp_path / "two.npy", "-o", "-", "--format", "png"])
    assert code == 2 and stdout == b"" and "holds 2" in error_lines(stderr)[0]
    code, stdout, _ = run(["fold", tmp_path / "two.npy", "-o", "-", "-q"])
    assert code == 0 and np.load(io.BytesIO(stdout)).shape == (2, 3, 240, 320)


def test_format_is_for_standard_output_only(tmp_path: Path) -> None:
    ok("unfold", RGB, "-k", "16", "-s", "16", "-o", tmp_path / "p.npy")
    result = invoke("fold", tmp_path / "p.npy", "-o", tmp_path / "x.npy", "--format", "png")
    assert result.exit_code == 2 and "for output '-' only" in error_lines(result.stderr)[0]
    assert not (tmp_path / "x.npy").exists()


def test_a_zarr_matrix_is_counted_from_its_metadata_for_standard_output(tmp_path: Path) -> None:
    pytest.importorskip("zarr")
    ok("unfold", RGB, RGB, "-k", "16", "-s", "16", "-o", tmp_path / "two.zarr")
    code, stdout, stderr = run(["fold", tmp_path / "two.zarr", "-o", "-", "--format", "png"])
    assert code == 2 and stdout == b"" and "holds 2" in error_lines(stderr)[0]
    code, stdout, _ = run(["fold", tmp_path / "two.zarr", "-o", "-", "-q"])
    assert code == 0 and np.load(io.BytesIO(stdout)).shape == (2, 3, 240, 320)
