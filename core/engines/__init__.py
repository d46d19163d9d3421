"""The engines and the one place that chooses between them.

``cpu`` is patchfold's own engine (compiled loops, numpy's strided copies where they did not build);
``torch`` runs PyTorch's ops (CPU or CUDA). :func:`select` decides for an array or tensor,
:func:`resolve` for a command's ``--device``/``--engine``; torch is imported only when it is needed.
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType
from typing import Any

from patchfold.errors import PatchfoldError

#: ``auto`` uses the CPU engine for CPU data and the torch engine for CUDA tensors.
ENGINES = ("auto", "cpu", "torch")

_forked = False


def _after_fork() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork)


def in_forked_child() -> bool:
    """Whether this process was forked from one that had used patchfold's engines."""
    return _forked


def is_tensor(x: object) -> bool:
    """True for a torch tensor (subclasses too, wherever they are defined), decided without
    importing torch: an object can only be a tensor once torch has been imported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise PatchfoldError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}", param="engine")
    return engine


def select(x: Any, engine: str = "auto") -> str:
    """The engine module (``cpu``, ``autograd`` or ``torch``) that runs an operation on ``x``.

    numpy arrays and CPU tensors run on patchfold's CPU engine; a CPU tensor that needs gradients,
    or holds bfloat16 (which numpy lacks), on the same loops inside autograd Functions
    (``autograd``); tensors on a GPU, tensors being traced or compiled (:func:`tracing`), or
    anything with ``engine="torch"``, on PyTorch's ops.
    """
    check_engine(engine)
    if not is_tensor(x):
        return "torch" if engine == "torch" else "cpu"
    if engine == "cpu" and x.device.type != "cpu":
        raise PatchfoldError(f"engine 'cpu' cannot run on a tensor on {x.device}", param="engine")
    if engine == "torch" or x.device.type != "cpu" or tracing(x):
        return "torch"
    if str(x.dtype) == "torch.bfloat16" or _needs_grad(x):
        return "autograd"
    return "cpu"


def load(name: str) -> ModuleType:
    """The engine module ``cpu``, ``autograd`` or ``torch``: each has ``take``, ``unfold``, ``fold``,
    ``fold_normalised`` (None where the engine has no one-pass normalised fold) and ``divisor``
    with the same signatures (the torch-based ones are imported only here, when
    first used)."""
    if name == "torch":
        from patchfold.engines import torch_engine

        return torch_engine
    if name == "autograd":
        from patchfold.engines import autograd

        return autograd
    from patchfold.engines import cpu

    return cpu


def scheduled(x: Any) -> AbstractContextManager[None]:
    """The block an operation on ``x`` runs its CPU loops in: on torch's own OpenMP team for CPU
    tensors (see :mod:`patchfold.engines.torch_threads`), on patchfold's threads otherwise."""
    if not is_tensor(x) or x.device.type != "cpu":
        return nullcontext()
    from patchfold.engines import cpu, torch_threads

    return cpu.on_team(torch_threads.team())


def give_back(result: Any, original: Any) -> Any:
    """An engine's result as the caller's type: numpy for numpy input, a tensor for a tensor."""
    if is_tensor(original):
        if is_tensor(result):
            return result
        import torch

        return torch.from_numpy(result)
    return result.cpu().numpy() if is_tensor(result) else result


def tracing(x: Any) -> bool:
    """Whether ``x`` is a tensor seen by ``torch.jit.trace``, ``torch.compile`` or ``torch.export``,
    or one that ``torch.func`` transforms (vmap, grad, jvp...) or forward-mode AD carry: those see
    torch's ops only (numpy's work would be baked in as a constant, drop a tangent, or fail)."""
    if not is_tensor(x):
        return False
    import torch

    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    functorch = getattr(torch._C, "_functorch", None)
    if functorch is not None and functorch.is_functorch_wrapped_tensor(x):
        return True
    if "Batched" in str(torch._C._dispatch_keys(x)):  # the vmap of a vectorised backward (Batched, FuncTorchBatched)
        return True
    from torch.autograd import forward_ad

    return forward_ad._current_level >= 0 and forward_ad.unpack_dual(x).tangent is not None


def _needs_grad(x: Any) -> bool:
    import torch

    return bool(x.requires_grad) and torch.is_grad_enabled()


def cuda_hardware_present() -> bool:
    """Cheap check for an NVIDIA GPU (no torch import): its device files on Linux, the driver's
    ``nvcuda.dll`` on Windows; never on macOS, for which torch has no CUDA build."""
    if sys.platform == "win32":
        system = os.environ.get("SYSTEMROOT", r"C:\Windows")
        return os.path.exists(os.path.join(system, "System32", "nvcuda.dll"))
    if os.path.exists("/dev/nvidia0"):
        return True
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:  # no driver, or no /proc (macOS)
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
