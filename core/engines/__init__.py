"""The engines and the one place that chooses between them.

``cpu`` is patchfold's own engine (compiled loops, numpy's strided copies where they did not build);
``torch`` runs PyTorch's ops (CPU or CUDA). :func:`select` decides for an array or tensor,
:func:`resolve` for a command's ``--device``/``--engine``; torch is imported only when it is needed.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from patchfold.errors import PatchfoldError

#: ``auto`` uses the CPU engine for CPU data and the torch engine for CUDA tensors.
ENGINES = ("auto", "cpu", "torch")


def is_tensor(x: object) -> bool:
    """True for a torch tensor, decided without importing torch."""
    return type(x).__module__.split(".")[0] == "torch"


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise PatchfoldError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}", param="engine")
    return engine


def select(x: Any, engine: str = "auto") -> str:
    """The engine (``cpu`` or ``torch``) that runs an operation on ``x``.

    Tensors on a GPU, bfloat16 tensors and tensors that need gradients run on torch; numpy arrays
    and other CPU tensors on patchfold's CPU engine unless ``engine="torch"``.
    """
    check_engine(engine)
    if not is_tensor(x):
        return "torch" if engine == "torch" else "cpu"
    if engine == "cpu" and x.device.type != "cpu":
        raise PatchfoldError(f"engine 'cpu' cannot run on a tensor on {x.device}", param="engine")
    if engine == "torch" or x.device.type != "cpu" or str(x.dtype) == "torch.bfloat16":
        return "torch"
    if _needs_grad(x):
        if engine == "cpu":
            raise PatchfoldError(
                "engine 'cpu' does not record gradients; use engine='auto' or 'torch' for a tensor that requires grad",
                param="engine",
            )
        return "torch"
    return "cpu"


def load(name: str) -> ModuleType:
    """The engine module ``cpu`` or ``torch``: each has ``take``, ``unfold``, ``fold`` and ``divisor``
    with the same signatures (the torch one is imported only here, when first used)."""
    if name == "torch":
        from patchfold.engines import torch_engine

        return torch_engine
    from patchfold.engines import cpu

    return cpu


def give_back(result: Any, original: Any) -> Any:
    """An engine's result as the caller's type: numpy for numpy input, a tensor for a tensor."""
    if is_tensor(original):
        if is_tensor(result):
            return result
        import torch

        return torch.from_numpy(result)
    return result.cpu().numpy() if is_tensor(result) else result


def _needs_grad(x: Any) -> bool:
    import torch

    return bool(x.requires_grad) and torch.is_grad_enabled()


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
    check_engine(engine)
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
            f"engine 'cpu' cannot run on device {device!r}; use engine=torch or engine=auto", param="engine"
        )
    from patchfold.engines import torch_engine

    torch_engine.resolve_device(device)
    return device, "torch"
