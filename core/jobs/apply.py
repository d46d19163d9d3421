"""The ``apply`` file job: load images, load the function (a model file, a linear map or a named
callable), run :func:`patchfold.apply.apply` on each image and write the results as ``fold`` does.

Model files are TorchScript archives (``torch.jit.load``), ``torch.export`` programs (``.pt2``,
``torch.export.load``) or ONNX models (``.onnx``, run by onnxruntime, the ``[onnx]`` extra); none
is a pickle, and no model file is ever unpickled. A ``--function
module:callable`` is code the user names on purpose and is imported as such.
"""

from __future__ import annotations

import importlib
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from patchfold.blocks import Blocks
from patchfold.dtypes import cast_scaled, restore_dtype, target_dtype
from patchfold.errors import PatchfoldError
from patchfold.io.levels import Level
from patchfold.io.read import DEFAULT_MAX_PIXELS, is_tiled_image_tiff, load_inputs, read_npy_array, require_file
from patchfold.io.write import (
    allocate_npy,
    atomic_paths,
    check_not_an_input,
    image_targets,
    write_at,
    write_images,
    write_rows,
)
from patchfold.io.zarr_out import check_compression, check_zarr_output, image_attributes, is_zarr_output, zarr_images
from patchfold.jobs.plan import Progress
from patchfold.patchwise import DEFAULT_BATCH, apply_streamed, check_memory_format, mapped, plan_apply

#: Suffixes of the model files ``--model`` reads.
MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".pt2", ".onnx")

#: ONNX input element types and the numpy dtype each batch of patches is given as.
_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class FunctionSpec:
    """What ``apply`` runs: exactly one of a model file, a linear map (``W.npy`` and an optional
    bias) or a ``module:callable`` name."""

    model: Path | None = None
    linear: Path | None = None
    bias: Path | None = None
    function: str | None = None

    def describe(self) -> str:
        if self.model is not None:
            return f"model {self.model}"
        if self.linear is not None:
            return f"linear {self.linear}" + (f" + {self.bias}" if self.bias else "")
        return f"function {self.function}"


def load_function(
    spec: FunctionSpec, channels: int, kernel: tuple[int, ...], device: str | None = None
) -> Callable[[Any], Any]:
    """The callable ``spec`` names, checked before any image is processed (an ONNX model on
    ``device``: ``cuda`` needs onnxruntime's CUDA provider)."""
    given = [v for v in (spec.model, spec.linear, spec.function) if v is not None]
    if len(given) != 1:
        raise PatchfoldError("give exactly one of model=, linear= or function=", param="model")
    if spec.bias is not None and spec.linear is None:
        raise PatchfoldError("bias= goes with linear=", param="bias")
    if spec.model is not None:
        return load_onnx(spec.model, device) if is_onnx(spec.model) else load_model(spec.model)
    if spec.linear is not None:
        return linear_map(spec.linear, spec.bias, channels, kernel)
    return import_function(str(spec.function))


def load_model(path: Path) -> Callable[[Any], Any]:
    """A TorchScript archive or a ``torch.export`` program (``.pt2``), in eval mode."""
    require_file(path, "model file")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise PatchfoldError(
            f"model file '{path}' must be TorchScript ({', '.join(MODEL_SUFFIXES[:-1])}) or torch.export (.pt2)",
            param="model",
        )
    if not zipfile.is_zipfile(path):
        raise PatchfoldError(f"model file '{path}' is not a TorchScript or torch.export archive (not a zip file)")
    import torch

    try:
        if path.suffix.lower() == ".pt2":
            return torch.export.load(str(path)).module()
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError, ValueError, its own types...
        raise PatchfoldError(f"cannot load model file '{path}': {_first_line(error)}") from None
    return model.eval()


def is_onnx(path: Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_onnx(path: Path, device: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX model (one input ``(B, C, *k)``, one output) as a function of numpy batches, run by
    onnxruntime on the CPU, or with ``device`` ``cuda[:N]`` on its CUDA provider."""
    require_file(path, "model file")
    try:
        import onnxruntime
    except ImportError:
        raise PatchfoldError(
            f"model file '{path}' is ONNX: running it needs onnxruntime (pip install 'patchfold[onnx]')"
        ) from None
    providers: list[Any] = ["CPUExecutionProvider"]
    if device is not None and device.startswith("cuda"):
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise PatchfoldError(f"device {device!r}: this onnxruntime has no CUDA provider", param="device")
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        raise PatchfoldError(f"cannot load model file '{path}': {_first_line(error)}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise PatchfoldError(
            f"model file '{path}' takes {len(inputs)} input(s) and gives {len(outputs)} output(s); "
            "apply needs one of each (a batch of patches in, a batch of results out)"
        )
    name, kind = inputs[0].name, inputs[0].type
    if kind not in _ONNX_TYPES:
        raise PatchfoldError(f"model file '{path}' takes {kind}; apply gives float, double or float16 patches")
    dtype = _ONNX_TYPES[kind]

    def run(patches: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(patches, dtype=dtype)})[0]

    return run


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def linear_map(weight_path: Path, bias_path: Path | None, channels: int, kernel: tuple[int, ...]) -> Callable:
    """``patch ↦ W · patch + b``: one vector per patch, so the result is a convolution's output.

    ``W`` is ``(C', C, *k)`` (a convolution's weight) or ``(C', C·∏k)``; ``b`` is ``(C',)``.
    """
    weight = np.asarray(read_npy_array(Path(weight_path)))
    length = channels * int(np.prod(kernel))
    if weight.ndim < 2 or weight.dtype.kind not in "biuf" or int(np.prod(weight.shape[1:])) != length:
        raise PatchfoldError(
            f"linear weight '{weight_path}' has shape {list(weight.shape)} ({weight.dtype}); expected "
            f"(C', {channels}, {', '.join(map(str, kernel))}) or (C', {length}) for {channels}-channel "
            f"{'x'.join(map(str, kernel))} patches"
        )
    matrix = weight.reshape(weight.shape[0], length).astype(np.float64).T
    bias = np.zeros(weight.shape[0])
    if bias_path is not None:
        bias = np.asarray(read_npy_array(Path(bias_path)), dtype=np.float64)
        if bias.shape != (weight.shape[0],):
            raise PatchfoldError(f"bias '{bias_path}' has shape {list(bias.shape)}; expected ({weight.shape[0]},)")

    def linear(patches: np.ndarray) -> np.ndarray:  # in float64, given back in the patches' dtype
        return (patches.reshape(len(patches), -1) @ matrix + bias).astype(patches.dtype, copy=False)

    return linear


def import_function(name: str) -> Callable[[Any], Any]:
    """``module:callable`` (``package.module:attr.attr``), imported."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise PatchfoldError(f"function must be 'module:callable', got {name!r}", param="function")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # an import runs the module's code: anything can go wrong there
        raise PatchfoldError(f"cannot import module {module_name!r} for function {name!r}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise PatchfoldError(f"module {module_name!r} has no {attribute!r} (function {name!r})")
        target = getattr(target, part)
    if not callable(target):
        raise PatchfoldError(f"{name!r} is a {type(target).__name__}, not a callable")
    return target


@dataclass(frozen=True)
class ApplyResult:
    """What an :func:`apply_file` job wrote."""

    written: list[Path] | Path
    function: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: str
    blocks: Blocks
    cover: bool
    window: str | None
    margin: Any
    reduce: str
    seconds: float

    def summary(self) -> dict[str, Any]:
        written = self.written if isinstance(self.written, Path) else None
        return {
            "output": str(written) if written else [str(p) for p in self.written],
            "function": self.function,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "dtype": self.dtype,
            **self.blocks.to_dict(),
            "cover": self.cover,
            "window": self.window or "none",
            "margin": self.margin,
            "reduce": self.reduce,
            "seconds": round(self.seconds, 4),
        }


def apply_file(
    inputs: list[str | Path],
    output: str | Path,
    blocks: Blocks,
    spec: FunctionSpec,
    *,
    cover: bool = False,
    window: str | None = None,
    margin: Any = 0,
    batch_size: int = DEFAULT_BATCH,
    device: str | None = None,
    reduce: str | None = None,
    dtype: str = "float32",
    spatial_dims: int | None = None,
    stack: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    level: Level = None,
    compression: str = "default",
    memory_format: str = "auto",
) -> Iterator[Progress | ApplyResult]:
    """Run ``spec``'s function on every patch of the images ``inputs`` and write the blended
    results to ``output`` (as ``fold`` writes: ``.npy``, image files, ``{i}`` names, a directory).

    Images are given to the function as ``dtype`` (integer pixels scaled into [0, 1] for floats);
    image-file outputs are scaled back to the input's integer dtype, ``reduce='argmax'`` labels are
    written as they are. A ``.npy`` output is written band by band of finished rows, so only the
    input, the outputs that still reach unfinished rows (or a float64 band of rows) and a batch of
    patches are held. Yields :class:`Progress` (blocks done)
    after each batch, then the :class:`ApplyResult`. ``level`` picks the resolution of pyramidal
    TIFF and Zarr inputs; a single Zarr, pyramid level or tiled TIFF input is read band by band of
    rows as the blocks move down it, never whole.
    """
    started = time.perf_counter()
    output = Path(output)
    check_memory_format(memory_format)
    check_compression(output, compression)
    to_zarr = is_zarr_output(output)
    if level is None and len(inputs) == 1 and is_tiled_image_tiff(Path(inputs[0])):
        level = 0  # a tiled TIFF is read tile row by tile row as the blocks move down, not whole
    batch = load_inputs(inputs, spatial_dims, max_pixels, stack, level=level, regions=True)
    source = batch.array
    given, scale = target_dtype(source.dtype, dtype)
    read = [Path(s) for s in batch.sources]
    if to_zarr:
        check_zarr_output(output, compression, read)
        targets = None
    else:
        targets = image_targets(output, source.shape[0], batch.sources)
        check_not_an_input(targets or [output], read)
    plan = plan_apply(tuple(source.shape[2:]), blocks, cover=cover, window=window, margin=margin)
    onnx = spec.model is not None and is_onnx(spec.model)
    if onnx and device == "auto":  # onnxruntime places the model itself: CPU unless asked
        device = None
    fn = load_function(spec, source.shape[1], plan.geometry.kernel_size, device if onnx else None)
    # torch models get torch batches on their device; an ONNX session and plain functions numpy ones
    device = None if onnx or (device in (None, "auto", "cpu") and spec.model is None) else device
    if device == "auto":
        device = _auto_device()
    options = {"batch_size": batch_size, "device": device, "reduce": reduce, "memory_format": memory_format}

    def prepare(patches: np.ndarray) -> np.ndarray:  # pixels converted a batch at a time
        return cast_scaled(patches, given, scale)

    total = source.shape[0] * plan.num_blocks

    def as_progress(done: int) -> Progress:  # the bar counts blocks
        return Progress(done, total, done, total)

    if to_zarr:
        parameters = {
            "function": spec.describe(), "sources": list(batch.sources), **blocks.to_dict(), "cover": cover,
            "window": window or "none", "margin": margin, "reduce": reduce or "none", "dtype": dtype,
        }  # fmt: skip
        with zarr_images(output, source.shape[0], image_attributes("apply", parameters), compression) as store:
            steps = apply_streamed(source, fn, plan, prepare=prepare, rows_out=store.rows, **options)
            results = yield from mapped(steps, as_progress)
            if results and results[0] is not None:  # vector grids: small, written whole
                grids = _with_channels(np.stack(results), source.ndim)
                store.allocate(grids.shape[1:], grids.dtype)
                store.write(grids, 0)
        shape, out_dtype = store.shape, store.dtype
    elif targets is None:  # one .npy: dense rows are written as they are finished
        with atomic_paths(output) as (temporary,), open(temporary, "r+b") as handle:
            sink = _NpyRows(handle, source.shape[0])
            steps = apply_streamed(source, fn, plan, prepare=prepare, rows_out=sink.write, **options)
            results = yield from mapped(steps, as_progress)
            if results and results[0] is not None:  # vector grids: small, written whole
                sink.write_all(np.stack(results))
        shape, out_dtype = sink.shape, sink.dtype
    else:
        results = yield from mapped(apply_streamed(source, fn, plan, prepare=prepare, **options), as_progress)
        images = _with_channels(np.stack(results), source.ndim)
        labels = reduce not in (None, "none")
        if not (labels and reduce == "argmax"):
            images = restore_dtype(images, str(source.dtype), scale)
        write_images(output, targets, images)
        shape, out_dtype = images.shape, images.dtype
    yield ApplyResult(
        written=targets if targets is not None else output,
        function=spec.describe(),
        input_shape=tuple(source.shape),
        output_shape=tuple(shape),
        dtype=str(out_dtype),
        blocks=blocks,
        cover=cover,
        window=window,
        margin=margin,
        reduce=reduce or "none",
        seconds=time.perf_counter() - started,
    )


def _with_channels(images: np.ndarray, ndim: int) -> np.ndarray:
    """``images`` ``(N, C', *spatial)``: reduced ones ``(N, *spatial)`` gain one channel of labels (or maxima)."""
    return images[:, None] if images.ndim == ndim - 1 else images


class _NpyRows:
    """A ``.npy`` of ``(N, C', *size)`` written row band by row band: its header once the first
    rows say the shape and dtype."""

    def __init__(self, handle: Any, count: int) -> None:
        self.handle, self.count = handle, count
        self.header: int | None = None
        self.shape: tuple[int, ...] = ()
        self.dtype = np.dtype(np.float32)

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if self.header is None:
            self.shape, self.dtype = (self.count, *shape), np.dtype(dtype)
            self.header = allocate_npy(self.handle, self.shape, self.dtype)

    def write(self, n: int, first: int, rows: np.ndarray, shape: tuple[int, ...]) -> None:
        self._allocate(shape, rows.dtype)
        assert self.header is not None
        write_rows(self.handle.fileno(), self.header, self.shape, rows[None].astype(self.dtype, copy=False), first, n)

    def write_all(self, values: np.ndarray) -> None:
        self._allocate(values.shape[1:], values.dtype)
        assert self.header is not None
        write_at(self.handle.fileno(), values, self.header)


def _auto_device() -> str:
    from patchfold.engines import resolve

    return resolve("auto")[0]
