"""Hostile and bad inputs through the command line: one matrix of failing runs, in-process.

Every case in :data:`HOSTILE_CASES` must fail the way the contract says: exit 2 (a click usage error
naming the option) for bad option values, exit 1 with exactly one ``Error: `` line on stderr for
runtime failures, never a traceback or an unhandled exception, the Error line naming what is at
fault; and the run must leave the working directory exactly as it found it (no output, no ``.part``
temporary, pre-existing outputs byte-for-byte intact). The cases run in-process (click's
CliRunner); a real ``patchfold`` process runs only where the process is the point:
:data:`FULL_DISK_CASES` (a file-size limit on the process) and :data:`SIGNAL_CASES` (SIGINT and
SIGTERM during a long streamed unfold: exit 130, nothing left). A few positive cases (NaN/inf
pass-through, huge but legal values) live here too.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, command_env, describe, error_lines, invoke, ok, ok_json
from helpers_ref import reference_unfold
from PIL import Image

needs_command = pytest.mark.skipif(not HAS_COMMAND, reason="the patchfold command is not installed beside this Python")


def _cuda_available() -> bool:
    """torch.cuda.is_available(), importing torch only where there is NVIDIA hardware at all."""
    if not (os.path.exists("/dev/nvidia0") or os.path.isdir("/proc/driver/nvidia/gpus")):
        return False
    import torch

    return bool(torch.cuda.is_available())


HAS_CUDA = _cuda_available()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
not_root = pytest.mark.skipif(IS_ROOT, reason="root ignores directory permissions")

#: Bytes of every pre-existing output a case starts with; a failed run must leave them as they are.
SENTINEL = b"pre-existing output: a failed patchfold run must not touch me\n"
SENTINELS = ("out.npy", "out.json", "out.png", "out_0000.png", "out.tif")
#: Marker the pickled payload in ``evil_pickle.npy`` would create if it were ever unpickled.
PWNED = "PWNED_BY_PICKLE"


# ----- the corpus of bad inputs (built once) ------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A 69-byte PNG whose header claims ``width × height`` grey pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


class _OpenOnUnpickle:
    """Unpickling this creates (opens for writing) a file: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def evil_pickle_npy(path: Path, marker: Path) -> None:
    np.save(path, np.array([_OpenOnUnpickle(marker), 1], dtype=object), allow_pickle=True)


def _sidecar_variant(corpus: Path, name: str, change: Callable[[dict[str, Any]], Any] | str | bytes) -> None:
    shutil.copy(corpus / "p.npy", corpus / f"{name}.npy")
    side = json.loads((corpus / "p.json").read_text())
    if isinstance(change, bytes):
        (corpus / f"{name}.json").write_bytes(change)
    elif isinstance(change, str):
        (corpus / f"{name}.json").write_text(change)
    else:
        change(side)
        (corpus / f"{name}.json").write_text(json.dumps(side))


def _tiles_variant(corpus: Path, name: str, change: Callable[[Path, dict[str, Any]], None]) -> None:
    target = corpus / name
    shutil.copytree(corpus / "tiles", target)
    manifest = json.loads((target / "manifest.json").read_text())
    change(target, manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))


def build_corpus(corpus: Path) -> None:
    rng = np.random.default_rng(1234)
    gray = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(gray).save(corpus / "img_gray.png")
    Image.fromarray(rgb).save(corpus / "img_rgb.png")
    Image.fromarray(rgb[:16]).save(corpus / "img_rgb_short.png")
    big = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(big).save(corpus / "whole.png")
    png = (corpus / "whole.png").read_bytes()
    (corpus / "truncated.png").write_bytes(png[: len(png) // 2])
    Image.fromarray(big).save(corpus / "whole.jpg", quality=90)
    jpg = (corpus / "whole.jpg").read_bytes()
    (corpus / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (corpus / "header_only.jpg").write_bytes(jpg[:20])
    (corpus / "words.png").write_text("this is a text file, not a picture\n")
    (corpus / "empty.png").write_bytes(b"")
    (corpus / "bomb.png").write_bytes(bomb_png(100_000, 100_000))
    import tifffile  # an 'La' (grey + premultiplied alpha) TIFF: Pillow opens it as mode 'La'

    tifffile.imwrite(
        corpus / "la_mode.png",
        rng.integers(0, 256, (8, 8, 2), dtype=np.uint8),
        photometric="minisblack",
        extrasamples=[1],
        planarconfig="contig",
    )
    (corpus / "no_images").mkdir()
    (corpus / "no_images" / "readme.txt").write_text("no pictures here\n")
    (corpus / "empty_dir").mkdir()

    # .npy files
    evil_pickle_npy(corpus / "evil_pickle.npy", corpus / PWNED)
    (corpus / "raw_pickle.npy").write_bytes(pickle.dumps({"not": "an array"}))
    np.save(corpus / "rank6.npy", np.zeros((1, 1, 1, 1, 4, 4), np.float32))
    np.savez(corpus / "archive.npz", a=np.zeros((4, 4), np.float32))
    (corpus / "archive.npz").rename(corpus / "archive.npy")
    np.save(corpus / "complex.npy", np.zeros((8, 8), np.complex64))
    np.save(corpus / "strings.npy", np.array(["a", "b"]))
    np.save(corpus / "zero_size.npy", np.zeros((0, 8), np.float32))
    np.save(corpus / "whole.npy", rng.random((1, 1, 64, 64), dtype=np.float32))
    (corpus / "short_data.npy").write_bytes((corpus / "whole.npy").read_bytes()[:1000])

    # patch matrices with sidecars (p: one image; p2: two images)
    ok("unfold", corpus / "img_gray.png", "-k", 4, "-s", 2, "-o", corpus / "p.npy", "--no-progress")
    ok("unfold", corpus / "img_rgb.png", "-k", 4, "-s", 2, "-o", corpus / "p_rgb.npy", "--no-progress")
    ok(
        "unfold",
        corpus / "img_gray.png",
        corpus / "img_gray.png",
        "-k",
        4,
        "-s",
        2,
        "-o",
        corpus / "p2.npy",
        "--no-progress",
    )
    shutil.copy(corpus / "p.npy", corpus / "nosidecar.npy")
    _sidecar_variant(corpus, "side_badjson", '{"kernel_size": [4, 4], ')
    _sidecar_variant(corpus, "side_version", lambda s: s.update(version=99))
    _sidecar_variant(corpus, "side_format", lambda s: s.update(format="someone-elses-format"))
    _sidecar_variant(corpus, "side_shape", lambda s: s.update(input_shape=[1, 1, 20, 32]))
    _sidecar_variant(corpus, "side_kabc", lambda s: s.update(kernel_size="abc"))
    _sidecar_variant(corpus, "side_negstride", lambda s: s.update(stride=[-2, 2]))
    _sidecar_variant(corpus, "side_binary", b"\xff\xfe\x00{garbage")
    _sidecar_variant(corpus, "side_list", "[1, 2, 3]")
    _sidecar_variant(corpus, "side_nokernel", lambda s: s.pop("kernel_size"))
    _sidecar_variant(corpus, "side_noshape", lambda s: s.pop("input_shape"))
    _sidecar_variant(corpus, "side_nodtype", lambda s: s.pop("input_dtype"))
    _sidecar_variant(corpus, "side_noformat", lambda s: s.pop("format"))
    np.save(corpus / "short.npy", np.load(corpus / "p.npy")[:, :, :-1])  # one block fewer than p.json says
    shutil.copy(corpus / "p.json", corpus / "short.json")

    # tile directories (3 × 4 tiles of 8 × 8)
    ok("tiles", corpus / "img_gray.png", "-k", 8, "-s", 8, "-o", corpus / "tiles", "--no-progress")
    first = "img_gray_r000_c000.png"
    second = "img_gray_r000_c001.png"

    def missing(directory: Path, manifest: dict[str, Any]) -> None:
        (directory / second).unlink()

    def wrong_size(directory: Path, manifest: dict[str, Any]) -> None:
        Image.fromarray(np.zeros((8, 7), np.uint8)).save(directory / second)

    def escape_relative(directory: Path, manifest: dict[str, Any]) -> None:
        # The real tile now lies OUTSIDE the directory, where '../<name>' would find it.
        (directory / first).rename(corpus / first)
        manifest["tiles"][0]["file"] = f"../{first}"

    def escape_absolute(directory: Path, manifest: dict[str, Any]) -> None:
        manifest["tiles"][0]["file"] = "/etc/passwd"

    def tiles_not_a_list(directory: Path, manifest: dict[str, Any]) -> None:
        manifest["tiles"] = 12

    def stride_zero(directory: Path, manifest: dict[str, Any]) -> None:
        manifest["stride"] = [0, 8]

    _tiles_variant(corpus, "tiles_missing", missing)
    _tiles_variant(corpus, "tiles_wrong_size", wrong_size)
    _tiles_variant(corpus, "tiles_escape", escape_relative)
    _tiles_variant(corpus, "tiles_passwd", escape_absolute)
    _tiles_variant(corpus, "tiles_not_a_list", tiles_not_a_list)
    _tiles_variant(corpus, "tiles_stride_zero", stride_zero)
    shutil.copytree(corpus / "tiles", corpus / "tiles_bad_json")
    (corpus / "tiles_bad_json" / "manifest.json").write_text("{ not json")

    # The hostile files are what they claim to be, so that the cases using them can fail.
    probe = corpus / "probe.npy"
    evil_pickle_npy(probe, corpus / "probe_marker")
    np.load(probe, allow_pickle=True)
    assert (corpus / "probe_marker").exists(), "the hostile pickle does not run code when unpickled"
    probe.unlink()
    (corpus / "probe_marker").unlink()
    bomb = (corpus / "bomb.png").read_bytes()
    assert bomb[12:16] == b"IHDR" and struct.unpack(">II", bomb[16:24]) == (100_000, 100_000) and len(bomb) < 200
    with Image.open(corpus / "la_mode.png") as image:
        assert image.mode == "La"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile_corpus")
    build_corpus(directory)
    return directory


# ----- running the command -------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """How a run ended: exit code, stdout, stderr, and a description for failure messages."""

    code: int
    stdout: str
    stderr: str
    report: str


def run_in_process(args: list[str]) -> Outcome:
    """``patchfold ARGS`` through click's CliRunner; an exception escaping the command fails here."""
    result = invoke(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), describe(result)
    return Outcome(result.exit_code, result.stdout, result.stderr, describe(result))


#: Runs argv[2:]; when argv[1] >= 0, writes past argv[1] bytes fail with EFBIG (a full disk,
#: simulated): the limit and the ignored SIGXFSZ survive exec. SIGINT is reset to its default, which
#: a pytest started in the background (SIGINT ignored) would otherwise pass on to the command. (A
#: wrapper rather than preexec_fn, which is unsafe in a process with threads.)
_LIMITED_EXEC = (
    "import os, resource, signal, sys; limit = int(sys.argv[1]); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit >= 0 and resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def command_line(args: list[str], fsize: int = -1) -> list[str]:
    """The real ``patchfold ARGS``, its file size limited to ``fsize`` bytes (-1: unlimited)."""
    return [sys.executable, "-c", _LIMITED_EXEC, str(fsize), str(COMMAND), *args]


def run_process(args: list[str], cwd: Path, fsize: int) -> Outcome:
    done = subprocess.run(
        command_line(args, fsize),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=command_env(COLUMNS="200"),
        check=False,
    )
    report = f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    return Outcome(done.returncode, done.stdout, done.stderr, report)


def snapshot(directory: Path) -> dict[str, Any]:
    """Every path under ``directory`` with its bytes (files) or None (directories)."""
    result: dict[str, Any] = {}
    for path in sorted(directory.rglob("*")):
        result[str(path.relative_to(directory))] = None if path.is_dir() else path.read_bytes()
    return result


def names(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


# ----- the matrix ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One hostile run: ``args`` (``{c}`` corpus, ``{t}`` working directory), the exit code the
    contract asks for, and fragments the Error line must hold (a tuple: any one of them)."""

    id: str
    args: tuple[str, ...]
    code: int
    fragments: tuple[str | tuple[str, ...], ...]
    setup: Callable[[Path], None] | None = None
    marks: tuple[Any, ...] = ()
    check: Callable[[Path, Path], None] | None = field(default=None, compare=False)


def _mkdir(*parts: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        tmp.joinpath(*parts).mkdir(parents=True)

    return setup


def _file(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(SENTINEL)

    return setup


def _readonly_dir(tmp: Path) -> None:
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)


def _non_empty_dir(tmp: Path) -> None:
    (tmp / "tiles_out").mkdir()
    (tmp / "tiles_out" / "keep.txt").write_bytes(SENTINEL)


def _pickle_not_run(corpus: Path, tmp: Path) -> None:
    assert not (corpus / PWNED).exists(), "the pickled payload was executed"


def _nothing_read_outside(corpus: Path, tmp: Path) -> None:
    assert (corpus / "img_gray_r000_c000.png").exists(), "the tile outside the directory was moved or deleted"


C, T = "{c}", "{t}"
GRAY, RGB = f"{C}/img_gray.png", f"{C}/img_rgb.png"
OUT = f"{T}/out.npy"
K4 = ("-k", "4")

HOSTILE_CASES: list[Case] = [
    # --- unreadable or missing inputs: exit 1 --------------------------------------------------
    Case("missing_file", ("unfold", f"{C}/nope.png", *K4, "-o", OUT), 1, ("nope.png", "does not exist")),
    Case("directory_without_images", ("unfold", f"{C}/no_images", *K4, "-o", OUT), 1, ("no_images", "no images")),
    Case("empty_directory", ("unfold", f"{C}/empty_dir", *K4, "-o", OUT), 1, ("empty_dir", "no images")),
    Case("empty_file", ("unfold", f"{C}/empty.png", *K4, "-o", OUT), 1, ("empty.png", "empty")),
    Case(
        "truncated_png", ("unfold", f"{C}/truncated.png", *K4, "-o", OUT), 1, ("truncated.png", "corrupt or truncated")
    ),
    Case("truncated_jpeg", ("unfold", f"{C}/truncated.jpg", *K4, "-o", OUT), 1, ("truncated.jpg", "truncated")),
    Case(
        "jpeg_header_only", ("unfold", f"{C}/header_only.jpg", *K4, "-o", OUT), 1, ("header_only.jpg", "not an image")
    ),
    Case("text_named_png", ("unfold", f"{C}/words.png", *K4, "-o", OUT), 1, ("words.png", "not an image")),
    Case(
        "text_named_png_show_grid",
        ("show", "grid", f"{C}/words.png", *K4, "-o", f"{T}/out.png"),
        1,
        ("words.png", "not an image"),
    ),
    Case(
        "truncated_png_tiles",
        ("tiles", f"{C}/truncated.png", *K4, "-o", f"{T}/tiles_out"),
        1,
        ("truncated.png", "corrupt or truncated"),
    ),
    Case("over_max_pixels", ("unfold", RGB, *K4, "--max-pixels", "100", "-o", OUT), 1, ("img_rgb.png", "pixel limit")),
    Case("over_max_pixels_stats", ("stats", RGB, *K4, "--max-pixels", "100"), 1, ("img_rgb.png", "limit of 100")),
    Case("decompression_bomb_unfold", ("unfold", f"{C}/bomb.png", *K4, "-o", OUT), 1, ("bomb.png", "pixel limit")),
    Case("decompression_bomb_stats", ("stats", f"{C}/bomb.png", *K4), 1, ("bomb.png", "limit")),
    Case(
        "mismatched_sizes",
        ("unfold", RGB, f"{C}/img_rgb_short.png", *K4, "-o", OUT),
        1,
        ("agree in size", "img_rgb.png' 32x24 with 3 channel(s)", "img_rgb_short.png' 32x16 with 3 channel(s)"),
    ),
    Case(
        "mismatched_channels",
        ("unfold", GRAY, RGB, GRAY, *K4, "-o", OUT),
        1,
        ("img_gray.png' 32x24 with 1 channel(s)", "img_rgb.png' 32x24 with 3 channel(s)"),
    ),
    Case("mismatched_channels_stats", ("stats", GRAY, RGB, *K4), 1, ("img_gray.png", "img_rgb.png", "agree")),
    Case(
        "unsupported_image_mode",
        ("unfold", f"{C}/la_mode.png", *K4, "-o", OUT),
        1,
        ("la_mode.png", "'La'", "does not read"),
    ),
    # --- hostile .npy files --------------------------------------------------------------------
    Case(
        "npy_object_dtype_pickle",
        ("unfold", f"{C}/evil_pickle.npy", "-k", "1", "-o", OUT),
        1,
        ("evil_pickle.npy", "pickle"),
        check=_pickle_not_run,
    ),
    Case(
        "npy_object_dtype_pickle_stats",
        ("stats", f"{C}/evil_pickle.npy", "-k", "1"),
        1,
        ("evil_pickle.npy", "pickle"),
        check=_pickle_not_run,
    ),
    Case(
        "npy_object_dtype_pickle_fold",
        ("fold", f"{C}/evil_pickle.npy", "-k", "1", "--output-size", "1,2", "-o", OUT),
        1,
        ("evil_pickle.npy", "pickle"),
        check=_pickle_not_run,
    ),
    Case(
        "raw_pickle_named_npy",
        ("unfold", f"{C}/raw_pickle.npy", "-k", "1", "-o", OUT),
        1,
        ("raw_pickle.npy", "not a .npy"),
    ),
    Case("npy_rank_6", ("unfold", f"{C}/rank6.npy", "-k", "1", "-o", OUT), 1, ("rank6.npy", "rank 6")),
    Case("npz_renamed_npy", ("unfold", f"{C}/archive.npy", "-k", "1", "-o", OUT), 1, ("archive.npy", ".npy")),
    Case("npy_complex_dtype", ("unfold", f"{C}/complex.npy", "-k", "1", "-o", OUT), 1, ("complex.npy", "complex64")),
    Case("npy_string_dtype", ("unfold", f"{C}/strings.npy", "-k", "1", "-o", OUT), 1, ("strings.npy", "dtype")),
    Case("npy_zero_size", ("unfold", f"{C}/zero_size.npy", "-k", "1", "-o", OUT), 1, ("zero_size.npy", "empty")),
    Case(
        "npy_data_truncated",
        ("unfold", f"{C}/short_data.npy", "-k", "1", "-o", OUT),
        1,
        ("short_data.npy", "not a valid .npy"),
    ),
    # --- sidecars ------------------------------------------------------------------------------
    Case(
        "sidecar_missing_no_kernel",
        ("fold", f"{C}/nosidecar.npy", "-o", f"{T}/out.png"),
        2,
        ("nosidecar.json", "no sidecar", "-k/--kernel-size"),
    ),
    Case(
        "sidecar_missing_no_output_size",
        ("fold", f"{C}/nosidecar.npy", *K4, "-s", "2", "-o", f"{T}/out.png"),
        2,
        ("nosidecar.json", "--size"),
    ),
    Case(
        "sidecar_malformed_json",
        ("fold", f"{C}/side_badjson.npy", "-o", f"{T}/out.png"),
        1,
        ("side_badjson.json", "not valid JSON"),
    ),
    Case(
        "sidecar_wrong_version",
        ("fold", f"{C}/side_version.npy", "-o", f"{T}/out.png"),
        1,
        ("side_version.json", "version 99"),
    ),
    Case(
        "sidecar_wrong_format",
        ("fold", f"{C}/side_format.npy", "-o", f"{T}/out.png"),
        1,
        ("side_format.json", "patchfold-patches"),
    ),
    Case(
        "sidecar_without_format",
        ("fold", f"{C}/side_noformat.npy", "-o", f"{T}/out.png"),
        1,
        ("side_noformat.json", "not a patchfold sidecar"),
    ),
    Case(
        "sidecar_json_list",
        ("fold", f"{C}/side_list.npy", "-o", f"{T}/out.png"),
        1,
        ("side_list.json", "not a patchfold sidecar"),
    ),
    Case(
        "sidecar_not_utf8",
        ("fold", f"{C}/side_binary.npy", "-o", f"{T}/out.png"),
        1,
        ("side_binary.json", "cannot read sidecar"),
    ),
    Case(
        "sidecar_lacks_kernel",
        ("fold", f"{C}/side_nokernel.npy", "-o", f"{T}/out.png"),
        1,
        ("side_nokernel.json", "kernel_size"),
    ),
    Case(
        "sidecar_lacks_input_shape",
        ("fold", f"{C}/side_noshape.npy", "-o", f"{T}/out.png"),
        1,
        ("side_noshape.json", "input_shape"),
    ),
    Case(
        "sidecar_lacks_input_dtype",
        ("fold", f"{C}/side_nodtype.npy", "-o", f"{T}/out.png"),
        1,
        ("side_nodtype.json", "input_dtype"),
    ),
    Case(
        "matrix_shorter_than_sidecar",
        ("fold", f"{C}/short.npy", "-o", f"{T}/out.png"),
        1,
        ("short.npy", "[1, 16, 164]", "[1, 16, 165]"),
    ),
    Case(
        "sidecar_disagrees_with_matrix",
        ("fold", f"{C}/side_shape.npy", "-o", f"{T}/out.png"),
        1,
        ("side_shape.npy", "[1, 1, 20, 32]", "describes"),
    ),
    Case(
        "sidecar_kernel_size_text",
        ("fold", f"{C}/side_kabc.npy", "-o", f"{T}/out.png"),
        1,
        ("side_kabc.json", "kernel_size", "'abc'"),
    ),
    Case(
        "sidecar_negative_stride",
        ("fold", f"{C}/side_negstride.npy", "-o", f"{T}/out.png"),
        1,
        ("side_negstride.json", "stride", "[-2, 2]"),
    ),
    Case(
        "sidecar_mosaic_disagrees",
        ("show", "mosaic", f"{C}/side_shape.npy", "-o", f"{T}/out.png"),
        1,
        ("side_shape.npy", "describes"),
    ),
    Case(
        "mosaic_without_sidecar",
        ("show", "mosaic", f"{C}/nosidecar.npy", "-o", f"{T}/out.png"),
        1,
        ("nosidecar.npy", "no sidecar"),
    ),
    Case(
        "fold_output_size_disagrees_with_L",
        ("fold", f"{C}/p.npy", "--output-size", "20,32", "-o", f"{T}/out.png"),
        1,
        ("L=165", "output_size=[20, 32]"),
    ),
    Case(
        "fold_stride_override_disagrees_with_L",
        ("fold", f"{C}/p.npy", "-s", "3", "-o", OUT),
        1,
        ("L=165", "L=70"),
    ),
    Case(
        "fold_kernel_not_dividing_patch_length",
        ("fold", f"{C}/p.npy", "-k", "3", "-o", OUT),
        1,
        ("prod(kernel_size)=9",),
    ),
    Case("fold_int64_sums_as_png", ("fold", f"{C}/p.npy", "--no-normalize", "-o", f"{T}/out.png"), 1, ("int64",)),
    Case("fold_unknown_image_type", ("fold", f"{C}/p.npy", "-o", f"{T}/out.xyz"), 1, ("out.xyz",)),
    Case(
        "fold_missing_patches", ("fold", f"{C}/absent.npy", "-o", f"{T}/out.png"), 1, ("absent.npy", "does not exist")
    ),
    Case(
        "fold_patches_are_an_image",
        ("fold", GRAY, "-k", "4", "--output-size", "24,32", "-o", f"{T}/out.png"),
        1,
        ("img_gray.png", "not a .npy"),
    ),
    # --- block geometry and option values --------------------------------------------------------
    Case(
        "kernel_larger_than_padded_input",
        ("unfold", GRAY, "-k", "30", "-p", "2", "-o", OUT),
        1,
        ("no block fits", "[28, 36]"),
    ),
    Case(
        "kernel_larger_than_input_tiles",
        ("tiles", GRAY, "-k", "25,8", "-o", f"{T}/tiles_out"),
        1,
        ("no block fits", "[24, 32]"),
    ),
    Case(
        "dilated_kernel_larger_than_input",
        ("unfold", GRAY, "-k", "9", "-d", "20", "-o", OUT),
        1,
        ("no block fits", "[161, 161]"),
    ),
    Case("stats_kernel_larger_than_size", ("stats", "--size", "64,64", "-k", "100"), 1, ("no block fits", "[64, 64]")),
    Case("stats_kernel_larger_than_input", ("stats", RGB, "-k", "300"), 1, ("no block fits", "[24, 32]")),
    Case(
        "divisor_kernel_larger_than_size",
        ("divisor", "--size", "64,64", "-k", "65", "--npy", OUT, "--png", f"{T}/out.png"),
        1,
        ("no block fits", "[64, 64]"),
    ),
    Case(
        "reflect_padding_not_below_size",
        ("unfold", GRAY, "-k", "3", "-p", "200", "--padding-mode", "reflect", "-o", OUT),
        1,
        ("reflect padding",),
    ),
    Case("kernel_zero", ("unfold", GRAY, "-k", "0", "-o", OUT), 2, ("--kernel-size", "positive")),
    Case("kernel_text", ("unfold", GRAY, "-k", "abc", "-o", OUT), 2, ("--kernel-size", "abc")),
    Case("fold_kernel_zero", ("fold", f"{C}/p.npy", "-k", "0", "-o", OUT), 2, ("--kernel-size", "positive")),
    Case("kernel_negative", ("unfold", GRAY, "-k", "-4", "-o", OUT), 2, ("--kernel-size", "positive")),
    Case("stride_zero", ("unfold", GRAY, *K4, "-s", "0", "-o", OUT), 2, ("--stride", "positive")),
    Case("stride_negative", ("unfold", GRAY, *K4, "-s", "2,-1", "-o", OUT), 2, ("--stride", "positive")),
    Case("stats_stride_zero", ("stats", "--size", "64,64", "-k", "8", "-s", "0"), 2, ("--stride", "positive")),
    Case("divisor_stride_zero", ("divisor", "--size", "64,64", "-k", "8", "-s", "0"), 2, ("--stride", "positive")),
    Case("dilation_zero", ("unfold", GRAY, *K4, "-d", "0", "-o", OUT), 2, ("--dilation", "positive")),
    Case("dilation_negative", ("stats", "--size", "16,16", *K4, "-d", "-2"), 2, ("--dilation", "positive")),
    Case("padding_negative", ("unfold", GRAY, *K4, "-p", "-1", "-o", OUT), 2, ("--padding", "non-negative")),
    Case("kernel_list_too_long", ("unfold", GRAY, "-k", "4,4,4", "-o", OUT), 2, ("--kernel-size", "3 values")),
    Case(
        "stride_list_too_long", ("fold", f"{C}/p.npy", "-s", "2,2,2", "-o", f"{T}/out.png"), 2, ("--stride", "3 values")
    ),
    Case("padding_list_too_long", ("stats", "--size", "16,16", *K4, "-p", "1,1,1"), 2, ("--padding", "3 values")),
    Case(
        "dilation_list_too_long_3d",
        ("unfold", f"{C}/whole.npy", "--spatial-dims", "2", *K4, "-d", "1,1,1,1", "-o", OUT),
        2,
        ("--dilation", "4 values"),
    ),
    Case("layout_unknown", ("unfold", GRAY, *K4, "--layout", "nchw", "-o", OUT), 2, ("--layout", "nchw")),
    Case("fold_layout_unknown", ("fold", f"{C}/p.npy", "--layout", "abc", "-o", OUT), 2, ("--layout", "abc")),
    Case("dtype_unknown", ("unfold", GRAY, *K4, "--dtype", "int8", "-o", OUT), 2, ("--dtype", "int8")),
    Case(
        "padding_mode_unknown",
        ("unfold", GRAY, *K4, "--padding-mode", "mirror", "-o", OUT),
        2,
        ("--padding-mode", "mirror"),
    ),
    Case("engine_unknown", ("unfold", GRAY, *K4, "--engine", "gpu", "-o", OUT), 2, ("--engine", "gpu")),
    Case(
        "cpu_engine_on_cuda",
        ("unfold", GRAY, *K4, "--device", "cuda", "--engine", "cpu", "-o", OUT),
        2,
        ("--engine",),
    ),
    Case("max_memory_text", ("unfold", GRAY, *K4, "--max-memory", "lots", "-o", OUT), 2, ("--max-memory", "lots")),
    Case("max_pixels_zero", ("unfold", GRAY, *K4, "--max-pixels", "0", "-o", OUT), 2, ("--max-pixels",)),
    Case("unfold_output_not_npy", ("unfold", GRAY, *K4, "-o", f"{T}/p.txt"), 2, ("--output", "p.txt")),
    Case(
        "fold_output_size_zero",
        ("fold", f"{C}/p.npy", "--output-size", "0,5", "-o", OUT),
        2,
        ("--output-size",),
    ),
    Case("fold_window_unknown", ("fold", f"{C}/p.npy", "--window", "boxcar", "-o", OUT), 2, ("--window", "boxcar")),
    Case("fold_output_without_type", ("fold", f"{C}/p.npy", "-o", f"{T}/restored"), 2, ("--output", "restored")),
    Case("stats_size_zero", ("stats", "--size", "0,64", "-k", "8"), 2, ("--size",)),
    Case("stats_channels_zero", ("stats", "--size", "64,64", "-k", "8", "--channels", "0"), 2, ("--channels",)),
    Case("stats_batch_negative", ("stats", "--size", "64,64", "-k", "8", "--batch", "-1"), 2, ("--batch",)),
    Case("stats_without_kernel", ("stats", "--size", "64,64"), 2, ("--kernel-size",)),
    Case("stats_without_input_or_size", ("stats", *K4), 2, ("--size",)),
    Case("stats_with_input_and_size", ("stats", GRAY, "--size", "64,64", *K4), 2, ("--size",)),
    Case(
        "divisor_png_not_png",
        ("divisor", "--size", "64,64", "-k", "8", "--png", f"{T}/d.jpg"),
        2,
        ("--png", "d.jpg"),
    ),
    Case("show_output_not_png", ("show", "grid", RGB, "-k", "8", "-o", f"{T}/p.jpg"), 2, ("--output", "p.jpg")),
    Case(
        "device_cuda_without_gpu",
        ("unfold", GRAY, *K4, "--device", "cuda", "-o", OUT),
        2,
        ("--device", "CUDA is not available"),
        marks=(no_cuda,),
    ),
    Case(
        "fold_device_cuda_without_gpu",
        ("fold", f"{C}/p.npy", "--device", "cuda", "-o", f"{T}/out.png"),
        2,
        ("--device", "CUDA"),
        marks=(no_cuda,),
    ),
    Case("device_cuda_7", ("unfold", GRAY, *K4, "--device", "cuda:7", "-o", OUT), 2, ("--device", "cuda:7")),
    Case("device_garbage", ("unfold", GRAY, *K4, "--device", "garbage", "-o", OUT), 2, ("--device", "garbage")),
    Case("device_index_text", ("unfold", GRAY, *K4, "--device", "cuda:x", "-o", OUT), 2, ("--device", "cuda:x")),
    # --- where outputs go ------------------------------------------------------------------------
    Case(
        "output_directory_under_a_file",  # a missing folder is made, but not inside a file
        ("unfold", GRAY, *K4, "-o", f"{GRAY}/no/dir/out.npy"),
        1,
        ("cannot be made", "is a file, not a directory"),
    ),
    Case(
        "output_directory_read_only",
        ("unfold", GRAY, *K4, "-o", f"{T}/ro/out.npy"),
        1,
        ("ro", "not writable"),
        setup=_readonly_dir,
        marks=(not_root,),
    ),
    Case(
        "output_parent_is_a_file",
        ("unfold", GRAY, *K4, "-o", f"{T}/afile.txt/out.npy"),
        1,
        ("afile.txt",),
        setup=_file("afile.txt"),
    ),
    Case("output_under_proc", ("unfold", GRAY, *K4, "-o", "/proc/patchfold_out.npy"), 1, ("/proc",)),
    Case(
        "output_path_is_a_directory",
        ("unfold", GRAY, *K4, "-o", f"{T}/dir_out.npy"),
        1,
        ("dir_out.npy", "is a directory"),
        setup=_mkdir("dir_out.npy"),
    ),
    Case(
        "divisor_output_is_a_directory",
        ("divisor", "--size", "16,16", *K4, "--npy", f"{T}/dir_out.npy"),
        1,
        ("dir_out.npy", "is a directory"),
        setup=_mkdir("dir_out.npy"),
    ),
    Case("several_images_without_i", ("fold", f"{C}/p2.npy", "-o", f"{T}/out.png"), 1, ("out.png", "{i}")),
    Case(
        "numbered_images_under_a_file",
        ("fold", f"{C}/p2.npy", "-o", GRAY + "/nodir/out_{{i}}.png"),
        1,
        ("nodir", "is a file, not a directory"),
    ),
    Case(
        "tiles_into_non_empty_directory",
        ("tiles", GRAY, "-k", "8", "-o", f"{T}/tiles_out"),
        1,
        ("tiles_out", "not empty"),
        setup=_non_empty_dir,
    ),
    Case(
        "tiles_into_a_file",
        ("tiles", GRAY, "-k", "8", "-o", f"{T}/afile.txt"),
        1,
        ("afile.txt",),
        setup=_file("afile.txt"),
    ),
    Case(
        "tiles_format_cannot_hold_dtype",
        ("tiles", f"{C}/whole.npy", "-k", "8", "-o", f"{T}/tiles_out"),
        1,
        ("float32", "--format npy"),
    ),
    # --- untile: damaged or hostile tile directories -------------------------------------------
    Case(
        "untile_missing_tile",
        ("untile", f"{C}/tiles_missing", "-o", f"{T}/out.png"),
        1,
        ("img_gray_r000_c001.png", "missing"),
    ),
    Case(
        "untile_tile_of_wrong_size",
        ("untile", f"{C}/tiles_wrong_size", "-o", f"{T}/out.png"),
        1,
        ("img_gray_r000_c001.png", "[1, 8, 7]", "[1, 8, 8]"),
    ),
    Case(
        "untile_path_escapes_directory",
        ("untile", f"{C}/tiles_escape", "-o", f"{T}/out.png"),
        1,
        ("img_gray_r000_c000.png", "not a file name inside it"),
        check=_nothing_read_outside,
    ),
    Case(
        "untile_absolute_path_in_manifest",
        ("untile", f"{C}/tiles_passwd", "-o", f"{T}/out.png"),
        1,
        ("passwd", "not a file name inside it"),
    ),
    Case(
        "untile_manifest_tiles_not_a_list",
        ("untile", f"{C}/tiles_not_a_list", "-o", f"{T}/out.png"),
        1,
        ("manifest", "tiles"),
    ),
    Case(
        "untile_manifest_stride_zero",
        ("untile", f"{C}/tiles_stride_zero", "-o", f"{T}/out.png"),
        1,
        ("manifest.json", "stride"),
    ),
    Case(
        "untile_manifest_not_json",
        ("untile", f"{C}/tiles_bad_json", "-o", f"{T}/out.png"),
        1,
        ("manifest.json", "not valid JSON"),
    ),
    Case(
        "untile_directory_without_manifest",
        ("untile", f"{C}/no_images", "-o", f"{T}/out.png"),
        1,
        ("no_images", "manifest.json"),
    ),
    Case(
        "untile_missing_directory",
        ("untile", f"{C}/absent_tiles", "-o", f"{T}/out.png"),
        1,
        ("absent_tiles", "does not exist"),
    ),
]


#: Writes past 200 bytes fail with EFBIG (RLIMIT_FSIZE on a real process): a full disk.
FULL_DISK_CASES: list[Case] = [
    Case(
        "disk_full_unfold",
        ("unfold", GRAY, *K4, "-s", "1", "-o", OUT),
        1,
        ("out.npy", ("File too large", "No space")),
    ),
    Case(
        "disk_full_fold_png",
        ("fold", f"{C}/p_rgb.npy", "-o", f"{T}/out.png"),
        1,
        ("out.png", ("File too large", "No space")),
    ),
    Case(
        "disk_full_divisor_npy",
        ("divisor", "--size", "64,64", *K4, "--npy", OUT),
        1,
        ("out.npy", ("File too large", "No space", "disk full")),
    ),
    Case(
        "disk_full_tiles",
        ("tiles", GRAY, "-k", "8", "-o", f"{T}/tiles_out"),
        1,
        ("tiles_out", ("File too large", "No space")),
    ),
]


def expand(args: tuple[str, ...], corpus: Path, tmp: Path) -> list[str]:
    return [arg.format(c=corpus, t=tmp) for arg in args]


def check_error_line(done: Outcome, code: int, fragments: tuple[str | tuple[str, ...], ...]) -> str:
    """The contract for a failed run; returns its Error line."""
    assert done.code == code, done.report
    assert "Traceback" not in done.stderr, done.report
    assert done.stdout == "", done.report
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.report
    if code == 1:  # a runtime failure prints the Error line and nothing else
        assert done.stderr.strip().splitlines() == errors, done.report
    line = errors[0]
    for fragment in fragments:
        alternatives = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(a in line for a in alternatives), f"none of {alternatives!r} in {line!r}"
    return line


def check_failed_run(case: Case, corpus: Path, tmp_path: Path, run: Callable[[list[str], Path], Outcome]) -> None:
    """Run ``case`` in a working directory of pre-existing outputs: the Error line, and nothing
    written, changed or removed there or among the inputs."""
    work = tmp_path / "work"
    work.mkdir()
    for name in SENTINELS:
        (work / name).write_bytes(SENTINEL)
    if case.setup is not None:
        case.setup(work)
    before, corpus_before = snapshot(work), names(corpus)
    try:
        check_error_line(run(expand(case.args, corpus, work), work), case.code, case.fragments)
        after = snapshot(work)
        assert sorted(after) == sorted(before), f"files appeared or vanished: {sorted(set(after) ^ set(before))}"
        changed = [name for name in before if after[name] != before[name]]
        assert not changed, f"pre-existing files were modified: {changed}"
        assert names(corpus) == corpus_before, f"inputs' directory changed: {names(corpus) ^ corpus_before}"
        assert not Path("/proc/patchfold_out.npy").exists()
        if case.check is not None:
            case.check(corpus, work)
    finally:
        ro = work / "ro"
        if ro.exists():
            ro.chmod(0o755)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=case.marks) for case in HOSTILE_CASES])
def test_hostile_input_fails_cleanly(case: Case, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(args: list[str], work: Path) -> Outcome:
        monkeypatch.chdir(work)
        return run_in_process(args)

    check_failed_run(case, corpus, tmp_path, run)


@needs_command
@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in FULL_DISK_CASES])
def test_full_disk_fails_cleanly(case: Case, corpus: Path, tmp_path: Path) -> None:
    check_failed_run(case, corpus, tmp_path, lambda args, work: run_process(args, work, fsize=200))


# ----- huge values: a result up to the documented limit of 2**40, a usage error above it ------------
@pytest.mark.parametrize(
    ("args", "stride"),
    [
        pytest.param(["unfold", "{gray}", "-k", "3", "-o", "{t}/huge.npy"], 2**40, id="unfold_stride_2_40"),
        pytest.param(["unfold", "{gray}", "-k", "3", "-o", "{t}/huge.npy"], 10**23, id="unfold_huge_stride"),
        pytest.param(["unfold", "{gray}", "-k", "3", "-o", "{t}/huge.npy"], 2**62, id="unfold_stride_2_62"),
        pytest.param(["unfold", "{line}", "-k", "3", "-o", "{t}/huge.npy"], 2**40, id="unfold_1d_stride_2_40"),
        pytest.param(["unfold", "{line}", "-k", "3", "-o", "{t}/huge.npy"], 10**23, id="unfold_1d_huge_stride"),
        pytest.param(
            ["unfold", "{volume}", "--spatial-dims", "3", "-k", "3", "-o", "{t}/huge.npy"],
            2**40,
            id="unfold_3d_stride_2_40",
        ),
        pytest.param(
            ["unfold", "{volume}", "--spatial-dims", "3", "-k", "3", "-o", "{t}/huge.npy"],
            2**63,
            id="unfold_3d_stride_2_63",
        ),
        pytest.param(["unfold", "{gray}", "-k", "3", "-o", "{t}/huge.npy"], 2**64, id="unfold_stride_2_64"),
        pytest.param(["unfold", "{gray}", "-k", "3", "-o", "{t}/huge.npy"], 2**63 - 1, id="unfold_stride_2_63_minus_1"),
        pytest.param(["divisor", "--size", "8,8", "-k", "3", "--npy", "{t}/huge.npy"], 2**40, id="divisor_stride_2_40"),
        pytest.param(
            ["divisor", "--size", "8,8", "-k", "3", "--npy", "{t}/huge.npy"], 10**23, id="divisor_huge_stride"
        ),
    ],
)
def test_huge_strides_give_a_result_or_a_usage_error(
    args: list[str], stride: int, corpus: Path, tmp_path: Path
) -> None:
    inputs = tmp_path.parent / f"{tmp_path.name}_inputs"
    inputs.mkdir()
    np.save(inputs / "line.npy", np.arange(12, dtype=np.int16))
    np.save(inputs / "volume.npy", np.arange(6 * 6 * 6, dtype=np.uint8).reshape(6, 6, 6))
    names_ = {"gray": corpus / "img_gray.png", "line": inputs / "line.npy", "volume": inputs / "volume.npy"}
    done = run_in_process([*(a.format(t=tmp_path, **names_) for a in args), "-s", str(stride)])
    if stride > 2**40:
        check_error_line(done, 2, ("--stride", "at most 2**40"))
        assert list(tmp_path.iterdir()) == []
        return
    assert done.code == 0, done.report  # the stride leaves one block per dim, at the origin
    values = np.load(tmp_path / "huge.npy")
    if args[0] == "divisor":
        expected = np.zeros((8, 8), np.int64)
        expected[:3, :3] = 1
    elif args[1] == "{gray}":
        with Image.open(corpus / "img_gray.png") as image:
            expected = np.asarray(image)[:3, :3].reshape(1, 9, 1)
    elif args[1] == "{line}":
        expected = np.arange(3, dtype=np.int16).reshape(1, 3, 1)
    else:
        expected = np.arange(6**3, dtype=np.uint8).reshape(6, 6, 6)[:3, :3, :3].reshape(1, 27, 1)
    np.testing.assert_array_equal(values, expected)


# ----- positive cases: NaN and inf pass through ---------------------------------------------------
#: float32 bit patterns: signalling NaN, quiet NaN with payload, negative NaN, -0.0, ±inf, a subnormal, max.
SPECIAL_BITS = [0x7F800001, 0x7FC12345, 0xFFC00000, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001, 0x7F7FFFFF]


def special_floats() -> np.ndarray:
    bits = np.resize(np.array(SPECIAL_BITS, dtype=np.uint32), 7 * 6)
    bits[::5] = np.arange(len(bits[::5]), dtype=np.float32).view(np.uint32)  # and some ordinary numbers
    return bits.reshape(1, 1, 7, 6).view(np.float32)


@pytest.mark.parametrize(("layout", "padding"), [("ncl", 0), ("ncl", 1), ("nlc", 1)])
def test_nan_and_inf_are_passed_through_bit_exactly(tmp_path: Path, layout: str, padding: int) -> None:
    values = special_floats()
    np.save(tmp_path / "special.npy", values)
    ok("unfold", tmp_path / "special.npy", "-k", 2, "-p", padding, "--layout", layout, "-o", tmp_path / "out.npy")
    cols = np.load(tmp_path / "out.npy")
    expected = reference_unfold(values, 2, padding=padding)  # copies values only: every bit is kept
    if layout == "nlc":
        expected = expected.transpose(0, 2, 1)
    assert cols.dtype == np.float32 and cols.shape == expected.shape
    np.testing.assert_array_equal(cols.view(np.uint32), expected.view(np.uint32), err_msg="bits changed")


def fold_back(tmp_path: Path, values: np.ndarray) -> np.ndarray:
    """unfold -k 2 (every pixel in up to 4 blocks), then fold with --normalize, through the command."""
    np.save(tmp_path / "values.npy", values)
    ok("unfold", tmp_path / "values.npy", "-k", 2, "-o", tmp_path / "cols.npy")
    ok("fold", tmp_path / "cols.npy", "-o", tmp_path / "back.npy")
    back = np.load(tmp_path / "back.npy")
    assert back.shape == values.shape and back.dtype == values.dtype
    return back


def test_fold_back_keeps_nan_and_inf_where_they_were(tmp_path: Path) -> None:
    values = special_floats()
    values[np.abs(values) == np.finfo(np.float32).max] = 1e30
    back = fold_back(tmp_path, values)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(values))
    infinite = np.isinf(values)
    np.testing.assert_array_equal(back[infinite], values[infinite])
    finite = np.isfinite(values)
    np.testing.assert_allclose(back[finite], values[finite], rtol=1e-6, atol=0)


def test_fold_back_of_large_finite_floats_stays_finite(tmp_path: Path) -> None:
    """A pixel covered by 4 blocks is summed 4 times: float32's largest values must not become inf."""
    values = np.full((1, 1, 4, 4), np.finfo(np.float32).max, dtype=np.float32)
    values[0, 0, ::2] *= -0.75
    back = fold_back(tmp_path, values)
    assert np.isfinite(back).all(), f"finite pixels came back as {back[~np.isfinite(back)][:4]}"
    np.testing.assert_allclose(back, values, rtol=1e-6)


def test_stats_and_divisor_of_nan_input_do_not_crash(tmp_path: Path) -> None:
    np.save(tmp_path / "special.npy", special_floats())
    stats = ok_json("stats", tmp_path / "special.npy", "-k", 3, "-s", 2)
    assert stats["input_shape"] == [1, 1, 7, 6] and stats["blocks_per_dim"] == [3, 2]
    assert sum(stats["coverage"]["histogram"].values()) == 42
    ok_json("divisor", tmp_path / "special.npy", "-k", 3, "-s", 2, "--npy", tmp_path / "d.npy")
    assert np.load(tmp_path / "d.npy").shape == (7, 6)


def test_stats_reads_only_the_header_of_a_large_image(tmp_path: Path) -> None:
    """20000 × 20000 = 4e8 pixels is under the default --max-pixels (2**32): stats reads the header
    (the pixel data is not even there) and answers; it must not apply Pillow's own smaller limit."""
    (tmp_path / "large.png").write_bytes(bomb_png(20_000, 20_000))
    stats = ok_json("stats", tmp_path / "large.png", "-k", 16, "-s", 16)
    assert stats["input_shape"] == [1, 1, 20_000, 20_000] and stats["num_blocks"] == 1250**2


def test_sidecar_sources_cannot_steer_writes_outside(corpus: Path, tmp_path: Path) -> None:
    """Output names taken from a sidecar's ``sources`` stay inside the output directory."""
    shutil.copy(corpus / "p.npy", tmp_path / "p.npy")
    side = json.loads((corpus / "p.json").read_text())
    side["sources"] = ["../../escaped"]
    (tmp_path / "p.json").write_text(json.dumps(side))
    (tmp_path / "a" / "b").mkdir(parents=True)
    before = names(tmp_path)
    ok("fold", tmp_path / "p.npy", "-o", tmp_path / "a" / "b")
    assert names(tmp_path) - before == {"a/b/escaped.png"}


# ----- interrupted by a signal -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def large_npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3000 × 3000 float32 image: -k 16 -s 2 makes a 2.3 GB patch matrix, written in ~1500 bands."""
    path = tmp_path_factory.mktemp("large") / "large.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1, 1, 3000, 3000))
    array[...] = np.arange(3000, dtype=np.float32)
    array.flush()
    del array
    return path


SIGNAL_CASES = [
    pytest.param(signal.SIGINT, False, id="sigint"),
    pytest.param(signal.SIGTERM, False, id="sigterm"),
    pytest.param(signal.SIGINT, True, id="sigint_over_existing_output"),
    pytest.param(signal.SIGTERM, True, id="sigterm_over_existing_output"),
]


def wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@needs_command
@pytest.mark.parametrize(("signum", "existing"), SIGNAL_CASES)
def test_signal_during_long_write_leaves_nothing(large_npy: Path, tmp_path: Path, signum: int, existing: bool) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if existing:
        (out_dir / "out.npy").write_bytes(SENTINEL)
        (out_dir / "out.json").write_bytes(SENTINEL)
    before = snapshot(out_dir)
    args = ["unfold", str(large_npy), "-k", "16", "-s", "2", "--max-memory", "1MB", "--no-progress"]
    process = subprocess.Popen(
        command_line([*args, "-o", str(out_dir / "out.npy")]),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(COLUMNS="200"),
    )
    try:
        started = wait_for(
            lambda: any(p.name.endswith(".part") for p in out_dir.iterdir()) or process.poll() is not None, 30
        )
        assert started and process.poll() is None, "the unfold never started writing, or ended at once"
        time.sleep(0.2)  # well into the bands
        assert process.poll() is None, "the unfold finished before it could be interrupted: make it longer"
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, f"exit {process.returncode}\n{stderr}"
    assert "Traceback" not in stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "interrupted" in lines[0], stderr
    assert snapshot(out_dir) == before, f"left behind: {sorted(names(out_dir))}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
