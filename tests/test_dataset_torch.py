"""PatchDataset as a training dataset (issue #14): a torch ``Dataset`` that is also a plain sequence
without torch, batch indexing, writable items, cheap pickles for spawn workers, per-source
``to_float``, positions, and DataLoader workers under fork and spawn."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import patchfold
import pytest
from dataset_helpers import dataloader_batches, python
from patchfold import Blocks
from patchfold.datasets import build
from PIL import Image

torch = pytest.importorskip("torch")

BLOCKS = Blocks(4, stride=4)


def make_dataset(directory: Path, images: list[np.ndarray], blocks: Blocks = BLOCKS, **options: Any) -> Path:
    """A dataset of ``images`` (2-D uint8 / uint16 arrays, saved as PNGs), built by the library."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(images):
        paths.append(directory / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    out = directory / "ds"
    events = list(build.unfold_dataset([str(p) for p in paths], out, blocks, workers=1, **options))
    assert isinstance(events[-1], build.DatasetResult) and not events[-1].failed
    return out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three RGB images over several shards: 42 + 30 + 56 = 128 patches of (3, 4, 4) uint8."""
    rng = np.random.default_rng(14)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((24, 28, 3), (20, 24, 3), (28, 32, 3))]
    return make_dataset(tmp_path_factory.mktemp("sharded"), images, shard_size=2000)


def stored(dataset: Any, i: int) -> np.ndarray:
    """Patch ``i`` straight from its shard, as the index places it."""
    shard, row = dataset.index[i, -2], dataset.index[i, -1]
    return np.asarray(dataset.shards[shard][row]).reshape(dataset.patch_shape)


# ----- torch or not ---------------------------------------------------------------------------------
def test_import_patchfold_does_not_import_torch() -> None:
    """The dataset names load on first use (importing torch then is the in-process tests' part)."""
    out = python("import patchfold, sys; print('torch' in sys.modules, 'load_dataset' in dir(patchfold))")
    assert out.split() == ["False", "True"]


def test_it_is_a_torch_map_style_dataset(sharded: Path) -> None:
    dataset = patchfold.load_dataset(sharded)
    assert isinstance(dataset, torch.utils.data.Dataset) and isinstance(dataset, patchfold.PatchDataset)
    assert not isinstance(dataset, torch.utils.data.IterableDataset)
    both = dataset + dataset
    assert isinstance(both, torch.utils.data.ConcatDataset) and len(both) == 2 * len(dataset)
    np.testing.assert_array_equal(both[len(dataset) + 3], dataset[3])
    subset = torch.utils.data.Subset(dataset, [5, 1, 7])
    assert [p.tolist() for p in subset.__getitems__([0, 2])] == [dataset[5].tolist(), dataset[7].tolist()]


def test_without_torch_it_is_a_plain_sequence(sharded: Path) -> None:
    out = python(
        f"""
        import pickle, sys
        sys.modules["torch"] = None  # import torch raises ImportError
        import numpy as np, patchfold
        dataset = patchfold.load_dataset({str(sharded)!r}, with_position=True)
        assert "torch" not in {{m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}}
        assert type(dataset).__mro__[1:] == (object,)
        patches = [item[0] for item in dataset]
        assert len(patches) == len(dataset) == 128 and patches[0].shape == (3, 4, 4)
        np.testing.assert_array_equal(dataset[-1][0], patches[-1])
        np.testing.assert_array_equal(dataset[10:13][0], np.stack(patches[10:13]))
        np.testing.assert_array_equal(dataset[[3, -1]][0], np.stack([patches[3], patches[-1]]))
        again = pickle.loads(pickle.dumps(dataset))
        np.testing.assert_array_equal(again[7][0], patches[7])
        try:
            dataset[128]
        except IndexError:
            pass
        try:
            patchfold.load_dataset({str(sharded)!r}, as_tensor=True)
        except patchfold.PatchfoldError as error:
            print(error)
        """
    )
    assert "as_tensor=True needs torch" in out


# ----- indexing -------------------------------------------------------------------------------------
def test_indexing_by_ints_slices_lists_arrays_and_masks(sharded: Path) -> None:
    dataset = patchfold.load_dataset(sharded)
    n = len(dataset)
    assert n == 128 and len(dataset.manifest["shards"]) > 2
    every = np.stack([stored(dataset, i) for i in range(n)])
    assert dataset[0].shape == (3, 4, 4) and dataset[0].dtype == np.uint8
    for i in (0, 1, 41, 42, n - 1, -1, -n, np.int64(5), np.uint8(7), torch.tensor(9)):
        np.testing.assert_array_equal(dataset[i], every[int(i)])
    for key in (slice(None), slice(3, 90, 7), slice(None, None, -1), slice(-5, None), slice(200, 300)):
        np.testing.assert_array_equal(dataset[key], every[key])
    rows = [100, 0, -1, 41, 42, 41]  # across shards, repeated, negative, out of order
    for key in (rows, np.array(rows), np.array(rows, dtype=np.int32), torch.tensor(rows), range(3, 9)):
        np.testing.assert_array_equal(dataset[key], every[np.array(list(key))])
    mask = np.arange(n) % 3 == 0
    np.testing.assert_array_equal(dataset[mask], every[mask])
    assert dataset[[]].shape == (0, 3, 4, 4) and dataset[np.array([], dtype=np.int64)].dtype == np.uint8
    np.testing.assert_array_equal(np.stack(list(dataset)), every)
    assert np.array_equal(np.stack([p for p in dataset]), every)


@pytest.mark.parametrize("key", [128, -129, 10**20, [0, 128], np.array([-129]), np.array([2**63 + 5], dtype=np.uint64)])
def test_out_of_range_is_an_index_error(sharded: Path, key: Any) -> None:
    with pytest.raises(IndexError, match=r"patch index -?\d+ is out of range for a dataset of 128 patches"):
        patchfold.load_dataset(sharded)[key]


@pytest.mark.parametrize(
    "key", [1.0, "3", b"3", None, True, np.bool_(False), (1, 2), {1: 2}, [1.5], np.array([0.0, 1.0]), ["a"], object()]
)
def test_bad_index_types_are_type_errors(sharded: Path, key: Any) -> None:
    with pytest.raises(TypeError, match="indexed by an int, a slice, a list or 1-D array of ints or a boolean mask"):
        patchfold.load_dataset(sharded)[key]


def test_bad_index_shapes_are_refused(sharded: Path) -> None:
    dataset = patchfold.load_dataset(sharded)
    with pytest.raises(patchfold.PatchfoldError, match=r"must be 1-D, got shape \[2, 2\]"):
        dataset[[[0, 1], [2, 3]]]
    with pytest.raises(IndexError, match=r"mask of patches must have shape \(128,\), got \[3\]"):
        dataset[[True, False, True]]


@pytest.mark.parametrize("option", ["allow_incomplete", "to_float", "with_position", "as_tensor"])
def test_options_must_be_bools(sharded: Path, option: str) -> None:
    with pytest.raises(patchfold.PatchfoldError, match=f"{option} must be True or False, got 'yes'"):
        patchfold.load_dataset(sharded, **{option: "yes"})


def test_items_are_writable_copies_and_tensors_come_without_warnings(sharded: Path) -> None:
    dataset = patchfold.load_dataset(sharded)
    before = stored(dataset, 3).copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (dataset[3], dataset[2:5], dataset[[3, 60]], dataset.__getitems__([3, 4])[0], next(iter(dataset))):
            assert value.flags.writeable
            torch.from_numpy(value).fill_(0)
        tensors = patchfold.load_dataset(sharded, as_tensor=True, with_position=True)
        patch, image, block = tensors[3]
        assert isinstance(patch, torch.Tensor) and patch.dtype == torch.uint8 and isinstance(image, int)
        assert isinstance(block, torch.Tensor) and block.dtype == torch.int64
        batch, images, blocks = tensors[[3, 60]]
        assert batch.shape == (2, 3, 4, 4) and images.tolist() == [0, 1] and blocks.shape == (2, 2)
        patch.add_(1)
    np.testing.assert_array_equal(stored(dataset, 3), before)  # no write reached the shard
    np.testing.assert_array_equal(dataset[3], before)


# ----- pickling for spawn workers ---------------------------------------------------------------------
def test_pickle_is_small_and_reopens_and_checks_the_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (128, 128), dtype=np.uint8) for _ in range(4)]
    out = make_dataset(tmp_path, images, Blocks(16, stride=2), shard_size=600_000)
    dataset = patchfold.load_dataset(out, to_float=True, with_position=True)
    size = sum((out / s["file"]).stat().st_size for s in dataset.manifest["shards"])
    assert size > 3_000_000 and len(dataset.manifest["shards"]) > 1
    data = pickle.dumps(dataset)
    assert len(data) < 64 * 1024, len(data)
    again = pickle.loads(data)
    assert again.to_float and again.with_position and len(again) == len(dataset)
    for key in (0, -1, [5, 9000, 12000]):
        for got, want in zip(again[key], dataset[key]):
            np.testing.assert_array_equal(got, want)
    shard = out / dataset.manifest["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(patchfold.PatchfoldError, match=r"dataset file '.*shard-00001\.npy'"):
        pickle.loads(data)


# ----- to_float: each source by its own maximum ---------------------------------------------------------
def mixed_bit_depths(tmp_path: Path, **options: Any) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    eight = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    eight[0, 0] = 255
    sixteen = rng.integers(0, 65536, (12, 16), dtype=np.uint16)
    sixteen[0, 0] = 65535
    return make_dataset(tmp_path, [eight, sixteen], **options), eight, sixteen


def expected_patches(pixels: np.ndarray, maximum: int) -> np.ndarray:
    cols = patchfold.unfold(pixels[None, None].astype(np.float32), 4, stride=4, layout="nlc")[0]
    return (cols / np.float32(maximum)).reshape(-1, 1, 4, 4)


def test_to_float_scales_8_and_16_bit_sources_by_their_own_maximum(tmp_path: Path) -> None:
    out, eight, sixteen = mixed_bit_depths(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and [i["max_value"] for i in manifest["images"]] == [255, 65535]
    dataset = patchfold.load_dataset(out, to_float=True)
    assert dataset.dtype == np.float32
    first, second = dataset.image_rows(0), dataset.image_rows(1)
    np.testing.assert_array_equal(dataset[first], expected_patches(eight, 255))
    np.testing.assert_array_equal(dataset[second], expected_patches(sixteen, 65535))
    mixed = [int(second[2]), int(first[0]), int(second[0]), int(first[5])]  # rows of both in one batch
    want = np.stack([expected_patches(eight, 255)[0], expected_patches(sixteen, 65535)[0]])
    np.testing.assert_array_equal(dataset[mixed][1:3], want)
    np.testing.assert_array_equal(dataset[mixed[0]], expected_patches(sixteen, 65535)[2])
    everything = dataset[:]
    assert everything.dtype == np.float32 and everything.min() >= 0 and everything.max() == 1
    assert dataset[first].max() == 1 and dataset[second].max() == 1
    np.testing.assert_array_equal(patchfold.load_dataset(out)[first[3]], eight[None, :4, 12:16])  # raw as stored


def test_to_float_of_a_float_dataset_gives_the_same_values(tmp_path: Path) -> None:
    """A float32 dataset of integer sources is already multiplied by the manifest's one scale
    (1/65535 here): to_float undoes that for the 8-bit image."""
    out, eight, sixteen = mixed_bit_depths(tmp_path, dtype="float32")
    dataset = patchfold.load_dataset(out, to_float=True)
    assert dataset.manifest["scale"] == 1 / 65535 and dataset.dtype == np.float32
    np.testing.assert_allclose(dataset[dataset.image_rows(0)], expected_patches(eight, 255), rtol=1e-6)
    np.testing.assert_allclose(dataset[dataset.image_rows(1)], expected_patches(sixteen, 65535), rtol=1e-6)


def test_datasets_written_before_max_value_fall_back_and_stay_resumable(tmp_path: Path) -> None:
    out, eight, sixteen = mixed_bit_depths(tmp_path)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    for image in manifest["images"]:
        del image["max_value"]
    path.write_text(json.dumps(manifest))
    dataset = patchfold.load_dataset(out, to_float=True)  # the stored dtype's maximum for all
    np.testing.assert_array_equal(dataset[dataset.image_rows(0)], expected_patches(eight, 65535))
    np.testing.assert_array_equal(dataset[dataset.image_rows(1)], expected_patches(sixteen, 65535))
    sources = [image["source"] for image in manifest["images"]]
    events = list(build.unfold_dataset(sources, out, Blocks(4, stride=4), workers=1))
    assert events[-1].summary()["skipped"] == 2 and not events[-1].failed  # not "a different dataset"


def test_to_float_keeps_float_sources_beside_scaled_integer_ones(tmp_path: Path) -> None:
    """A float .npy and an 8-bit PNG in one float32 dataset (dtype keep): the floats are taken as
    already scaled (max_value 1.0), the PNG's patches are divided by 255."""
    rng = np.random.default_rng(2)
    floats = rng.random((1, 1, 8, 8)).astype(np.float32)
    eight = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", floats)
    Image.fromarray(eight).save(tmp_path / "b.png")
    sources = [str(tmp_path / "a.npy"), str(tmp_path / "b.png")]
    events = list(build.unfold_dataset(sources, tmp_path / "ds", BLOCKS, workers=1))
    assert not events[-1].failed
    dataset = patchfold.load_dataset(tmp_path / "ds", to_float=True)
    assert dataset.manifest["dtype"] == "float32"
    assert [image["max_value"] for image in dataset.manifest["images"]] == [1.0, 255]
    np.testing.assert_array_equal(dataset[dataset.image_rows(0)], expected_patches(floats[0, 0], 1))
    np.testing.assert_array_equal(dataset[dataset.image_rows(1)], expected_patches(eight, 255))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(scale=0), r"scale must be a number in \(0, 1\], got 0"),
        (lambda m: m.update(scale="1"), r"scale must be a number in \(0, 1\], got '1'"),
        (lambda m: m["images"][1].update(id=0), "lists image id 0 twice"),
        (lambda m: m["images"][1].update(id=7), "names images its manifest does not list"),
        (lambda m: m["images"][1].update(id=2**70), "image id outside the int64 range"),
    ],
)
def test_to_float_refuses_a_manifest_it_cannot_scale_by(tmp_path: Path, change: Any, message: str) -> None:
    out = mixed_bit_depths(tmp_path)[0]
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(patchfold.PatchfoldError, match=message):
        patchfold.load_dataset(out, to_float=True)


@pytest.mark.parametrize("value", [0, -255, "255", None, True, float("nan"), float("inf"), 2**65])
def test_a_bad_max_value_is_refused(tmp_path: Path, value: Any) -> None:
    out = make_dataset(tmp_path, [np.zeros((8, 8), np.uint8)])
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["images"][0]["max_value"] = value
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(patchfold.PatchfoldError, match="image 0's max_value must be a positive number"):
        patchfold.load_dataset(out)


# ----- positions --------------------------------------------------------------------------------------
def test_with_position_gives_image_id_and_block_index(sharded: Path) -> None:
    plain = patchfold.load_dataset(sharded)
    dataset = patchfold.load_dataset(sharded, with_position=True)
    assert dataset.manifest["index_columns"] == ["image", "block_0", "block_1", "shard", "row"]
    patch, image, block = dataset[43]
    np.testing.assert_array_equal(patch, plain[43])
    assert image == 1 and block.tolist() == [0, 1] and block.dtype == np.int64  # image 1 is 5 × 6 blocks
    patches, images, blocks = dataset[[0, 43, -1]]
    assert images.tolist() == [0, 1, 2] and blocks.tolist() == [[0, 0], [0, 1], [6, 7]]
    np.testing.assert_array_equal(patches, plain[[0, 43, -1]])
    for image_id, grid in ((0, (6, 7)), (1, (5, 6)), (2, (7, 8))):
        rows = dataset.image_rows(image_id)
        assert dataset[rows][2].tolist() == np.indices(grid).reshape(2, -1).T.tolist()
        assert dataset.manifest["images"][image_id]["blocks_per_dim"] == list(grid)


# ----- DataLoader ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_return_every_row_once(sharded: Path, context: str) -> None:
    dataset = patchfold.load_dataset(sharded, with_position=True)
    seen = []
    for patches, rows in dataloader_batches(dataset, context):
        assert patches.dtype == torch.uint8 and patches.shape[1:] == (3, 4, 4)
        for patch, i in zip(patches, rows):
            np.testing.assert_array_equal(patch.numpy(), stored(dataset, i))
        seen += rows
    assert sorted(seen) == list(range(len(dataset)))


def test_dataloader_batches_come_through_getitems(sharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = patchfold.load_dataset(sharded, to_float=True)
    calls: list[int] = []
    fetch = type(dataset).__getitems__
    monkeypatch.setattr(
        type(dataset), "__getitems__", lambda self, rows: (calls.append(len(rows)), fetch(self, rows))[1]
    )
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=50))
    assert calls == [50, 50, 28] and [b.shape[0] for b in batches] == calls
    whole = torch.cat(batches)
    assert whole.dtype == torch.float32
    np.testing.assert_array_equal(whole.numpy(), np.stack([stored(dataset, i) for i in range(128)]) / np.float32(255))
    train, test = torch.utils.data.random_split(dataset, [100, 28], generator=torch.Generator().manual_seed(1))
    assert sum(len(b) for b in torch.utils.data.DataLoader(train, batch_size=32)) == 100 and len(test) == 28
