"""The sdist carries everything the test suite needs (issue #18): MANIFEST.in's rules, applied by
setuptools' own file list to this tree, match every file under the folders the tests, examples and
benchmarks read, and every local module a test imports. No build: it runs in a fraction of a second."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Folders shipped whole: the tests and their helpers, the sample images, the README's demo
#: scripts and pictures, the benchmarks.
SHIPPED = ("tests", "sample_images", "demo", "docs", "bench")
#: What a run leaves in those folders, which the sdist rightly leaves out.
LEFT_OUT_DIRS = ("__pycache__", ".pytest_cache", ".hypothesis")
LEFT_OUT_SUFFIXES = (".pyc", ".pyo", ".so")
#: Output folders the benchmarks write (git ignores them too).
BENCH_OUTPUTS = ("stream-", "batch-")


def manifest_files() -> set[str]:
    """The files MANIFEST.in adds to an sdist built from this tree, as setuptools reads it."""
    egg_info = pytest.importorskip("setuptools.command.egg_info")
    file_list = egg_info.FileList()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the rules are relative to the project root
        for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                file_list.process_template_line(line)
    return {Path(name).as_posix() for name in file_list.files}


def wanted_files() -> set[str]:
    found = {path for folder in SHIPPED for path in (ROOT / folder).rglob("*") if path.is_file()}
    found |= set((ROOT / "core").glob("*.h"))
    return {path.relative_to(ROOT).as_posix() for path in found if not _left_out(path.relative_to(ROOT))}


def _left_out(path: Path) -> bool:
    if any(part in LEFT_OUT_DIRS for part in path.parts) or path.suffix in LEFT_OUT_SUFFIXES:
        return True
    return path.parts[0] == "bench" and len(path.parts) > 2 and path.parts[1].startswith(BENCH_OUTPUTS)


def test_manifest_ships_every_file_the_tests_and_examples_use() -> None:
    missing = sorted(wanted_files() - manifest_files())
    assert not missing, f"MANIFEST.in leaves these out of the sdist: {missing}"


def test_the_folders_checked_are_there() -> None:
    """Guards the check above: an empty tree (a renamed folder) would pass it vacuously."""
    wanted = wanted_files()
    for required in (
        "tests/cli_fixtures.py",
        "tests/helpers_ref.py",
        "sample_images/scene_rgb.png",
        "core/_kernels_fold.h",
    ):
        assert required in wanted


def test_every_local_module_a_test_imports_is_shipped() -> None:
    shipped = manifest_files()
    local = {path.stem for path in (ROOT / "tests").glob("*.py")}
    for test_file in (ROOT / "tests").glob("*.py"):
        for name in _imported_top_level_names(test_file):
            if name in local:
                assert f"tests/{name}.py" in shipped, f"{test_file.name} imports {name}, which the sdist lacks"


def test_build_outputs_stay_out() -> None:
    shipped = manifest_files()
    assert not [name for name in shipped if name.endswith(LEFT_OUT_SUFFIXES) or "__pycache__" in name]


def _imported_top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names
