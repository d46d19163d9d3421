"""Compiled loops on torch's own OpenMP team (``patchfold.engines.torch_threads``): recorded calls
run once each, give what patchfold's own threads give, and the team is used only where it is safe."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import patchfold
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patchfold.engines import compiled, cpu
from patchfold.errors import PatchfoldError

torch = pytest.importorskip("torch")
from patchfold.engines import torch_threads  # noqa: E402  (needs torch)

if not compiled.available():
    pytest.skip("the optional C loops were not built here", allow_module_level=True)


@pytest.fixture
def team() -> cpu.Team:
    found = torch_threads.team()
    if found is None:
        pytest.skip("torch here does not run on a libgomp team")
    return cpu.Team(found.parallel, 3)  # more threads than cores: pieces shared unevenly


@pytest.fixture
def always_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_PARALLEL_MIN_BYTES", 0)


def unfold_and_fold(x: np.ndarray, geometry: patchfold.Geometry, layout: str, threads: int):
    cols = np.empty(geometry.unfold_shape(x.shape[0], x.shape[1], layout), x.dtype)
    cpu.unfold_into(x, geometry, cols, layout, threads=threads)
    return cols, cpu.fold_padded(cols, geometry, layout, threads=threads)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.tuples(st.integers(6, 40), st.integers(6, 40)),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    layout=st.sampled_from(["ncl", "nlc"]),
    dtype=st.sampled_from([np.uint8, np.float32, np.float64]),
    threads=st.integers(1, 4),
)
def test_loops_on_the_team_equal_the_loops_on_own_threads(
    team: cpu.Team, always_parallel: None, size, kernel, stride, padding, dilation, layout, dtype, threads
) -> None:
    size = tuple(max(s, (k - 1) * dilation + 1) for s, k in zip(size, kernel))
    geometry = patchfold.Geometry.create(size, kernel, stride=stride, padding=padding, dilation=dilation)
    x = np.random.default_rng(1).integers(0, 200, (2, 3, *size)).astype(dtype)
    own_cols, own_sum = unfold_and_fold(x, geometry, layout, threads)
    with cpu.on_team(team):
        team_cols, team_sum = unfold_and_fold(x, geometry, layout, threads)
    np.testing.assert_array_equal(team_cols, own_cols)
    np.testing.assert_array_equal(team_sum, own_sum)


def test_a_batch_makes_each_recorded_call_once(team: cpu.Team, always_parallel: None) -> None:
    geometry = patchfold.Geometry.create((64, 64), 4, stride=2)
    x = np.arange(2 * 3 * 64 * 64, dtype=np.float32).reshape(2, 3, 64, 64)
    cols = np.zeros(geometry.unfold_shape(2, 3), np.float32)
    with cpu.on_team(team):
        cpu.unfold_into(x, geometry, cols, threads=4)
        summed = cpu.fold_padded(cols, geometry, threads=4)
    # made twice, a call would double its sums; skipped, it would leave zeros
    np.testing.assert_array_equal(summed, cpu.fold_padded(cpu.unfold(x, geometry), geometry, threads=1))
    np.testing.assert_array_equal(cols, cpu.unfold(x, geometry, threads=1))


def test_recording_defers_calls_until_the_batch_runs() -> None:
    geometry = patchfold.Geometry.create((8, 8), 2, stride=2)
    x = np.ones((1, 1, 8, 8), np.float32)
    cols = np.zeros(geometry.unfold_shape(1, 1), np.float32)
    batch = compiled.Batch()
    with compiled.recording(batch):
        cpu.unfold_into(x, geometry, cols, threads=1)
        batch.end_piece()
    assert not cols.any()  # recorded, not made
    batch.run(None, 1)  # no team: this thread makes them
    assert (cols == 1).all()


def test_a_batch_with_an_open_piece_refuses_to_run() -> None:
    geometry = patchfold.Geometry.create((8, 8), 2)
    batch = compiled.Batch()
    with compiled.recording(batch):
        cpu.unfold_into(np.ones((1, 1, 8, 8)), geometry, np.empty(geometry.unfold_shape(1, 1)), threads=1)
    with pytest.raises(PatchfoldError, match="end its last piece"):
        batch.run(None, 1)


def test_tensors_run_on_torchs_team_and_numpy_on_own_threads(
    monkeypatch: pytest.MonkeyPatch, always_parallel: None
) -> None:
    if torch_threads.team() is None:
        pytest.skip("torch here does not run on a libgomp team")
    teams: list[int | None] = []
    run = compiled.Batch.run

    def spy(self, parallel, threads) -> None:
        teams.append(parallel)
        run(self, parallel, threads)

    monkeypatch.setattr(compiled.Batch, "run", spy)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    cols = patchfold.unfold(x, 4, stride=2)
    patchfold.fold(cols, (32, 32), 4, stride=2).sum().backward()  # forward and backward on the team
    assert len(teams) == 4 and all(parallel == torch_threads.team().parallel for parallel in teams)
    teams.clear()
    patchfold.unfold(x.detach().numpy(), 4, stride=2)
    assert teams == []


def test_torchs_thread_count_governs_tensors(monkeypatch: pytest.MonkeyPatch, always_parallel: None) -> None:
    if torch_threads.team() is None:
        pytest.skip("torch here does not run on a libgomp team")
    made: list[int] = []
    run = compiled.Batch.run

    def spy(self, parallel, threads) -> None:
        made.append(threads)
        run(self, parallel, threads)

    monkeypatch.setattr(compiled.Batch, "run", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        patchfold.unfold(torch.ones(1, 3, 32, 32), 4)
        assert made == []  # one thread: no team, no batch
        torch.set_num_threads(2)
        patchfold.unfold(torch.ones(1, 3, 32, 32), 4)
        assert made == [2]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "case, libraries, backend",
    [
        ("no libgomp loaded", set(), "ATen parallel backend: OpenMP"),
        ("two OpenMP runtimes", {"/a/libgomp.so.1", "/b/libgomp-1234.so.1"}, "ATen parallel backend: OpenMP"),
        ("another backend", {"/a/libgomp.so.1"}, "ATen parallel backend: native thread pool"),
    ],
)
def test_no_team_where_torchs_cannot_be_found(monkeypatch: pytest.MonkeyPatch, case, libraries, backend) -> None:
    torch_threads._gomp_parallel.cache_clear()
    monkeypatch.setattr(torch_threads, "_loaded_libraries", lambda stem: set(libraries))
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: backend)
    try:
        assert torch_threads.team() is None, case
        x = torch.randn(1, 2, 40, 40)
        torch.testing.assert_close(patchfold.unfold(x, 3), torch.nn.functional.unfold(x, 3), rtol=0, atol=0)
    finally:
        monkeypatch.undo()
        torch_threads._gomp_parallel.cache_clear()


def test_loaded_libraries_reads_this_process_map_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert any("python" in path or "libc" in path for path in torch_threads._loaded_libraries("lib"))

    def absent(*args, **kwargs):
        raise FileNotFoundError("/proc/self/maps")

    monkeypatch.setattr("builtins.open", absent)  # macOS, Windows: no /proc
    assert torch_threads._loaded_libraries("libgomp") == set()


def test_a_forked_child_runs_on_its_own_threads() -> None:
    # libgomp's team, and a thread pool made before the fork, do not survive it: work handed to
    # either would wait for ever in the child
    script = textwrap.dedent(
        """
        import os, numpy as np, torch, patchfold
        from patchfold.engines import cpu
        cpu._PARALLEL_MIN_BYTES = 0
        x = torch.randn(2, 3, 128, 128)
        expected = patchfold.unfold(x, 8, stride=4).numpy()  # on torch's team
        patchfold.unfold(x.numpy(), 8, stride=4)  # on patchfold's pool
        pid = os.fork()
        if pid == 0:  # torch's own parallel ops would wait for ever here: numpy compares
            same = np.array_equal(patchfold.unfold(x, 8, stride=4).numpy(), expected)
            same &= np.array_equal(patchfold.unfold(x.numpy(), 8, stride=4), expected)
            os._exit(0 if same else 3)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
