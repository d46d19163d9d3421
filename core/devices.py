"""Choosing where work runs, without importing torch unless a GPU could be used."""

from __future__ import annotations

import os

from patchfold.errors import PatchfoldError


def cuda_hardware_present() -> bool:
    """Cheap check for an NVIDIA GPU (no torch import)."""
    if os.path.exists("/dev/nvidia0"):
        return True
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def resolve(device: str, engine: str = "auto") -> tuple[str, str]:
    """Map ``--device``/``--engine`` to a concrete ``(device, engine)``.

    ``auto`` picks CUDA only where a GPU and a CUDA build of torch are present; CUDA always runs
    on the torch engine, and the CPU defaults to patchfold's own engine.
    """
    if device == "auto":
        device = "cpu"
        if engine != "cpu" and cuda_hardware_present():
            import torch

            if torch.cuda.is_available():
                device = "cuda"
    if device == "cpu":
        return "cpu", "torch" if engine == "torch" else "cpu"
    if engine == "cpu":
        raise PatchfoldError(
            f"engine 'cpu' cannot run on device {device!r}; use --engine torch or auto", param="engine"
        )
    from patchfold import torch_engine

    torch_engine.resolve_device(device)
    return device, "torch"
