"""Writing outputs atomically: every file is written to a temporary beside its target and renamed into
place, so a failed run never leaves a partial file or clobbers an existing one; ``.npy`` headers and
positioned writes for outputs filled band by band; image files and where each image goes."""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.errors import PatchfoldError
from patchfold.units import format_bytes


def check_output_path(path: Path, what: str = "output") -> None:
    """Fail before any work if the file ``path`` cannot be written."""
    if path.is_dir():
        raise PatchfoldError(f"{what} '{path}' is a directory; give a file path")
    check_parent(path, f"{what} directory")


def check_not_an_input(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """No output may be one of the files a job reads (it would be overwritten while read)."""
    existing = [p for p in inputs if os.path.exists(p)]
    for output in outputs:
        if not os.path.exists(output):
            continue
        for source in existing:
            if os.path.samefile(output, source):
                raise PatchfoldError(
                    f"output '{output}' is the input '{source}': write to another file", param="output"
                )


def check_parent(path: Path, what: str) -> Path:
    """The directory that will hold ``path``: it must be a writable directory, or, where it and
    perhaps folders above it are missing (made by :func:`made_parents` when the output is
    written), the nearest one that exists must be."""
    parent = path.parent
    missing = _missing_folders(path)
    for folder in missing:
        if folder.is_symlink():  # a link to nowhere, or a loop: mkdir would say 'File exists'
            raise PatchfoldError(
                f"{what} '{parent}' cannot be made: '{folder}' is a symbolic link to a missing or looping path"
            )
    existing = missing[-1].parent if missing else parent
    if not existing.is_dir():
        raise PatchfoldError(f"{what} '{parent}' cannot be made: '{existing}' is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        missing = "" if existing == parent else f" (to make '{parent}' in)"
        raise PatchfoldError(f"{what} '{existing}'{missing} is not writable")
    return parent


def _missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist, nearest first (up to the first that does)."""
    missing = []
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


@contextlib.contextmanager
def made_parents(*paths: Path) -> Iterator[None]:
    """Make the missing folders above ``paths`` (a new folder the user named in ``-o``); if the
    block fails, the folders made here are removed again (where still empty): a failed run leaves
    nothing behind."""
    made: list[Path] = []
    try:
        for path in paths:
            for folder in reversed(_missing_folders(path)):
                try:
                    folder.mkdir()
                except FileExistsError:  # another run made it meanwhile: use it, and leave it to that run
                    if not folder.is_dir():
                        raise
                    continue
                made.append(folder)
        yield
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def check_free_space(path: Path, needed: int) -> None:
    missing = _missing_folders(path)  # folders still to be made: the disk of the one they go in
    free = shutil.disk_usage(missing[-1].parent if missing else path.parent).free
    if needed > free:
        raise PatchfoldError(f"'{path}' needs {format_bytes(needed)} but only {format_bytes(free)} is free on its disk")


#: Temporary files are named ``.<name>.<pid>-<random>.part`` (``.bak`` for backups): ``name`` cut
#: so that the whole stays within a file system's 255-byte name limit, ``pid`` so a later run can
#: tell a dead run's leftovers from a live one's.
_TEMPORARY = re.compile(r"^\.(?P<name>.*)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.(?P<kind>part|bak)$")


def temporary_prefix(target: Path) -> str:
    name = target.name.encode(errors="replace")[:120].decode(errors="ignore")  # any str, even a lone surrogate
    return f".{name}.{os.getpid()}-"


def stale_temporary(name: str) -> tuple[str, str] | None:
    """For the name of a temporary a run that no longer exists left (a killed run), the name of
    what it was for and its kind (``.part`` or ``.bak``); None for anything else."""
    match = _TEMPORARY.match(name)
    if match is None or _alive(int(match["pid"])):
        return None
    return match["name"], "." + match["kind"]


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries that runs which no longer exist left in ``directory`` (killed runs)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if stale_temporary(entry.name) is None:
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) there sends Ctrl-C to a process group: keep the leftovers
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def atomic_paths(*targets: Path) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``targets``; on success move them all into place, on failure
    delete them. If one move fails, the targets already moved are put back as they were, so a set
    of outputs (a patch matrix and its sidecar) is replaced whole or not at all."""
    for target in targets:
        check_output_path(target)
    with made_parents(*targets), _replaced_together(targets) as temporaries:
        yield temporaries


@contextlib.contextmanager
def _replaced_together(targets: Sequence[Path]) -> Iterator[list[Path]]:
    for parent in {target.parent for target in targets}:
        remove_stale_temporaries(parent)
    temporaries: list[Path] = []
    backups: list[tuple[Path, Path | None]] = []
    try:
        for target in targets:
            handle, name = tempfile.mkstemp(prefix=temporary_prefix(target), suffix=".part", dir=target.parent)
            os.close(handle)
            temporaries.append(Path(name))
        try:
            yield temporaries
        except OSError as error:  # disk full, file too large, I/O error: name the file being written
            raise PatchfoldError(f"cannot write '{targets[0]}': {_reason(error)}") from None
        mode = 0o666 & ~_umask()
        moved = 0
        try:
            for temporary, target in zip(temporaries, targets):
                backups.append((target, _backup(target)))
                os.chmod(temporary, mode)
                os.replace(temporary, target)
                moved += 1
        except OSError as error:  # _backup itself may fail (a name too long): name the target, not the last backup
            _restore(backups[:moved])
            raise PatchfoldError(f"cannot write '{targets[moved]}': {error.strerror or error}") from None
    finally:
        for temporary in temporaries:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        for _, backup in backups:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()


def check_store_apart(store: Path, inputs: Sequence[Path]) -> None:
    """A directory store must be neither an input, nor a folder holding one (a group whose array
    is read), nor inside one: replacing it would delete or change what the job reads."""
    target = store.resolve()
    for source in inputs:
        read = source.resolve()
        if target == read or target in read.parents or read in target.parents:
            raise PatchfoldError(
                f"output '{store}' overlaps the input '{source}' (one holds the other): write to another path",
                param="output",
            )


def check_store_path(path: Path, what: str = "output") -> None:
    """Fail before any work if the directory store ``path`` (a ``.zarr``) cannot be written: it
    may exist only as a store patchfold can replace (a Zarr directory), never as a file or a folder
    of other things."""
    from patchfold.io.sources import is_zarr

    if path.exists() and not is_zarr(path):
        kind = "a directory that is not a Zarr store" if path.is_dir() else "a file"
        raise PatchfoldError(f"{what} '{path}' is {kind}; it would be replaced: give a new path or remove it")
    check_parent(path, f"{what} directory")


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` (the old
    store moved aside first and deleted after), on failure it is deleted and ``target`` is as it was."""
    check_store_path(target)
    with made_parents(target), _directory_replaced(target) as temporary:
        yield temporary


@contextlib.contextmanager
def _directory_replaced(target: Path) -> Iterator[Path]:
    remove_stale_temporaries(target.parent)
    temporary = Path(tempfile.mkdtemp(prefix=temporary_prefix(target), suffix=".part", dir=target.parent))
    old: Path | None = None
    try:
        try:
            yield temporary
        except OSError as error:
            raise PatchfoldError(f"cannot write '{target}': {_reason(error)}") from None
        os.chmod(temporary, 0o777 & ~_umask())
        if target.exists():
            old = Path(tempfile.mktemp(prefix=temporary_prefix(target), suffix=".bak", dir=target.parent))
            os.replace(target, old)
        try:
            os.replace(temporary, target)
        except OSError as error:
            if old is not None:
                os.replace(old, target)
                old = None
            raise PatchfoldError(f"cannot write '{target}': {error.strerror or error}") from None
    finally:
        for leftover in (temporary, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _reason(error: OSError) -> str:
    """An OSError in words; numpy's short writes carry no errno, so say what they usually mean."""
    if error.strerror:
        return error.strerror
    return f"{error} (is the disk full?)"


def _backup(target: Path) -> Path | None:
    """A hard link to the file a move is about to replace (None when there is none)."""
    if not target.exists():
        return None
    backup = Path(tempfile.mktemp(prefix=temporary_prefix(target), suffix=".bak", dir=target.parent))
    try:
        os.link(target, backup)
    except OSError:
        backup = Path(tempfile.mktemp(prefix=temporary_prefix(target), suffix=".bak", dir=target.parent))
        shutil.copy2(target, backup)
    return backup


def _restore(moved: list[tuple[Path, Path | None]]) -> None:
    for target, backup in reversed(moved):
        with contextlib.suppress(OSError):
            if backup is None:
                target.unlink()
            else:
                os.replace(backup, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write one ``.npy`` atomically."""
    with atomic_paths(path) as (temporary,), open(temporary, "wb") as handle:
        np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)


def to_image_array(pixels: np.ndarray, path: Path) -> np.ndarray:
    if not pixels.dtype.isnative:  # a big-endian array's values, in the byte order Pillow takes
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    channels = pixels.shape[0]
    if pixels.ndim != 3:
        raise PatchfoldError(
            f"'{path}': only 2-D images can be written as image files (got shape {pixels.shape}); use .npy"
        )
    if pixels.dtype == np.uint8 and channels in (1, 2, 3, 4):
        return pixels[0] if channels == 1 else np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
    if channels == 1 and pixels.dtype == np.uint16:
        return pixels[0]
    if channels == 1 and pixels.dtype in (np.int32, np.float32):
        if path.suffix.lower() not in (".tif", ".tiff"):  # Pillow writes modes I and F as TIFF only
            raise PatchfoldError(
                f"'{path}': one channel of {pixels.dtype} can be written as .tif, not {path.suffix or 'this format'}; "
                "write .tif or .npy instead"
            )
        return pixels[0]
    raise PatchfoldError(
        f"'{path}': cannot write {channels} channel(s) of {pixels.dtype} as an image "
        "(uint8 with 1-4 channels, uint16 with 1-4 as .png, or one channel of int32/float32 as .tif; any as .tif "
        "with tifffile); write .npy instead"
    )


def deep_png(pixels: np.ndarray, target: Path) -> bool:
    """Whether ``(C, H, W)`` is 2-4 channels of uint16 for a ``.png`` (Pillow writes them as 8-bit
    or not at all; imagecodecs writes 16-bit PNG)."""
    return (
        target.suffix.lower() == ".png" and pixels.ndim == 3 and 2 <= pixels.shape[0] <= 4 and pixels.dtype == np.uint16
    )


def deep_png_writer(pixels: np.ndarray, target: Path) -> Any:
    try:
        import imagecodecs
    except ImportError:
        raise PatchfoldError(
            f"'{target}': writing {pixels.shape[0]} channels of uint16 as PNG needs imagecodecs "
            "(pip install 'patchfold[tiff]'), or write .tif / .npy"
        ) from None
    data = np.ascontiguousarray(np.moveaxis(pixels, 0, -1).astype(np.uint16, copy=False))

    def write(temporary: Path) -> None:
        Path(temporary).write_bytes(imagecodecs.png_encode(data))

    return write


def _usable_stem(stem: str) -> bool:
    """A recorded source name can name an output file: not empty, and encodable (a lone surrogate
    in a hand-edited manifest is not)."""
    try:
        return bool(stem) and len(os.fsencode(stem)) <= 200
    except UnicodeError:
        return False


def image_targets(output: Path, count: int, names: Sequence[str] = ()) -> list[Path] | None:
    """Where each of ``count`` folded images goes: None for one ``.npy`` holding them all, else one
    image file, ``{i}``-numbered files (four digits: ``0000``), or files named after ``names``
    (else numbered) in a directory. The paths are checked before any work."""
    if output.suffix.lower() == ".npy":
        check_output_path(output)
        return None
    if output.is_dir() or str(output).endswith(os.sep):
        stems = [Path(n).stem for n in names]
        if len(stems) != count or len(set(stems)) != count or not all(map(_usable_stem, stems)):
            stems = [f"{i:04d}" for i in range(count)]
        return [output / f"{stem}.png" for stem in stems]
    if not output.suffix:
        raise PatchfoldError(
            f"'{output}' has no file type: use .npy, an image suffix (.png, .tif...) or an existing directory",
            param="output",
        )
    if "{i}" in str(output):
        return [Path(str(output).replace("{i}", f"{i:04d}")) for i in range(count)]
    if count > 1:
        raise PatchfoldError(
            f"output '{output}' is one image file but there are {count} images: put {{i}} in the "
            "name (out_{i}.png), give a directory, or write .npy"
        )
    return [output]


def write_images(output: Path, targets: list[Path] | None, images: np.ndarray) -> None:
    """Write folded images where :func:`image_targets` said: one ``.npy``, or image files."""
    if targets is None:
        save_npy(output, images)
    else:
        save_images(targets, images)


def save_images(targets: Sequence[Path], images: np.ndarray) -> None:
    """Write ``(N, C, H, W)`` as image files (or ``(N, C, D, H, W)`` volumes as multi-page TIFF),
    all or none: temporary files are renamed into place only when every one is written."""
    writers = []
    for target, pixels in zip(targets, images):
        writers.append(_volume_writer(pixels, target) if pixels.ndim == 4 else _image_writer(pixels, target))
    with atomic_paths(*targets) as temporaries:
        for write, temporary, target in zip(writers, temporaries, targets):
            try:
                write(temporary)
            except (KeyError, ValueError, OSError) as error:
                suffix = target.suffix.lower() or "file without suffix"
                raise PatchfoldError(f"cannot write '{target}' as a {suffix} image: {error}") from None


def _image_writer(pixels: np.ndarray, target: Path) -> Any:
    from PIL import Image

    if deep_png(pixels, target):  # 16 bits per sample kept, as a 16-bit PNG
        return deep_png_writer(pixels, target)
    if _tifffile_image(pixels, target):  # several channels of uint16/float32..., which Pillow cannot write
        import tifffile

        data = np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
        photometric = "rgb" if data.shape[-1] in (3, 4) else "minisblack"
        return lambda temporary: tifffile.imwrite(temporary, data, photometric=photometric, planarconfig="contig")
    image = Image.fromarray(to_image_array(pixels, target))
    image_format = Image.registered_extensions().get(target.suffix.lower())
    if image_format is None:
        raise PatchfoldError(f"'{target}': unknown image type {target.suffix!r}; use .png, .tif, .jpg, ... or .npy")
    return lambda temporary: image.save(temporary, format=image_format)


def _tifffile_image(pixels: np.ndarray, target: Path) -> bool:
    """Whether the 2-D image ``(C, H, W)`` goes to a ``.tif`` through tifffile: several channels of
    a dtype other than uint8, with tifffile installed."""
    if target.suffix.lower() not in (".tif", ".tiff") or pixels.ndim != 3 or pixels.shape[0] < 2:
        return False
    if pixels.dtype == np.uint8:
        return False
    try:
        import tifffile  # noqa: F401
    except ImportError:
        return False
    return True


def _volume_writer(pixels: np.ndarray, target: Path) -> Any:
    """A 3-D volume ``(C, D, H, W)`` as one multi-page TIFF (one page per slice)."""
    if target.suffix.lower() not in (".tif", ".tiff"):
        raise PatchfoldError(f"'{target}': a 3-D volume is written as .tif (multi-page) or .npy")
    try:
        import tifffile
    except ImportError:
        raise PatchfoldError(f"'{target}': writing a volume as TIFF needs tifffile (pip install tifffile)") from None
    pages = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    return lambda temporary: tifffile.imwrite(temporary, np.ascontiguousarray(pages))


def write_npy_header(handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Write a ``.npy`` header for a C-ordered array; return where the data starts."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    handle.seek(0)
    np.lib.format.write_array_header_2_0(handle, header) if _needs_v2(header) else np.lib.format.write_array_header_1_0(
        handle, header
    )
    return handle.tell()


def allocate_npy(handle: Any, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Write the header of a C-ordered ``.npy`` and size the file for all its data, so bands can be
    written in place; return where the data starts. Its blocks are reserved up front where the
    file system can (:func:`preallocate`)."""
    header = write_npy_header(handle, shape, dtype)
    size = header + math.prod(shape) * np.dtype(dtype).itemsize
    handle.truncate(size)
    preallocate(handle.fileno(), size)
    return header


def libc_function(name: str, argtypes: Sequence[Any], restype: Any) -> Any:
    """libc's function ``name`` (Linux) with these ctypes argument and result types, setting
    ``errno``; None off Linux or where this libc lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = list(argtypes), restype
    return function


@functools.cache
def _fallocate() -> Any:
    """libc's ``fallocate`` (Linux), or None: the system call itself, never glibc's
    ``posix_fallocate``, which on a file system without it writes a byte into every block."""
    import ctypes

    return libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], ctypes.c_int)


def preallocate(fd: int, size: int) -> None:
    """Reserve the blocks of the first ``size`` bytes of ``fd`` (keeping its length) where the file
    system supports it, so that a full disk stops the job here rather than midway, and so that
    replacing an older file with it costs no forced write-back (ext4 flushes a renamed file's
    delayed allocations: 55 ms for 200 MB here). A file system without it is left as it is."""
    function = _fallocate()
    if function is None or size <= 0:
        return
    if function(fd, 0, 0, size) != 0:
        import ctypes

        code = ctypes.get_errno()
        if code in (errno.ENOSPC, errno.EFBIG):
            raise OSError(code, os.strerror(code))


def _needs_v2(header: dict[str, Any]) -> bool:
    return len(repr(header)) > 65000


def write_at(fd: int, values: np.ndarray, offset: int) -> None:
    """Write all of ``values`` at byte ``offset`` of the open file ``fd`` (positioned writes may be short)."""
    view = memoryview(np.ascontiguousarray(values)).cast("B")
    positioned = getattr(os, "pwrite", None) or _seek_and_write
    while view:
        written = positioned(fd, view, offset)
        view = view[written:]
        offset += written


#: Serialises :func:`_seek_and_write`: a seek and the write after it must not interleave with
#: another thread's on the same descriptor.
_SEEK_LOCK = threading.Lock()


def _seek_and_write(fd: int, data: memoryview, offset: int) -> int:
    """``os.pwrite`` where the platform lacks it (Windows): seek, write, and put the descriptor's
    position back, so a file object sharing ``fd`` still finds it where it left it."""
    with _SEEK_LOCK:
        position = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.write(fd, data)
        finally:
            os.lseek(fd, position, os.SEEK_SET)


def write_rows(fd: int, header: int, shape: tuple[int, ...], values: np.ndarray, top: int, item: int = 0) -> None:
    """Write ``values`` ``(n, C, r, ...)``, rows ``[top, top + r)`` of items ``[item, item + n)``, into
    the C-ordered ``.npy`` of ``shape`` (and ``values``' dtype) whose data starts at ``header``."""
    plane = math.prod(shape[2:])
    row = plane // shape[2]
    for n in range(values.shape[0]):
        for channel in range(shape[1]):
            offset = header + (((item + n) * shape[1] + channel) * plane + top * row) * values.itemsize
            write_at(fd, values[n, channel], offset)


def _release(array: np.ndarray) -> None:
    """Drop a memory-mapped array's pages from this process (they stay in the page cache)."""
    import mmap

    mapping = getattr(array, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)  # neither madvise nor the advice on Windows
    if mapping is not None and hasattr(mapping, "madvise") and advice is not None:
        mapping.madvise(advice)
