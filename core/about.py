"""What will run here: patchfold's version, Python, the CPU engine, torch and CUDA.

:func:`engine_report` is what ``patchfold --version`` prints, found without importing numpy or torch
(the compiled loops are checked through ctypes, torch's build is read from its installed metadata,
the GPU from the operating system), so it answers in milliseconds and works where torch is broken.

>>> report = engine_report()
>>> sorted(report)
['cpu_engine', 'cuda', 'python', 'torch', 'version']
>>> report["cpu_engine"]["engine"] in ("compiled", "numpy")
True
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from patchfold._version import __version__
from patchfold.engines import cuda_hardware_present, native


def cpu_engine() -> dict[str, Any]:
    """The CPU engine unfold and fold run on: ``{"engine": "compiled", "path": ...}`` where the
    compiled loops load and agree with patchfold's structs, else ``{"engine": "numpy", "reason":
    "not built" | "failed to load" | "struct mismatch", "detail": ..., "path": ...}``."""
    loaded = native.load()
    if loaded.library is not None:
        return {"engine": "compiled", "path": loaded.path}
    return {"engine": "numpy", "reason": loaded.reason, "detail": loaded.detail, "path": loaded.path}


def torch_build() -> dict[str, Any]:
    """torch's installed version and build, from its metadata (torch is not imported):
    ``{"version": None}`` where it is not installed; ``build`` is ``"cpu"`` (a ``+cpu`` wheel, or
    one whose NVIDIA runtime packages are absent), ``"cuda"`` or ``"rocm"``."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return {"version": None, "build": None}
    local = version.partition("+")[2]
    if local.startswith("cpu"):
        build = "cpu"
    elif local.startswith("rocm"):
        build = "rocm"
    elif local.startswith("cu"):
        build = "cuda"
    else:  # PyPI's Linux wheels have no suffix: a CUDA build exactly when its NVIDIA packages came with it
        build = "cuda" if _nvidia_runtime_installed() else "cpu"
    return {"version": version, "build": build}


def _nvidia_runtime_installed() -> bool:
    requirements = metadata.requires("torch") or []
    names = {r.split(";")[0].split("=")[0].split(">")[0].split("<")[0].strip() for r in requirements}
    for name in sorted(n for n in names if n.lower().startswith("nvidia-")):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return True
    return False


def engine_report() -> dict[str, Any]:
    """patchfold's version, Python's, the CPU engine (:func:`cpu_engine`), torch (:func:`torch_build`)
    and CUDA: ``gpu`` (an NVIDIA GPU is present), ``torch_cuda`` (torch is a CUDA build) and
    ``usable`` (both: ``--device auto`` will pick CUDA, unless torch then finds no working driver)."""
    torch = torch_build()
    gpu = cuda_hardware_present()
    torch_cuda = torch["build"] == "cuda"
    return {
        "version": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "cpu_engine": cpu_engine(),
        "torch": torch,
        "cuda": {"gpu": gpu, "torch_cuda": torch_cuda, "usable": gpu and torch_cuda},
    }


def engine_line(engine: dict[str, Any]) -> str:
    """One line for :func:`cpu_engine`'s answer: ``compiled loops (PATH)`` or ``numpy fallback
    (REASON: DETAIL)``."""
    if engine["engine"] == "compiled":
        return f"compiled loops ({engine['path']})"
    return f"numpy fallback ({engine['reason']}: {engine['detail']})"


def report_lines(report: dict[str, Any]) -> list[str]:
    """:func:`engine_report` as the lines ``patchfold --version`` prints."""
    torch, cuda = report["torch"], report["cuda"]
    torch_text = "not installed" if torch["version"] is None else f"{torch['version']} ({torch['build']} build)"
    if cuda["usable"]:
        cuda_text = "available (NVIDIA GPU and a CUDA build of torch)"
    else:
        missing = [
            *([] if cuda["gpu"] else ["no NVIDIA GPU found"]),
            *([] if cuda["torch_cuda"] else ["torch is not a CUDA build"]),
        ]
        cuda_text = f"not available ({'; '.join(missing)})"
    return [
        f"patchfold, version {report['version']}",
        f"Python: {report['python']}",
        f"CPU engine: {engine_line(report['cpu_engine'])}",
        f"torch: {torch_text}",
        f"CUDA: {cuda_text}",
    ]
