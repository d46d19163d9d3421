"""Shared helpers for the dataset tests (test_batch.py, test_dataset_resume.py, test_dataset_torch.py,
test_dataset_zarr.py).

Plain functions rather than pytest fixtures, as in cli_fixtures.py: the test modules import what
they need and wrap it in their own fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import patchfold
import pytest
from patchfold.datasets import build


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (by its relative POSIX path) with its bytes."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def stop_after(events: Generator[Any, None, None], images: int) -> None:
    """Run the dataset job ``events`` until ``images`` images have finished, then close it (as
    Ctrl-C stops a run)."""
    finished = 0
    for event in events:
        finished += isinstance(event, build.ImageResult)
        if finished == images:
            break
    events.close()


def kill_and_resume_command(args: list[str], killed: Path, fresh: Path, done: Path, images: int) -> None:
    """``args`` (a ``batch unfold`` command of ``images`` images, less ``-o``) run into ``killed``
    and killed (SIGKILL) once ``done`` lists 3 finished images, which the dataset must then hold
    as incomplete; run again there to the end with ``--json``, skipping at least those; and run
    whole into ``fresh``. The caller compares ``killed`` with ``fresh``."""
    process = subprocess.Popen([*args, "-o", str(killed)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (done.is_dir() and len(os.listdir(done)) >= 3):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    recorded = len(os.listdir(done))
    assert 3 <= recorded < images, "the run should have been killed part-way"
    with pytest.raises(patchfold.PatchfoldError, match="incomplete"):
        patchfold.load_dataset(killed)
    resumed = subprocess.run([*args, "-o", str(killed), "--json"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] >= recorded and summary["done"] + summary["skipped"] == images
    whole = subprocess.run([*args, "-o", str(fresh)], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr


def dataloader_batches(dataset: Any, context: str) -> Iterator[tuple[Any, list[int]]]:
    """The batches of 12 a shuffled torch DataLoader with two ``context`` workers gives of a dataset
    loaded ``with_position``: each batch's patches and the dataset rows they are (found by image
    and block in the index)."""
    import torch

    where = {(int(r[0]), int(r[1]), int(r[2])): i for i, r in enumerate(dataset.index)}
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=12,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=2,
        multiprocessing_context=context,
    )
    for patches, images, blocks in loader:
        yield patches, [where[(image, *block)] for image, block in zip(images.tolist(), blocks.tolist())]
