"""patchfold on platforms without Linux's extras (issue #18): CI runs on Linux, so these tests take
the calls away that macOS or Windows lack (positioned writes, the forkserver start method, /proc,
read leases, CPU affinity, madvise advice, the NVIDIA device files) and show that the library's
fallbacks give the same results and that every command still runs."""

from __future__ import annotations

import builtins
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import SAMPLES, ok, ok_json, pixels, sample
from patchfold import engines, memory, scheduling
from patchfold.engines import cpu
from patchfold.io import leases, read, write

_open = builtins.open


def _no_proc(file: object, *args: object, **kwargs: object) -> object:
    """``open`` on a system without /proc."""
    if str(file).startswith("/proc/"):
        raise FileNotFoundError(2, "No such file or directory", str(file))
    return _open(file, *args, **kwargs)


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process as on Windows or macOS: every Linux-only call patchfold makes is gone at once."""
    monkeypatch.delattr(os, "pwrite")
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError, as on Windows
    monkeypatch.setattr(memory, "open", _no_proc, raising=False)
    monkeypatch.setattr(memory, "_last_reading", (-np.inf, 0))
    import mmap

    monkeypatch.delattr(mmap, "MADV_DONTNEED")
    monkeypatch.setattr(read, "MAX_READ_BYTES", 1 << 10)  # inputs memory-mapped, where a lease would be taken
    return monkeypatch


# -- each fallback on its own ------------------------------------------------------------------------


def test_positioned_writes_without_pwrite_land_where_pwrite_puts_them(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(64))
    monkeypatch.delattr(os, "pwrite")
    with open(path, "r+b") as handle:
        handle.seek(5)
        write.write_at(handle.fileno(), np.arange(8, dtype=np.uint8), 40)
        write.write_at(handle.fileno(), np.full(3, 255, dtype=np.uint8), 0)
        assert os.lseek(handle.fileno(), 0, os.SEEK_CUR) == 5  # the file object's position is kept
    data = path.read_bytes()
    assert data[40:48] == bytes(range(8)) and data[:3] == b"\xff\xff\xff" and len(data) == 64


def test_positioned_writes_from_threads_without_pwrite(tmp_path: Path, monkeypatch) -> None:
    """The seek and the write of one thread never interleave with another's."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(64 * 256))
    monkeypatch.delattr(os, "pwrite")
    fd = os.open(path, os.O_WRONLY)
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: write.write_at(fd, np.full(256, i, np.uint8), i * 256), range(64)))
    finally:
        os.close(fd)
    assert np.array_equal(
        np.fromfile(path, np.uint8).reshape(64, 256), np.repeat(np.arange(64, dtype=np.uint8), 256).reshape(64, 256)
    )


def test_workers_start_by_spawn_where_there_is_no_forkserver(monkeypatch) -> None:
    assert scheduling.start_method() == "forkserver"  # Linux
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert scheduling.start_method() == "spawn"


def test_available_memory_without_proc(monkeypatch) -> None:
    monkeypatch.setattr(memory, "open", _no_proc, raising=False)
    linux = memory._read_available()
    assert linux > 0 and memory._meminfo_available() is None  # sysconf's free pages
    names = {k: v for k, v in os.sysconf_names.items() if k != "SC_AVPHYS_PAGES"}
    monkeypatch.setattr(os, "sysconf_names", names)  # macOS counts no free pages: half the memory
    assert memory._read_available() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    monkeypatch.delattr(os, "sysconf_names")  # Windows: no sysconf at all
    assert memory._read_available() == memory.UNKNOWN_AVAILABLE


def test_no_read_leases_without_fcntl(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "fcntl", None)
    path = tmp_path / "a.npy"
    np.save(path, np.arange(4096, dtype=np.float64))
    mapped = np.load(path, mmap_mode="r")
    assert leases.lease(path, mapped._mmap) is False
    assert leases.broken() == []


def test_cpu_count_without_affinity(monkeypatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    assert cpu.cpu_count() == max(1, os.cpu_count() or 1)


def test_no_gpu_is_probed_where_there_are_no_nvidia_device_files(monkeypatch) -> None:
    """macOS: neither /dev/nvidia0 nor /proc; ``--device auto`` is the CPU, without importing torch."""
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    monkeypatch.setattr(os, "listdir", lambda path: (_ for _ in ()).throw(FileNotFoundError(path)))
    assert engines.cuda_hardware_present() is False
    assert engines.resolve("auto") == ("cpu", "cpu")


@pytest.mark.parametrize("present", [True, False])
def test_the_gpu_probe_on_windows_looks_for_the_driver(tmp_path: Path, monkeypatch, present: bool) -> None:
    (tmp_path / "System32").mkdir()
    if present:
        (tmp_path / "System32" / "nvcuda.dll").write_bytes(b"")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("SYSTEMROOT", str(tmp_path))
    assert engines.cuda_hardware_present() is present


def test_stale_temporaries_are_kept_on_windows(monkeypatch) -> None:
    """There ``os.kill(pid, 0)`` would send Ctrl-C to a process group, not ask whether it lives."""

    def refuse(*args: object) -> None:
        raise AssertionError("os.kill must not be called on Windows")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", refuse)
    assert write._alive(2**22 + 12345) is True


# -- every command, with all of them gone ---------------------------------------------------------------


def test_unfold_and_fold_streamed_in_bands(tmp_path: Path, elsewhere) -> None:
    whole = ok_json("unfold", sample("rgb"), "-k", 16, "-s", 8, "-o", tmp_path / "whole.npy")
    banded = ok_json("unfold", sample("rgb"), "-k", 16, "-s", 8, "-o", tmp_path / "p.npy", "--max-memory", "40KB")
    assert whole["bands"] == 1 and banded["bands"] > 1
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), np.load(tmp_path / "whole.npy"))
    summary = ok_json("fold", tmp_path / "p.npy", "-o", tmp_path / "back.npy", "--max-memory", "40KB")
    assert summary["bands"] > 1
    ok("fold", tmp_path / "p.npy", "-o", tmp_path / "back.png")
    np.testing.assert_array_equal(pixels(tmp_path / "back.png"), pixels(sample("rgb")))


def test_stats_divisor_and_pictures(tmp_path: Path, elsewhere) -> None:
    assert ok_json("stats", "--size", "64,64", "-k", 8, "-s", 4)
    ok("divisor", sample("gray"), "-k", 9, "-s", 5, "--npy", tmp_path / "d.npy")
    ok("unfold", sample("gray"), "-k", 8, "-s", 8, "-o", tmp_path / "p.npy")
    ok("show", "grid", sample("gray"), "-k", 8, "-o", tmp_path / "grid.png")
    ok("show", "mosaic", tmp_path / "p.npy", "--count", "9", "-o", tmp_path / "m.png")
    ok("show", "divisor", sample("gray"), "-k", 8, "-s", 4, "-o", tmp_path / "div.png")
    assert all((tmp_path / name).stat().st_size > 0 for name in ("d.npy", "grid.png", "m.png", "div.png"))


def test_tiles_untile_and_apply(tmp_path: Path, elsewhere) -> None:
    ok("tiles", sample("gray"), "-k", 16, "-s", 8, "--format", "npy", "-o", tmp_path / "t", "--no-progress")
    ok("untile", tmp_path / "t", "-o", tmp_path / "back.png")
    np.testing.assert_array_equal(pixels(tmp_path / "back.png"), pixels(sample("gray")))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, 2, 30, 30), dtype=np.float32))
    np.save(tmp_path / "w.npy", np.ones((1, 2 * 4 * 4), np.float32))
    ok("apply", tmp_path / "x.npy", "--linear", tmp_path / "w.npy", "-k", 4, "-s", 2, "-o", tmp_path / "y.npy")
    assert np.load(tmp_path / "y.npy").shape[1] == 1


def test_batch_with_spawned_workers(tmp_path: Path, elsewhere) -> None:
    """Two local workers started by ``spawn`` (what Windows has) write the same dataset as one."""
    started: list[str | None] = []
    real_get_context = multiprocessing.get_context
    elsewhere.setattr(
        multiprocessing, "get_context", lambda method=None: started.append(method) or real_get_context(method)
    )
    sources = [SAMPLES / "scene_gray.png", SAMPLES / "scene_rgb.png"]
    args = ["-k", 16, "-s", 16, "--channels", 1, "--no-progress"]
    ok("batch", "unfold", *sources, *args, "-o", tmp_path / "one", "--workers", 1)
    ok("batch", "unfold", *sources, *args, "-o", tmp_path / "two", "--workers", 2)
    shards = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npy"))
    assert shards
    for shard in shards:
        np.testing.assert_array_equal(np.load(tmp_path / "one" / shard), np.load(tmp_path / "two" / shard))
    ok("batch", "tiles", *sources, "-k", 32, "-s", 32, "-o", tmp_path / "bt", "--workers", 2, "--no-progress")
    assert len([p for p in (tmp_path / "bt").iterdir() if p.is_dir()]) == 2
    assert started == ["spawn", "spawn"]


# -- numpy 1.26 as well as 2.x ----------------------------------------------------------------------------


@pytest.mark.parametrize("has_copy_keyword", [True, False])
def test_reshape_view_never_copies_on_either_numpy(monkeypatch, has_copy_keyword: bool) -> None:
    """numpy < 2.1 has no ``reshape(copy=False)``: the in-place shape change stands in for it, with
    the same ValueError where a view is impossible (this runs both branches on any numpy)."""
    from patchfold.engines import strided

    if has_copy_keyword and np.lib.NumpyVersion(np.__version__) < "2.1.0":
        pytest.skip("this numpy has no reshape(copy=)")
    monkeypatch.setattr(strided, "_RESHAPE_COPY", has_copy_keyword)
    base = np.arange(24.0).reshape(2, 3, 4)
    view = strided.reshape_view(base, (6, 4))
    assert np.shares_memory(view, base) and view.shape == (6, 4)
    view[0, 0] = -1
    assert base[0, 0, 0] == -1
    with pytest.raises(ValueError):
        strided.reshape_view(base.transpose(0, 2, 1), (6, 4))
