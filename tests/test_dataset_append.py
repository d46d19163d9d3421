"""Appending to a Zarr dataset store (issue #17): ``batch unfold NEW... -o dataset.zarr --append``
adds images after those the store holds, whose rows and chunks stay as they are; the store is
then the one a single run over all the images writes. A stopped append resumes; other
parameters, a shard directory and a store whose images are gone are refused, nothing touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import patchfold
import pytest
from patchfold.blocks import Blocks
from patchfold.datasets import zarr_store
from patchfold.errors import PatchfoldError
from patchfold.keep import KeepRules

from tests.cli_fixtures import assert_runtime_error, invoke, ok
from tests.dataset_helpers import snapshot
from tests.test_dataset_zarr import make_images, unfold

zarr = pytest.importorskip("zarr")


def arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][...]) for name in ("patches", "index", "done")}


def manifest(path: Path) -> dict:
    return dict(zarr.open_group(str(path), mode="r").attrs)["patchfold"]


@pytest.mark.parametrize("split", [1, 2, 4])
@pytest.mark.parametrize("options", [{}, {"keep": KeepRules(max_blank=0.9, background=128)}, {"workers": 2}])
def test_an_appended_store_is_the_store_of_one_run_over_all_images(tmp_path: Path, split: int, options: dict) -> None:
    images = make_images(tmp_path / "in", count=6)
    unfold(images, tmp_path / "whole.zarr", **options)
    unfold(images[:split], tmp_path / "grown.zarr", **options)
    kept = snapshot(tmp_path / "grown.zarr" / "patches")
    # the new images, with one the store holds given again: it is not added twice
    result = unfold([images[0], *images[split:]], tmp_path / "grown.zarr", append=True, **options)
    assert result.summary()["done"] == 6 - split and result.summary()["skipped"] == split
    whole, grown = arrays(tmp_path / "whole.zarr"), arrays(tmp_path / "grown.zarr")
    for name in whole:
        np.testing.assert_array_equal(grown[name], whole[name])
    assert manifest(tmp_path / "grown.zarr") == manifest(tmp_path / "whole.zarr")
    chunks = snapshot(tmp_path / "grown.zarr" / "patches")
    stored = {name: data for name, data in kept.items() if name.startswith("c/")}
    last = max(stored, key=lambda name: int(name.split("/")[1]))  # shared by old and new images: rewritten
    assert stored and all(chunks[name] == data for name, data in stored.items() if name != last)
    dataset = patchfold.load_dataset(tmp_path / "grown.zarr")
    assert len(dataset) == len(whole["patches"])


def test_append_to_no_store_creates_it_and_a_rerun_changes_nothing(tmp_path: Path) -> None:
    images = make_images(tmp_path / "in", count=3)
    unfold(images, tmp_path / "new.zarr", append=True)
    before = snapshot(tmp_path / "new.zarr")
    again = unfold(images, tmp_path / "new.zarr", append=True).summary()
    assert again["skipped"] == 3 and snapshot(tmp_path / "new.zarr") == before


def test_a_stopped_append_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_images(tmp_path / "in", count=5)
    unfold(images, tmp_path / "whole.zarr")
    unfold(images[:2], tmp_path / "grown.zarr")
    resize = zarr.Array.resize

    def stop(self, *args, **kwargs):  # stopped once the manifest is written, before any array grows
        raise KeyboardInterrupt

    monkeypatch.setattr(zarr.Array, "resize", stop)
    with pytest.raises(KeyboardInterrupt):
        unfold(images[2:], tmp_path / "grown.zarr", append=True)
    assert manifest(tmp_path / "grown.zarr")["complete"] is False
    monkeypatch.setattr(zarr.Array, "resize", resize)
    result = unfold(images[2:], tmp_path / "grown.zarr", append=True).summary()
    assert result["skipped"] == 2 and result["done"] == 3
    for name, values in arrays(tmp_path / "whole.zarr").items():
        np.testing.assert_array_equal(arrays(tmp_path / "grown.zarr")[name], values)


def test_other_parameters_are_refused_and_nothing_is_touched(tmp_path: Path) -> None:
    images = make_images(tmp_path / "in", count=3)
    unfold(images[:2], tmp_path / "store.zarr")
    before = snapshot(tmp_path / "store.zarr")
    for changed in ({"blocks": Blocks(8, stride=8)}, {"channels": 1}, {"compression": "gzip"}, {"chunk_size": 900}):
        with pytest.raises(PatchfoldError, match="holds a different dataset"):
            unfold(images[2:], tmp_path / "store.zarr", append=True, **changed)
        assert snapshot(tmp_path / "store.zarr") == before
    with pytest.raises(PatchfoldError, match="append"):  # without append, more images are refused
        unfold(images, tmp_path / "store.zarr")
    assert snapshot(tmp_path / "store.zarr") == before


def test_a_store_whose_images_are_gone_is_not_appended_to(tmp_path: Path) -> None:
    images = make_images(tmp_path / "in", count=3)
    unfold(images[:2], tmp_path / "store.zarr")
    before = snapshot(tmp_path / "store.zarr")
    images[0].unlink()
    with pytest.raises(PatchfoldError, match="is gone"):
        unfold(images[2:], tmp_path / "store.zarr", append=True)
    assert snapshot(tmp_path / "store.zarr") == before
    assert zarr_store.appended_sources(tmp_path / "absent.zarr", images[1:]) == images[1:]


def test_the_command_appends_and_refuses_a_shard_directory(tmp_path: Path) -> None:
    images = make_images(tmp_path / "in", count=3)
    common = ["-k", "8", "-s", "4", "--channels", "3", "--workers", "1", "--no-progress"]
    ok("batch", "unfold", images[0], images[1], *common, "-o", tmp_path / "d.zarr")
    ok("batch", "unfold", images[2], *common, "-o", tmp_path / "d.zarr", "--append")
    assert [image["source"] for image in manifest(tmp_path / "d.zarr")["images"]] == [str(p) for p in images]
    result = invoke("batch", "unfold", images[2], *common, "-o", tmp_path / "shards", "--append")
    assert result.exit_code == 2 and "'--append'" in result.stderr and not (tmp_path / "shards").exists()
    assert_runtime_error(
        invoke("batch", "unfold", images[2], "-k", "8", "-o", tmp_path / "d.zarr", "--append", "--channels", "3"),
        "different dataset",
    )
