"""Every Python example in README.md runs as shown (in a scratch directory holding the dataset its
dataset example opens), so the README cannot drift from the library."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from patchfold import Blocks
from patchfold.datasets import build

README = Path(__file__).resolve().parent.parent / "README.md"
SAMPLES = README.parent / "sample_images"
BLOCKS = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[str]:
    return BLOCKS.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_examples() -> None:
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = python_blocks()[index]
    monkeypatch.chdir(tmp_path)
    if '"dataset/"' in code:
        sources = [str(SAMPLES / "scene_rgb.png")]
        list(build.unfold_dataset(sources, tmp_path / "dataset", Blocks(32, stride=32), workers=1))
        code = code.replace("num_workers=4", "num_workers=0")  # the loop, not the worker start-up, is the point
    exec(compile(code, f"README.md example {index + 1}", "exec"), {"__name__": "readme_example"})


def test_readme_apply_example_runs_with_the_model_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The apply section's three-line model, then its `patchfold apply ... --model model.pt` line."""
    import shlex

    from cli_fixtures import ok

    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Run a model on every patch") :]
    model_code = next(block for block in python_blocks() if "model.pt" in block)
    command = next(line for line in section.splitlines() if line.startswith("patchfold apply") and "--model" in line)
    monkeypatch.chdir(tmp_path)
    exec(compile(model_code, "README.md apply model", "exec"), {"__name__": "readme_example"})
    (tmp_path / "out").mkdir()
    args = [arg.replace("sample_images/", f"{SAMPLES}/") for arg in shlex.split(command)[1:]]
    ok(*args)
    assert (tmp_path / "out" / "applied.png").exists()
