"""``-`` as a file name: standard input for an input, standard output for an output.

patchfold's readers memory-map and its writers seek (positioned band writes, atomic renames), which
a pipe allows neither of. So standard input is first copied once into a private temporary file
(whose type is told from its first bytes), and an output for standard output is written, whole and
checked, into a private temporary file whose bytes are then copied to the stream: a failed run
sends nothing down the pipe. The temporary files live in a temporary directory removed when the
job ends (or, for standard input, which can be read only once, when the process exits).
"""

from __future__ import annotations

import atexit
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from patchfold.errors import PatchfoldError

#: The name that stands for standard input or output.
STDIO = "-"

_CHUNK = 1 << 20

#: First bytes of the types an input from standard input may have, and the suffix each is read as.
_MAGIC = (
    (b"\x93NUMPY", ".npy"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"II+\x00", ".tif"),
    (b"MM\x00+", ".tif"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"BM", ".bmp"),
    (b"GIF8", ".gif"),
    (b"RIFF", ".webp"),
)


def is_stdio(path: str | Path) -> bool:
    """Whether ``path`` is ``-``: standard input or output."""
    return str(path) == STDIO


#: Streams already read, by id (each held, so no other stream takes its id), and their files.
_spooled: dict[int, tuple[BinaryIO, Path]] = {}


def stdin_file(stream: BinaryIO | None = None) -> Path:
    """A temporary file holding all of standard input (``stream``, default ``sys.stdin``'s bytes),
    named ``stdin`` with the suffix its first bytes show (``.npy``, ``.png``, ``.tif``...). Read once
    per process: a second ``-`` gives the same file. Raises :class:`PatchfoldError` on an empty or
    unknown input, or one larger than the temporary directory's free space."""
    if stream is None and sys.stdin is None:  # started with standard input closed (<&-)
        raise PatchfoldError("input '-' is standard input, but it is closed: pipe an image or .npy into it")
    source = stream if stream is not None else sys.stdin.buffer
    key = id(source)
    if key in _spooled:
        return _spooled[key][1]
    if getattr(source, "isatty", lambda: False)():
        raise PatchfoldError("input '-' is standard input, but it is a terminal: pipe an image or .npy into it")
    import shutil  # here: every command imports this module, few read standard input
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="patchfold-stdin-"))
    atexit.register(shutil.rmtree, folder, True)
    head = source.read(16)
    suffix = next((suffix for magic, suffix in _MAGIC if head.startswith(magic)), None)
    if not head:
        raise PatchfoldError("input '-' (standard input) is empty: pipe an image or .npy into it")
    if suffix is None:
        raise PatchfoldError(
            f"input '-' (standard input) is neither a .npy nor an image (PNG, TIFF, JPEG, BMP, GIF, WebP): "
            f"it starts with {head[:8]!r}"
        )
    path = folder / f"stdin{suffix}"
    with open(path, "wb") as spool:
        spool.write(head)
        total = len(head)
        while chunk := source.read(_CHUNK):
            total += len(chunk)
            if len(chunk) > shutil.disk_usage(folder).free:  # checked before each write: never a full disk
                raise PatchfoldError(f"input '-' (standard input) does not fit in '{folder}' after {total:,} bytes")
            spool.write(chunk)
    _spooled[key] = (source, path)
    return path


def source_name(path: str | Path) -> str:
    """How an input is recorded: ``-`` for standard input's temporary file, else its absolute path."""
    spooled = {file for _, file in _spooled.values()}
    return STDIO if Path(path) in spooled else str(Path(path).resolve())


def named_for_user(message: str) -> str:
    """``message`` with standard input's temporary file named as the user named it: ``-``."""
    for _, file in _spooled.values():
        message = message.replace(f"'{file}'", "'-' (standard input)").replace(str(file), "- (standard input)")
    return message


def input_path(path: str | Path) -> Path:
    """``path`` as a file to read: standard input's temporary file for ``-``."""
    return stdin_file() if is_stdio(path) else Path(path)


@contextlib.contextmanager
def stdout_file(stream: BinaryIO | None, suffix: str) -> Iterator[Path]:
    """A path with ``suffix`` in a private temporary directory for a job to write its output to;
    when the block succeeds the file's bytes go to ``stream`` (standard output), and the directory
    goes in any case."""
    if stream is None:
        raise PatchfoldError("output '-' is standard output, but no stream was given to write it to")
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="patchfold-stdout-"))
    try:
        target = folder / f"stdout{suffix}"
        yield target
        with open(target, "rb") as written:
            shutil.copyfileobj(written, stream, _CHUNK)
        stream.flush()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
