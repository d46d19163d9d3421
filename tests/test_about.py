"""``patchfold --version`` and ``stats`` say which CPU engine will run (compiled loops, or the numpy
fallback and why), torch's build and CUDA, without importing numpy or torch for ``--version``."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import subprocess
import sys
from importlib import metadata

import patchfold
import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, command_env, ok
from patchfold import about
from patchfold.engines import compiled, native

BUILT = importlib.util.find_spec(native.MODULE) is not None


@pytest.mark.skipif(not BUILT, reason="the compiled loops were not built in this install")
def test_a_normal_install_reports_the_compiled_loops() -> None:
    engine = about.cpu_engine()
    assert engine == {"engine": "compiled", "path": importlib.util.find_spec(native.MODULE).origin}
    assert compiled.available()
    lines = ok("--version").stdout.splitlines()
    assert lines[0] == f"patchfold, version {patchfold.__version__}"
    assert lines[2] == f"CPU engine: compiled loops ({engine['path']})"
    assert ok("stats", "--size", "64,64", "-k", 8, "--json").stdout.count('"cpu_engine": "compiled loops (') == 1


def _not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native.importlib.util, "find_spec", lambda name: None)


def _fails_to_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, *args: object, **kwargs: object) -> ctypes.CDLL:
        raise OSError(f"{path}: cannot open shared object file")

    monkeypatch.setattr(native.ctypes, "CDLL", refuse)


def _struct_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    class Elsewhere(native.UnfoldDims):
        _fields_ = [("extra", ctypes.c_int64)]  # noqa: RUF012

    structs = tuple((name, Elsewhere if struct is native.UnfoldDims else struct) for name, struct in native.STRUCTS)
    monkeypatch.setattr(native, "STRUCTS", structs)


@pytest.mark.parametrize(
    ("spoil", "reason", "detail"),
    [
        (_not_built, "not built", "not compiled"),
        (_fails_to_load, "failed to load", "cannot open shared object file"),
        (_struct_mismatch, "struct mismatch", "pf_unfold_dims_size() is"),
    ],
)
def test_an_unusable_library_is_reported_as_the_numpy_fallback_and_why(
    monkeypatch: pytest.MonkeyPatch, spoil, reason: str, detail: str
) -> None:
    if reason != "not built" and not BUILT:
        pytest.skip("the compiled loops were not built in this install")
    spoil(monkeypatch)
    engine = about.cpu_engine()
    assert engine["engine"] == "numpy" and engine["reason"] == reason
    assert detail in engine["detail"]
    line = f"CPU engine: numpy fallback ({reason}: "
    assert any(text.startswith(line) for text in ok("--version").stdout.splitlines())
    stats = json.loads(ok("stats", "--size", "64,64", "-k", 8, "--json").stdout)
    assert stats["cpu_engine"].startswith(f"numpy fallback ({reason}: ")


def test_torch_and_cuda_are_read_from_metadata_and_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    report = about.engine_report()
    assert report["torch"]["version"] == metadata.version("torch")
    builds = {"2.13.0+cpu": "cpu", "2.13.0+cu126": "cuda", "2.13.0+rocm6.3": "rocm"}
    monkeypatch.setattr(about, "cuda_hardware_present", lambda: True)
    for version, build in builds.items():
        monkeypatch.setattr(about.metadata, "version", lambda name, version=version: version)
        assert about.torch_build() == {"version": version, "build": build}
        assert about.engine_report()["cuda"] == {"gpu": True, "torch_cuda": build == "cuda", "usable": build == "cuda"}
    # PyPI's Linux wheels carry no suffix: a CUDA build is one whose NVIDIA packages are installed
    monkeypatch.setattr(
        about.metadata, "requires", lambda name: ["nvidia-cuda-runtime-cu12==12.6; platform_system == 'Linux'"]
    )
    installed = {"torch": "2.13.0"}

    def version_of(name: str) -> str:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(about.metadata, "version", version_of)
    assert about.torch_build() == {"version": "2.13.0", "build": "cpu"}
    installed["nvidia-cuda-runtime-cu12"] = "12.6.77"
    assert about.torch_build() == {"version": "2.13.0", "build": "cuda"}
    del installed["torch"]
    assert about.torch_build() == {"version": None, "build": None}
    lines = ok("--version").stdout.splitlines()
    assert "torch: not installed" in lines
    assert "CUDA: not available (torch is not a CUDA build)" in lines


def test_version_imports_neither_numpy_nor_torch_in_a_fresh_process() -> None:
    code = (
        "import sys\n"
        "from patchfold.cli.main import main\n"
        "try:\n"
        "    main(['--version'], prog_name='patchfold')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('numpy', 'torch', 'rich', 'PIL') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "[]"
    assert [line.split(":")[0] for line in lines[1:-1]] == ["Python", "CPU engine", "torch", "CUDA"]


@pytest.mark.skipif(not HAS_COMMAND, reason="the patchfold console script is not installed")
def test_the_console_script_reports_the_engine() -> None:
    done = subprocess.run([COMMAND, "--version"], capture_output=True, text=True, env=command_env(), timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith(f"patchfold, version {patchfold.__version__}\nPython: ")
    assert "\nCPU engine: " in done.stdout and "\ntorch: " in done.stdout and "\nCUDA: " in done.stdout
