"""Run a function or model on every patch and put the results back (:func:`apply`, which is
``patchfold.apply``).

The plan (block positions, output mode and scale, blending weights) is computed once, separate
from moving data: :class:`ApplyPlan` says where every block starts along each spatial dim (a
per-axis grid, also with ``cover``), and the weights of each block along each dim (window, edge
awareness, ``margin``), so the total weight at every pixel is an outer product of per-dim sums.

``fn`` maps a batch of patches ``(B, C, *k)`` to either
- ``(B, C', *k')`` with ``k' = k · scale`` (``dense``): each output patch is weighted, added at its
  block's place (``stride · scale`` apart) and the sum divided by the total weight; or
- ``(B, C')`` (``vector``): one vector per block, written at the block's grid position, giving
  ``(N, C', *blocks_per_dim)``.
The mode and scale are found from the first batch and every later batch must agree.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from patchfold.blocks import Blocks, IntOrSeq
from patchfold.choices import DEFAULT_BATCH as DEFAULT_BATCH  # re-exported from patchfold.choices, as the next two
from patchfold.choices import MEMORY_FORMATS as MEMORY_FORMATS
from patchfold.choices import REDUCTIONS as REDUCTIONS
from patchfold.coverage import outer
from patchfold.engines import is_tensor
from patchfold.errors import PatchfoldError
from patchfold.geometry import Geometry
from patchfold.memory import check_fits
from patchfold.windows import MIN_WEIGHT, parse_window, window_1d

#: Patches of random values ``auto`` runs both ways before the first batch (fewer than a batch:
#: a probe costs two model calls on them).
PROBE_PATCHES = 2


@dataclass(frozen=True)
class AxisGrid:
    """Where the blocks of one spatial dim start, in image coordinates (negative: in the padding).

    ``first``/``last`` say whether each block touches that end of the image (its side there is
    an image border, never trimmed by a margin)."""

    starts: np.ndarray
    span: int
    size: int

    @property
    def count(self) -> int:
        return len(self.starts)

    def at_start(self) -> np.ndarray:
        return self.starts <= 0

    def at_end(self) -> np.ndarray:
        return self.starts + self.span >= self.size


def axis_grid(size: int, kernel: int, stride: int, padding: int, dilation: int, cover: bool) -> AxisGrid:
    """Block starts along one dim, as :class:`~patchfold.geometry.Geometry` places them: PyTorch's
    (``padding`` on both sides, every ``stride``), or with ``cover`` the same grid without padding
    plus, where it falls short, a last block that ends at the image's end (a dim shorter than one
    block gets one block, centred, over padding)."""
    geometry = Blocks(kernel, stride=stride, padding=padding, dilation=dilation, cover=cover).at((size,))
    return grid_of(geometry, 0)


def grid_of(geometry: Geometry, dim: int) -> AxisGrid:
    """The :class:`AxisGrid` of one dim of a geometry (starts in image coordinates)."""
    starts = geometry.block_starts(dim) - geometry.pad_widths[dim][0]
    return AxisGrid(starts, geometry.span[dim], geometry.spatial_size[dim])


@dataclass(frozen=True)
class ApplyPlan:
    """The block grid of one image size and how the outputs are put back."""

    blocks: Blocks
    geometry: Geometry
    cover: bool
    window: str | None
    margin: tuple[int, ...]
    grids: tuple[AxisGrid, ...]

    @property
    def ndim(self) -> int:
        return len(self.grids)

    @property
    def blocks_per_dim(self) -> tuple[int, ...]:
        return tuple(g.count for g in self.grids)

    @property
    def num_blocks(self) -> int:
        return math.prod(self.blocks_per_dim)

    def pad_widths(self) -> list[tuple[int, int]]:
        """How far the blocks reach outside the image on each side of each dim."""
        return [(max(0, -int(g.starts[0])), max(0, int(g.starts[-1]) + g.span - g.size)) for g in self.grids]

    def weights(self, scale: tuple[int, ...]) -> list[np.ndarray]:
        """Per dim, ``(blocks, k_d · scale_d)`` weights of each output point of each block: the
        window (edge-aware: a block at an image border keeps full weight on its outer half), with
        ``margin · scale`` points set to 0 on every side that is not an image border."""
        name, sigma = parse_window(self.window)
        result = []
        for grid, k, s, m in zip(self.grids, self.geometry.kernel_size, scale, self.margin):
            size = k * s
            base = window_1d(name, size, sigma)
            if name != "none" and (not np.isfinite(base).all() or base.min() < MIN_WEIGHT):
                raise PatchfoldError(f"window {self.window!r} gives weights below {MIN_WEIGHT:.3g}", param="window")
            weights = np.tile(base, (grid.count, 1))
            half, trim = (size + 1) // 2, m * s
            first, last = grid.at_start(), grid.at_end()
            weights[first, :half] = 1.0
            weights[last, size - half :] = 1.0
            if trim:
                weights[~first, :trim] = 0.0
                weights[~last, size - trim :] = 0.0
            result.append(weights)
        return result


def plan_apply(
    spatial_size: tuple[int, ...],
    blocks: Blocks,
    *,
    cover: bool = False,
    window: str | None = None,
    margin: IntOrSeq = 0,
) -> ApplyPlan:
    """The :class:`ApplyPlan` for images of ``spatial_size``, validated before any work."""
    ndim = len(spatial_size)
    if cover:
        blocks = blocks.merged({"cover": True})  # refuses padding, naming it
    geometry = blocks.at(spatial_size, f"apply to size {list(spatial_size)}")  # validates as unfold would
    parse_window(window)
    margins = blocks_tuple(margin, ndim, "margin")
    for m, k, s, d in zip(margins, geometry.kernel_size, geometry.stride, geometry.dilation):
        if m and d != 1:
            raise PatchfoldError(
                f"margin needs dilation 1 (a dilated patch has no inner part), got {d}", param="margin"
            )
        if m and s > k - 2 * m:
            raise PatchfoldError(
                f"margin {m} keeps {k - 2 * m} of each {k}-pixel patch, less than the stride {s}: pixels between "
                f"the kept parts would have no value (need stride <= kernel_size - 2*margin)",
                param="margin",
            )
    grids = tuple(grid_of(geometry, d) for d in range(ndim))
    return ApplyPlan(blocks, geometry, cover, window, margins, grids)


def blocks_tuple(value: IntOrSeq, ndim: int, name: str) -> tuple[int, ...]:
    from patchfold.blocks import to_tuple

    values = to_tuple(value, ndim, name)
    if any(v < 0 for v in values):
        raise PatchfoldError(f"{name} must be >= 0, got {list(values)}", param=name)
    return values


def apply(
    x: Any,
    fn: Callable[[Any], Any],
    kernel_size: IntOrSeq | Blocks,
    dilation: IntOrSeq = 1,
    padding: IntOrSeq = 0,
    stride: IntOrSeq = 1,
    *,
    padding_mode: str = "zeros",
    cover: bool = False,
    window: str | None = None,
    margin: IntOrSeq = 0,
    batch_size: int = DEFAULT_BATCH,
    device: str | None = None,
    reduce: str | None = None,
    spatial_dims: int | None = None,
    memory_format: str = "auto",
) -> Any:
    """Run ``fn`` on every patch of ``x`` and blend the results back into images.

    Args:
        x: numpy array or torch tensor ``(N, C, *spatial)`` or ``(C, *spatial)``.
        fn: maps a batch of patches ``(B, C, *k)`` to ``(B, C', *k·scale)`` (dense) or ``(B, C')``
            (one vector per patch). A ``torch.nn.Module`` (or any callable, for tensor input) gets
            tensors on ``device`` and runs under ``torch.inference_mode()``; other callables get
            numpy arrays for numpy input. It must return a new array for every batch (outputs are
            read after ``fn`` has run on later batches; memory it gave before is refused).
        kernel_size, dilation, padding, stride, padding_mode: the blocks, as for :func:`unfold`.
        cover: place the blocks inside the image, moving the last block of each dim inward to end
            at the border (padding must be 0; only a dim shorter than one block is padded).
        window: blend overlapping output patches with a window (see :func:`patchfold.fold`).
        margin: trim this many pixels (per dim, or one for all) of each output patch on every side
            that is not an image border before blending (the overlap-tile strategy): for a
            translation-equivariant ``fn`` whose receptive radius is at most ``margin``, the result
            equals ``fn`` on the whole image.
        batch_size: patches per call of ``fn``.
        device: where a torch ``fn`` runs (default: the CPU, or the tensor's device).
        reduce: ``argmax`` (labels in the smallest unsigned dtype) or ``max`` over output channels.
        spatial_dims: as for :func:`unfold`.
        memory_format: the layout of the batches a torch ``fn`` gets (see :data:`MEMORY_FORMATS`):
            ``auto`` (channels-last for a ``torch.nn.Module`` that gives the same values for it),
            ``contiguous`` or ``channels_last``.

    Returns:
        Dense: ``(N, C', *spatial·scale)`` in ``fn``'s output dtype (float64 sums, divided by the
        weights; bfloat16, which numpy lacks, as float32: every value exact). bfloat16 input is cut
        as float32 and given to ``fn`` as bfloat16 again. Vector: ``(N, C', *blocks_per_dim)``.
        With ``reduce``, the channel axis is gone. Numpy for numpy input, a tensor (on ``x``'s
        device) for a tensor; unbatched input gives an
        unbatched result.

    >>> import numpy as np
    >>> x = np.arange(36.0).reshape(1, 1, 6, 6)
    >>> bool((apply(x, lambda p: p * 2, 4, stride=2) == 2 * x).all())
    True
    """
    from patchfold.ops import _array, _batched, blocks_of, spatial_dims_of

    x = _array(x, "apply input")
    blocks = blocks_of(kernel_size, dilation, padding, stride, padding_mode)
    batch, unbatched = _batched(x, spatial_dims_of(x, spatial_dims, blocks), "apply input")
    reduce = _check_reduce(reduce)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise PatchfoldError(f"batch_size must be a positive int, got {batch_size!r}", param="batch_size")
    if batch.shape[0] == 0:  # what fn makes of a patch (its mode, channels, scale) needs one
        raise PatchfoldError(f"apply needs at least one image, got input shape {tuple(x.shape)}")
    plan = plan_apply(tuple(batch.shape[2:]), blocks, cover=cover, window=window, margin=margin)
    runner = _Runner(fn, batch, device, memory_format=memory_format)
    images = [_drain(_apply_one(runner, runner.image(batch, n), plan, int(batch_size))) for n in range(batch.shape[0])]
    reduced = [reduce_channels(image, reduce) for image in images if image is not None]
    result = reduced[0][None] if len(reduced) == 1 else np.stack(reduced)  # one image: no second copy
    result = result[0] if unbatched else result
    if is_tensor(x):
        import torch

        return torch.from_numpy(result).to(x.device)
    return result


#: ``rows_out(image, first_row, rows, shape)``: finished output rows ``(C', r, ...)`` of one image
#: whose whole output is ``shape``, as soon as no later block can change them.
RowsOut = Callable[[int, int, np.ndarray, tuple[int, ...]], None]


def apply_streamed(
    x: np.ndarray,
    fn: Callable[[Any], Any],
    plan: ApplyPlan,
    *,
    batch_size: int = DEFAULT_BATCH,
    device: str | None = None,
    reduce: str | None = None,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    rows_out: RowsOut | None = None,
    memory_format: str = "auto",
) -> Generator[int, None, list[np.ndarray | None]]:
    """:func:`apply` for file jobs, on a batched numpy ``x`` and a ready :class:`ApplyPlan`: a
    generator of the blocks done so far (after each batch), returning per image the vector grid
    (reduced), or None for a dense output sent to ``rows_out``.

    ``prepare`` maps each batch of numpy patches before ``fn`` (the job converts pixels there, a
    batch at a time, not the whole image); dense outputs go to ``rows_out`` band by band (reduced
    already), so no whole output image is held.
    """
    reduce = _check_reduce(reduce)
    runner = _Runner(fn, x, device, prepare, memory_format)
    results: list[np.ndarray | None] = []
    for n in range(x.shape[0]):
        send = None
        if rows_out is not None:

            def send(first: int, rows: np.ndarray, shape: tuple[int, ...], n: int = n) -> None:
                reduced = reduce_channels(rows, reduce)
                rows_out(n, first, reduced if reduce == "none" else reduced[None], _reduced_shape(shape, reduce))

        before = n * plan.num_blocks  # blocks of the images before this one
        steps = _apply_one(runner, runner.image(x, n), plan, batch_size, send)
        image = yield from mapped(steps, lambda done, before=before: before + done)
        results.append(None if image is None else reduce_channels(image, reduce))
    return results


def mapped(steps: Generator[Any, None, Any], change: Callable[[Any], Any]) -> Generator[Any, None, Any]:
    """Each value of the generator ``steps`` passed through ``change``; returns what ``steps``
    returns (so ``yield from`` keeps it)."""
    while True:
        try:
            value = next(steps)
        except StopIteration as stop:
            return stop.value
        yield change(value)


def _reduced_shape(shape: tuple[int, ...], reduce: str) -> tuple[int, ...]:
    return shape if reduce == "none" else (1, *shape[1:])


def check_memory_format(memory_format: str) -> None:
    if memory_format not in MEMORY_FORMATS:
        raise PatchfoldError(
            f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}", param="memory_format"
        )


def _check_reduce(reduce: str | None) -> str:
    reduce = "none" if reduce is None else reduce
    if reduce not in REDUCTIONS:
        raise PatchfoldError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}", param="reduce")
    return reduce


def reduce_channels(image: np.ndarray, reduce: str) -> np.ndarray:
    """``argmax`` (labels in the smallest unsigned dtype that holds them) or ``max`` over axis 0."""
    if reduce == "argmax":
        labels = np.argmax(image, axis=0)
        return labels.astype(np.min_scalar_type(max(image.shape[0] - 1, 0)))
    if reduce == "max":
        return image.max(axis=0)
    return image


class _Runner:
    """Calls ``fn`` on batches of numpy patches, as tensors on a device where ``fn`` is torch's."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        x: Any,
        device: str | None,
        prepare: Callable[[Any], Any] | None = None,
        memory_format: str = "auto",
    ) -> None:
        if not callable(fn):
            raise PatchfoldError(f"fn must be a callable (a function or a model), got {type(fn).__name__}")
        check_memory_format(memory_format)
        self.fn, self.prepare = fn, prepare
        self.layout = memory_format  # "auto" until the first batch of 2-D or 3-D patches decides
        self.forced = memory_format == "channels_last"
        torch_module = sys.modules.get("torch")  # a torch model exists only where torch is loaded
        self.model = torch_module is not None and isinstance(fn, torch_module.nn.Module)
        # auto probes models in eval mode only: the probe runs the model twice more, on random
        # values, which a model in training mode would take into its batch-norm statistics
        self.probed = self.model and not getattr(fn, "training", False)
        module = self.model or type(fn).__module__.split(".")[0] == "torch"
        self.torch = is_tensor(x) or module or device is not None
        self.device = device if device is not None else (str(x.device) if is_tensor(x) else "cpu")
        self.half = x.dtype if is_tensor(x) and str(x.dtype) == "torch.bfloat16" else None
        if self.torch:
            from patchfold.engines.torch_engine import resolve_device

            self.target = resolve_device(self.device)

    def team(self) -> AbstractContextManager[None]:
        """The block a batch's compiled loops (gather, blend) run in: for a torch model on the CPU,
        on torch's OpenMP team, whose threads still spin from the model's last op (threads of
        patchfold's own would fight them for the cores); else on patchfold's threads."""
        if not self.torch or self.target.type != "cpu":
            return nullcontext()
        from patchfold.engines import cpu, torch_threads

        return cpu.on_team(torch_threads.team())

    @property
    def channels_last(self) -> bool:
        """Whether batches should be cut channels-last already (torch batches in that layout)."""
        return self.torch and self.layout == "channels_last"

    def image(self, x: Any, n: int) -> Any:
        """Image ``n`` of the batch as numpy ``(C, *spatial)`` (patches are cut from it), or of a
        region source as the reader of its rows."""
        if hasattr(x, "rows") and hasattr(x, "describe"):  # a RegionSource: read band by band
            return _ItemRows(x, n)
        item = x[n]
        return _as_array(item) if is_tensor(item) else np.asarray(item)

    def __call__(self, patches: np.ndarray, batch_size: int) -> np.ndarray:
        if self.prepare is not None:
            patches = self.prepare(patches)
        if not self.torch:
            return _as_array(self._called(patches, patches.shape))
        import torch

        if not patches.dtype.isnative:  # torch takes native byte order only (a big-endian .npy)
            patches = patches.astype(patches.dtype.newbyteorder("="))
        count = len(patches)
        if count < batch_size:  # the last batch, filled up for models exported with a fixed batch size
            patches = np.concatenate([patches, np.repeat(patches[-1:], batch_size - count, axis=0)])
        batch = torch.from_numpy(patches)
        if self.half is not None:  # bfloat16 input, cut as float32 (numpy has no bfloat16): back to it
            batch = batch.to(self.half)
        if self.target.type == "cuda":  # page-locked, so the copy to the GPU runs without staging
            batch = batch.pin_memory()
        with torch.inference_mode():
            result = self._in_layout(batch.to(self.target, non_blocking=True), patches.shape)
        return result[:count] if result.ndim and len(result) == len(patches) else result

    def _in_layout(self, batch: Any, shape: tuple[int, ...]) -> np.ndarray:
        """``fn`` on the batch in the chosen memory layout; the first batch decides ``auto``
        (see :meth:`_probed`) before it runs."""
        layout = channels_last_format(batch.ndim)
        if layout is not None and self.layout == "auto" and self.probed:
            self.layout = self._probed(batch, layout)
        if layout is None or self.layout != "channels_last":
            return _as_array(self._called(batch, shape))
        if self.forced:
            return _as_array(self._called(batch.contiguous(memory_format=layout), shape))
        try:  # chosen by auto: a later batch it fails on goes contiguous
            return _as_array(self.fn(batch.contiguous(memory_format=layout)))
        except Exception:  # a user's model: any type
            self.layout = "contiguous"
            return _as_array(self._called(batch.contiguous(), shape))  # cut channels-last: copied

    def _probed(self, batch: Any, layout: Any) -> str:
        """``channels_last`` where ``fn`` takes a probe batch of random values in that layout and
        gives the same values as for it contiguous (the first batch may be uniform, a blank
        background, where a misread layout goes unseen; a model may reshape in ways that need
        contiguous input, or fail on it), else ``contiguous``. The probe is
        :data:`PROBE_PATCHES` patches, or the whole batch's worth for a model that takes no
        smaller batch (one exported with a fixed batch size)."""
        counts = sorted({min(len(batch), PROBE_PATCHES), len(batch)})
        for count in counts:
            probe = probe_batch(batch[:count])
            try:  # copies, never views: a model that changes its input in place changes only its own
                first = _as_array(self.fn(probe.clone())).copy()
                other = _as_array(self.fn(probe.clone(memory_format=layout)))
            except Exception:  # a user's model: any type; contiguous batches it takes
                continue
            return "channels_last" if same_values(first, other) else "contiguous"
        return "contiguous"

    def _called(self, patches: Any, shape: tuple[int, ...]) -> Any:
        """``fn(patches)``; whatever ``fn`` raises (a model given the wrong channels...) becomes one
        :class:`PatchfoldError` line with its own last message line."""
        try:
            return self.fn(patches)
        except PatchfoldError:
            raise
        except Exception as error:  # a user's function or model: any type
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(error).__name__
            raise PatchfoldError(
                f"the function or model failed on a batch of patches {list(shape)}: {reason[:400]}"
            ) from None


def _as_array(result: Any) -> np.ndarray:
    if is_tensor(result):  # in the model's layout: the blend's loop reads channels-last outputs as they are
        if str(result.dtype) == "torch.bfloat16":  # numpy has none: as float32, which holds every value
            result = result.float()
        return result.detach().cpu().numpy()
    if isinstance(result, tuple | list) and len(result) == 1:  # an exported program's outputs
        return _as_array(result[0])
    array = np.asarray(result)
    if array.dtype.kind not in "biuf":
        raise PatchfoldError(f"fn must return real numbers, got {array.dtype}")
    return array


def channels_last_format(ndim: int) -> Any:
    """torch's channels-last memory format for a batch of ``ndim`` dims (2-D or 3-D patches), or None."""
    import torch

    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


def probe_batch(batch: Any) -> Any:
    """A batch like ``batch`` (shape, dtype, device) of seeded random values, distinct almost
    everywhere, so that ``fn`` reading it in another order shows (floats in [0, 1), integers in
    [0, 255])."""
    import torch

    generator = torch.Generator().manual_seed(0)
    if batch.dtype.is_floating_point:  # made in the batch's dtype: no wider copy of it
        values = torch.rand(batch.shape, generator=generator, dtype=batch.dtype)
    else:
        values = torch.randint(0, 256, batch.shape, generator=generator, dtype=torch.int16)
    return values.to(dtype=batch.dtype, device=batch.device)


def same_values(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two results of ``fn`` on the same batch agree: same shape and dtype, equal integers,
    floats within a few hundred rounding steps of the largest magnitude of their channel (axis 1;
    convolutions on another layout add in another order; a layout ``fn`` misreads differs by
    whole values, also in a channel of small values beside one of large)."""
    if first.shape != second.shape or first.dtype != second.dtype:
        return False
    if first.dtype.kind != "f":
        return bool(np.array_equal(first, second))
    finite = np.isfinite(first)
    if not np.array_equal(finite, np.isfinite(second)) or not np.array_equal(first[~finite], second[~finite], True):
        return False
    magnitude = np.where(finite, np.abs(first), 0)
    if first.ndim >= 2:  # per channel, over the patches and points
        scale = magnitude.max(axis=tuple(d for d in range(first.ndim) if d != 1), keepdims=True, initial=0.0)
    else:
        scale = magnitude.max(initial=0.0)
    tolerance = min(256 * float(np.finfo(first.dtype).eps), 1 / 64) * scale
    difference = np.abs(np.where(finite, first, 0) - np.where(finite, second, 0))
    return bool(np.all(difference <= tolerance))


def compiled_gather(image: np.ndarray) -> Any:
    """The checked C loop that cuts a channels-last batch out of ``image`` ``(C, *size)``, or None
    (no compiled loops, not 2-D or 3-D, or strides or alignment it does not take)."""
    from patchfold.engines import compiled  # here: `import patchfold` does not load the loops

    if image.ndim not in (3, 4) or not compiled.takes(image):
        return None
    return compiled.gather_cl(image.itemsize) if compiled.available() else None


def compiled_divide(dtype: np.dtype) -> Any:
    """The checked C loop that divides finished rows into ``dtype``, or None (numpy then does it)."""
    from patchfold.engines import compiled  # here: `import patchfold` does not load the loops

    return compiled.divide(np.dtype(dtype).name)


def compiled_blend(dtype: np.dtype) -> Any:
    """The checked C loop that finishes rows from held batches of outputs of ``dtype``, or None
    (no compiled loops here, or a dtype they do not take: the band then holds the sums)."""
    from patchfold.engines import compiled  # here: `import patchfold` does not load the loops

    return compiled.blend(np.dtype(dtype).name)


def compiled_place(dtype: np.dtype) -> Any:
    """The checked C loop that adds a batch of weighted outputs of ``dtype`` into the band, or None
    (no compiled loops here, or a dtype they do not take: the numpy loop then does it)."""
    from patchfold.engines import compiled  # here: `import patchfold` does not load the loops

    return compiled.place(np.dtype(dtype).name)


def cpu_engine() -> Any:
    """The CPU engine, whose ``run_parallel`` splits the loops over the cores (imported when
    first used: ``import patchfold`` does not load it)."""
    from patchfold.engines import cpu

    return cpu


def _batches(plan: ApplyPlan, batch_size: int) -> Iterator[np.ndarray]:
    """Block indices (row-major over the grid) in batches, as ``(B, ndim)`` grid coordinates."""
    for first in range(0, plan.num_blocks, batch_size):
        flat = np.arange(first, min(first + batch_size, plan.num_blocks))
        yield np.stack(np.unravel_index(flat, plan.blocks_per_dim), axis=1)


def _apply_one(
    runner: _Runner,
    image: np.ndarray,
    plan: ApplyPlan,
    batch_size: int,
    rows_out: Callable[[int, np.ndarray, tuple[int, ...]], None] | None = None,
) -> Generator[int, None, np.ndarray | None]:
    """``fn`` over every block of one ``(C, *spatial)`` image, blended back: a generator of the
    blocks done after each batch, returning the image (None when dense rows went to ``rows_out``)."""
    rows = _Rows(image, plan)
    kernel = plan.geometry.kernel_size
    sink: _Sink | None = None
    adding: Future[None] | None = None  # a band's blend of the previous batch, while fn runs on this one
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchfold-blend", initializer=_yielding) as blender:
        for coords in _batches(plan, batch_size):
            with runner.team():
                patches = rows.gather(coords, runner.channels_last)
                outputs = runner(patches, batch_size)
                if adding is not None:
                    adding.result()
                if sink is None:
                    sink = _Sink.for_first(outputs, patches, plan, kernel, rows.channels, rows_out)
                if sink.blend is not None:  # held outputs: finished rows summed in cache, on every core
                    sink.add(outputs, coords)
                else:
                    adding = blender.submit(sink.add, outputs, coords)
            yield int(np.ravel_multi_index(tuple(coords[-1]), plan.blocks_per_dim)) + 1
        if adding is not None:
            adding.result()
    assert sink is not None  # an image has at least one block
    with runner.team():
        return sink.finish()


class _Rows:
    """Patches of one image ``(C, *spatial)``, cut from its padded rows: all of them for an array
    (a padded copy only where the blocks reach outside), or for a :class:`RegionSource` only the
    rows the current batch reaches, read as the batches move down the image (rows no later block
    needs are dropped), so a file job holds a band of the input, not the whole image."""

    def __init__(self, image: Any, plan: ApplyPlan) -> None:
        self.plan, self.widths = plan, plan.pad_widths()
        self.channels = image.shape[1] if isinstance(image, _ItemRows) else image.shape[0]
        self.image = image
        self.top = 0  # padded row of the held slab's first row
        self.slab: np.ndarray | None = None
        if not isinstance(image, _ItemRows):
            from patchfold.engines.cpu import pad_spatial  # here: `import patchfold` does not load the engine

            self.slab = pad_spatial(image, self.widths, plan.geometry.padding_mode, lead=1)

    def _hold(self, lo: int, hi: int) -> np.ndarray:
        """The padded rows ``[lo, hi)`` of dim 0 (a view of the held slab, read where needed)."""
        if isinstance(self.image, _ItemRows):
            held = 0 if self.slab is None else self.slab.shape[1]
            if self.slab is None or lo < self.top or hi > self.top + held:
                overlap = self.slab is not None and self.top <= lo < self.top + held  # batches move down
                keep = self.slab[:, lo - self.top :] if overlap else None
                start = lo if keep is None else self.top + held
                fresh = self.image.padded(self.widths, self.plan.geometry.padding_mode, start, hi - start)
                self.slab = fresh if keep is None or not keep.shape[1] else np.concatenate([keep, fresh], axis=1)
                self.top = lo
        assert self.slab is not None
        return self.slab[:, lo - self.top : hi - self.top]

    def gather(self, coords: np.ndarray, channels_last: bool = False) -> np.ndarray:
        """The patches of the blocks at grid ``coords`` ``(B, ndim)``, as one batch ``(B, C, *k)``:
        contiguous, or with ``channels_last`` in channels-last memory where the compiled gather
        takes the image (else contiguous: the runner converts)."""
        plan, widths = self.plan, self.widths
        index = np.stack([plan.grids[d].starts[coords[:, d]] + widths[d][0] for d in range(plan.ndim)], axis=1)
        lo, hi = int(index[:, 0].min()), int(index[:, 0].max()) + plan.grids[0].span
        slab = self._hold(lo, hi)
        index[:, 0] -= lo
        loop = compiled_gather(slab) if channels_last else None
        if loop is not None:
            kernel, dilation = plan.geometry.kernel_size, plan.geometry.dilation
            batch = np.empty((len(index), *kernel, slab.shape[0]), dtype=slab.dtype)
            starts = index.astype(np.int64)

            def cut(lo: int, hi: int) -> None:  # threads take disjoint patches
                loop(slab, starts[lo:hi], kernel, dilation, out=batch[lo:hi])

            # split where it pays: it reads as much as it writes
            cpu_engine().run_parallel(cut, 0, len(starts), 2 * batch.nbytes, None, recordable=True)
            return np.moveaxis(batch, -1, 1)
        spans = [g.span for g in plan.grids]
        windows = np.lib.stride_tricks.sliding_window_view(slab, spans, axis=tuple(range(1, plan.ndim + 1)))
        windows = windows[(..., *(slice(None, None, d) for d in plan.geometry.dilation))]  # (C, *positions, *k)
        windows = np.moveaxis(windows, 0, plan.ndim)  # (*positions, C, *k): a patch is windows[position]
        patches = np.empty((len(coords), *windows.shape[plan.ndim :]), dtype=windows.dtype)
        positions = index.tolist()

        def gather(lo: int, hi: int) -> None:
            for row in range(lo, hi):  # one strided copy per patch: faster than a fancy index
                np.copyto(patches[row], windows[tuple(positions[row])])

        cpu_engine().run_parallel(gather, 0, len(positions), patches.nbytes, None)
        return patches


@dataclass(frozen=True)
class _ItemRows:
    """Item ``n`` of a :class:`~patchfold.io.sources.RegionSource`, read band by band of padded rows."""

    source: Any
    n: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)

    def padded(self, widths: list[tuple[int, int]], mode: str, top: int, height: int) -> np.ndarray:
        from patchfold.io.sources import padded_slab  # here: only file jobs read region sources

        return padded_slab(self.source, tuple(widths), mode, top, height)[self.n]


#: The blend runs on one thread of its own, beside the model: on the cores fn leaves idle.
BLEND_THREADS = 1


def _yielding() -> None:
    """Lower the blend thread's priority (Linux: per thread), so it takes the cores only where
    ``fn`` leaves them idle: a model's threads that wait on a straggler core cost more than the
    blend saves by running at once (it is waited for before the next batch's blend anyway)."""
    import contextlib
    import os
    import threading

    with contextlib.suppress(AttributeError, OSError):  # no per-thread priorities: the blend runs as it is
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _drain(steps: Generator[int, None, Any]) -> Any:
    """Run a generator to its end and give its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


#: Float64 sums the compiled blend holds at a time: a chunk of rows that stays in cache.
CHUNK_BYTES = 1 << 19


class _Sink:
    """Where outputs go: a block grid of vectors, or the dense weighted sum.

    Blocks come in row-major order, so output rows (along dim 0) above the next block's start are
    final: they are divided by their total weight and moved into the result as soon as a batch
    begins below them. Until then the sums are held in one of two ways:

    - *held outputs* (the compiled loops, where the outputs that can still reach unfinished rows
      take at most twice a band's memory: overlaps up to about half a block): the batches
      themselves are kept, and finished rows are summed from them chunk by chunk in a float64
      chunk that stays in cache, then divided; the sums never travel through memory;
    - *a float64 band* of the rows blocks not yet added can still reach, each batch added into it
      as it comes (about one block tall plus a batch's rows, not the image): large overlaps, and
      the numpy loops.

    Both add each point's contributions in the order of the blocks and divide alike, so they give
    the same values bit for bit.
    """

    def __init__(
        self,
        plan: ApplyPlan,
        mode: str,
        shape: tuple[int, ...],
        scale: tuple[int, ...],
        dtype: np.dtype,
        rows_out: Callable[[int, np.ndarray, tuple[int, ...]], None] | None = None,
        batch: int = 1,
    ):
        self.plan, self.mode, self.shape, self.scale, self.dtype = plan, mode, shape, scale, dtype
        self.rows_out, self.batch = rows_out, batch
        self.previous: np.ndarray | None = None  # the last batch's outputs (see _check_new)
        self.placed: list[Any] = []  # held outputs: the batches that can still reach unfinished rows
        self.blend: Any = None  # the compiled loop that finishes rows from held outputs, where used
        channels = shape[0]
        if mode == "vector":
            check_fits(channels * plan.num_blocks * dtype.itemsize, "the block grid of outputs")
            self.grid = np.zeros((channels, *plan.blocks_per_dim), dtype=dtype)
            return
        self.weights = plan.weights(scale)
        widths = plan.pad_widths()
        self.lead = [a * s for (a, _), s in zip(widths, scale)]  # output points before the image, per dim
        self.padded = [(g.size + a + b) * s for g, (a, b), s in zip(plan.grids, widths, scale)]
        self.out_size = [g.size * s for g, s in zip(plan.grids, scale)]
        self.result = None
        if rows_out is None:
            check_fits(channels * math.prod(self.out_size) * dtype.itemsize, "the blended output")
            self.result = np.zeros((channels, *self.out_size), dtype=dtype)
        self.totals = self._totals()
        self.base = self.start = self.held = 0
        blend = compiled_blend(dtype) if plan.ndim in (2, 3) else None
        held_bytes = self._held_bytes()
        if blend is not None and held_bytes <= 2 * self._band_bytes():
            check_fits(held_bytes, "the blended outputs held until their rows are finished")
            row_bytes = channels * math.prod(self.padded[1:]) * 8
            self.chunk_rows = max(1, min(CHUNK_BYTES // max(row_bytes, 1), self.padded[0]))
            self.chunks: dict[int, np.ndarray] = {}  # per piece of a flush's rows: its chunk of float64 sums
            self.blend = blend
            return
        self.weighted = np.empty(shape, dtype=np.float64)  # one block's weighted output (stays in cache)
        # the band: padded output rows [base, base + held) live in buffer rows [start, start + held);
        # every other row is zero. Finished rows are cleared and left behind (start moves on), and
        # the live rows move back to the top only when the buffer's end is reached.
        self.buffer = np.zeros((channels, 0, *self.padded[1:]), dtype=np.float64)
        self.place = compiled_place(dtype) if plan.ndim in (2, 3) else None  # the C loops' dims
        self.divide = compiled_divide(dtype) if plan.ndim in (2, 3) else None

    def _reach(self) -> int:
        """Output points one block spans in dim 0."""
        return (self.shape[1] - 1) * self.plan.geometry.dilation[0] + 1

    def _band_bytes(self) -> int:
        """About what the float64 band holds: two blocks' height of padded output rows."""
        return self.shape[0] * 2 * self._reach() * math.prod(self.padded[1:]) * 8

    def _held_bytes(self) -> int:
        """At most what held outputs take: the block rows that reach an unfinished row (one more
        than a block spans strides), plus a batch."""
        plan = self.plan
        step = max(1, int(plan.geometry.stride[0]) * self.scale[0])
        block_rows = -(-self._reach() // step) + 1
        per_block = math.prod(self.shape) * self.dtype.itemsize
        return (block_rows * math.prod(plan.blocks_per_dim[1:]) + self.batch) * per_block

    def _totals(self) -> list[np.ndarray]:
        """The total weight at each output point, per dim (the blocks form a grid, so the total is
        their outer product), over the padded output."""
        plan, dilation, totals = self.plan, self.plan.geometry.dilation, []
        for d in range(plan.ndim):
            total = np.zeros(self.padded[d])
            for start, weights in zip(plan.grids[d].starts, self.weights[d]):
                first = int(start) * self.scale[d] + self.lead[d]
                total[first : first + (len(weights) - 1) * dilation[d] + 1 : dilation[d]] += weights
            inner = total[self.lead[d] : self.lead[d] + self.out_size[d]]
            if any(self.plan.margin) and not (inner > 0).all():
                raise PatchfoldError(
                    "the blocks' kept parts leave pixels with no value (margin too large for the stride)"
                )
            totals.append(np.where(total > 0, total, np.inf))  # a point no block covers comes out 0
        return totals

    @classmethod
    def for_first(
        cls,
        outputs: np.ndarray,
        patches: np.ndarray,
        plan: ApplyPlan,
        kernel: tuple[int, ...],
        channels: int,
        rows_out: Callable[[int, np.ndarray, tuple[int, ...]], None] | None = None,
    ) -> _Sink:
        """Tell the mode and scale from the first batch's outputs."""
        batch = patches.shape[0]
        if outputs.ndim == 2 and outputs.shape[0] == batch:
            return cls(plan, "vector", outputs.shape[1:], (1,) * plan.ndim, outputs.dtype)
        if outputs.ndim == patches.ndim and outputs.shape[0] == batch:
            scale = []
            for got, k in zip(outputs.shape[2:], kernel):
                if got % k or got == 0:
                    break
                scale.append(got // k)
            if len(scale) == plan.ndim:
                dilation = plan.geometry.dilation
                if any(s != 1 for s in scale) and any(d != 1 for d in dilation):
                    raise PatchfoldError(
                        f"fn scales its patches by {scale}, which needs dilation 1 (got {list(dilation)})"
                    )
                # native byte order: the result is written by the compiled loops (a big-endian fn's too)
                dtype = outputs.dtype.newbyteorder("=") if outputs.dtype.kind == "f" else np.dtype(np.float64)
                return cls(plan, "dense", outputs.shape[1:], tuple(scale), dtype, rows_out, batch)
        raise PatchfoldError(
            f"fn turned a batch of patches {list(patches.shape)} into {list(outputs.shape)}: expected "
            f"({batch}, C', *kernel·scale) with kernel {list(kernel)} and an integer scale, or ({batch}, C')"
        )

    def add(self, outputs: np.ndarray, coords: np.ndarray) -> None:
        if outputs.shape != (len(coords), *self.shape):
            raise PatchfoldError(
                f"fn's output changed shape: {list(outputs.shape)}, after {[len(coords), *self.shape]} "
                "for the first batch"
            )
        self._check_new(outputs)
        if self.mode == "vector":
            self.grid[(slice(None), *coords.T)] = outputs.T
            return
        plan, ndim, dilation = self.plan, self.plan.ndim, self.plan.geometry.dilation
        starts = [plan.grids[d].starts[coords[:, d]] * self.scale[d] + self.lead[d] for d in range(ndim)]
        per_dim = [np.ascontiguousarray(self.weights[d][coords[:, d]]) for d in range(ndim)]  # (B, k_d)
        if self.blend is not None:  # held until their rows are finished
            if not self.blend.takes(outputs):  # integers, big-endian, unaligned, negative strides: a copy
                outputs = np.ascontiguousarray(outputs, dtype=self.blend.target)
            self._flush(int(starts[0].min()))
            firsts = np.stack(starts, axis=1).astype(np.int64)
            self.placed.append(self.blend.placement(outputs, firsts, per_dim, dilation, self.padded))
            return
        self._flush(int(starts[0].min()))
        self._hold(int(starts[0].max()) + self._reach())
        if self.place is not None and self.place.takes(outputs):
            firsts = np.stack([starts[0] - self.base + self.start, *starts[1:]], axis=1).astype(np.int64)

            def split(add_rows: Callable[[int, int], None], lo: int, hi: int) -> None:  # threads share the rows
                cpu_engine().run_parallel(add_rows, lo, hi, outputs.nbytes * 2, BLEND_THREADS)

            self.place(outputs, self.buffer, firsts, per_dim, dilation, split)  # the compiled loop, checked
            return
        # numpy: each block's (*k) weights as one float64 product, then one block at a time
        # through a reused float64 buffer, which stays in cache
        weights = per_dim[0]
        for d in range(1, ndim):
            weights = weights[..., None] * per_dim[d].reshape(len(coords), *([1] * d), -1)
        weighted = self.weighted
        for row in range(len(coords)):
            first_row = starts[0][row] - self.base + self.start
            where = tuple(
                slice(int(first), int(first) + (self.shape[1 + d] - 1) * dilation[d] + 1, dilation[d])
                for d, first in enumerate([first_row, *(s[row] for s in starts[1:])])
            )
            np.multiply(outputs[row], weights[row][None], out=weighted)
            self.buffer[(slice(None), *where)] += weighted

    def _check_new(self, outputs: np.ndarray) -> None:
        """Refuse outputs in the memory of an earlier batch's that may still be read (held, or
        being added on the blend thread while ``fn`` ran): ``fn`` wrote over values not yet used."""
        earlier = [placed.outputs for placed in self.placed]
        if self.previous is not None:
            earlier.append(self.previous)
        for array in earlier:
            if np.may_share_memory(outputs, array) and np.shares_memory(outputs, array):
                raise PatchfoldError(
                    "fn returned memory it had returned for an earlier batch, whose values may still be "
                    "needed: return a new array for every batch"
                )
        self.previous = outputs

    def _hold(self, stop: int) -> None:
        """Make room for padded output rows up to ``stop``."""
        if stop <= self.base + self.held:
            return
        rows = stop - self.base
        if self.start + rows > self.buffer.shape[1]:
            # one block's height of room ahead: the live rows move once per block row or so (as
            # fast, measured, as four heights' room, and the band is half the memory)
            ahead = (self.shape[1] - 1) * self.plan.geometry.dilation[0] + 1
            capacity = max(rows + ahead, self.buffer.shape[1])
            if capacity > self.buffer.shape[1]:
                check_fits(self.buffer[:, :1].nbytes * capacity, "the blended output's float64 band")
                grown = np.zeros((self.buffer.shape[0], capacity, *self.buffer.shape[2:]), dtype=np.float64)
                grown[:, : self.held] = self.buffer[:, self.start : self.start + self.held]
                self.buffer = grown
            else:  # back to the top (numpy copies overlapping rows safely); finished rows are
                # zero already (see _flush), so only the moved rows' old place is cleared
                self.buffer[:, : self.held] = self.buffer[:, self.start : self.start + self.held]
                self.buffer[:, max(self.held, self.start) : self.start + self.held] = 0
            self.start = 0
        self.held = rows

    def _flush(self, stop: int) -> None:
        """Padded output rows below ``stop`` are final: divide them and move them to the result."""
        if self.blend is not None:
            self._finish_held(stop)
            return
        stop = min(stop, self.base + self.held)
        if stop <= self.base:
            return
        first = max(self.base, self.lead[0])
        last = min(stop, self.lead[0] + self.out_size[0])
        loop = self.divide
        # the compiled loop clears the rows it divides as it goes where they are the rows' whole
        # width (no padding beside the image): no second pass over them
        cleared = first < last and loop is not None and self.out_size[1:] == self.padded[1:]
        if first < last:
            values, totals, rest = self._finished_rows(first, last)
            held = slice(first - self.base + self.start, last - self.base + self.start)
            sums = self.buffer[(slice(None), held, *rest)]

            def divide(lo: int, hi: int) -> None:  # threads share the rows; uncovered points: x / inf = 0
                if loop is not None:  # the compiled loop: the same values in one pass
                    loop(sums[:, lo:hi], [totals[0][lo:hi], *totals[1:]], values[:, lo:hi], clear=cleared)
                    return
                divisor = outer([totals[0][lo:hi], *totals[1:]])
                np.divide(sums[:, lo:hi], divisor, out=values[:, lo:hi], casting="same_kind")

            cpu_engine().run_parallel(divide, 0, last - first, sums.nbytes, BLEND_THREADS)
            self._send(first, values)
        # finished rows are cleared now, while in cache, so the rows the band reuses are zero
        if cleared:  # the loop cleared the image's rows: the padding rows above and below are left
            self._clear(self.base, first)
            self._clear(last, stop)
        else:
            self._clear(self.base, stop)
        self.start += stop - self.base
        self.held -= stop - self.base
        self.base = stop

    def _finish_held(self, stop: int) -> None:
        """Held outputs: the padded rows ``[base, stop)`` inside the image summed from the batches
        that reach them and divided, by the compiled blend; batches wholly above ``stop`` let go."""
        stop = min(stop, self.padded[0])
        first, last = max(self.base, self.lead[0]), min(stop, self.lead[0] + self.out_size[0])
        if first < last:
            values, totals, _ = self._finished_rows(first, last)
            reaching = [placed for placed in self.placed if placed.first < last and placed.stop > first]
            pieces = itertools.count()  # each piece its own chunk (pieces may run at once, or be recorded)

            def finish(lo: int, hi: int) -> None:  # threads take disjoint rows
                chunk = self._chunk(next(pieces))
                parts = [totals[0][lo - first : hi - first], *totals[1:]]
                self.blend(reaching, chunk, (lo, hi), parts, values[:, lo - first : hi - first], self.lead[1:])

            cpu_engine().run_parallel(finish, first, last, values.nbytes * 4, None, recordable=True)
            self._send(first, values)
        self.base = max(self.base, stop)
        self.placed = [placed for placed in self.placed if placed.stop > self.base]

    def _finished_rows(self, first: int, last: int) -> tuple[np.ndarray, list[np.ndarray], list[slice]]:
        """Where the image's padded rows ``[first, last)`` go once divided (the result's rows, or a
        new array for ``rows_out``), their total weights per dim, and the image's part of each
        other dim of the padded output."""
        rest = [slice(lead, lead + n) for lead, n in zip(self.lead[1:], self.out_size[1:])]
        totals = [self.totals[0][first:last], *(t[part] for t, part in zip(self.totals[1:], rest))]
        if self.rows_out is not None:
            values = np.empty((self.shape[0], last - first, *self.out_size[1:]), dtype=self.dtype)
        else:
            values = self.result[:, first - self.lead[0] : last - self.lead[0]]
        return values, totals, rest

    def _send(self, first: int, values: np.ndarray) -> None:
        """Finished rows from the image's padded row ``first`` on, to ``rows_out`` where given."""
        if self.rows_out is not None:
            self.rows_out(first - self.lead[0], values, (self.shape[0], *self.out_size))

    def _chunk(self, piece: int) -> np.ndarray:
        """The chunk of float64 sums of a flush's ``piece``-th piece of rows (reused: the blend
        zeroes the rows it takes)."""
        chunk = self.chunks.get(piece)
        if chunk is None:
            shape = (self.shape[0], self.chunk_rows, *self.padded[1:])
            chunk = self.chunks[piece] = np.zeros(shape, dtype=np.float64)
        return chunk

    def _clear(self, first: int, stop: int) -> None:
        """Zero the band's padded output rows ``[first, stop)`` (held rows)."""
        if stop > first:
            self.buffer[:, first - self.base + self.start : stop - self.base + self.start] = 0

    def finish(self) -> np.ndarray | None:
        if self.mode == "vector":
            return self.grid
        if self.blend is None:  # rows below the last block's reach too (zero), so every row goes out once
            self._hold(self.padded[0])
        self._flush(self.padded[0])
        return self.result
