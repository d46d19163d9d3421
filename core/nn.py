"""Drop-in modules for ``torch.nn.Unfold`` and ``torch.nn.Fold`` that run patchfold's operations.

Same constructor signature, attributes, ``repr`` and (empty) ``state_dict`` as PyTorch's, so they
go wherever those go; on CPU tensors they run patchfold's own loops, with gradients (see
:mod:`patchfold.engines.autograd`), and on CUDA tensors PyTorch's ops. Extras, keyword-only:
``padding_mode``, ``layout`` and ``engine`` for both, ``normalize`` and ``window`` for Fold.

``torch.export``, ``torch.jit.trace`` and ``torch.compile`` record PyTorch's ops, extras included
(while they record, every operation runs on the torch engine; ``torch.compile`` breaks its graph at
patchfold's Python geometry code). A trace holds the spatial size it was traced at (its geometry
is Python code), except for PyTorch's own case (zero padding, ``ncl``): trace at the size you run.
``torch.jit.script`` gives PyTorch's own module where the parameters are ones it has (zero
padding, ``ncl``, a plain sum) and refuses the extras with a :class:`PatchfoldError` saying why.

>>> import torch
>>> from patchfold import nn
>>> unfold, fold = nn.Unfold(2, stride=2), nn.Fold((4, 4), 2, stride=2)
>>> unfold
Unfold(kernel_size=2, dilation=1, padding=0, stride=2)
>>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
>>> bool(torch.equal(fold(unfold(x)), x))
True
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from patchfold import ops
from patchfold.blocks import Blocks, IntOrSeq
from patchfold.engines import check_engine
from patchfold.errors import PatchfoldError
from patchfold.geometry import check_layout
from patchfold.windows import parse_window

__all__ = ["Fold", "Unfold"]


class Unfold(torch.nn.Module):
    """Extract sliding blocks: ``torch.nn.Unfold`` with patchfold's engine and extras.

    Args:
        kernel_size, dilation, padding, stride: as ``torch.nn.Unfold``'s (an int or one per dim).
        padding_mode: ``zeros`` (PyTorch's), ``reflect``, ``replicate`` or ``circular``.
        layout: ``ncl`` (PyTorch's ``(N, C·∏k, L)``) or ``nlc`` (``(N, L, C·∏k)``, ready for a
            ``Linear`` over each patch without a transpose).
        engine: ``auto``, ``cpu`` or ``torch`` (see :func:`patchfold.unfold`).

    Shape:
        ``(N, C, *spatial)`` or ``(C, *spatial)`` → ``(N, C·∏k, L)`` (``ncl``).
    """

    __constants__: ClassVar[list[str]] = ["kernel_size", "dilation", "padding", "stride"]

    def __init__(
        self,
        kernel_size: IntOrSeq,
        dilation: IntOrSeq = 1,
        padding: IntOrSeq = 0,
        stride: IntOrSeq = 1,
        *,
        padding_mode: str = "zeros",
        layout: str = "ncl",
        engine: str = "auto",
    ) -> None:
        super().__init__()
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride
        self.padding_mode, self.layout, self.engine = padding_mode, check_layout(layout), check_engine(engine)
        _blocks(self)  # validated now, not at the first forward

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        try:
            return ops.unfold(input, _blocks(self), layout=self.layout, engine=self.engine)
        except PatchfoldError as error:
            if error.param != "spatial_dims":
                raise
            shape = tuple(getattr(input, "shape", ()))
            raise PatchfoldError(  # the operation's advice (spatial_dims=) is not an argument of the module
                f"Unfold takes (N, C, H, W) or (C, H, W) input, or (N, C, D, H, W) for 3-D; got shape {shape}",
                param="kernel_size",
            ) from None

    def extra_repr(self) -> str:
        return _repr(self, ("kernel_size", "dilation", "padding", "stride"), {"padding_mode": "zeros", "layout": "ncl"})

    def __prepare_scriptable__(self) -> torch.nn.Module:
        _check_scriptable(self, padding_mode=("zeros", self.padding_mode), layout=("ncl", self.layout))
        return torch.nn.Unfold(self.kernel_size, self.dilation, self.padding, self.stride)


class Fold(torch.nn.Module):
    """Overlap-add sliding blocks: ``torch.nn.Fold`` with patchfold's engine and extras.

    Args:
        output_size, kernel_size, dilation, padding, stride: as ``torch.nn.Fold``'s.
        padding_mode, layout, engine: as for :class:`Unfold`.
        normalize: divide by the (weighted) divisor map, so ``Fold(Unfold(x)) == x`` (PyTorch's
            Fold sums: ``False``, the default). Its gradient is exact: the map is a constant.
        window: blend overlapping blocks with a window (``hann``, ``gaussian:0.2``...; see
            :func:`patchfold.fold`); the weighted sum is linear in the blocks, so its gradient is
            exact too.

    Half precision: float16 and bfloat16 blocks are summed in float32 and rounded once (PyTorch's
    CPU fold adds in the half type itself, rounding at every addition), so the result is the
    correctly rounded float32 sum.

    Shape:
        ``(N, C·∏k, L)`` (``ncl``) or ``(C·∏k, L)`` → ``(N, C, *output_size)``.
    """

    __constants__: ClassVar[list[str]] = ["output_size", "kernel_size", "dilation", "padding", "stride"]

    def __init__(
        self,
        output_size: IntOrSeq,
        kernel_size: IntOrSeq,
        dilation: IntOrSeq = 1,
        padding: IntOrSeq = 0,
        stride: IntOrSeq = 1,
        *,
        padding_mode: str = "zeros",
        layout: str = "ncl",
        normalize: bool = False,
        window: str | None = None,
        engine: str = "auto",
    ) -> None:
        super().__init__()
        self.output_size, self.kernel_size, self.dilation = output_size, kernel_size, dilation
        self.padding, self.stride = padding, stride
        self.padding_mode, self.layout, self.engine = padding_mode, check_layout(layout), check_engine(engine)
        if not isinstance(normalize, bool):
            raise PatchfoldError(f"normalize must be True or False, got {normalize!r}", param="normalize")
        name, _ = parse_window(window)
        # "none" is no window (so TorchScript can take PyTorch's module); names are kept lower-case
        window = None if name == "none" else str(window).strip().lower()
        self.normalize, self.window = normalize, window
        _blocks(self)  # validated now, not at the first forward

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.fold(
            input,
            self.output_size,
            _blocks(self),
            normalize=self.normalize,
            layout=self.layout,
            window=self.window,
            engine=self.engine,
        )

    def extra_repr(self) -> str:
        extras = {"padding_mode": "zeros", "layout": "ncl", "normalize": False, "window": None}
        return _repr(self, ("output_size", "kernel_size", "dilation", "padding", "stride"), extras)

    def __prepare_scriptable__(self) -> torch.nn.Module:
        _check_scriptable(
            self,
            padding_mode=("zeros", self.padding_mode),
            layout=("ncl", self.layout),
            normalize=(False, self.normalize),
            window=(None, self.window),
        )
        return torch.nn.Fold(self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)


def _blocks(module: Unfold | Fold) -> Blocks:
    """The module's parameters as they are now (read at every forward, as PyTorch's modules do,
    so an attribute changed after construction takes effect); built once per distinct setting."""
    key = (module.kernel_size, module.dilation, module.padding, module.stride, module.padding_mode)
    cached = module.__dict__.get("_blocks_cache")
    if cached is None or cached[0] != key:
        blocks = Blocks(key[0], dilation=key[1], padding=key[2], stride=key[3], padding_mode=key[4])
        module.__dict__["_blocks_cache"] = cached = (key, blocks)
    return cached[1]


def _repr(module: torch.nn.Module, names: tuple[str, ...], extras: dict[str, Any]) -> str:
    """PyTorch's ``extra_repr`` text, then the extras that differ from their defaults."""
    parts = [f"{name}={getattr(module, name)}" for name in names]
    parts += [f"{name}={getattr(module, name)!r}" for name, value in extras.items() if getattr(module, name) != value]
    return ", ".join(parts)


def _check_scriptable(module: torch.nn.Module, **settings: tuple[Any, Any]) -> None:
    """TorchScript runs PyTorch's module instead; refuse settings PyTorch's has no equivalent of."""
    different = [f"{name}={value!r}" for name, (default, value) in settings.items() if value != default]
    if different:
        raise PatchfoldError(
            f"patchfold.nn.{type(module).__name__} with {', '.join(different)} cannot be scripted: TorchScript runs "
            f"torch.nn.{type(module).__name__} instead, which has no such option (torch.jit.trace records them)"
        )
