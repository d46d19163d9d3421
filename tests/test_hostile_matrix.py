"""The hostile matrix (issue #13): what README.md promises for bad input, checked case by case.

Four families:

1. :data:`COMMAND_CASES` — every command with bad option values, bad files, hostile paths and
   hostile sidecars/manifests. Each case says which exit codes are acceptable (2: a bad option
   value, 1: a runtime failure, 0 where the input is legal); the run must then show exactly one
   ``Error:`` line (none on success), no traceback, no temporary file in the directories involved,
   every pre-existing file byte-identical after a failure, and a bounded wall time. Runs are
   in-process (click's CliRunner) unless the process is the point (FIFOs, /dev/zero, a memory
   limit): those run the real ``patchfold`` with a timeout, so a blocking read fails, not hangs.
2. procedures — re-runs, kill -9 and resume, damaged datasets, other parameters into a dataset,
   Ctrl-C of a worker pool.
3. :data:`API_CASES` — the Python API with hostile arguments: a correct result (checked against
   torch or the reference) or :class:`patchfold.PatchfoldError`, never another exception type.
4. :data:`FUZZ_CASES` — byte flips and truncations (deterministic seeds) of every reader's input.

A case that breaks a promise today is listed in :data:`XFAIL` with what breaks (strict: a fix
shows up as an XPASS, and the entry must then be removed).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hostile_data as hd
import numpy as np
import patchfold
import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, command_env, describe, error_lines, invoke, ok
from helpers_ref import reference_fold, reference_unfold
from PIL import Image

needs_command = pytest.mark.skipif(not HAS_COMMAND, reason="the patchfold command is not installed beside this Python")

#: Longest wall time of one command case.
MAX_SECONDS = 30.0
#: How long a command run as a process may take before it counts as hung.
PROCESS_TIMEOUT = 10.0
#: Files every work directory starts with (contents :data:`hostile_data.SENTINEL`).
SENTINELS = ("out.npy", "out.json", "out.png", "out.tif")
#: Placeholders in a case's command line (besides ``{c}``, the corpus, and ``{w}``, the work
#: directory): an int of 5000 digits, a name stem of 245 characters (249 with its suffix: legal on
#: every common file system) and one of 252 (256: over NAME_MAX).
PLACEHOLDERS = {
    "{D}": "9" * 5000,
    "{L}": "a" * 245,
    "{T}": "b" * 252,
    "{N}": "c" * 100 + "\n" + "c" * 155,  # a newline in a name over NAME_MAX
    "{n}": "new\nline",
    "{E}": "",
}
GB = 1 << 30

#: Cases that break a promise today: id -> what breaks. Strict: remove the entry once fixed.
XFAIL: dict[str, str] = {}


# ----- the corpus of good inputs (built once) --------------------------------------------------------
#: The parameters of the corpus dataset ``ds`` (a re-run into a copy of it uses the same).
DS_ARGS = "--channels 3 -k 4 -s 4 --workers 1"


def build_corpus(c: Path) -> None:
    import tifffile

    Image.fromarray(hd.gray()).save(c / "g.png")
    Image.fromarray(hd.rgb()).save(c / "rgb.png")
    Image.fromarray(hd.depth16()).save(c / "d16.png")
    np.save(c / "x.npy", np.random.default_rng(3).random((1, 1, 12, 16), dtype=np.float32))
    tifffile.imwrite(c / "g.tif", hd.gray())
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(c / "outside.png")
    quiet = "--no-progress"
    ok("unfold", c / "g.png", "-k", 4, "-s", 2, "-o", c / "p.npy", quiet)
    ok("unfold", c / "d16.png", "-k", 4, "-s", 2, "-o", c / "p16.npy", quiet)
    ok("unfold", c / "x.npy", "-k", 4, "-s", 2, "-o", c / "pf.npy", quiet)
    ok("tiles", c / "g.png", "-k", 4, "-s", 4, "-o", c / "tiles", quiet)
    ok("batch", "unfold", c / "g.png", c / "rgb.png", *DS_ARGS.split(), "-o", c / "ds", quiet)
    (c / "outside_manifest").mkdir()
    shutil.copy(c / "tiles" / "manifest.json", c / "outside_manifest" / "manifest.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile_matrix_corpus")
    build_corpus(directory)
    return directory


# ----- looking at directories ------------------------------------------------------------------------
#: Files larger than this are recorded by size, time and their first and last MiB, not read whole.
SNAPSHOT_BYTES = 1 << 24


def snapshot(directory: Path) -> dict[str, Any]:
    """Every entry under ``directory`` (not following links, never opening a FIFO): file bytes
    (for a large file: its size, time and ends), ("link", target), "dir" or the file type."""
    result: dict[str, Any] = {}
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            key = str(path.relative_to(directory))
            if stat.S_ISLNK(mode):
                result[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode) and os.lstat(path).st_size > SNAPSHOT_BYTES:
                info = os.lstat(path)
                with open(path, "rb") as handle:
                    head = handle.read(1 << 20)
                    handle.seek(-(1 << 20), os.SEEK_END)
                    result[key] = ("large", info.st_size, info.st_mtime_ns, head, handle.read())
            elif stat.S_ISREG(mode):
                result[key] = path.read_bytes()
            else:
                result[key] = "dir" if stat.S_ISDIR(mode) else f"type {stat.S_IFMT(mode)}"
    return result


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def leftovers(directory: Path) -> list[str]:
    """Temporary files a write could leave behind (``.<name>.XXXX.part``, ``.bak`` backups)."""
    found = []
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            if name.endswith((".part", ".bak", ".tmp")) or (name.startswith(".") and ".part" in name):
                found.append(str((Path(root) / name).relative_to(directory)))
    return sorted(found)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# ----- running a command -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float
    report: str


#: Runs argv[2:] with RLIMIT_AS set to argv[1] bytes (-1: none) and SIGINT at its default.
_EXEC = (
    "import os, resource, signal, sys; limit = int(sys.argv[1]); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "limit >= 0 and resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def run_in_process(args: list[str], cwd: Path | None = None) -> Outcome:
    """``patchfold ARGS`` through click's CliRunner, in the directory ``cwd`` (so that a relative
    or empty path lands where the checks look); an exception escaping the command fails here."""
    started = time.perf_counter()
    previous = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = invoke(*args, env={"PATCHFOLD_DEBUG": ""})
    finally:
        os.chdir(previous)
    seconds = time.perf_counter() - started
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"an exception escaped the command:\n{describe(result)}\n{trace}")
    return Outcome(result.exit_code, result.stdout, result.stderr, seconds, describe(result))


class Run:
    """The real ``patchfold ARGS`` started in ``cwd`` (its address space limited to ``memory``
    bytes), its output going to temporary files; :meth:`finish` collects it, and a run still going
    after :data:`PROCESS_TIMEOUT` is killed: its outcome (exit -1) says it hung."""

    def __init__(self, args: list[str], cwd: Path, memory: int | None = None) -> None:
        import tempfile

        self.args = args
        self.output = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]  # noqa: SIM115 - closed by finish()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _EXEC, str(memory or -1), str(COMMAND), *args],
            cwd=cwd, stdout=self.output[0], stderr=self.output[1], env=command_env(COLUMNS="200"),
            start_new_session=True,
        )  # fmt: skip

    def done(self) -> bool:
        return self.process.poll() is not None or time.perf_counter() - self.started > PROCESS_TIMEOUT

    def finish(self) -> Outcome:
        try:
            self.process.wait(timeout=max(0.1, self.started + PROCESS_TIMEOUT - time.perf_counter()))
            code, seconds = self.process.returncode, time.perf_counter() - self.started
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            code, seconds = -1, PROCESS_TIMEOUT
        stdout, stderr = (self._read(handle) for handle in self.output)
        if code == -1:
            report = f"patchfold {' '.join(self.args)[:300]} hung: still running after {PROCESS_TIMEOUT} s"
            return Outcome(code, stdout, stderr, seconds, f"{report}\n{stderr[-2000:]}")
        return Outcome(
            code, stdout, stderr, seconds, f"exit {code}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )

    @staticmethod
    def _read(handle: Any) -> str:
        handle.seek(0)
        text = handle.read().decode("utf-8", "replace")
        handle.close()
        return text


def check_clean(outcome: Outcome, codes: tuple[int, ...], batch: bool = False) -> None:
    """The exit code is one of ``codes``; a failure shows exactly one ``Error:`` line (and, for a
    runtime failure of a single-file command, nothing else), never a traceback; a success shows no
    Error line; and it took less than :data:`MAX_SECONDS`."""
    assert outcome.code != -1, outcome.report  # a process that hung
    assert outcome.code in codes, f"exit {outcome.code}, expected one of {codes}\n{outcome.report}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.report
    assert outcome.seconds < MAX_SECONDS, f"took {outcome.seconds:.1f} s\n{outcome.report}"
    lines = [line.rstrip() for line in outcome.stderr.strip().splitlines()]
    errors = [line for line in lines if line.startswith("Error:")]
    if outcome.code == 0:
        assert errors == [], outcome.report
        return
    assert len(errors) == 1, f"expected exactly one Error line\n{outcome.report}"
    if outcome.code == 1 and not batch:
        assert lines == errors, f"more than the Error line on stderr\n{outcome.report}"


# ----- family 1: the command matrix ------------------------------------------------------------------------
Setup = Callable[[Path, Path], None]
Check = Callable[[Path, Path], None]


@dataclass(frozen=True)
class Case:
    """One run of ``cmd`` (split on spaces; ``{c}``, ``{w}`` and :data:`PLACEHOLDERS` expanded);
    the acceptable exit ``codes``; ``setup(corpus, work)`` before it; on success
    ``check(corpus, work)``, and only the ``outputs`` (globs relative to the work directory) may
    be new or changed. A batch run whose images fail may leave the incomplete dataset directory
    ``dataset`` (it is resumable), which :func:`patchfold.load_dataset` must then refuse. A failure's
    Error line must hold one of ``says`` (when given)."""

    id: str
    cmd: str
    codes: tuple[int, ...] = (1,)
    setup: Setup | None = None
    check: Check | None = None
    outputs: tuple[str, ...] = ()
    process: bool = False
    memory: int | None = None
    dataset: str = ""
    says: tuple[str, ...] = ()

    def args(self, corpus: Path, work: Path) -> list[str]:
        tokens = []
        for token in self.cmd.split():
            for key, value in {"{c}": str(corpus), "{w}": str(work), **PLACEHOLDERS}.items():
                token = token.replace(key, value)
            tokens.append(token.replace("{_}", " "))
        return tokens


# setups ------------------------------------------------------------------------------------------------
def put(name: str, data: bytes | str | Callable[[Path], bytes | str]) -> Setup:
    """Write ``data`` (or ``data(corpus)``) to ``work/name``."""

    def setup(corpus: Path, work: Path) -> None:
        value = data(corpus) if callable(data) else data
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(value.encode() if isinstance(value, str) else value)

    return setup


def copy(source: str, name: str | None = None) -> Setup:
    def setup(corpus: Path, work: Path) -> None:
        target = work / (name or Path(source).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if (corpus / source).is_dir():
            shutil.copytree(corpus / source, target, symlinks=True)
        else:
            shutil.copy(corpus / source, target)

    return setup


def both(*setups: Setup) -> Setup:
    def setup(corpus: Path, work: Path) -> None:
        for one in setups:
            one(corpus, work)

    return setup


def mkdir(name: str) -> Setup:
    def setup(corpus: Path, work: Path) -> None:
        (work / name).mkdir(parents=True, exist_ok=True)

    return setup


def replace_by(name: str, kind: str, target: str = "") -> Setup:
    """``work/name`` (removed first if there) becomes a FIFO, a directory or a symlink to ``target``
    (``{c}`` expands to the corpus)."""

    def setup(corpus: Path, work: Path) -> None:
        path = work / name
        if os.path.lexists(path):
            path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        else:
            os.symlink(target.replace("{c}", str(corpus)), path)

    return setup


def fifo(name: str) -> Setup:
    return replace_by(name, "fifo")


def sidecar(name: str, change: Callable[[dict[str, Any]], Any] | str | bytes, matrix: str = "p") -> Setup:
    """``work/name.npy`` (a copy of a corpus matrix) with its sidecar changed by ``change`` (a
    function of the dict, or the raw text)."""

    def setup(corpus: Path, work: Path) -> None:
        shutil.copy(corpus / f"{matrix}.npy", work / f"{name}.npy")
        if isinstance(change, str | bytes):
            (work / f"{name}.json").write_bytes(change.encode() if isinstance(change, str) else change)
            return
        data = json.loads((corpus / f"{matrix}.json").read_text())
        change(data)
        (work / f"{name}.json").write_text(json.dumps(data))

    return setup


def variant(source: str, name: str, change: Callable[[dict[str, Any]], Any] | str | bytes) -> Setup:
    """``work/name``: a copy of the corpus directory ``source`` with its manifest.json changed by
    ``change`` (a function of the dict; or the raw new content)."""

    def setup(corpus: Path, work: Path) -> None:
        shutil.copytree(corpus / source, work / name)
        path = work / name / "manifest.json"
        if isinstance(change, str | bytes):
            path.write_bytes(change.encode() if isinstance(change, str) else change)
            return
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return setup


def tiles_variant(change: Callable[[dict[str, Any]], Any] | str | bytes) -> Setup:
    return variant("tiles", "t", change)


def dataset_variant(change: Callable[[dict[str, Any]], Any] | str | bytes) -> Setup:
    return variant("ds", "ds", change)


def edit(**fields: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or, with :data:`hostile_data.DROP`, remove) top-level fields."""

    def change(data: dict[str, Any]) -> None:
        for key, value in fields.items():
            if value is hd.DROP:
                data.pop(key, None)
            else:
                data[key] = value

    return change


def edit_first(key: str, **fields: Any) -> Callable[[dict[str, Any]], None]:
    """Set fields of the first entry of the list ``data[key]`` (a tile, an image, a shard)."""

    def change(data: dict[str, Any]) -> None:
        data[key][0].update(fields)

    return change


def raw_manifest(source: str, make: Callable[[str], str]) -> Callable[[Path], str]:
    """``make`` applied to the text of the corpus file ``source``."""
    return lambda corpus: make((corpus / source).read_text())


# checks -------------------------------------------------------------------------------------------------
def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def as_batch(values: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) pixels as (1, C, H, W)."""
    return (values[None] if values.ndim == 2 else np.moveaxis(values, -1, 0))[None]


def source_array(corpus: Path, name: str) -> np.ndarray:
    path = corpus / name
    return np.load(path) if path.suffix == ".npy" else as_batch(pixels(path))


def matrix_of(output: str, source: str | np.ndarray, kernel: int, stride: int = 1) -> Check:
    """``work/output`` is exactly the reference unfold of ``source`` (a corpus file or an array)
    with a sidecar naming the kernel (a big-endian source may stay big-endian)."""

    def check(corpus: Path, work: Path) -> None:
        cols = np.load(work / output)
        values = source_array(corpus, source) if isinstance(source, str) else source
        expected = reference_unfold(values.astype(values.dtype.newbyteorder("=")), kernel, 1, 0, stride)
        assert cols.dtype.newbyteorder("=") == expected.dtype and cols.shape == expected.shape
        np.testing.assert_array_equal(cols, expected)
        assert json.loads((work / output).with_suffix(".json").read_text())["kernel_size"] == [kernel, kernel]

    return check


def image_is(output: str, source: str) -> Check:
    """The image (or .npy of images) ``work/output`` has exactly the corpus ``source``'s pixels."""

    def check(corpus: Path, work: Path) -> None:
        path = work / output
        got = np.load(path) if path.suffix == ".npy" else as_batch(pixels(path))
        expected = source_array(corpus, source)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)

    return check


def finite_close(output: str, source: str) -> Check:
    """A float fold ``work/output`` is finite and (untouched patches) equal to the source."""

    def check(corpus: Path, work: Path) -> None:
        got = np.load(work / output)
        assert np.isfinite(got).all(), "non-finite values in a windowed fold"
        np.testing.assert_allclose(got, source_array(corpus, source), rtol=1e-5, atol=1e-6)

    return check


def image_file(name: str) -> Check:
    def check(corpus: Path, work: Path) -> None:
        with Image.open(work / name) as image:
            image.load()

    return check


def npy_file(name: str, shape: tuple[int, ...]) -> Check:
    def check(corpus: Path, work: Path) -> None:
        assert np.load(work / name).shape == shape

    return check


def dataset_like_corpus(name: str = "ds") -> Check:
    """``work/name`` is a complete dataset with the corpus dataset's shards and index."""

    def check(corpus: Path, work: Path) -> None:
        dataset = patchfold.load_dataset(work / name)
        assert len(dataset) == len(patchfold.load_dataset(corpus / "ds"))
        for file in ("index.npy", "shard-00000.npy"):
            assert (work / name / file).read_bytes() == (corpus / "ds" / file).read_bytes(), file

    return check


def tiles_of(name: str, count: int) -> Check:
    def check(corpus: Path, work: Path) -> None:
        assert len(json.loads((work / name / "manifest.json").read_text())["tiles"]) == count

    return check


def all_of(*checks: Check) -> Check:
    def check(corpus: Path, work: Path) -> None:
        for one in checks:
            one(corpus, work)

    return check


# fmt: off
# the cases ---------------------------------------------------------------------------------------------
NPY_OUT = ("out.npy", "out.json")
G_MATRIX = matrix_of("out.npy", "g.png", 4)


def option_cases() -> list[Case]:
    """Bad (and odd but legal) option values, for every command."""
    unfold = "unfold {c}/g.png -o {w}/out.npy --no-progress"
    fold = "fold {c}/p.npy -o {w}/out.png --no-progress"
    fold_f = "fold {c}/pf.npy -o {w}/out.npy --no-progress"
    folded_x = {"codes": (0, 2), "check": finite_close("out.npy", "x.npy"), "outputs": NPY_OUT}
    size = "--size 12,16"
    tiles = "tiles {c}/g.png -o {w}/tl --no-progress"
    untile = "untile {c}/tiles -o {w}/out.png --no-progress"
    grid = "show grid {c}/g.png -o {w}/out.png"
    mosaic = "show mosaic {c}/p.npy -o {w}/out.png"
    batch = "batch unfold {c}/g.png -o {w}/ds --no-progress"
    batch_tiles = "batch tiles {c}/g.png -o {w}/bt --no-progress"
    legal = {"codes": (0,), "check": G_MATRIX, "outputs": NPY_OUT}
    return [
        # unfold
        Case("unfold_kernel_5000_digits", f"{unfold} -k {{D}}", (2,)),
        Case("unfold_stride_5000_digits", f"{unfold} -k 4 -s {{D}}", (2,)),
        Case("unfold_padding_hex", f"{unfold} -k 4 -p 0x10", (2,)),
        Case("unfold_stride_minus_3", f"{unfold} -k 4 -s -3", (2,)),
        Case("unfold_kernel_empty_list", f"{unfold} -k ,", (2,)),
        Case("unfold_kernel_empty_string", f"{unfold} -k {{_}}", (2,)),
        Case("unfold_kernel_trailing_comma", f"{unfold} -k 4,", (2,)),
        Case("unfold_kernel_float", f"{unfold} -k 4.0", (2,)),
        Case("unfold_kernel_fullwidth_digit", f"{unfold} -k ４", (0, 2), check=G_MATRIX, outputs=NPY_OUT),
        Case("unfold_max_memory_1T", f"{unfold} -k 4 --max-memory 1T", (0, 2), check=G_MATRIX, outputs=NPY_OUT),
        Case("unfold_max_memory_1TiB", f"{unfold} -k 4 --max-memory 1TiB", **legal),
        Case("unfold_max_memory_1TB", f"{unfold} -k 4 --max-memory 1TB", **legal),
        Case("unfold_max_memory_1B_streams", f"{unfold} -k 4 --max-memory 1B", **legal),
        Case("unfold_max_memory_0", f"{unfold} -k 4 --max-memory 0", (2,)),
        Case("unfold_max_memory_minus_1", f"{unfold} -k 4 --max-memory -1", (2,)),
        Case("unfold_max_memory_abc", f"{unfold} -k 4 --max-memory abc", (2,)),
        Case("unfold_max_memory_half_byte", f"{unfold} -k 4 --max-memory 0.5", (0, 2), check=G_MATRIX,
             outputs=NPY_OUT),
        Case("unfold_max_memory_5000_digits", f"{unfold} -k 4 --max-memory {{D}}", (2,)),
        Case("unfold_max_memory_inf", f"{unfold} -k 4 --max-memory inf", (2,)),
        Case("unfold_max_memory_nan", f"{unfold} -k 4 --max-memory nan", (2,)),
        Case("unfold_dtype_int8", f"{unfold} -k 4 --dtype int8", (2,)),
        Case("unfold_layout_unknown", f"{unfold} -k 4 --layout lcn", (2,)),
        Case("unfold_padding_mode_mirror", f"{unfold} -k 4 --padding-mode mirror", (2,)),
        Case("unfold_engine_gpu", f"{unfold} -k 4 --engine gpu", (2,)),
        Case("unfold_spatial_dims_4", f"{unfold} -k 4 --spatial-dims 4", (2,)),
        Case("unfold_max_pixels_0", f"{unfold} -k 4 --max-pixels 0", (2,)),
        Case("unfold_max_pixels_5000_digits", f"{unfold} -k 4 --max-pixels {{D}}", (0, 2), check=G_MATRIX,
             outputs=NPY_OUT),
        Case("unfold_device_cuda_minus_1", f"{unfold} -k 4 --device cuda:-1", (2,)),
        Case("unfold_kernel_four_values_2d", f"{unfold} -k 4,4,4,4", (2,)),
        Case("unfold_no_output", "unfold {c}/g.png -k 4", (2,)),
        Case("unfold_no_input", "unfold -k 4 -o {w}/out.npy", (2,)),
        # fold
        Case("fold_kernel_5000_digits", f"{fold} -k {{D}}", (2,)),
        Case("fold_stride_hex", f"{fold} -s 0x2", (2,)),
        Case("fold_output_size_empty_list", f"{fold} --output-size ,", (2,)),
        Case("fold_output_size_zero", f"{fold} --output-size 0,16", (2,)),
        Case("fold_output_size_5000_digits", f"{fold} --output-size {{D}}", (2,)),
        Case("fold_window_unknown", f"{fold} --window kaiser", (2,)),
        Case("fold_window_hann_with_parameter", f"{fold} --window hann:3", (2,)),
        Case("fold_window_gaussian_zero", f"{fold_f} --window gaussian:0", (2,)),
        Case("fold_window_gaussian_negative", f"{fold_f} --window gaussian:-0.2", (2,)),
        Case("fold_window_gaussian_nan", f"{fold_f} --window gaussian:nan", (2,)),
        Case("fold_window_gaussian_inf", f"{fold_f} --window gaussian:inf", (2,)),
        Case("fold_window_gaussian_text", f"{fold_f} --window gaussian:wide", (2,)),
        Case("fold_window_gaussian_two_parameters", f"{fold_f} --window gaussian:0.2:0.3", (2,)),
        Case("fold_window_gaussian_0_001", f"{fold_f} --window gaussian:0.001", **folded_x),
        Case("fold_window_gaussian_0_001_uint8", "fold {c}/p.npy -o {w}/out.npy --no-progress --window "
             "gaussian:0.001", (0, 2), check=image_is("out.npy", "g.png"), outputs=NPY_OUT),
        Case("fold_window_gaussian_1e-300", f"{fold_f} --window gaussian:1e-300", **folded_x),
        Case("fold_window_gaussian_subnormal", f"{fold_f} --window gaussian:5e-324", **folded_x),
        Case("fold_window_gaussian_0_02", f"{fold_f} --window gaussian:0.02", **folded_x),
        Case("fold_window_gaussian_0_0175", f"{fold_f} --window gaussian:0.0175", **folded_x),
        Case("fold_window_gaussian_1e300", f"{fold_f} --window gaussian:1e300", **folded_x),
        Case("fold_window_gaussian_5000_digits", f"{fold_f} --window gaussian:{{D}}", **folded_x),
        Case("fold_window_gaussian_empty_parameter", f"{fold_f} --window gaussian:", **folded_x),
        Case("fold_window_pyramid_uppercase", f"{fold_f} --window PYRAMID", **folded_x),
        Case("fold_window_hann_no_normalize", f"{fold_f} --window hann --no-normalize", (0, 2),
             check=npy_file("out.npy", (1, 1, 12, 16)), outputs=NPY_OUT),
        Case("fold_layout_unknown", f"{fold} --layout cnl", (2,)),
        Case("fold_max_memory_1TB", f"{fold_f} --max-memory 1TB", **{**folded_x, "codes": (0,)}),
        Case("fold_max_memory_1B_streams", f"{fold_f} --max-memory 1B", **{**folded_x, "codes": (0,)}),
        Case("fold_max_memory_abc", f"{fold} --max-memory abc", (2,)),
        Case("fold_padding_mode_unknown", f"{fold} --padding-mode wrap", (2,)),
        Case("fold_padding_negative", f"{fold} -p -1", (2,)),
        # divisor
        Case("divisor_size_5000_digits", "divisor --size {D} -k 4", (2,)),
        Case("divisor_size_empty_list", "divisor --size , -k 4", (2,)),
        Case("divisor_size_zero", "divisor --size 0,16 -k 4", (2,)),
        Case("divisor_kernel_hex", f"divisor {size} -k 0x4", (2,)),
        Case("divisor_padding_minus_1", f"divisor {size} -k 4 -p -1", (2,)),
        Case("divisor_dilation_5000_digits", f"divisor {size} -k 4 -d {{D}}", (2,)),
        Case("divisor_without_size_or_input", "divisor -k 4", (1, 2)),
        Case("divisor_kernel_larger_than_size", f"divisor {size} -k 13 --npy {{w}}/out.npy", (1, 2)),
        # stats
        Case("stats_channels_zero", f"stats {size} -k 4 --channels 0", (2,)),
        Case("stats_batch_minus_1", f"stats {size} -k 4 --batch -1", (2,)),
        Case("stats_dtype_uint8", f"stats {size} -k 4 --dtype uint8", (2,)),
        Case("stats_layout_unknown", f"stats {size} -k 4 --layout nn", (2,)),
        Case("stats_max_memory_abc", f"stats {size} -k 4 --max-memory abc", (2,)),
        Case("stats_max_memory_1T", f"stats {size} -k 4 --max-memory 1T", (0, 2)),
        Case("stats_size_5000_digits", "stats --size {D} -k 4", (2,)),
        Case("stats_batch_2_62", f"stats {size} -k 4 --batch {2**62}", (0, 2)),
        Case("stats_channels_2_62", f"stats {size} -k 4 --channels {2**62}", (0, 2)),
        Case("stats_channels_5000_digits", f"stats {size} -k 4 --channels {{D}}", (2,)),
        Case("stats_size_2_40_squared", f"stats --size {2**40},{2**40} -k {2**20} -s {2**20}", (0, 1)),
        # tiles and untile
        Case("tiles_format_jpg", f"{tiles} -k 4 --format jpg", (2,)),
        Case("tiles_kernel_5000_digits", f"{tiles} -k {{D}}", (2,)),
        Case("tiles_stride_empty_list", f"{tiles} -k 4 -s ,", (2,)),
        Case("tiles_padding_mode_unknown", f"{tiles} -k 4 --padding-mode edge", (2,)),
        Case("untile_window_unknown", f"{untile} --window blackman", (2,)),
        Case("untile_window_gaussian_0_001", f"{untile} --window gaussian:0.001", (0, 2),
             check=image_is("out.png", "g.png"), outputs=("out.png",)),
        Case("untile_window_gaussian_minus_1", f"{untile} --window gaussian:-1", (2,)),
        # show
        Case("show_grid_kernel_zero", f"{grid} -k 0", (2,)),
        Case("show_grid_padding_5000_digits", f"{grid} -k 4 -p {{D}}", (2,)),
        Case("show_mosaic_count_zero", f"{mosaic} --count 0", (2,)),
        Case("show_mosaic_count_5000_digits", f"{mosaic} --count {{D}}", (2,)),
        Case("show_mosaic_count_4097", f"{mosaic} --count 4097", (2,)),
        Case("show_divisor_stride_hex", "show divisor {c}/g.png -o {w}/out.png -k 4 -s 0x2", (2,)),
        Case("show_unknown_picture", "show heatmap {c}/g.png -o {w}/out.png", (2,)),
        # batch unfold / batch tiles
        Case("batch_unfold_workers_0", f"{batch} -k 4 --workers 0", (2,)),
        Case("batch_unfold_workers_minus_2", f"{batch} -k 4 --workers -2", (2,)),
        Case("batch_unfold_workers_text", f"{batch} -k 4 --workers many", (2,)),
        Case("batch_unfold_shard_size_0", f"{batch} -k 4 --shard-size 0", (2,)),
        Case("batch_unfold_shard_size_abc", f"{batch} -k 4 --shard-size abc", (2,)),
        Case("batch_unfold_channels_5", f"{batch} -k 4 --channels 5", (2,)),
        Case("batch_unfold_dtype_int8", f"{batch} -k 4 --dtype int8", (2,)),
        Case("batch_unfold_kernel_5000_digits", f"{batch} -k {{D}}", (2,)),
        Case("batch_unfold_max_pixels_0", f"{batch} -k 4 --max-pixels 0", (2,)),
        Case("batch_unfold_padding_mode_unknown", f"{batch} -k 4 --padding-mode zero", (2,)),
        Case("batch_tiles_workers_0", f"{batch_tiles} -k 4 --workers 0", (2,)),
        Case("batch_tiles_format_gif", f"{batch_tiles} -k 4 --format gif", (2,)),
        Case("batch_tiles_channels_0", f"{batch_tiles} -k 4 --channels 0", (2,)),
        Case("batch_tiles_kernel_empty_list", f"{batch_tiles} -k ,", (2,)),
    ]


def _cut(source: str, length: int) -> Callable[[Path], bytes]:
    """The first ``length`` bytes of a corpus file (negative: all but the last -length)."""
    return lambda corpus: (corpus / source).read_bytes()[:length]


BOMB = hd.png_header_bomb(65535, 65535)  # 69 bytes, 65535×65535 RGBA: 17 GB decoded
assert len(BOMB) == 69


def _pickle(corpus: Path, work: Path) -> None:
    (work / "obj.npy").write_bytes(hd.pickle_npy(work / "PWNED"))


def _not_pwned(corpus: Path, work: Path) -> None:
    assert not (work / "PWNED").exists(), "the pickle in the .npy was executed"


def _big_endian_matrix(corpus: Path, work: Path) -> None:
    np.save(work / "be.npy", np.load(corpus / "p16.npy").astype(">u2"))
    shutil.copy(corpus / "p16.json", work / "be.json")


def file_cases() -> list[Case]:
    """Bad files: empty, truncated, mislabelled, bombs, hostile .npy, directories, FIFOs, devices."""

    def unfold(name: str) -> str:
        return f"unfold {{w}}/{name} -k 2 -o {{w}}/out.npy --no-progress"

    to_png = "-o {w}/out.png --no-progress"
    rerun = f"batch unfold {{c}}/g.png {{c}}/rgb.png {DS_ARGS} -o {{w}}/ds --no-progress"
    cases = [
        Case("empty_npy", unfold("e.npy"), setup=put("e.npy", b"")),
        Case("empty_tif", unfold("e.tif"), setup=put("e.tif", b"")),
        Case("empty_pgm_stats", "stats {w}/e.pgm -k 2", setup=put("e.pgm", b"")),
        Case("empty_sidecar", f"fold {{w}}/q.npy {to_png}", setup=sidecar("q", "")),
        Case("empty_tile_manifest", f"untile {{w}}/t {to_png}", setup=tiles_variant("")),
        Case("empty_dataset_manifest", rerun, setup=dataset_variant("")),
        Case("text_named_tif", unfold("t.tif"), setup=put("t.tif", "just words\n")),
        Case("text_named_npy", unfold("t.npy"), setup=put("t.npy", "just words\n")),
        Case("text_named_pgm", unfold("t.pgm"), setup=put("t.pgm", "just words\n")),
        Case("text_named_npy_fold", "fold {w}/t.npy -k 2 --output-size 4,4 -o {w}/out.npy --no-progress",
             setup=put("t.npy", "just words\n")),
        Case("pgm_two_bytes", unfold("two.pgm"), setup=put("two.pgm", b"P5")),
        Case("pgm_two_bytes_stats", "stats {w}/two.pgm -k 2", setup=put("two.pgm", b"P5")),
        Case("pgm_header_only", unfold("h.pgm"), setup=put("h.pgm", b"P5\n4000 4000\n255\n")),
        Case("bomb_rgba_stats_reads_header", "stats {w}/bomb.png -k 4", (0, 1), setup=put("bomb.png", BOMB)),
        Case("bomb_rgba_unfold", unfold("bomb.png"), setup=put("bomb.png", BOMB), process=True, memory=GB),
        Case("bomb_rgba_tiles", "tiles {w}/bomb.png -k 4 -o {w}/tl --no-progress", setup=put("bomb.png", BOMB),
             process=True, memory=GB),
        Case("bomb_rgba_batch_unfold", "batch unfold {w}/bomb.png -k 4 -o {w}/ds --no-progress --workers 1",
             setup=put("bomb.png", BOMB), process=True, memory=GB, dataset="ds"),
    ]
    cases += [Case(f"png_truncated_at_{n}", unfold("c.png"), setup=put("c.png", _cut("g.png", n))) for n in (8, 16, 33,
                                                                                                         41, 60)]
    cases.append(Case("png_without_iend", unfold("c.png"), (0, 1), setup=put("c.png", _cut("g.png", -12)),
                      check=matrix_of("out.npy", "g.png", 2), outputs=NPY_OUT))
    cases += [Case(f"tif_truncated_at_{n}", unfold("c.tif"), setup=put("c.tif", _cut("g.tif", n))) for n in (4, 8, 64,
                                                                                                         200)]
    cases.append(Case("tif_truncated_by_1", unfold("c.tif"), (0, 1), setup=put("c.tif", _cut("g.tif", -1)),
                      check=matrix_of("out.npy", "g.png", 2), outputs=NPY_OUT))
    cases.append(Case("tif_stats_truncated_at_64", "stats {w}/c.tif -k 2", setup=put("c.tif", _cut("g.tif", 64))))
    cases += [Case(f"npy_truncated_at_{n}", unfold("c.npy"), setup=put("c.npy", _cut("x.npy", n))) for n in (6, 9, 64,
                                                                                                         127, 131)]
    cases.append(Case("npy_truncated_stats", "stats {w}/c.npy -k 2", setup=put("c.npy", _cut("x.npy", 100))))
    cases.append(Case("patch_matrix_truncated_fold", f"fold {{w}}/q.npy {to_png}",
                      setup=both(sidecar("q", edit()), put("q.npy", _cut("p.npy", 400)))))
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"
    npy_variants = {
        "npy_header_stray_byte": hd.npy_header_stray_byte(values),
        "npy_header_stray_quote": hd.npy_header_stray_byte(values, b"'descr'", b'"'),
        "npy_header_length_too_big": hd.npy_bytes(values)[:8] + b"\xff\xff" + hd.npy_bytes(values)[10:],
        "npy_version_9": hd.npy_with_header(values, header, b"\x09\x00"),
        "npy_shape_negative": hd.npy_with_header(values, header.replace("(3, 4)", "(-3, 4)")),
        "npy_shape_huge": hd.npy_with_header(values, header.replace("(3, 4)", "(1000000000000, 1000000000000)")),
        "npy_shape_text": hd.npy_with_header(values, header.replace("(3, 4)", "'3x4'")),
        "npy_descr_unknown": hd.npy_with_header(values, header.replace("<f4", "<q9")),
        "npy_header_not_a_dict": hd.npy_with_header(values, "[1, 2, 3]"),
        "npy_header_code": hd.npy_with_header(values, "__import__('os').system('touch PWNED')"),
        "npy_descr_structured": hd.npy_with_header(values, header.replace("'<f4'", "[('a', '<f4')]")),
        "npy_descr_datetime": hd.npy_with_header(values, header.replace("<f4", "<M8[s]")),
        "npy_descr_void": hd.npy_with_header(values, header.replace("<f4", "|V4")),
    }
    cases += [Case(name, unfold("h.npy"), setup=put("h.npy", data), check=_not_pwned) for name, data in
              npy_variants.items()]
    stray = put("h.npy", npy_variants["npy_header_stray_byte"])
    cases += [
        Case("npy_header_stray_byte_stats", "stats {w}/h.npy -k 2", setup=stray),
        Case("npy_header_stray_byte_fold", "fold {w}/h.npy -k 2 --output-size 3,4 -o {w}/out.npy --no-progress",
             setup=stray),
        Case("npy_fortran_order_is_legal", unfold("f.npy"), (0,), outputs=NPY_OUT,
             setup=put("f.npy", hd.npy_bytes(np.asfortranarray(hd.gray().astype(np.float32)))),
             check=matrix_of("out.npy", hd.gray().astype(np.float32)[None, None], 2)),
        Case("big_endian_uint16_matrix_fold_png", "fold {w}/be.npy -o {w}/out.png --no-progress", (0,),
             setup=_big_endian_matrix, check=image_is("out.png", "d16.png"), outputs=("out.png",)),
        Case("big_endian_uint16_matrix_fold_npy", "fold {w}/be.npy -o {w}/out.npy --no-progress", (0,),
             setup=_big_endian_matrix, check=image_is("out.npy", "d16.png"), outputs=NPY_OUT),
        Case("big_endian_float_unfold", unfold("be.npy"), (0,), outputs=NPY_OUT, check=matrix_of("out.npy", "x.npy", 2),
             setup=put("be.npy", lambda c: hd.npy_bytes(np.load(c / "x.npy").astype(">f4")))),
        Case("big_endian_int32_tiles_npy", "tiles {w}/be.npy -k 4 -s 4 --format npy -o {w}/tl --no-progress", (0,),
             outputs=("tl", "tl/*"), check=tiles_of("tl", 12),
             setup=put("be.npy", hd.npy_bytes(hd.gray().astype(">i4")))),
    ]
    complex_npy = put("cx.npy", hd.npy_bytes(np.zeros((1, 4, 4), np.complex128)))
    npz = put("z.npy", hd.npz_bytes(a=np.zeros((4, 4), np.float32)))
    tools = {
        "tiles": "tiles {f} -k 2 -o {w}/tl --no-progress",
        "divisor": "divisor {f} -k 2 --npy {w}/out.npy",
        "stats": "stats {f} -k 2",
        "fold": "fold {f} -k 2 --output-size 4,4 -o {w}/out.npy --no-progress",
        "mosaic": "show mosaic {f} -o {w}/out.png",
        "batch": "batch unfold {f} -k 2 -o {w}/ds --no-progress --workers 1",
    }
    for tool, cmd in tools.items():
        ds = "ds" if tool == "batch" else ""
        cases.append(Case(f"pickled_npy_{tool}", cmd.replace("{f}", "{w}/obj.npy"), setup=_pickle, check=_not_pwned,
                          dataset=ds))
        if tool != "mosaic":
            cases.append(Case(f"complex_npy_{tool}", cmd.replace("{f}", "{w}/cx.npy"), setup=complex_npy, dataset=ds))
            cases.append(Case(f"npz_named_npy_{tool}", cmd.replace("{f}", "{w}/z.npy"), setup=npz, dataset=ds))

    # directories where files are expected
    tile = "t/g_r000_c000.png"
    cases += [
        Case("directory_named_png", unfold("d.png"), setup=mkdir("d.png")),
        Case("directory_as_patch_matrix", "fold {w}/d.npy -k 2 --output-size 4,4 -o {w}/out.npy --no-progress",
             setup=mkdir("d.npy")),
        Case("directory_as_sidecar", f"fold {{w}}/q.npy {to_png}", setup=both(copy("p.npy", "q.npy"), mkdir("q.json"))),
        Case("directory_as_tile_manifest", f"untile {{w}}/t {to_png}",
             setup=both(tiles_variant(edit()), replace_by("t/manifest.json", "dir"))),
        Case("directory_as_tile", f"untile {{w}}/t {to_png}",
             setup=both(tiles_variant(edit()), replace_by(tile, "dir"))),
        Case("directory_as_dataset_manifest", rerun,
             setup=both(dataset_variant(edit()), replace_by("ds/manifest.json", "dir"))),
        Case("directory_as_dataset_shard", rerun, (0, 1), outputs=("ds/*",), check=dataset_like_corpus(), dataset="ds",
             setup=both(dataset_variant(edit()), replace_by("ds/shard-00000.npy", "dir"))),
        Case("directory_as_show_image", "show grid {w}/d.png -k 2 -o {w}/out.png", setup=mkdir("d.png")),
        Case("directory_as_mosaic_matrix", "show mosaic {w}/d.npy -o {w}/out.png", setup=mkdir("d.npy")),
    ]

    # FIFOs and devices: must never block (run as processes with a timeout)
    def fifo_case(id: str, cmd: str, setup: Setup | None, **kwargs: Any) -> Case:
        return Case(id, cmd, kwargs.pop("codes", (1,)), setup, process=True, **kwargs)

    copy_q = copy("p.npy", "q.npy")
    cases += [
        fifo_case("fifo_input_npy", unfold("f.npy"), fifo("f.npy")),
        fifo_case("fifo_input_png", unfold("f.png"), fifo("f.png")),
        fifo_case("fifo_stats_input", "stats {w}/f.npy -k 2", fifo("f.npy")),
        fifo_case("fifo_patch_matrix", "fold {w}/f.npy -k 2 --output-size 4,4 -o {w}/out.npy --no-progress",
                  fifo("f.npy")),
        fifo_case("fifo_sidecar", f"fold {{w}}/q.npy {to_png}", both(copy_q, fifo("q.json"))),
        fifo_case("fifo_sidecar_mosaic", "show mosaic {w}/q.npy -o {w}/out.png", both(copy_q, fifo("q.json"))),
        fifo_case("fifo_tile", f"untile {{w}}/t {to_png}", both(tiles_variant(edit()), fifo(tile))),
        fifo_case("fifo_tile_manifest", f"untile {{w}}/t {to_png}",
                  both(tiles_variant(edit()), fifo("t/manifest.json"))),
        fifo_case("fifo_batch_source", "batch unfold {w}/f.png -k 2 -o {w}/ds --no-progress --workers 1", fifo("f.png"),
                  dataset="ds"),
        fifo_case("fifo_dataset_manifest", rerun, both(dataset_variant(edit()), fifo("ds/manifest.json"))),
        fifo_case("fifo_dataset_shard", rerun, both(dataset_variant(edit()), fifo("ds/shard-00000.npy")),
                  codes=(0, 1), outputs=("ds/*",), check=dataset_like_corpus()),
        fifo_case("fifo_in_input_directory", "unfold {w}/dir -k 2 -o {w}/out.npy --no-progress",
                  both(mkdir("dir"), fifo("dir/a.npy"))),
        fifo_case("fifo_as_output", "unfold {c}/g.png -k 2 -o {w}/f.npy --no-progress", fifo("f.npy"), codes=(0, 1),
                  outputs=("f.npy", "f.json"), check=matrix_of("f.npy", "g.png", 2)),
        fifo_case("dev_zero_unfold", "unfold /dev/zero -k 2 -o {w}/out.npy --no-progress", None),
        fifo_case("dev_zero_fold", "fold /dev/zero -k 2 --output-size 4,4 -o {w}/out.npy --no-progress", None),
        fifo_case("dev_zero_batch", "batch unfold /dev/zero -k 2 -o {w}/ds --no-progress --workers 1", None,
                  dataset="ds"),
        fifo_case("dev_zero_as_sidecar", f"fold {{w}}/q.npy {to_png}", both(copy_q, replace_by("q.json", "link",
                                                                                             "/dev/zero"))),
        fifo_case("dev_zero_named_npy", unfold("z.npy"), replace_by("z.npy", "link", "/dev/zero")),
    ]
    return cases


def _fold_self_ok(corpus: Path, work: Path) -> None:
    """A success replaced the matrix by the folded image: it must be the image, whole."""
    np.testing.assert_array_equal(np.load(work / "q.npy"), source_array(corpus, "g.png"))


def path_cases() -> list[Case]:
    """Hostile paths: symbolic links, an output equal to an input, long names."""
    untile = "untile {w}/t -o {w}/out.png --no-progress"
    tile = "t/g_r000_c001.png"
    with_link = lambda target: both(tiles_variant(edit()), replace_by(tile, "link", target))  # noqa: E731
    copy_q = both(copy("p.npy", "q.npy"), copy("p.json", "q.json"))
    cases = [
        Case("untile_tile_links_outside", untile, setup=with_link("{c}/outside.png")),
        Case("untile_tile_links_to_etc_passwd", untile, setup=with_link("/etc/passwd")),
        Case("untile_manifest_links_outside", untile, (1,), setup=both(tiles_variant(edit()), replace_by(
            "t/manifest.json", "link", "{c}/outside_manifest/manifest.json"))),
        Case("untile_tile_links_inside", untile, (0, 1), setup=with_link("g_r000_c000.png"), outputs=("out.png",),
             check=image_file("out.png")),
        Case("untile_tile_link_dangling", untile, setup=with_link("nowhere.png")),
        Case("untile_tile_link_loop", untile, setup=with_link("g_r000_c001.png")),
        Case("untile_directory_is_a_link_outside", "untile {w}/t -o {w}/out.png --no-progress", (0, 1),
             setup=replace_by("t", "link", "{c}/tiles"), outputs=("out.png",), check=image_is("out.png", "g.png")),
        Case("fold_output_is_its_input", "fold {w}/q.npy -o {w}/q.npy --no-progress", (0, 1, 2), setup=copy_q,
             outputs=("q.npy",), check=_fold_self_ok),
        Case("fold_output_is_its_sidecar", "fold {w}/q.npy -o {w}/q.json --no-progress", (1, 2), setup=copy_q),
        Case("unfold_output_is_its_input", "unfold {w}/x.npy -k 4 -o {w}/x.npy --no-progress", (0, 1, 2),
             setup=copy("x.npy"), outputs=("x.npy", "x.json"),
             check=lambda c, w: np.testing.assert_array_equal(np.load(w / "x.npy"), reference_unfold(
                 np.load(c / "x.npy"), 4))),
        Case("unfold_output_is_a_link_to_its_input", "unfold {w}/x.npy -k 4 -o {w}/y.npy --no-progress", (0, 1, 2),
             setup=both(copy("x.npy"), replace_by("y.npy", "link", "x.npy")), outputs=("y.npy", "y.json"),
             check=matrix_of("y.npy", "x.npy", 4)),
        Case("unfold_sidecar_would_overwrite_input", "unfold {w}/q.json -k 2 -o {w}/q.npy --no-progress", (1, 2),
             setup=put("q.json", hd.npy_bytes(np.zeros((4, 4), np.float32)))),
        Case("unfold_sidecar_would_overwrite_other_input", "unfold {w}/a.npy {w}/q.json -k 2 -o {w}/q.npy "
             "--no-progress", (1, 2), setup=both(put("a.npy", hd.npy_bytes(np.zeros((4, 4), np.float32))),
                                                 put("q.json", hd.npy_bytes(np.zeros((4, 4), np.float32))))),
        Case("untile_into_its_own_manifest", "untile {w}/t -o {w}/t/manifest.json --no-progress", (1, 2),
             setup=tiles_variant(edit())),
        Case("tiles_output_is_the_input", "tiles {w}/g.png -k 4 -o {w}/g.png --no-progress", (1, 2),
             setup=copy("g.png")),
        Case("batch_output_is_a_source_file", "batch unfold {w}/g.png -k 4 -o {w}/g.png --no-progress", (1, 2),
             setup=copy("g.png")),
        Case("batch_output_inside_sources", "batch unfold {w}/src -r -k 4 -o {w}/src/ds --no-progress --workers 1",
             (0, 1), setup=copy("g.png", "src/g.png"), outputs=("src/ds", "src/ds/*")),
    ]
    long_npy, long_png, long_dir = "{L}.npy", "{L}.png", "{L}.dir"
    cases += [
        Case("long_name_249_unfold", f"unfold {{c}}/g.png -k 4 -o {{w}}/{long_npy} --no-progress", (0,),
             outputs=("a*.npy", "a*.json"), check=matrix_of(PLACEHOLDERS["{L}"] + ".npy", "g.png", 4)),
        Case("long_name_249_fold_png", f"fold {{c}}/p.npy -o {{w}}/{long_png} --no-progress", (0,),
             outputs=("a*.png",), check=image_is(PLACEHOLDERS["{L}"] + ".png", "g.png")),
        Case("long_name_249_fold_npy", f"fold {{c}}/p.npy -o {{w}}/{long_npy} --no-progress", (0,),
             outputs=("a*.npy",), check=image_is(PLACEHOLDERS["{L}"] + ".npy", "g.png")),
        Case("long_name_249_divisor_npy", f"divisor --size 12,16 -k 4 --npy {{w}}/{long_npy}", (0,),
             outputs=("a*.npy",), check=npy_file(PLACEHOLDERS["{L}"] + ".npy", (12, 16))),
        Case("long_name_249_divisor_png", f"divisor --size 12,16 -k 4 --png {{w}}/{long_png}", (0,),
             outputs=("a*.png",), check=image_file(PLACEHOLDERS["{L}"] + ".png")),
        Case("long_name_249_tiles", f"tiles {{c}}/g.png -k 4 -s 4 -o {{w}}/{long_dir} --no-progress", (0,),
             outputs=("a*.dir", "a*.dir/*"), check=tiles_of(PLACEHOLDERS["{L}"] + ".dir", 12)),
        Case("long_name_249_untile", f"untile {{c}}/tiles -o {{w}}/{long_png} --no-progress", (0,),
             outputs=("a*.png",), check=image_is(PLACEHOLDERS["{L}"] + ".png", "g.png")),
        Case("long_name_249_show_grid", f"show grid {{c}}/g.png -k 4 -o {{w}}/{long_png}", (0,), outputs=("a*.png",),
             check=image_file(PLACEHOLDERS["{L}"] + ".png")),
        Case("long_name_249_show_mosaic", f"show mosaic {{c}}/p.npy -o {{w}}/{long_png}", (0,), outputs=("a*.png",),
             check=image_file(PLACEHOLDERS["{L}"] + ".png")),
        Case("long_name_249_show_divisor", f"show divisor {{c}}/g.png -k 4 -o {{w}}/{long_png}", (0,),
             outputs=("a*.png",), check=image_file(PLACEHOLDERS["{L}"] + ".png")),
        Case("long_name_249_batch_unfold", f"batch unfold {{c}}/g.png {{c}}/rgb.png {DS_ARGS} -o {{w}}/{long_dir} "
             "--no-progress", (0,), outputs=("a*.dir", "a*.dir/*"),
             check=dataset_like_corpus(PLACEHOLDERS["{L}"] + ".dir")),
        Case("long_name_249_batch_tiles", f"batch tiles {{c}}/g.png -k 4 -s 4 -o {{w}}/{long_dir} --no-progress "
             "--workers 1", (0,), outputs=("a*.dir", "a*.dir/*", "a*.dir/*/*")),
        Case("long_name_249_input", f"unfold {{w}}/{long_npy} -k 4 -o {{w}}/out.npy --no-progress", (0,),
             setup=copy("x.npy", PLACEHOLDERS["{L}"] + ".npy"), outputs=NPY_OUT,
             check=matrix_of("out.npy", "x.npy", 4)),
    ]
    assert len(PLACEHOLDERS["{L}"] + ".npy") == 249 and len(PLACEHOLDERS["{T}"] + ".npy") == 256
    cases += [
        Case("name_256_unfold", "unfold {c}/g.png -k 4 -o {w}/{T}.npy --no-progress"),
        Case("name_256_fold", "fold {c}/p.npy -o {w}/{T}.png --no-progress"),
        Case("name_256_divisor", "divisor --size 12,16 -k 4 --npy {w}/{T}.npy"),
        Case("name_256_tiles", "tiles {c}/g.png -k 4 -o {w}/{T}.dir --no-progress"),
        Case("name_256_untile", "untile {c}/tiles -o {w}/{T}.png --no-progress"),
        Case("name_256_show_grid", "show grid {c}/g.png -k 4 -o {w}/{T}.png"),
        Case("name_256_batch_unfold", "batch unfold {c}/g.png -k 4 -o {w}/{T}.dir --no-progress"),
        Case("name_256_batch_tiles", "batch tiles {c}/g.png -k 4 -o {w}/{T}.dir --no-progress"),
        Case("name_256_input", "unfold {w}/{T}.npy -k 4 -o {w}/out.npy --no-progress"),
        # the missing folder is made (a 252-character name fits the file system), as for any -o path
        Case("name_256_directory_in_path", "unfold {c}/g.png -k 4 -o {w}/{T}/out.npy --no-progress", (0,),
             outputs=("b*", "b*/out.npy", "b*/out.json")),
        Case("name_256_directory_too_long", "unfold {c}/g.png -k 4 -o {w}/{T}bbbb/out.npy --no-progress"),
    ]
    return cases


def json_cases() -> list[Case]:
    """Sidecars, tile manifests and dataset manifests: recursion bombs, wrong types, corruption."""
    fold_q = "fold {w}/q.npy -o {w}/out.png --no-progress"
    untile = "untile {w}/t -o {w}/out.png --no-progress"
    untile_dir = "untile {w}/t -o {w}/od/ --no-progress"
    rerun = f"batch unfold {{c}}/g.png {{c}}/rgb.png {DS_ARGS} -o {{w}}/ds --no-progress"
    deep = hd.deep_json()
    side = lambda change: sidecar("q", change)  # noqa: E731
    tiles_ok = {"codes": (0, 1), "outputs": ("out.png",), "check": image_is("out.png", "g.png")}
    cases = [
        Case("sidecar_nested_100000", fold_q, setup=side(deep)),
        Case("sidecar_object_nested_100000", fold_q, setup=side(hd.deep_object())),
        Case("sidecar_sources_nested_100000", fold_q,
             setup=side('{"format": "patchfold-patches", "version": 1, "sources": ' + deep + "}")),
        Case("sidecar_nested_mosaic", "show mosaic {w}/q.npy -o {w}/out.png", setup=side(deep)),
        Case("tile_manifest_nested_100000", untile, setup=tiles_variant(deep)),
        Case("dataset_manifest_nested_100000", rerun, setup=dataset_variant(deep)),
        Case("sidecar_sources_with_nul", fold_q, setup=side(edit(sources=["a\u0000b"]))),
        Case("sidecar_sources_integer", fold_q, setup=side(edit(sources=[5]))),
        Case("sidecar_sources_string", fold_q, setup=side(edit(sources="g.png"))),
        Case("sidecar_sources_nul_into_directory", "fold {w}/q.npy -o {w}/od/ --no-progress", (0, 1),
             setup=both(mkdir("od"), side(edit(sources=["a\u0000b"]))), outputs=("od/*",)),
        Case("sidecar_kernel_string", fold_q, setup=side(edit(kernel_size="4"))),
        Case("sidecar_kernel_floats", fold_q, setup=side(edit(kernel_size=[4.0, 4.0]))),
        Case("sidecar_kernel_true", fold_q, setup=side(edit(kernel_size=True))),
        Case("sidecar_kernel_empty", fold_q, setup=side(edit(kernel_size=[]))),
        Case("sidecar_kernel_nested", fold_q, setup=side(edit(kernel_size=[[4], [4]]))),
        Case("sidecar_kernel_2_62", fold_q, setup=side(edit(kernel_size=[2**62, 2**62]))),
        Case("sidecar_kernel_5000_digits", fold_q, setup=side('{"kernel_size": ' + "9" * 5000 + "}")),
        Case("sidecar_stride_1e400", fold_q, setup=side('{"stride": [1e400, 1e400]}')),
        Case("sidecar_input_shape_string", fold_q, setup=side(edit(input_shape=[1, 1, "12", 16]))),
        Case("sidecar_input_shape_float", fold_q, setup=side(edit(input_shape=[1, 1, 12, 16.0]))),
        Case("sidecar_input_shape_huge", fold_q, setup=side(edit(input_shape=[1, 1, 2**62, 2**62]))),
        Case("sidecar_input_shape_rank_2", fold_q, setup=side(edit(input_shape=[12, 16]))),
        Case("sidecar_scale_string", fold_q, setup=side(edit(scale="1"))),
        Case("sidecar_scale_zero", fold_q, setup=side(edit(scale=0))),
        Case("sidecar_scale_nan", fold_q, setup=both(copy("p.npy", "q.npy"), put("q.json", raw_manifest(
            "p.json", lambda t: t.replace('"scale": 1.0', '"scale": NaN'))))),
        Case("sidecar_scale_infinity", fold_q, setup=both(copy("p.npy", "q.npy"), put("q.json", raw_manifest(
            "p.json", lambda t: t.replace('"scale": 1.0', '"scale": -Infinity'))))),
        Case("sidecar_layout_int", fold_q, setup=side(edit(layout=5))),
        Case("sidecar_padding_mode_int", fold_q, setup=side(edit(padding_mode=7))),
        Case("sidecar_padding_mode_list", fold_q, setup=side(edit(padding_mode=["zeros"]))),
        Case("sidecar_input_dtype_object", fold_q, setup=side(edit(input_dtype="object"))),
        Case("sidecar_input_dtype_complex", fold_q, setup=side(edit(input_dtype="complex64"))),
        Case("sidecar_input_dtype_int", fold_q, setup=side(edit(input_dtype=5))),
        Case("sidecar_output_dtype_unicode", fold_q, setup=side(edit(output_dtype="U8"))),
        Case("sidecar_output_dtype_garbage", fold_q, setup=side(edit(output_dtype="f4, i8 [[["))),
        Case("sidecar_version_string", fold_q, setup=side(edit(version="1"))),
        Case("sidecar_format_null", fold_q, setup=side(edit(format=None))),
        Case("sidecar_utf16", fold_q, setup=both(copy("p.npy", "q.npy"), put("q.json", lambda c: (
            c / "p.json").read_text().encode("utf-16")))),
        Case("sidecar_bom_utf8", fold_q, **tiles_ok, setup=both(copy("p.npy", "q.npy"), put(
            "q.json", lambda c: b"\xef\xbb\xbf" + (c / "p.json").read_bytes()))),
        Case("sidecar_duplicate_keys", fold_q, **tiles_ok, setup=both(copy("p.npy", "q.npy"), put(
            "q.json", raw_manifest("p.json", lambda t: t.replace("{", '{"kernel_size": "x",', 1))))),
        # tile manifests
        Case("tile_manifest_images_ints", untile, **tiles_ok, setup=tiles_variant(edit(images=[1]))),
        Case("tile_manifest_source_integer", untile_dir, (0, 1), outputs=("od/*",),
             setup=both(mkdir("od"), tiles_variant(edit_first("images", source=5)))),
        Case("tile_manifest_source_with_nul", untile_dir, (0, 1), outputs=("od/*",),
             setup=both(mkdir("od"), tiles_variant(edit_first("images", source="a\u0000b")))),
        Case("tile_manifest_source_escapes", untile_dir, (0, 1), outputs=("od/*",),
             setup=both(mkdir("od"), tiles_variant(edit_first("images", source="../../../evil")))),
        Case("tile_manifest_file_integer", untile, setup=tiles_variant(edit_first("tiles", file=5))),
        Case("tile_manifest_file_empty", untile, setup=tiles_variant(edit_first("tiles", file=""))),
        Case("tile_manifest_file_dot", untile, setup=tiles_variant(edit_first("tiles", file="."))),
        Case("tile_manifest_file_nul", untile, setup=tiles_variant(edit_first("tiles", file="g_r000\u0000.png"))),
        Case("tile_manifest_image_true", untile, setup=tiles_variant(edit_first("tiles", image=True))),
        Case("tile_manifest_index_floats", untile, setup=tiles_variant(edit_first("tiles", index=[0.0, 0]))),
        Case("tile_manifest_index_huge", untile, setup=tiles_variant(edit_first("tiles", index=[10**30, 0]))),
        Case("tile_manifest_duplicate_tile", untile,
             setup=tiles_variant(lambda m: m["tiles"].__setitem__(1, dict(m["tiles"][0])))),
        Case("tile_manifest_dtype_object", untile, setup=tiles_variant(edit(dtype="object"))),
        Case("tile_manifest_input_shape_zero", untile, setup=tiles_variant(edit(input_shape=[1, 1, 0, 16]))),
        Case("tile_manifest_huge_batch", untile, setup=tiles_variant(edit(input_shape=[10**9, 1, 12, 16]))),
        Case("tile_manifest_huge_channels", untile, setup=tiles_variant(edit(input_shape=[1, 10**9, 12, 16]))),
        Case("tile_manifest_tiles_object", untile, setup=tiles_variant(edit(tiles={}))),
        Case("tile_manifest_kernel_string", untile, setup=tiles_variant(edit(kernel_size="4"))),
        Case("tile_manifest_images_string", untile, setup=tiles_variant(edit(images="g.png"))),
        Case("tile_manifest_list", untile, setup=tiles_variant("[]")),
        Case("tile_manifest_truncated", untile, setup=tiles_variant('{"format": "patchfold-tiles", "vers')),
        # dataset manifests, re-run into: refused, nothing touched
        Case("dataset_manifest_truncated", rerun, setup=dataset_variant('{"format": "patchfold-dataset", "vers')),
        Case("dataset_manifest_not_json", rerun, setup=dataset_variant("this is not JSON")),
        Case("dataset_manifest_binary", rerun, setup=dataset_variant(b"\x00\xff\xfe" * 10)),
        Case("dataset_manifest_list", rerun, setup=dataset_variant("[1, 2]")),
        Case("dataset_manifest_empty_object", rerun, setup=dataset_variant("{}")),
        Case("dataset_manifest_wrong_format", rerun, setup=dataset_variant(edit(format="patchfold-tiles"))),
        Case("dataset_manifest_images_ints", rerun, setup=dataset_variant(edit(images=[1]))),
        Case("dataset_manifest_images_string", rerun, setup=dataset_variant(edit(images="g.png"))),
        Case("dataset_manifest_images_null", rerun, setup=dataset_variant(edit(images=None))),
        Case("dataset_manifest_images_object", rerun, setup=dataset_variant(edit(images={"0": {}}))),
        Case("dataset_manifest_source_integer", rerun, setup=dataset_variant(edit_first("images", source=5))),
        Case("dataset_manifest_channels_string", rerun, setup=dataset_variant(edit(channels="3"))),
        Case("dataset_manifest_shards_string", rerun, setup=dataset_variant(edit(shards="shard-00000.npy"))),
        Case("dataset_manifest_kernel_string", rerun, setup=dataset_variant(edit(kernel_size="4"))),
        Case("dataset_manifest_kernel_nested", rerun, setup=dataset_variant(edit(kernel_size=[[4, 4]]))),
        Case("dataset_manifest_version_2", rerun, setup=dataset_variant(edit(version=2))),
        Case("dataset_manifest_shard_escapes", rerun,
             setup=dataset_variant(edit_first("shards", file="../shard-00000.npy"))),
        Case("dataset_manifest_complete_string", rerun, (0, 1), outputs=("ds/*",),
             setup=dataset_variant(edit(complete="no")), check=dataset_like_corpus()),
        Case("dataset_manifest_5000_digit_rows", rerun, setup=both(dataset_variant(edit()), put(
            "ds/manifest.json", raw_manifest("ds/manifest.json", lambda t: t.replace(
                '"rows": ', '"rows": ' + "9" * 5000, 1))))),
        Case("dataset_index_corrupt_rerun", rerun, (0, 1), outputs=("ds/*",), check=dataset_like_corpus(),
             setup=both(dataset_variant(edit()), put("ds/index.npy", b"garbage"))),
        Case("dataset_shard_text_rerun", rerun, (0, 1), outputs=("ds/*",), check=dataset_like_corpus(),
             setup=both(dataset_variant(edit()), put("ds/shard-00000.npy", b"garbage"))),
    ]
    return cases


def matrix(name: str, values: np.ndarray, kernel: str = "2", *options: str) -> Setup:
    """``work/name.npy`` holding ``values`` and ``work/name_cols.npy``, its patch matrix."""

    def setup(corpus: Path, work: Path) -> None:
        np.save(work / f"{name}.npy", values)
        ok("unfold", work / f"{name}.npy", "-k", kernel, *options, "-o", work / f"{name}_cols.npy", "--no-progress")

    return setup


def exact(name: str, expected: Callable[[], np.ndarray]) -> Check:
    """The integers in ``work/name`` are ``expected()``, compared as Python ints."""

    def check(corpus: Path, work: Path) -> None:
        got = np.load(work / name)
        assert [int(v) for v in got.ravel()] == [int(v) for v in np.asarray(expected(), dtype=object).ravel()]

    return check


def same(name: str, values: np.ndarray) -> Check:
    """``work/name`` is ``values``, dtype and all."""

    def check(corpus: Path, work: Path) -> None:
        got = np.load(work / name)
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got, values)

    return check


def integer_cases() -> list[Case]:
    """Integer overflow and exotic dtypes through the command line: exact or refused."""

    def sums(values: np.ndarray) -> Callable[[], np.ndarray]:
        return lambda: _fold_sum(values, 2)

    fold = "fold {w}/v_cols.npy -o {w}/out.npy --no-progress"
    either = {"codes": (0, 1), "outputs": NPY_OUT}
    return [
        Case("cli_uint64_sum_near_2_63", f"{fold} --no-normalize", **either, setup=matrix("v", U64),
             check=exact("out.npy", sums(U64))),
        Case("cli_uint64_roundtrip", fold, **either, setup=matrix("v", U64), check=same("out.npy", U64)),
        Case("cli_int64_sum_near_2_62", f"{fold} --no-normalize", **either, setup=matrix("v", I64_BIG),
             check=exact("out.npy", sums(I64_BIG))),
        Case("cli_int64_above_2_53_roundtrip", fold, **either, setup=matrix("v", I64_ROUND),
             check=same("out.npy", I64_ROUND)),
        Case("cli_float128_roundtrip", fold, **either, setup=matrix("v", F128), check=same("out.npy", F128)),
        Case("cli_float128_unfold_kept", "unfold {w}/v.npy -k 2 -o {w}/out.npy --no-progress", **either,
             setup=put("v.npy", hd.npy_bytes(F128)), check=same("out.npy", reference_unfold(F128, 2))),
        Case("cli_bool_bytes_sum", f"{fold} --no-normalize", **either, setup=matrix("v", BOOL_BYTES),
             check=exact("out.npy", lambda: _fold_sum(BOOL_BYTES.view(np.uint8) != 0, 2))),
        Case("cli_uint64_window_sum", f"{fold} --no-normalize --window hann", **either, setup=matrix("v", U64),
             check=npy_file("out.npy", (1, 1, 3, 3))),
        Case("cli_float64_max_roundtrip", fold, **either, setup=matrix("v", np.full((1, 1, 3, 3), 1.7e308)),
             check=same("out.npy", np.full((1, 1, 3, 3), 1.7e308))),
        Case("cli_uint64_to_float32_scale", "unfold {w}/v.npy -k 2 --dtype float32 -o {w}/out.npy --no-progress",
             **either, setup=put("v.npy", hd.npy_bytes(U64)), check=npy_file("out.npy", (1, 4, 4))),
        Case("cli_uint16_via_float32_roundtrip", fold, (0,), setup=matrix("v", U16, "3", "--dtype", "float32"),
             check=same("out.npy", U16), outputs=NPY_OUT),
        Case("cli_uint8_via_float16_roundtrip", fold, (0,), setup=matrix("v", U8, "3", "--dtype", "float16"),
             check=same("out.npy", U8), outputs=NPY_OUT),
        Case("cli_engine_torch_uint64_sum", f"{fold} --no-normalize --engine torch", **either, setup=matrix("v", U64),
             check=exact("out.npy", sums(U64))),
        Case("cli_engine_torch_uint64_roundtrip", f"{fold} --engine torch", **either, setup=matrix("v", U64),
             check=same("out.npy", U64)),
        Case("cli_engine_torch_float128_unfold", "unfold {w}/v.npy -k 2 --engine torch -o {w}/out.npy --no-progress",
             **either, setup=put("v.npy", hd.npy_bytes(F128)), check=same("out.npy", reference_unfold(F128, 2))),
        Case("cli_engine_torch_uint16_png", "unfold {c}/d16.png -k 4 --engine torch -o {w}/out.npy --no-progress",
             (0,), check=matrix_of("out.npy", "d16.png", 4), outputs=NPY_OUT),
    ]


def _surrogate_source(data: dict[str, Any]) -> None:
    data["images"][0]["source"] = "\ud800x"


def more_cases() -> list[Case]:
    """Names with newlines and unencodable characters, foreign files in output directories, header
    bombs of other formats, huge pictures, JSON files over the size limit, odd output names."""
    fold_q = "fold {w}/q.npy -o {w}/out.png --no-progress"
    untile_dir = "untile {w}/t -o {w}/od/ --no-progress"
    rerun = f"batch unfold {{c}}/g.png {{c}}/rgb.png {DS_ARGS} -o {{w}}/ds --no-progress"
    big = lambda name: lambda c, w: os.truncate(w / name, (1 << 30) + 4096)  # noqa: E731 - sparse, > 1 GiB
    frames = [Image.fromarray(hd.gray(i)) for i in range(3)]
    tif_bomb = hd.tiff_header_bomb(60000, 60000)
    limited = {"process": True, "memory": GB}
    return [
        Case("output_name_newline_too_long", "unfold {c}/g.png -k 4 -o {w}/{N}.npy --no-progress"),
        Case("input_name_newline_missing", "unfold {w}/{n}.png -k 4 -o {w}/out.npy --no-progress"),
        Case("input_name_newline_not_an_image", "unfold {w}/{n}.png -k 4 -o {w}/out.npy --no-progress",
             setup=put(PLACEHOLDERS["{n}"] + ".png", "words")),
        Case("sidecar_sources_lone_surrogate_into_directory", "fold {w}/q.npy -o {w}/od/ --no-progress", (0, 1),
             setup=both(mkdir("od"), sidecar("q", edit(sources=["\ud800x"]))), outputs=("od/*",)),
        Case("sidecar_sources_lone_surrogate", fold_q, (0, 1), setup=sidecar("q", edit(sources=["\ud800x"])),
             outputs=("out.png",), check=image_is("out.png", "g.png")),
        Case("tile_manifest_source_lone_surrogate", untile_dir, (0, 1), outputs=("od/*",),
             setup=both(mkdir("od"), tiles_variant(_surrogate_source))),
        Case("tile_manifest_file_lone_surrogate", "untile {w}/t -o {w}/out.png --no-progress",
             setup=tiles_variant(edit_first("tiles", file="\ud800.png"))),
        Case("dataset_manifest_source_lone_surrogate", rerun, setup=dataset_variant(_surrogate_source)),
        Case("batch_tiles_into_directory_with_foreign_manifest", "batch tiles {c}/g.png -k 4 -o {w}/bt --no-progress "
             "--workers 1", setup=put("bt/manifest.json", hd.SENTINEL)),
        Case("batch_tiles_into_non_empty_directory", "batch tiles {c}/g.png -k 4 -o {w}/bt --no-progress --workers 1",
             (0, 1), setup=put("bt/keep.txt", hd.SENTINEL), outputs=("bt/0*", "bt/manifest.json")),
        Case("batch_unfold_into_non_empty_directory", "batch unfold {c}/g.png -k 4 -o {w}/bt --no-progress "
             "--workers 1", setup=put("bt/keep.txt", hd.SENTINEL)),
        Case("batch_unfold_shard_size_1_byte", f"{rerun} --shard-size 1", (0,), outputs=("ds", "ds/*"),
             check=lambda c, w: np.testing.assert_array_equal(
                 np.concatenate(patchfold.load_dataset(w / "ds").shards),
                 np.concatenate(patchfold.load_dataset(c / "ds").shards))),
        Case("gif_animated", "unfold {w}/a.gif -k 4 -o {w}/out.npy --no-progress", (0, 1), outputs=NPY_OUT,
             setup=lambda c, w: frames[0].save(w / "a.gif", save_all=True, append_images=frames[1:])),
        Case("tif_header_bomb_unfold", "unfold {w}/b.tif -k 4 -o {w}/out.npy --no-progress",
             setup=put("b.tif", tif_bomb), **limited),
        Case("tif_header_bomb_stats", "stats {w}/b.tif -k 4", (0, 1), setup=put("b.tif", tif_bomb)),
        Case("png_header_bomb_16bit", "unfold {w}/b.png -k 4 -o {w}/out.npy --no-progress",
             setup=put("b.png", hd.png_header_bomb(46000, 46000, color_type=0, bit_depth=16)), **limited),
        Case("png_header_bomb_tall", "unfold {w}/b.png -k 4 -o {w}/out.npy --no-progress",
             setup=put("b.png", hd.png_header_bomb(1, 2**31 - 1, color_type=0)), **limited),
        Case("png_header_zero_size", "unfold {w}/b.png -k 1 -o {w}/out.npy --no-progress",
             setup=put("b.png", hd.png_header_bomb(0, 0, color_type=0))),
        Case("show_grid_huge_padding", "show grid {c}/g.png -k 4 -p 100000 -o {w}/out.png", **limited),
        Case("divisor_png_huge_size", "divisor --size 100000,100000 -k 4 --png {w}/out.png", (0, 1),
             outputs=("out.png",), **limited),
        Case("divisor_npy_huge_size", "divisor --size 100000,100000 -k 4 --npy {w}/out.npy", **limited),
        Case("unfold_huge_padding", "unfold {c}/g.png -k 4 -p 100000 -o {w}/out.npy --no-progress", **limited),
        Case("fold_huge_output_size", "fold {w}/m.npy -k 4 -s 100000 --output-size 100004,100004 -o {w}/out.png "
             "--no-progress", setup=put("m.npy", hd.npy_bytes(np.zeros((1, 16, 4), np.uint8))), **limited),
        Case("sidecar_over_1_gib", fold_q, setup=both(sidecar("q", "{}"), big("q.json"))),
        Case("tile_manifest_over_1_gib", "untile {w}/t -o {w}/out.png --no-progress",
             setup=both(tiles_variant(edit()), big("t/manifest.json"))),
        Case("dataset_manifest_over_1_gib", rerun, setup=both(dataset_variant(edit()), big("ds/manifest.json"))),
        Case("fold_float32_to_png", "fold {c}/pf.npy -o {w}/out.png --no-progress", (0, 1), outputs=("out.png",)),
        Case("fold_uint16_to_jpg", "fold {c}/p16.npy -o {w}/out.jpg --no-progress"),
        Case("fold_to_unknown_suffix", "fold {c}/p.npy -o {w}/out.xyz --no-progress", (1, 2)),
        Case("fold_to_gif", "fold {c}/p.npy -o {w}/out.gif --no-progress", (0, 1), outputs=("out.gif",)),
        Case("unfold_output_empty", "unfold {c}/g.png -k 4 -o {E} --no-progress", (1, 2)),
        Case("fold_output_empty", "fold {c}/p.npy -o {E} --no-progress", (1, 2)),
        Case("tiles_output_empty", "tiles {c}/g.png -k 4 -o {E} --no-progress", (1, 2)),
        Case("batch_output_empty", "batch unfold {c}/g.png -k 4 -o {E} --no-progress", (1, 2)),
        Case("input_empty_string", "unfold {E} -k 4 -o {w}/out.npy --no-progress", (1, 2), says=("empty",)),
        Case("input_empty_string_stats", "stats {E} -k 4", (1, 2), says=("empty",)),
        Case("batch_source_empty_string", "batch unfold {E} -k 4 -o {w}/ds --no-progress", (1, 2), says=("empty",)),
        Case("unfold_output_in_missing_directory_slash", "unfold {c}/g.png -k 4 -o {w}/nodir/ --no-progress", (1, 2)),
        Case("fold_output_directory_missing_slash", "fold {c}/p.npy -o {w}/nodir/ --no-progress", (1, 2)),
        Case("fold_output_i_twice", "fold {c}/p.npy -o {w}/o_{i}_{i}.png --no-progress", (0, 1),
             outputs=("o_0000_0000.png",), check=image_is("o_0000_0000.png", "g.png")),
        # spatial ranks that differ between the images of one dataset
        Case("batch_unfold_mixed_ranks_3d_2d", "batch unfold {w}/v.npy {c}/g.png -k 2 -o {w}/ds --no-progress "
             "--workers 1", (1, 2), setup=put("v.npy", hd.npy_bytes(np.zeros((1, 1, 6, 8, 8), np.uint8))),
             dataset="ds"),
        Case("batch_unfold_mixed_ranks_1d_2d", "batch unfold {w}/s.npy {c}/g.png -k 2 -o {w}/ds --no-progress "
             "--workers 1", (1, 2), setup=put("s.npy", hd.npy_bytes(np.zeros(40, np.float32))), dataset="ds"),
        Case("batch_tiles_mixed_ranks", "batch tiles {w}/v.npy {c}/g.png -k 2 --format npy -o {w}/bt --no-progress "
             "--workers 1", (0, 1), setup=put("v.npy", hd.npy_bytes(np.zeros((1, 1, 6, 8, 8), np.uint8))),
             outputs=("bt", "bt/*", "bt/*/*")),
        # a set of outputs is written whole or not at all
        Case("fold_second_image_target_is_a_directory", "fold {w}/p2.npy -o {w}/o_{i}.png --no-progress",
             setup=both(put("o_0000.png", hd.SENTINEL), mkdir("o_0001.png"), _two_image_matrix)),
        Case("unfold_sidecar_target_is_a_directory", "unfold {c}/g.png -k 4 -o {w}/out.npy --no-progress",
             setup=replace_by("out.json", "dir")),
        Case("unfold_sidecar_target_is_a_fifo", "unfold {c}/g.png -k 4 -o {w}/out.npy --no-progress", (0, 1),
             setup=fifo("out.json"), outputs=NPY_OUT, check=G_MATRIX, process=True),
        # outputs that are links: replaced (or refused), never written through
        Case("fold_output_links_to_an_input", "fold {c}/p.npy -o {w}/lnk.png --no-progress", (0, 1),
             setup=replace_by("lnk.png", "link", "{c}/g.png"), outputs=("lnk.png",)),
        Case("unfold_output_links_to_an_input", "unfold {c}/g.png -k 4 -o {w}/lnk.npy --no-progress", (0, 1),
             setup=both(replace_by("lnk.npy", "link", "{c}/x.npy"), replace_by("lnk.json", "link", "{c}/p.json")),
             outputs=("lnk.npy", "lnk.json")),
        Case("divisor_output_links_to_an_input", "divisor --size 12,16 -k 4 --npy {w}/lnk.npy", (0, 1),
             setup=replace_by("lnk.npy", "link", "{c}/x.npy"), outputs=("lnk.npy",)),
        Case("tiles_output_links_to_a_directory", "tiles {c}/g.png -k 4 -o {w}/lnk --no-progress", (0, 1),
             setup=both(mkdir("elsewhere"), replace_by("lnk", "link", "elsewhere")),
             outputs=("lnk", "lnk/*", "elsewhere/*")),
        Case("batch_rerun_through_a_link_to_a_dataset", f"batch unfold {{c}}/g.png {{c}}/rgb.png {DS_ARGS} -o "
             "{w}/lnk --no-progress", (0, 1), setup=replace_by("lnk", "link", "{c}/ds")),
        Case("batch_other_parameters_through_a_link", "batch unfold {c}/g.png {c}/rgb.png --channels 3 -k 2 "
             "--workers 1 -o {w}/lnk --no-progress", setup=replace_by("lnk", "link", "{c}/ds")),
    ]


def _two_image_matrix(corpus: Path, work: Path) -> None:
    ok("unfold", corpus / "g.png", corpus / "g.png", "-k", 4, "-s", 4, "-o", work / "p2.npy", "--no-progress")


def _fold_sum(values: np.ndarray, kernel: int) -> np.ndarray:
    """F.fold(F.unfold(values)) of one integer image, exactly, with Python ints (object array)."""
    height, width = values.shape[2:]
    out = np.zeros((height, width), dtype=object)
    source = values.astype(object) if values.dtype != np.bool_ else values.astype(np.int64).astype(object)
    for y in range(height - kernel + 1):
        for x in range(width - kernel + 1):
            out[y : y + kernel, x : x + kernel] += source[0, 0, y : y + kernel, x : x + kernel]
    return out[None, None]


def _big_ints(dtype: Any, values: list[int]) -> np.ndarray:
    return np.array(values, dtype=dtype).reshape(1, 1, 3, 3)


U64 = _big_ints(np.uint64, [2**63 + 5, 2**64 - 1, 2**63, 2**64 - 2, 2**63 + 1, 2**64 - 3, 2**63 + 7, 2**64 - 9, 2**63])
I64_BIG = _big_ints(np.int64, [2**62 + 1, 2**62 + 3, -(2**62) - 5, 2**62, 2**62 + 11, -(2**62), 2**62, 7, -(2**62)])
I64_ROUND = _big_ints(np.int64, [2**53 + 1, 2**60 + 3, -(2**62) - 1, 2**63 - 1, -(2**63), 2**55 + 7, 1, -3, 2**53 + 3])
BOOL_BYTES = np.frombuffer(bytes([0, 1, 2, 255, 7, 0, 1, 128, 3]), dtype=np.bool_).reshape(1, 1, 3, 3)
F128 = np.arange(9, dtype=np.longdouble).reshape(1, 1, 3, 3) / 3 + np.longdouble(1) / 7

U16 = hd.depth16(4, (9, 11))[None, None]
U8 = hd.rgb(5, (9, 11)).transpose(2, 0, 1)[None].copy()

COMMAND_CASES: list[Case] = [
    *option_cases(), *file_cases(), *path_cases(), *json_cases(), *integer_cases(), *more_cases()
]
# fmt: on


def _params(cases: list[Any]) -> list[Any]:
    return [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=XFAIL[c.id], strict=True)] if c.id in XFAIL else [])
        for c in cases
    ]


@dataclass
class Prepared:
    """A case ready to run: its work directory and what it held before."""

    work: Path
    args: list[str]
    before: dict[str, Any]


def prepare(case: Case, corpus: Path, work: Path) -> Prepared:
    work.mkdir(parents=True)
    for name in SENTINELS:
        (work / name).write_bytes(hd.SENTINEL)
    if case.setup is not None:
        case.setup(corpus, work)
    return Prepared(work, case.args(corpus, work), snapshot(work))


#: At most this many process cases run at once.
CONCURRENT_PROCESSES = 3


class ProcessOutcomes:
    """Every process case, prepared at once and then run in a background thread, up to
    :data:`CONCURRENT_PROCESSES` at a time, while the in-process cases run in the foreground
    (starting a process is most of a process case's cost, and pytest itself uses one core)."""

    def __init__(self, corpus: Path, base: Path) -> None:
        import threading

        self.corpus_before = snapshot(corpus)
        self.waiting = [(case, prepare(case, corpus, base / case.id)) for case in COMMAND_CASES if case.process]
        self.results: dict[str, tuple[Prepared, Outcome]] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        running: list[tuple[Case, Prepared, Run]] = []
        while self.waiting or running:
            while self.waiting and len(running) < CONCURRENT_PROCESSES:
                case, prepared = self.waiting.pop(0)
                running.append((case, prepared, Run(prepared.args, prepared.work, case.memory)))
            time.sleep(0.005)
            for item in [r for r in running if r[2].done()]:
                running.remove(item)
                self.results[item[0].id] = (item[1], item[2].finish())

    def get(self, case_id: str) -> tuple[Prepared, Outcome]:
        self.thread.join()
        return self.results[case_id]


@pytest.fixture(scope="module")
def process_outcomes(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> ProcessOutcomes | None:
    if not HAS_COMMAND:
        return None
    return ProcessOutcomes(corpus, tmp_path_factory.mktemp("hostile_matrix_processes"))


@pytest.mark.parametrize("case", _params(sorted(COMMAND_CASES, key=lambda c: c.process)))
def test_command_case(case: Case, corpus: Path, tmp_path: Path, process_outcomes: ProcessOutcomes | None) -> None:
    """One command case (the process cases last: they run in the background meanwhile)."""
    if case.process:
        if process_outcomes is None:
            pytest.skip("the patchfold command is not installed beside this Python")
        corpus_before, (prepared, outcome) = process_outcomes.corpus_before, process_outcomes.get(case.id)
    else:
        prepared = prepare(case, corpus, tmp_path / "work")
        corpus_before = snapshot(corpus)
        outcome = run_in_process(prepared.args, prepared.work)
    work, args, before = prepared.work, prepared.args, prepared.before
    check_clean(outcome, case.codes, batch=args[0] == "batch")
    assert leftovers(work) == [] and leftovers(corpus) == [], f"temporary files left: {leftovers(work)}"
    assert snapshot(corpus) == corpus_before, "the corpus of inputs was changed"
    changed = changes(before, snapshot(work))
    if outcome.code != 0:
        line = error_lines(outcome.stderr)[0]
        assert not case.says or any(word in line for word in case.says), f"{line!r} says none of {case.says}"
        if case.dataset and (work / case.dataset / "manifest.json").exists():
            changed = [k for k in changed if not _matches(k, (case.dataset, f"{case.dataset}/*"))]
            with pytest.raises(patchfold.PatchfoldError):
                patchfold.load_dataset(work / case.dataset)
        assert not changed, f"a failed run changed the work directory: {changed}\n{outcome.report}"
        return
    unexpected = [k for k in changed if not _matches(k, case.outputs)]
    assert not unexpected, f"a successful run changed files it does not write: {unexpected}\n{outcome.report}"
    if case.check is not None:
        case.check(corpus, work)


# ----- family 3: the Python API -------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiCase:
    """``call()`` must raise :class:`patchfold.PatchfoldError` or return a result ``expect``
    accepts (``expect`` None: it must raise; ``must_succeed``: it must not)."""

    id: str
    call: Callable[[], Any]
    expect: Callable[[Any], None] | None = None
    must_succeed: bool = False


def _torch(op: str, x: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(x).astype(np.float64))
    return getattr(F, op)(tensor, *args, **kwargs).numpy()


def equals(expected: Callable[[], np.ndarray]) -> Callable[[Any], None]:
    def check(result: Any) -> None:
        values, want = np.asarray(result), np.asarray(expected())
        assert values.shape == want.shape, (values.shape, want.shape)
        np.testing.assert_array_equal(values.astype(np.float64), want.astype(np.float64))

    return check


def like_torch(x: np.ndarray, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
    return equals(lambda: _torch("unfold", x, *args, **kwargs))


def like_reference(x: np.ndarray, kernel: int, padding: int, mode: str) -> Callable[[Any], None]:
    return equals(lambda: reference_unfold(x, kernel, 1, padding, 1, mode))


def exact_ints(expected: Callable[[], np.ndarray]) -> Callable[[Any], None]:
    """Integer results compared as Python ints (no float rounding, no wrap-around)."""

    def check(result: Any) -> None:
        got = [int(v) for v in np.asarray(result).ravel()]
        want = [int(v) for v in np.asarray(expected(), dtype=object).ravel()]
        assert got == want, f"got {got[:4]}..., expected {want[:4]}..."

    return check


def same_as(x: np.ndarray) -> Callable[[Any], None]:
    def check(result: Any) -> None:
        assert result.dtype == x.dtype, (result.dtype, x.dtype)
        np.testing.assert_array_equal(result, x)

    return check


def shape_is(*shape: int) -> Callable[[Any], None]:
    def check(result: Any) -> None:
        assert np.asarray(result).shape == shape, np.asarray(result).shape

    return check


def finite(result: Any) -> None:
    assert np.isfinite(np.asarray(result, dtype=np.float64)).all()


def back_to(x: np.ndarray) -> Callable[[Any], None]:
    def check(result: Any) -> None:
        assert np.isfinite(result).all()
        np.testing.assert_allclose(result, x, rtol=1e-6)

    return check


def roundtrip(x: np.ndarray, kernel: Any = 2) -> np.ndarray:
    return patchfold.fold(patchfold.unfold(x, kernel), x.shape[2:], kernel, normalize=True)


def _uncovered_zero(result: Any) -> None:
    values = np.asarray(result)
    assert np.isfinite(values).all() and (values[..., 2, :] == 0).all(), "uncovered pixels must be 0, never NaN"


def _bool_sum(result: Any) -> None:
    np.testing.assert_array_equal(np.asarray(result), reference_fold(reference_unfold(BOOL_BYTES != 0, 2), (3, 3), 2))


#: The temporary directory of the running load_dataset case.
_API_TMP: list[Path] = []


def load(change: Callable[[Path], Any]) -> Callable[[], Any]:
    """load_dataset of a fresh one-image dataset (12 patches of 1×4×4) after ``change(directory)``."""

    def call() -> Any:
        from patchfold.datasets.build import unfold_dataset

        base = _API_TMP[0]
        Image.fromarray(hd.gray()).save(base / "a.png")
        for _ in unfold_dataset([str(base / "a.png")], base / "ds", patchfold.Blocks(4, stride=4), workers=1):
            pass
        change(base / "ds")
        return patchfold.load_dataset(base / "ds")

    return call


def manifest(**fields: Any) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        data = json.loads((directory / "manifest.json").read_text())
        edit(**fields)(data)
        (directory / "manifest.json").write_text(json.dumps(data))

    return change


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def truncate(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes((d / name).read_bytes()[: (d / name).stat().st_size // 2])


def _loaded(result: Any) -> None:
    assert len(result) == 12 and result[0].shape == (1, 4, 4)


RNG = np.random.default_rng(13)
IMG = RNG.random((2, 3, 9, 11)).astype(np.float32)
COLS = reference_unfold(IMG, 3, 1, 1, 2)  # k3 p1 s2 of (9, 11): 5 × 6 blocks
X6 = IMG[:1, :1, :6, :6].copy()
VOLUME = RNG.random((1, 1, 11, 11, 11))
BIG64 = np.full((1, 1, 3, 3), np.finfo(np.float64).max)
BIG32 = np.full((1, 1, 3, 3), np.finfo(np.float32).max, np.float32)
u, f, divisor, stats = patchfold.unfold, patchfold.fold, patchfold.divisor, patchfold.overlap_stats


def fold_cols(**kwargs: Any) -> Callable[[], Any]:
    return lambda: f(COLS, (9, 11), 3, padding=1, stride=2, **kwargs)


# fmt: off
API_CASES: list[ApiCase] = [
    # unfold: parameters
    ApiCase("api_unfold_kernel_float", lambda: u(IMG, 2.5)),
    ApiCase("api_unfold_kernel_true", lambda: u(IMG, True)),
    ApiCase("api_unfold_kernel_string", lambda: u(IMG, "4")),
    ApiCase("api_unfold_kernel_none", lambda: u(IMG, None)),
    ApiCase("api_unfold_kernel_empty", lambda: u(IMG, [])),
    ApiCase("api_unfold_kernel_negative_entry", lambda: u(IMG, [4, -1])),
    ApiCase("api_unfold_kernel_numpy_float", lambda: u(IMG, np.float64(4))),
    ApiCase("api_unfold_kernel_2_41", lambda: u(IMG, 2**41)),
    ApiCase("api_unfold_kernel_10_30", lambda: u(IMG, 10**30)),
    ApiCase("api_unfold_kernel_three_values_2d", lambda: u(IMG, [2, 2, 2])),
    ApiCase("api_unfold_kernel_dict", lambda: u(IMG, {"a": 1})),
    ApiCase("api_unfold_kernel_set", lambda: u(IMG, {3}), like_torch(IMG, 3)),
    ApiCase("api_unfold_kernel_nan", lambda: u(IMG, float("nan"))),
    ApiCase("api_unfold_kernel_complex", lambda: u(IMG, 3 + 0j)),
    ApiCase("api_unfold_kernel_numpy_int8", lambda: u(IMG, np.int8(3)), like_torch(IMG, 3), True),
    ApiCase("api_unfold_kernel_0d_array", lambda: u(IMG, np.array(3)), like_torch(IMG, 3), True),
    ApiCase("api_unfold_kernel_uint64_array", lambda: u(IMG, np.array([3, 2], np.uint64)), like_torch(IMG, (3, 2)),
            True),
    ApiCase("api_unfold_kernel_tensor", lambda: u(IMG, __import__("torch").tensor(3)), like_torch(IMG, 3), True),
    ApiCase("api_unfold_dilation_array", lambda: u(IMG, 2, dilation=np.array([1, 2])),
            like_torch(IMG, 2, dilation=(1, 2)), True),
    ApiCase("api_unfold_stride_zero", lambda: u(IMG, 2, stride=0)),
    ApiCase("api_unfold_padding_minus_1", lambda: u(IMG, 2, padding=-1)),
    ApiCase("api_unfold_padding_bool_list", lambda: u(IMG, 2, padding=[True, False])),
    ApiCase("api_unfold_padding_mode_upper", lambda: u(IMG, 2, padding_mode="REFLECT")),
    ApiCase("api_unfold_padding_mode_none", lambda: u(IMG, 2, padding_mode=None)),
    ApiCase("api_unfold_layout_upper", lambda: u(IMG, 2, layout="NCL"), like_torch(IMG, 2)),
    ApiCase("api_unfold_layout_int", lambda: u(IMG, 2, layout=1)),
    ApiCase("api_unfold_engine_gpu", lambda: u(IMG, 2, engine="gpu")),
    ApiCase("api_unfold_engine_none", lambda: u(IMG, 2, engine=None)),
    ApiCase("api_unfold_threads_zero", lambda: u(IMG, 2, threads=0), like_torch(IMG, 2)),
    ApiCase("api_unfold_threads_negative", lambda: u(IMG, 2, threads=-1), like_torch(IMG, 2)),
    ApiCase("api_unfold_threads_float", lambda: u(IMG, 2, threads=1.5), like_torch(IMG, 2)),
    ApiCase("api_unfold_threads_string", lambda: u(IMG, 2, threads="2"), like_torch(IMG, 2)),
    ApiCase("api_unfold_threads_million", lambda: u(IMG, 2, threads=10**6), like_torch(IMG, 2)),
    ApiCase("api_unfold_spatial_dims_zero", lambda: u(IMG, 2, spatial_dims=0)),
    ApiCase("api_unfold_spatial_dims_true", lambda: u(IMG, 2, spatial_dims=True)),
    ApiCase("api_unfold_spatial_dims_5_for_4d", lambda: u(IMG, 2, spatial_dims=5)),
    ApiCase("api_unfold_spatial_dims_float", lambda: u(IMG, 2, spatial_dims=2.0)),
    # unfold: inputs
    ApiCase("api_unfold_object_array", lambda: u(np.array([[[[1, None]]]], dtype=object), 1)),
    ApiCase("api_unfold_complex", lambda: u(np.zeros((1, 1, 4, 4), np.complex64), 2)),
    ApiCase("api_unfold_strings", lambda: u(np.array([[[["a", "b"]]]]), 1)),
    ApiCase("api_unfold_datetime", lambda: u(np.zeros((1, 1, 4, 4), "datetime64[s]"), 2)),
    ApiCase("api_unfold_structured", lambda: u(np.zeros((1, 1, 4, 4), [("a", "f4")]), 2)),
    ApiCase("api_unfold_0d", lambda: u(np.array(1.0), 1)),
    ApiCase("api_unfold_1d_input_2d_kernel", lambda: u(np.zeros(8), (2, 2))),
    ApiCase("api_unfold_empty_spatial", lambda: u(np.zeros((1, 1, 0, 5), np.float32), 1)),
    ApiCase("api_unfold_empty_batch", lambda: u(np.zeros((0, 1, 4, 4), np.float32), 2), shape_is(0, 4, 9)),
    ApiCase("api_unfold_empty_channels", lambda: u(np.zeros((1, 0, 4, 4), np.float32), 2), shape_is(1, 0, 9)),
    ApiCase("api_unfold_python_list", lambda: u([[[[1.0, 2.0], [3.0, 4.0]]]], 1),
            equals(lambda: np.array([[[1.0, 2.0, 3.0, 4.0]]]))),
    ApiCase("api_unfold_none_input", lambda: u(None, 2)),
    ApiCase("api_unfold_transposed_view", lambda: u(IMG.transpose(0, 1, 3, 2), 3, stride=2),
            like_torch(IMG.transpose(0, 1, 3, 2), 3, stride=2), True),
    ApiCase("api_unfold_negative_strides", lambda: u(IMG[:, ::-1, ::-1, ::-2], 2), like_torch(IMG[:, ::-1, ::-1, ::-2],
                                                                                               2), True),
    ApiCase("api_unfold_fortran_order", lambda: u(np.asfortranarray(IMG), 3, padding=1),
            like_torch(IMG, 3, padding=1), True),
    ApiCase("api_unfold_readonly", lambda: u(np.frombuffer(IMG.tobytes(), np.float32).reshape(IMG.shape), 2),
            like_torch(IMG, 2), True),
    ApiCase("api_unfold_broadcast_zero_strides", lambda: u(np.broadcast_to(IMG[:, :, :1], IMG.shape), 2),
            like_torch(np.broadcast_to(IMG[:, :, :1], IMG.shape), 2), True),
    ApiCase("api_unfold_unaligned", lambda: u(np.frombuffer(b"\0" + IMG.tobytes(), np.float32, offset=1)
                                               .reshape(IMG.shape), 2), like_torch(IMG, 2), True),
    ApiCase("api_unfold_reflect_padding_too_large", lambda: u(X6, 2, padding=6, padding_mode="reflect"),
            like_reference(X6, 2, 6, "reflect")),
    ApiCase("api_unfold_circular_padding_too_large", lambda: u(X6, 2, padding=7, padding_mode="circular"),
            like_reference(X6, 2, 7, "circular")),
    ApiCase("api_unfold_replicate_padding_huge", lambda: u(X6, 2, padding=40, padding_mode="replicate"),
            like_reference(X6, 2, 40, "replicate")),
    ApiCase("api_unfold_float16_reflect", lambda: u(X6.astype(np.float16), 3, padding=2, padding_mode="reflect"),
            like_reference(X6.astype(np.float16), 3, 2, "reflect"), True),
    ApiCase("api_unfold_uint64_extremes", lambda: u(U64, 2), exact_ints(lambda: reference_unfold(U64, 2)), True),
    ApiCase("api_unfold_bool_bytes", lambda: u(BOOL_BYTES, 2), lambda r: np.testing.assert_array_equal(
        np.asarray(r) != 0, reference_unfold(BOOL_BYTES.view(np.uint8) != 0, 2)), True),
    ApiCase("api_unfold_float128_kept", lambda: u(F128, 2), same_as(reference_unfold(F128, 2))),
    # unfold: out=
    ApiCase("api_unfold_out_wrong_shape", lambda: u(IMG, 2, out=np.empty((2, 12, 5), np.float32))),
    ApiCase("api_unfold_out_readonly", lambda: u(IMG, 2, out=np.frombuffer(bytes(2 * 12 * 80 * 4), np.float32)
                                                 .reshape(2, 12, 80))),
    ApiCase("api_unfold_out_list", lambda: u(IMG, 2, out=[0.0] * 10)),
    ApiCase("api_unfold_out_int8", lambda: u(IMG * 100, 2, out=np.empty((2, 12, 80), np.int8)),
            equals(lambda: reference_unfold(IMG * 100, 2).astype(np.int8))),
    ApiCase("api_unfold_out_non_contiguous", lambda: u(IMG, 2, out=np.empty((2, 12, 160), np.float32)[:, :, ::2]),
            like_torch(IMG, 2)),
    ApiCase("api_unfold_out_complex", lambda: u(IMG, 2, out=np.empty((2, 12, 80), np.complex64))),
    ApiCase("api_unfold_out_aliases_input", lambda: (lambda x: u(x, 1, out=x.reshape(1, 1, 16)))(X6[:, :, :4, :4]
                                                                                                   .copy()),
            equals(lambda: X6[:, :, :4, :4].reshape(1, 1, 16))),
    # fold
    ApiCase("api_fold_wrong_rows", lambda: f(COLS[:, :-1], (9, 11), 3, padding=1, stride=2)),
    ApiCase("api_fold_output_size_disagrees", lambda: f(COLS, (12, 11), 3, padding=1, stride=2)),
    ApiCase("api_fold_output_size_zero", lambda: f(COLS, 0, 3, padding=1, stride=2)),
    ApiCase("api_fold_output_size_string", lambda: f(COLS, "9,11", 3, padding=1, stride=2)),
    ApiCase("api_fold_output_size_one_dim", lambda: f(COLS, (9,), (3, 3), padding=1, stride=2)),
    ApiCase("api_fold_output_size_float", lambda: f(COLS, (9.0, 11.0), 3, padding=1, stride=2)),
    ApiCase("api_fold_cols_1d", lambda: f(np.zeros(9), (3, 3), 3)),
    ApiCase("api_fold_cols_complex", lambda: f(np.zeros((1, 9, 1), np.complex64), (3, 3), 3)),
    ApiCase("api_fold_cols_object", lambda: f(np.zeros((1, 9, 1), object), (3, 3), 3)),
    ApiCase("api_fold_cols_none", lambda: f(None, (3, 3), 3)),
    ApiCase("api_fold_window_int", fold_cols(window=5)),
    ApiCase("api_fold_window_empty", fold_cols(window="")),
    ApiCase("api_fold_window_gaussian_negative", fold_cols(window="gaussian:-1")),
    ApiCase("api_fold_window_gaussian_0_001", fold_cols(normalize=True, window="gaussian:0.001"), back_to(IMG)),
    ApiCase("api_fold_window_gaussian_1e-300", fold_cols(normalize=True, window="gaussian:1e-300"), back_to(IMG)),
    ApiCase("api_fold_window_gaussian_tiny_3d", lambda: f(u(VOLUME, 5, stride=3), (11, 11, 11), 5, stride=3,
                                                          normalize=True, window="gaussian:0.02"), finite),
    ApiCase("api_fold_layout_mismatch", fold_cols(layout="nlc")),
    ApiCase("api_fold_non_contiguous", lambda: f(np.asfortranarray(COLS), (9, 11), 3, padding=1, stride=2),
            equals(lambda: _torch("fold", COLS, (9, 11), 3, padding=1, stride=2)), True),
    ApiCase("api_fold_uncovered_pixels_zero", lambda: f(reference_unfold(IMG, 2, 1, 0, 3), (9, 11), 2, stride=3,
                                                        normalize=True), _uncovered_zero),
    ApiCase("api_fold_uint64_sum_near_2_63", lambda: f(u(U64, 2), (3, 3), 2), exact_ints(lambda: _fold_sum(U64, 2))),
    ApiCase("api_fold_uint64_normalised_roundtrip", lambda: roundtrip(U64), same_as(U64)),
    ApiCase("api_fold_int64_sum_near_2_62", lambda: f(u(I64_BIG, 2), (3, 3), 2),
            exact_ints(lambda: _fold_sum(I64_BIG, 2))),
    ApiCase("api_fold_int64_above_2_53_roundtrip", lambda: roundtrip(I64_ROUND), same_as(I64_ROUND)),
    ApiCase("api_fold_int64_above_2_53_roundtrip_1x2", lambda: roundtrip(I64_ROUND, (1, 2)), same_as(I64_ROUND)),
    ApiCase("api_fold_float128_roundtrip", lambda: roundtrip(F128), same_as(F128)),
    ApiCase("api_fold_bool_bytes_sum", lambda: f(u(BOOL_BYTES, 2), (3, 3), 2), _bool_sum),
    ApiCase("api_fold_bool_bytes_roundtrip", lambda: roundtrip(BOOL_BYTES),
            lambda r: np.testing.assert_array_equal(np.asarray(r) != 0, BOOL_BYTES.view(np.uint8) != 0)),
    ApiCase("api_fold_int8_extremes_roundtrip", lambda: roundtrip(np.array([[[[-128, 127], [-1, 0]]]], np.int8)),
            same_as(np.array([[[[-128, 127], [-1, 0]]]], np.int8)), True),
    ApiCase("api_fold_float64_max_sum", lambda: roundtrip(BIG64), same_as(BIG64)),
    ApiCase("api_fold_float32_max_roundtrip", lambda: roundtrip(BIG32), same_as(BIG32), True),
    # divisor
    ApiCase("api_divisor_size_zero", lambda: divisor(0, 2)),
    ApiCase("api_divisor_size_empty", lambda: divisor([], 2)),
    ApiCase("api_divisor_kernel_too_large", lambda: divisor((4, 4), 5)),
    ApiCase("api_divisor_window_gaussian_0_001", lambda: divisor((12, 12), 4, window="gaussian:0.001"), finite),
    ApiCase("api_divisor_window_unknown", lambda: divisor((12, 12), 4, window="kaiser")),
    ApiCase("api_divisor_window_bytes", lambda: divisor((12, 12), 4, window=b"hann")),
    ApiCase("api_divisor_size_2_40_squared", lambda: divisor((2**40, 2**40), 1)),
    ApiCase("api_divisor_size_string", lambda: divisor("12", 4)),
    ApiCase("api_divisor_padding_mode_unknown", lambda: divisor((8, 8), 2, padding=1, padding_mode="x")),
    ApiCase("api_divisor_reflect_padding_too_large", lambda: divisor((4, 4), 2, padding=5, padding_mode="reflect"),
            lambda r: (np.asarray(r).shape == (4, 4) and (np.asarray(r) > 0).all()) or pytest.fail(str(r))),
    # overlap_stats
    ApiCase("api_stats_channels_zero", lambda: stats((8, 8), 2, channels=0)),
    ApiCase("api_stats_channels_float", lambda: stats((8, 8), 2, channels=2.5)),
    ApiCase("api_stats_batch_list", lambda: stats((8, 8), 2, batch=[1, 2])),
    ApiCase("api_stats_dtype_bogus", lambda: stats((8, 8), 2, dtype="bogus")),
    ApiCase("api_stats_dtype_object", lambda: stats((8, 8), 2, dtype=object), lambda r: None),
    ApiCase("api_stats_layout_bogus", lambda: stats((8, 8), 2, layout="x")),
    ApiCase("api_stats_batch_2_62", lambda: stats((8, 8), 2, batch=2**62),
            lambda r: (r["output_bytes"] == 2**62 * 4 * 49 * 4) or pytest.fail(str(r["output_bytes"]))),
    ApiCase("api_stats_size_2_40", lambda: stats((2**40, 2**40), 2**20, stride=2**20),
            lambda r: (r["num_blocks"] == 2**40) or pytest.fail(str(r["num_blocks"]))),
    # load_dataset
    ApiCase("api_load_dataset_missing", lambda: patchfold.load_dataset("/nonexistent/patchfold/ds")),
    ApiCase("api_load_dataset_file", lambda: patchfold.load_dataset(__file__)),
    ApiCase("api_load_dataset_none", lambda: patchfold.load_dataset(None)),
    ApiCase("api_load_dataset_ok", load(lambda d: None), _loaded, True),
    ApiCase("api_load_dataset_manifest_not_json", load(write("manifest.json", "{nope"))),
    ApiCase("api_load_dataset_manifest_nested", load(write("manifest.json", hd.deep_json()))),
    ApiCase("api_load_dataset_manifest_list", load(write("manifest.json", "[]"))),
    ApiCase("api_load_dataset_manifest_fifo", load(lambda d: ((d / "manifest.json").unlink(),
                                                             os.mkfifo(d / "manifest.json")))),
    ApiCase("api_load_dataset_shard_missing", load(lambda d: (d / "shard-00000.npy").unlink())),
    ApiCase("api_load_dataset_shard_truncated", load(truncate("shard-00000.npy"))),
    ApiCase("api_load_dataset_shard_text", load(write("shard-00000.npy", "text"))),
    ApiCase("api_load_dataset_shard_fifo", load(lambda d: ((d / "shard-00000.npy").unlink(),
                                                          os.mkfifo(d / "shard-00000.npy")))),
    ApiCase("api_load_dataset_index_truncated", load(truncate("index.npy"))),
    ApiCase("api_load_dataset_index_float", load(lambda d: np.save(d / "index.npy", np.zeros((12, 5))))),
    ApiCase("api_load_dataset_index_pickled", load(lambda d: (d / "index.npy").write_bytes(hd.pickle_npy(
        d / "PWNED")))),
    ApiCase("api_load_dataset_index_out_of_range", load(lambda d: np.save(d / "index.npy", np.full((12, 5), 10**6)))),
    ApiCase("api_load_dataset_index_negative", load(lambda d: np.save(d / "index.npy", np.full((12, 5), -1)))),
    ApiCase("api_load_dataset_kernel_string", load(manifest(kernel_size="4"))),
    ApiCase("api_load_dataset_kernel_huge", load(manifest(kernel_size=[2**40, 2**40]))),
    ApiCase("api_load_dataset_channels_zero", load(manifest(channels=0))),
    ApiCase("api_load_dataset_dtype_object", load(manifest(dtype="object"))),
    ApiCase("api_load_dataset_dtype_int", load(manifest(dtype=4))),
    ApiCase("api_load_dataset_dtype_garbage", load(manifest(dtype="f4, i8 [[["))),
    ApiCase("api_load_dataset_shard_escapes", load(manifest(shards=[{"file": "../x.npy", "rows": 12}]))),
    ApiCase("api_load_dataset_shard_rows_string", load(manifest(shards=[{"file": "shard-00000.npy", "rows": "12"}]))),
    ApiCase("api_load_dataset_incomplete", load(manifest(complete=False))),
    ApiCase("api_load_dataset_index_columns_short", load(manifest(index_columns=["a", "b", "c"]))),
    ApiCase("api_load_dataset_index_columns_string", load(manifest(index_columns="image,block,shard,row"))),
    ApiCase("api_load_dataset_images_ints", load(manifest(images=[1])), _loaded),
    # the torch engine and torch tensors
    ApiCase("api_torch_engine_uint64_fold", lambda: f(u(U64, 2), (3, 3), 2, engine="torch"),
            exact_ints(lambda: _fold_sum(U64, 2))),
    ApiCase("api_torch_engine_uint64_roundtrip", lambda: f(u(U64, 2), (3, 3), 2, normalize=True, engine="torch"),
            same_as(U64)),
    ApiCase("api_torch_engine_float128_unfold", lambda: u(F128, 2, engine="torch"), same_as(reference_unfold(F128, 2))),
    ApiCase("api_torch_engine_uint16_roundtrip", lambda: f(u(U16, 3, engine="torch"), (9, 11), 3, normalize=True,
                                                           engine="torch"), same_as(U16), True),
    ApiCase("api_torch_engine_bool_bytes_sum", lambda: f(u(BOOL_BYTES, 2), (3, 3), 2, engine="torch"), _bool_sum),
    ApiCase("api_tensor_uint64_fold", lambda: (lambda t: f(u(t, 2), (3, 3), 2))(_tensor(U64)),
            exact_ints(lambda: _fold_sum(U64, 2))),
    ApiCase("api_tensor_complex", lambda: u(_tensor(np.zeros((1, 1, 4, 4), np.complex64)), 2)),
    ApiCase("api_tensor_sparse", lambda: u(_tensor(IMG).to_sparse(), 2), like_torch(IMG, 2)),
    ApiCase("api_tensor_nested", lambda: u(__import__("torch").nested.nested_tensor(
        [_tensor(IMG[0]), _tensor(IMG[1, :, :5])]), 2)),
    ApiCase("api_tensor_meta", lambda: u(_tensor(IMG).to("meta"), 2), lambda r: (tuple(r.shape) == (2, 12, 80)) or
            pytest.fail(str(r.shape))),
    ApiCase("api_tensor_requires_grad_cpu_engine", lambda: u(_tensor(IMG).requires_grad_(True), 2, engine="cpu"),
            lambda r: (r.requires_grad or pytest.fail("the gradient was lost"))
            and same_as(reference_unfold(IMG, 2))(r.detach().numpy()), True),
    ApiCase("api_tensor_bfloat16_roundtrip", lambda: roundtrip(_tensor(IMG).to(__import__("torch").bfloat16)),
            lambda r: np.testing.assert_array_equal(r.float().numpy(), _tensor(IMG).to(r.dtype).float().numpy()),
            True),
    ApiCase("api_masked_array", lambda: u(np.ma.array(IMG, mask=IMG > 0.5), 2), like_torch(IMG, 2)),
    ApiCase("api_memoryview", lambda: u(memoryview(IMG), 2), like_torch(IMG, 2)),
]


def _tensor(values: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(values).copy())
# fmt: on


#: How long an API call may take before it counts as blocked.
API_TIMEOUT = 5.0


def call_unblocked(call: Callable[[], Any], directory: Path) -> Any:
    """``call()`` in a thread; if it is still running after :data:`API_TIMEOUT` (blocked opening a
    FIFO under ``directory``), open the FIFOs' other ends to release it, then fail the case."""
    import threading

    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(("result", call()))
        except BaseException as error:  # handed to the test's thread as it is
            outcome.append(("error", error))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(API_TIMEOUT)
    if thread.is_alive():
        for root, _, files in os.walk(directory):
            for name in files:
                path = Path(root) / name
                if stat.S_ISFIFO(os.lstat(path).st_mode):
                    for flags in (os.O_WRONLY | os.O_NONBLOCK, os.O_RDONLY | os.O_NONBLOCK):
                        with contextlib.suppress(OSError):
                            os.close(os.open(path, flags))
        thread.join(API_TIMEOUT)
        pytest.fail(f"the call blocked for {API_TIMEOUT} s (on a FIFO?)")
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


@pytest.mark.parametrize("api", _params(API_CASES))
def test_api_case(api: ApiCase, tmp_path: Path) -> None:
    _API_TMP[:] = [tmp_path]
    try:
        result = call_unblocked(api.call, tmp_path)
    except patchfold.PatchfoldError:
        assert not api.must_succeed, "refused a legal call"
        return
    except Exception as error:  # the point: no other exception type may escape
        pytest.fail(f"{type(error).__name__} escaped instead of PatchfoldError: {error}")
    assert api.expect is not None, f"accepted a call that must be refused (returned {type(result).__name__})"
    api.expect(result)
    assert not (tmp_path / "ds" / "PWNED").exists(), "a pickle was executed"


# ----- family 4: reader fuzz ----------------------------------------------------------------------------
FUZZ_COUNT = 20


@dataclass(frozen=True)
class Fuzz:
    """Variant ``index`` of one reader's input file ``name`` (in the work directory, after ``base``
    built the rest): ``data`` itself, or derived from the corpus file ``source``. The command
    ``cmd`` must give a result or one clean Error line."""

    id: str
    name: str
    cmd: str
    data: bytes = b""
    source: str = ""
    index: int = 0
    base: Setup | None = None
    outputs: tuple[str, ...] = NPY_OUT

    def bytes_for(self, corpus: Path) -> bytes:
        if not self.source:
            return self.data
        text = (corpus / self.source).read_bytes()
        seed = sum(map(ord, self.id[:-3]))
        flips = FUZZ_COUNT * 3 // 5
        if self.index < flips:
            return hd.byte_flips(text, flips, seed)[self.index]
        return hd.truncations(text, FUZZ_COUNT - flips, seed + 1)[self.index - flips]


# fmt: off
def fuzz_cases() -> list[Fuzz]:
    cases: list[Fuzz] = []
    png = hd.png_bytes(hd.rgb(7, (6, 5)))
    tif = hd.tiff_bytes(hd.gray(8, (6, 5)))
    npy = hd.npy_bytes(np.random.default_rng(9).random((2, 6, 5), dtype=np.float32))
    unfold = "unfold {w}/NAME -k 2 -o {w}/out.npy --no-progress"
    readers = [  # reader, file, bytes, command, outputs, first byte to flip (after the PNG's IHDR)
        ("png", "f.png", png, unfold, NPY_OUT, 33),
        ("png_stats", "f.png", png, "stats {w}/NAME -k 2", (), 0),
        ("tif", "f.tif", tif, unfold, NPY_OUT, 0),
        ("tif_stats", "f.tif", tif, "stats {w}/NAME -k 2", (), 0),
        ("npy", "f.npy", npy, unfold, NPY_OUT, 0),
        ("npy_fold", "f.npy", npy, "fold {w}/NAME -k 2 --output-size 3,4 -o {w}/out.npy --no-progress", NPY_OUT, 0),
    ]
    for seed, (reader, name, data, cmd, outputs, start) in enumerate(readers):
        stop = hd.npy_header_end(data) + 8 if name.endswith(".npy") else len(data)
        variants = hd.byte_flips(data, 12, 100 + seed, start, stop) + hd.truncations(data, FUZZ_COUNT - 12, 200 + seed)
        cases += [Fuzz(f"fuzz_{reader}_{i:02d}", name, cmd.replace("NAME", name), data=v, outputs=outputs)
                  for i, v in enumerate(variants)]
    json_readers = [  # reader, file, corpus source, command, base, outputs
        ("sidecar", "q.json", "p.json", "fold {w}/q.npy -o {w}/out.png --no-progress", copy("p.npy", "q.npy"),
         ("out.png",)),
        ("tile_manifest", "t/manifest.json", "tiles/manifest.json", "untile {w}/t -o {w}/out.png --no-progress",
         copy("tiles", "t"), ("out.png",)),
        ("dataset_manifest", "ds/manifest.json", "ds/manifest.json",
         f"batch unfold {{c}}/g.png {{c}}/rgb.png {DS_ARGS} -o {{w}}/ds --no-progress", copy("ds"), ("ds/*",)),
    ]
    for reader, name, source, cmd, base, outputs in json_readers:
        cases += [Fuzz(f"fuzz_{reader}_{i:02d}", name, cmd, source=source, index=i, base=base, outputs=outputs)
                  for i in range(FUZZ_COUNT)]
    return cases


FUZZ_CASES = fuzz_cases()
# fmt: on


@pytest.mark.parametrize("fuzz", _params(FUZZ_CASES))
def test_reader_fuzz(fuzz: Fuzz, corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name in SENTINELS:
        (work / name).write_bytes(hd.SENTINEL)
    if fuzz.base is not None:
        fuzz.base(corpus, work)
    (work / fuzz.name).write_bytes(fuzz.bytes_for(corpus))
    before = snapshot(work)
    args = Case(fuzz.id, fuzz.cmd).args(corpus, work)
    outcome = run_in_process(args, work)
    check_clean(outcome, (0, 1, 2), batch=args[0] == "batch")
    assert leftovers(work) == [], leftovers(work)
    changed = changes(before, snapshot(work))
    if outcome.code != 0:
        assert not changed, f"a failed run changed the work directory: {changed}"
    else:
        assert all(_matches(k, fuzz.outputs) for k in changed), changed
    if fuzz.name.startswith("ds/"):  # whatever the re-run did, the dataset loads or is refused cleanly
        with contextlib.suppress(patchfold.PatchfoldError):
            patchfold.load_dataset(work / "ds")


def test_matrix_ids_are_unique_and_large() -> None:
    ids = [c.id for c in (*COMMAND_CASES, *API_CASES, *FUZZ_CASES)]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(COMMAND_CASES) >= 150 and len(API_CASES) >= 50 and len(FUZZ_CASES) >= 6 * FUZZ_COUNT
    procedures = {name for name in globals() if name.startswith("test_")}
    assert not set(XFAIL) - set(ids) - procedures, sorted(set(XFAIL) - set(ids) - procedures)


# ----- family 2: procedures ----------------------------------------------------------------------------
def procedure(test: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a procedure test xfail when :data:`XFAIL` lists it."""
    if test.__name__ in XFAIL:
        return pytest.mark.xfail(reason=XFAIL[test.__name__], strict=True)(test)
    return test


def _images(folder: Path, count: int, size: int = 24, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size + i % 3, 3), dtype=np.uint8)).save(folder / f"i{i:03d}.png")


def _files(directory: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(directory).items() if isinstance(v, bytes)}


def _batch(src: Path, out: Path, *extra: str) -> Outcome:
    return run_in_process(
        ["batch", "unfold", str(src), "-k", "4", "-s", "2", "-o", str(out), "--no-progress", "--workers", "1", *extra],
        src.parent,
    )


def _complete_and_equal(directory: Path, reference: Path) -> None:
    assert patchfold.load_dataset(directory).manifest["complete"] is True
    assert _files(directory) == _files(reference), "the dataset differs from a fresh run"


@procedure
def test_rerun_of_finished_dataset_is_a_no_op_twice(tmp_path: Path) -> None:
    _images(tmp_path / "src", 5)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
    finished = _files(tmp_path / "ds")
    for attempt in (1, 2):
        check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
        assert _files(tmp_path / "ds") == finished, f"re-run {attempt} changed the finished dataset"
        assert patchfold.load_dataset(tmp_path / "ds").manifest["complete"] is True


@needs_command
@procedure
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    _images(tmp_path / "src", 40, size=72)
    params = ["-k", "4", "-s", "1", "--no-progress", "--workers", "1"]
    process = subprocess.Popen(
        [str(COMMAND), "batch", "unfold", "src", "-o", "ds", *params],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=command_env(),
        start_new_session=True,
    )
    done = tmp_path / "ds" / ".done"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None and not (done.is_dir() and len(os.listdir(done)) >= 3):
        time.sleep(0.002)
    running = process.poll() is None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=20)
    assert running, "the run ended before it could be killed: give it more work"
    assert 3 <= len(os.listdir(done)) < 40, f"killed with {len(os.listdir(done))} of 40 images done"
    with pytest.raises(patchfold.PatchfoldError):
        patchfold.load_dataset(tmp_path / "ds")  # a killed run is not complete
    # the manifest records sources as given: resume with the same relative ones
    check_clean(run_in_process(["batch", "unfold", "src", "-o", "ds", *params], tmp_path), (0,), batch=True)
    check_clean(run_in_process(["batch", "unfold", "src", "-o", "fresh", *params], tmp_path), (0,), batch=True)
    assert leftovers(tmp_path) == []
    _complete_and_equal(tmp_path / "ds", tmp_path / "fresh")


def _damaged_rerun(tmp_path: Path, damage: Callable[[Path], Any], shard: str) -> None:
    """A finished dataset, damaged, then the same command again: the dataset is rebuilt (then it
    equals a fresh run), or the run fails naming the shard; never 'complete' with a broken shard."""
    _images(tmp_path / "src", 6)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds", "--shard-size", "20KB"), (0,), batch=True)
    shutil.copytree(tmp_path / "ds", tmp_path / "reference")
    damage(tmp_path / "ds" / shard)
    again = _batch(tmp_path / "src", tmp_path / "ds", "--shard-size", "20KB")
    check_clean(again, (0, 1), batch=True)
    if again.code == 0:
        _complete_and_equal(tmp_path / "ds", tmp_path / "reference")
    else:
        assert shard in error_lines(again.stderr)[0] or shard in again.stderr, again.report
        with pytest.raises(patchfold.PatchfoldError):
            patchfold.load_dataset(tmp_path / "ds")


@procedure
def test_truncated_shard_is_not_reported_complete(tmp_path: Path) -> None:
    _damaged_rerun(tmp_path, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "shard-00001.npy")


@procedure
def test_deleted_shard_is_not_reported_complete(tmp_path: Path) -> None:
    _damaged_rerun(tmp_path, Path.unlink, "shard-00001.npy")


@procedure
def test_zeroed_shard_header_is_not_reported_complete(tmp_path: Path) -> None:
    _damaged_rerun(tmp_path, lambda p: p.write_bytes(bytes(128) + p.read_bytes()[128:]), "shard-00000.npy")


@procedure
def test_deleted_index_is_rebuilt_or_refused(tmp_path: Path) -> None:
    _images(tmp_path / "src", 4)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
    shutil.copytree(tmp_path / "ds", tmp_path / "reference")
    (tmp_path / "ds" / "index.npy").unlink()
    again = _batch(tmp_path / "src", tmp_path / "ds")
    check_clean(again, (0, 1), batch=True)
    if again.code == 0:
        _complete_and_equal(tmp_path / "ds", tmp_path / "reference")
    else:
        with pytest.raises(patchfold.PatchfoldError):
            patchfold.load_dataset(tmp_path / "ds")


@procedure
def test_replaced_source_is_redone(tmp_path: Path) -> None:
    _images(tmp_path / "src", 4)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
    image = tmp_path / "src" / "i002.png"
    Image.fromarray(255 - pixels(image)).save(image)  # same size and mode, other pixels
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
    check_clean(_batch(tmp_path / "src", tmp_path / "fresh"), (0,), batch=True)
    fresh, resumed = patchfold.load_dataset(tmp_path / "fresh"), patchfold.load_dataset(tmp_path / "ds")
    assert len(fresh) == len(resumed)
    np.testing.assert_array_equal(np.concatenate(resumed.shards), np.concatenate(fresh.shards))


@procedure
def test_replaced_source_of_a_killed_run_is_redone(tmp_path: Path) -> None:
    """A run stopped with one image done (its marker there, the rest pending); that image is then
    replaced by other pixels: the resumed dataset must hold the new pixels' patches."""
    from patchfold.datasets.build import DONE_DIR

    _images(tmp_path / "src", 3)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
    data = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    data["complete"] = False  # as a killed run leaves it: image 0 marked done, the others not
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(data))
    (tmp_path / "ds" / DONE_DIR).mkdir(exist_ok=True)
    (tmp_path / "ds" / DONE_DIR / f"{0:08d}").touch()
    image = tmp_path / "src" / "i000.png"
    Image.fromarray(255 - pixels(image)).save(image)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0, 1), batch=True)
    check_clean(_batch(tmp_path / "src", tmp_path / "fresh"), (0,), batch=True)
    fresh = patchfold.load_dataset(tmp_path / "fresh")
    try:
        resumed = patchfold.load_dataset(tmp_path / "ds")
    except patchfold.PatchfoldError:
        return  # refused as incomplete: acceptable, never wrong data
    np.testing.assert_array_equal(np.concatenate(resumed.shards), np.concatenate(fresh.shards))


DIFFERENT_PARAMETERS = [
    pytest.param(("-k", "5"), id="kernel"),
    pytest.param(("-s", "3"), id="stride"),
    pytest.param(("-p", "1"), id="padding"),
    pytest.param(("--padding-mode", "reflect", "-p", "1"), id="padding_mode"),
    pytest.param(("--dtype", "float32"), id="dtype"),
    pytest.param(("--channels", "1"), id="channels"),
    pytest.param(("--shard-size", "1KB"), id="shard_size"),
    pytest.param(("-d", "2"), id="dilation"),
]


@pytest.mark.parametrize("change", DIFFERENT_PARAMETERS)
def test_different_parameters_into_existing_dataset_are_refused(change: tuple[str, ...], tmp_path: Path) -> None:
    _images(tmp_path / "src", 3)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
    before = snapshot(tmp_path)
    args = [
        "batch",
        "unfold",
        str(tmp_path / "src"),
        "-k",
        "4",
        "-s",
        "2",
        "-o",
        str(tmp_path / "ds"),
        "--no-progress",
        "--workers",
        "1",
    ]
    for i in range(0, len(change), 2):  # the change replaces the option where it is given
        if change[i] in args:
            args[args.index(change[i]) + 1] = change[i + 1]
        else:
            args += [change[i], change[i + 1]]
    refused = run_in_process(args, tmp_path)
    check_clean(refused, (1,), batch=True)
    assert snapshot(tmp_path) == before, "a refused run touched the existing dataset"


def test_extra_image_into_existing_dataset_is_refused(tmp_path: Path) -> None:
    _images(tmp_path / "src", 3)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
    _images(tmp_path / "more", 1, seed=9)
    before = snapshot(tmp_path)
    refused = run_in_process(
        [
            "batch",
            "unfold",
            str(tmp_path / "src"),
            str(tmp_path / "more"),
            "-k",
            "4",
            "-s",
            "2",
            "-o",
            str(tmp_path / "ds"),
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    check_clean(refused, (1,), batch=True)
    assert snapshot(tmp_path) == before


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


@needs_command
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the worker processes")
@procedure
def test_sigint_during_pool_exits_cleanly(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) at twenty moments of a
    ``batch unfold --workers 2``, timed from the moment its first child process appears (0 to
    0.3 s after it), so that the interrupts land while the pool starts and while it works:
    each run exits non-zero within a few seconds, with one Error line and no traceback from the
    command or its children, and leaves no temporary file."""
    _images(tmp_path / "src", 30, size=64)
    problems = []
    for attempt, delay in enumerate(0.015 * i for i in range(20)):
        out = tmp_path / f"ds{attempt}"
        process = subprocess.Popen(
            [str(COMMAND), "batch", "unfold", "src", "-k", "4", "-s", "1", "-o", out.name, "--no-progress",
             "--workers", "2"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=command_env(),
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None and not _children(process.pid):
            time.sleep(0.001)
        time.sleep(delay)
        sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            problems.append(f"attempt {attempt} (delay {delay}): hung after SIGINT")
            continue
        took = time.monotonic() - sent
        if process.returncode == 0:
            continue  # finished before the signal: nothing to interrupt
        if "Traceback" in stderr or "Fatal Python error" in stderr or len(error_lines(stderr)) != 1 or took > 5:
            problems.append(
                f"attempt {attempt} (delay {delay}): exit {process.returncode} after {took:.1f} s\n{stderr[-1500:]}"
            )
        if leftovers(tmp_path):
            problems.append(f"attempt {attempt}: left {leftovers(tmp_path)}")
    assert not problems, "\n".join(problems)


@procedure
def test_failed_image_is_retried_after_it_is_fixed(tmp_path: Path) -> None:
    """One image's pixel data is cut short (its header is fine): the run finishes the others and
    fails with one Error line, the dataset is incomplete; the image is then replaced by a valid one
    of the same size and the same command finishes the dataset as a fresh run would."""
    _images(tmp_path / "src", 3)
    broken = tmp_path / "src" / "i001.png"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (1,), batch=True)
    with pytest.raises(patchfold.PatchfoldError):
        patchfold.load_dataset(tmp_path / "ds")
    broken.write_bytes(good)
    check_clean(_batch(tmp_path / "src", tmp_path / "ds"), (0,), batch=True)
    check_clean(_batch(tmp_path / "src", tmp_path / "fresh"), (0,), batch=True)
    fresh, resumed = patchfold.load_dataset(tmp_path / "fresh"), patchfold.load_dataset(tmp_path / "ds")
    np.testing.assert_array_equal(np.concatenate(resumed.shards), np.concatenate(fresh.shards))
    np.testing.assert_array_equal(resumed.index, fresh.index)


@procedure
def test_batch_tiles_rerun_and_retry(tmp_path: Path) -> None:
    """batch tiles: a re-run of a finished run changes nothing; a failed image is retried (and
    done) once it is fixed, the images already done are kept byte for byte."""
    _images(tmp_path / "src", 3)
    broken = tmp_path / "src" / "i002.png"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])
    args = ["batch", "tiles", str(tmp_path / "src"), "-k", "8", "-s", "8", "-o", str(tmp_path / "bt"), "--no-progress",
            "--workers", "1"]  # fmt: skip
    check_clean(run_in_process(args, tmp_path), (1,), batch=True)
    first = _files(tmp_path / "bt")
    broken.write_bytes(good)
    check_clean(run_in_process(args, tmp_path), (0,), batch=True)
    second = _files(tmp_path / "bt")
    kept = {k: v for k, v in first.items() if k.startswith(("000000_", "000001_"))}
    assert kept and all(second[k] == v for k, v in kept.items()), "tiles already written were changed"
    assert any(k.startswith("000002_") for k in second), "the fixed image was not tiled"
    check_clean(run_in_process(args, tmp_path), (0,), batch=True)
    assert _files(tmp_path / "bt") == second, "a re-run of a finished batch tiles changed it"
