"""A resumed ``batch tiles`` run keeps a finished image directory only while it is whole: one
whose manifest is unreadable, or that lacks a tile its manifest lists, is written again and
replaces it (the same files as the first run); whole directories are skipped untouched. A
directory without a manifest is not known to be patchfold's: it is refused, as before, untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_fixtures import invoke


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(tmp_path: Path, *sources: Path) -> dict:
    result = invoke("batch", "tiles", *sources, "-k", 16, "-s", 16, "-o", tmp_path / "t", "--workers", 1,
                    "--no-progress", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("damage", ["tile deleted", "manifest unreadable", "whole"])
def test_a_resumed_run_redoes_an_image_directory_that_is_not_whole(tmp_path: Path, damage: str) -> None:
    rng = np.random.default_rng(2)
    sources = []
    for name in ("a", "b"):
        sources.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(sources[-1])
    run(tmp_path, *sources)
    first = files(tmp_path / "t")
    image = tmp_path / "t" / "000001_b"
    tiles = sorted(image.glob("*.png"))
    if damage == "tile deleted":
        tiles[3].unlink()
    elif damage == "manifest unreadable":
        (image / "manifest.json").write_text("{not json")
    kept = (tmp_path / "t" / "000000_a" / "manifest.json").stat().st_mtime_ns
    summary = run(tmp_path, *sources)
    assert files(tmp_path / "t") == first  # every tile back, byte for byte; no temporaries left
    assert (summary["done"], summary["skipped"]) == ((0, 2) if damage == "whole" else (1, 1))
    assert (tmp_path / "t" / "000000_a" / "manifest.json").stat().st_mtime_ns == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "t"]
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["complete"] is True


def test_a_directory_without_a_manifest_is_refused_untouched(tmp_path: Path) -> None:
    source = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(source)
    run(tmp_path, source)
    (tmp_path / "t" / "000000_a" / "manifest.json").unlink()
    before = files(tmp_path / "t" / "000000_a")
    result = invoke("batch", "tiles", source, "-k", 16, "-s", 16, "-o", tmp_path / "t", "--workers", 1, "--no-progress")
    assert result.exit_code == 1 and "not empty" in result.stderr
    assert files(tmp_path / "t" / "000000_a") == before


def test_a_damaged_image_whose_redo_fails_leaves_the_dataset_incomplete(tmp_path: Path) -> None:
    sources = [tmp_path / "a.png", tmp_path / "b.png"]
    for source in sources:
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(source)
    run(tmp_path, *sources)
    next((tmp_path / "t" / "000001_b").glob("*.png")).unlink()
    sources[1].write_text("not an image")
    result = invoke(
        "batch", "tiles", *sources, "-k", 16, "-s", 16, "-o", tmp_path / "t", "--workers", 1, "--no-progress"
    )
    assert result.exit_code == 1
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["complete"] is False


def test_an_interrupted_replace_puts_the_old_directory_back(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C between moving the old directory aside and the new one in (the two-step path, where
    no one-step swap is available): the old directory goes back."""
    from patchfold.jobs import tiles

    image = tmp_path / "img"
    image.mkdir()
    (image / "kept.txt").write_text("old")
    monkeypatch.setattr(tiles, "_exchanged", lambda first, second: False)
    real_replace = os.replace

    def interrupted(source, target):
        real_replace(source, target)
        if Path(target).name == "old":
            raise KeyboardInterrupt

    monkeypatch.setattr(tiles.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), tiles._staged(image, replace=True) as staging:
        (staging / "new.txt").write_text("new")
    assert (image / "kept.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["img"]


def test_a_killed_replace_is_put_back_by_the_next_run(tmp_path: Path) -> None:
    """SIGKILL in that window leaves the old directory only in the dead run's ``.bak`` temporary:
    the next run puts it back before clearing stale temporaries, then redoes what it lacks."""
    source = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(source)
    run(tmp_path, source)
    first = files(tmp_path / "t")
    image = tmp_path / "t" / "000000_a"
    next(image.glob("*.png")).unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid no run holds any more
    aside = tmp_path / "t" / f".000000_a.{dead.pid}-x1.bak"
    aside.mkdir()
    os.replace(image, aside / "old")
    summary = run(tmp_path, source)
    assert files(tmp_path / "t") == first and summary["done"] == 1
