"""``apply --model MODEL.onnx``: ONNX models run by onnxruntime (issue #15), built here with
``onnx.helper`` (no exporter, no download)."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import patchfold
import pytest
from cli_fixtures import error_lines, invoke, ok, sample
from patchfold.errors import PatchfoldError
from patchfold.jobs.apply import FunctionSpec, apply_file, load_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(0)


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime the [onnx] extra allows
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_model(path: Path, weight: np.ndarray, bias: np.ndarray, kind: int = TensorProto.FLOAT) -> Path:
    """A convolution with 'same' padding over a dynamic batch: dense output, same size."""
    pad = weight.shape[-1] // 2
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", kind, ["B", weight.shape[1], None, None])],
        [helper.make_tensor_value_info("y", kind, ["B", weight.shape[0], None, None])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return save(graph, path)


def pooled_model(path: Path) -> Path:
    """One vector per patch: the channel means (a classifier's shape)."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])],
    )
    return save(graph, path)


def conv_numpy(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The reference: the same 'same'-padded convolution of a whole (C, H, W) image, in float64."""
    k, pad = weight.shape[-1], weight.shape[-1] // 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))  # (C, H, W, k, k)
    return np.einsum("chwij,ocij->ohw", windows, weight.astype(np.float64)) + bias[:, None, None]


def test_an_onnx_convolution_with_margin_equals_it_on_the_whole_image(tmp_path: Path) -> None:
    weight, bias = RNG.normal(size=(2, 3, 3, 3)).astype(np.float32), RNG.normal(size=2).astype(np.float32)
    model = conv_model(tmp_path / "conv.onnx", weight, bias)
    x = RNG.random((3, 70, 90)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    spec = FunctionSpec(model=model)
    list(
        apply_file(
            [tmp_path / "x.npy"], tmp_path / "y.npy", patchfold.Blocks(32, stride=24), spec, cover=True, margin=2
        )
    )
    result = np.load(tmp_path / "y.npy")[0]
    assert result.shape == (2, 70, 90)
    np.testing.assert_allclose(result, conv_numpy(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_the_cli_runs_an_onnx_model_and_a_classifier_gives_the_block_grid(tmp_path: Path) -> None:
    identity = np.zeros((3, 3, 1, 1), np.float32)
    identity[np.arange(3), np.arange(3)] = 1
    model = conv_model(tmp_path / "identity.onnx", identity, np.zeros(3, np.float32))
    ok("apply", sample("rgb"), "--model", model, "-k", "64", "-s", "48", "--cover", "-o", tmp_path / "same.png")
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "same.png")), np.asarray(Image.open(sample("rgb"))))
    pooled = pooled_model(tmp_path / "pool.onnx")
    ok("apply", sample("rgb"), "--model", pooled, "-k", "40", "-s", "40", "-o", tmp_path / "grid.npy")
    grid = np.load(tmp_path / "grid.npy")
    image = np.asarray(Image.open(sample("rgb")), np.float64).transpose(2, 0, 1) / 255
    expected = image.reshape(3, 6, 40, 8, 40).mean(axis=(2, 4))
    assert grid.shape == (1, 3, 6, 8)
    np.testing.assert_allclose(grid[0], expected, rtol=1e-5, atol=1e-6)


def scaled_model(path: Path, kind: int) -> Path:
    """y = 2·x + 1, elementwise, in the element type ``kind``."""
    dtype = helper.tensor_dtype_to_np_dtype(kind)
    nodes = [helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Add", ["m", "one"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "scaled",
        [helper.make_tensor_value_info("x", kind, ["B", 3, None, None])],
        [helper.make_tensor_value_info("y", kind, ["B", 3, None, None])],
        [numpy_helper.from_array(np.array(2, dtype), "two"), numpy_helper.from_array(np.array(1, dtype), "one")],
    )
    return save(graph, path)


@pytest.mark.parametrize("kind", [TensorProto.DOUBLE, TensorProto.FLOAT16])
def test_a_double_or_half_model_gets_patches_of_its_type(tmp_path: Path, kind: int) -> None:
    run = load_onnx(scaled_model(tmp_path / "s.onnx", kind))
    patches = RNG.random((4, 3, 5, 5)).astype(np.float32)
    out = run(patches)
    assert out.dtype == helper.tensor_dtype_to_np_dtype(kind)
    np.testing.assert_allclose(
        out, 2 * patches.astype(np.float64) + 1, rtol=1e-3 if kind == TensorProto.FLOAT16 else 1e-12
    )


def two_inputs_model(path: Path) -> Path:
    node = helper.make_node("Add", ["x", "z"], ["y"])
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", 3, 4, 4]) for n in ("x", "z")]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3, 4, 4])]
    return save(helper.make_graph([node], "add", value, out), path)


def int_model(path: Path) -> Path:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "int",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["B", 3, 4, 4])],
    )
    return save(graph, path)


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda p: (p.write_bytes(b"not a protobuf at all"), p)[1], "cannot load model file"),
        (two_inputs_model, "takes 2 input(s)"),
        (int_model, "takes tensor(int64)"),
    ],
)
def test_a_bad_onnx_model_is_one_error_line_and_nothing_written(tmp_path: Path, make, says: str) -> None:
    model = make(tmp_path / "bad.onnx")
    result = invoke("apply", sample("rgb"), "--model", model, "-k", "16", "-o", tmp_path / "out.png")
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert not (tmp_path / "out.png").exists()


def test_without_onnxruntime_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = pooled_model(tmp_path / "pool.onnx")
    real_import = builtins.__import__

    def no_onnxruntime(name: str, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(PatchfoldError, match=r"patchfold\[onnx\]"):
        load_onnx(model)


def test_cuda_without_the_cuda_provider_is_refused(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(PatchfoldError, match="no CUDA provider"):
        load_onnx(pooled_model(tmp_path / "pool.onnx"), "cuda")
