"""Torch's own OpenMP thread team, for patchfold's compiled loops on torch tensors.

A torch program runs its CPU ops on one OpenMP team; after each op those threads keep spinning for
a while, waiting for the next. Were patchfold to split its loops over a thread pool of its own,
its second thread would fight a spinning torch thread for the core, and a model's step would run
its unfolds and folds at single-thread speed or worse. So on torch tensors the loops run on
torch's team itself, with torch's thread count (``torch.set_num_threads`` governs both): found as
the one ``libgomp`` loaded in the process where torch's parallel backend is OpenMP (Linux builds).
Anywhere else (another backend, another platform, two OpenMP runtimes loaded) there is no team and
patchfold's own threads run the loops, as for numpy arrays. Imported only for tensors.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

import torch
from patchfold.engines import in_forked_child
from patchfold.engines.cpu import Team


def team() -> Team | None:
    """Torch's OpenMP team with torch's current thread count, or None where it cannot be used."""
    # libgomp's team does not survive a fork (its first parallel region in the child waits for
    # ever, torch's own ops included); patchfold's own threads do
    parallel = None if in_forked_child() else _gomp_parallel()
    return None if parallel is None else Team(parallel, torch.get_num_threads())


@cache
def _gomp_parallel() -> int | None:
    """The address of ``GOMP_parallel`` in the OpenMP runtime torch runs on, or None."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    paths = _loaded_libraries("libgomp")
    if len(paths) != 1:  # none, or two runtimes: which one torch's threads belong to is unknown
        return None
    try:  # the library already loaded (RTLD_NOLOAD: never a second copy)
        library = ctypes.CDLL(paths.pop(), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        return ctypes.cast(library.GOMP_parallel, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def _loaded_libraries(stem: str) -> set[str]:
    """Paths of the loaded shared libraries whose file name starts with ``stem`` (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return set()
    paths = {fields[-1] for fields in (line.split() for line in lines) if len(fields) >= 6}
    return {path for path in paths if os.path.basename(path).startswith(stem)}
