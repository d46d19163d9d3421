"""Shell completion (click's ``_PATCHFOLD_COMPLETE``), run for real as a shell would: the console
script (and ``python -m patchfold``) in a subprocess, with the COMP_WORDS/COMP_CWORD a shell's
completion function sets. Commands load lazily (cli/main.py's LazyGroup); completion must still see
every command, its options and their choices."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from cli_fixtures import COMMAND, HAS_COMMAND, command_env

pytestmark = pytest.mark.skipif(not HAS_COMMAND, reason="the patchfold console script is not installed")


def complete(line: str, shell: str = "bash", module: bool = False) -> list[str]:
    """The candidates for the last word of ``line`` (a trailing space: a new, empty word)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    env = command_env(COMP_WORDS=line, COMP_CWORD=str(cword), _PATCHFOLD_COMPLETE=f"{shell}_complete")
    program = [sys.executable, "-m", "patchfold"] if module else [str(COMMAND)]
    done = subprocess.run(program, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    if shell == "bash":  # "type,value" per line
        return [item.split(",", 1)[1] for item in done.stdout.splitlines()]
    return done.stdout.splitlines()[1::3]  # zsh: type, value, help per candidate


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("patchfold un", ["unfold", "untile"]),
        ("patchfold ", ["apply", "batch", "divisor", "fold", "sample", "show", "stats", "tiles", "unfold", "untile"]),
        ("patchfold unfold --la", ["--layout"]),
        ("patchfold unfold --padding-mode ", ["zeros", "reflect", "replicate", "circular"]),
        ("patchfold unfold --padding-mode re", ["reflect", "replicate"]),
        ("patchfold unfold a.png --layout ", ["ncl", "nlc"]),
        ("patchfold fold p.npy --window ", ["none", "hann", "triangular", "gaussian", "pyramid"]),
        ("patchfold apply a.png --device c", ["cpu", "cuda"]),
        ("patchfold batch ", ["tiles", "unfold"]),
        ("patchfold batch unfold --work", ["--workers"]),
        ("patchfold show ", ["divisor", "grid", "mosaic"]),
    ],
)
def test_bash_completion(line: str, expected: list[str]) -> None:
    assert complete(line) == expected


def test_zsh_completion_and_python_m() -> None:
    assert complete("patchfold un", shell="zsh") == ["unfold", "untile"]
    assert complete("patchfold stats --lay", module=True) == ["--layout"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_scripts_are_generated(shell: str) -> None:
    done = subprocess.run(
        [COMMAND], capture_output=True, text=True, env=command_env(_PATCHFOLD_COMPLETE=f"{shell}_source"), timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "_patchfold_completion" in done.stdout and f"_PATCHFOLD_COMPLETE={shell}_complete" in done.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_readme_bash_line_defines_the_completion_function() -> None:
    script = f'eval "$(_PATCHFOLD_COMPLETE=bash_source {COMMAND})" && complete -p patchfold'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=command_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "_patchfold_completion" in done.stdout
