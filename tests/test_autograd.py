"""Gradients through patchfold's CPU engine (``patchfold.engines.autograd``): gradcheck and
gradgradcheck for every layout, padding mode and 1-3 spatial dims; equality with PyTorch's
gradients where PyTorch has the op; half precision; the convolution identity."""

from __future__ import annotations

import itertools

import numpy as np
import patchfold
import pytest
import torch
import torch.nn.functional as F
from helpers_ref import PADDING_MODES
from patchfold import engines
from torch.autograd import gradcheck, gradgradcheck

#: (spatial size, kernel, stride, padding, dilation) per number of spatial dims: small enough for
#: gradcheck, with overlapping blocks and padding that the blocks reach.
GEOMETRIES = {
    1: ((7,), (3,), (2,), (1,), (1,)),
    2: ((5, 4), (3, 2), (1, 2), (1, 1), (1, 1)),
    3: ((4, 3, 3), (2, 2, 2), (1, 1, 2), (1, 0, 1), (1, 1, 1)),
}
#: The fold variants: (normalize, window).
FOLDS = [(False, None), (True, None), (False, "hann"), (True, "gaussian:0.3"), (True, "triangular"), (False, "pyramid")]


def _kwargs(ndim: int, mode: str, layout: str) -> dict:
    _, kernel, stride, padding, dilation = GEOMETRIES[ndim]
    return {
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "padding_mode": mode,
        "layout": layout,
    }


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_gradcheck_and_gradgradcheck(layout: str, mode: str, ndim: int) -> None:
    size = GEOMETRIES[ndim][0]
    kwargs = _kwargs(ndim, mode, layout)
    x = torch.randn(2, 2, *size, dtype=torch.float64, requires_grad=True)
    assert engines.select(x) == "autograd"

    def unfold(t: torch.Tensor) -> torch.Tensor:
        return patchfold.unfold(t, **kwargs, spatial_dims=ndim)

    assert gradcheck(unfold, (x,), fast_mode=True)
    assert gradgradcheck(unfold, (x,), fast_mode=True)
    cols = unfold(x).detach().requires_grad_(True)
    for normalize, window in FOLDS:

        def fold(c: torch.Tensor, normalize: bool = normalize, window: str | None = window) -> torch.Tensor:
            return patchfold.fold(c, size, **kwargs, normalize=normalize, window=window)

        assert gradcheck(fold, (cols,), fast_mode=True), (normalize, window)
        assert gradgradcheck(fold, (cols,), fast_mode=True), (normalize, window)


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_full_gradcheck_of_a_2d_round_trip(mode: str) -> None:
    """The exact (not fast-mode) Jacobian check on one small case per padding mode."""
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)

    def round_trip(t: torch.Tensor) -> torch.Tensor:
        cols = patchfold.unfold(t, 3, padding=1, stride=(1, 2), padding_mode=mode)
        return patchfold.fold(cols * cols, (4, 5), 3, padding=1, stride=(1, 2), padding_mode=mode, normalize=True)

    assert gradcheck(round_trip, (x,))
    assert gradgradcheck(round_trip, (x,))


CASES_2D = [
    ((9, 8), 3, 1, 0, 1),
    ((9, 8), (3, 2), (2, 1), (1, 2), (2, 3)),
    ((12, 10), 4, 2, 1, 1),
    ((6, 7), 2, 1, (0, 1), (3, 1)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES_2D, ids=[str(i) for i in range(len(CASES_2D))])
def test_gradients_equal_pytorchs(case: tuple, dtype: torch.dtype) -> None:
    size, k, d, p, s = case
    x = torch.randn(2, 3, *size, dtype=dtype, requires_grad=True)
    reference = x.detach().clone().requires_grad_(True)
    cols = patchfold.unfold(x, k, d, p, s)
    expected_cols = F.unfold(reference, k, d, p, s)
    torch.testing.assert_close(cols, expected_cols, rtol=0, atol=0)
    # through a non-linear step, so the fold's input gradient is not a constant
    back = patchfold.fold(cols.tanh(), size, k, d, p, s)
    expected_back = F.fold(expected_cols.tanh(), size, k, d, p, s)
    torch.testing.assert_close(back, expected_back)
    seed = torch.randn_like(back)
    (grad,) = torch.autograd.grad(back, x, seed, create_graph=True)
    (expected_grad,) = torch.autograd.grad(expected_back, reference, seed, create_graph=True)
    torch.testing.assert_close(grad, expected_grad)
    # second order: the gradient's own gradient
    (second,) = torch.autograd.grad((grad * grad).sum(), x)
    (expected_second,) = torch.autograd.grad((expected_grad * expected_grad).sum(), reference)
    torch.testing.assert_close(second, expected_second)


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_nlc_gradients_are_the_transposed_ncl_ones(layout: str) -> None:
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64, requires_grad=True)
    cols = patchfold.unfold(x, 3, padding=1, stride=2, layout=layout)
    as_ncl = cols if layout == "ncl" else cols.transpose(1, 2)
    weights = torch.randn(as_ncl.shape, dtype=torch.float64)
    (as_ncl * weights).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    (F.unfold(reference, 3, padding=1, stride=2) * weights).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_unfold_is_exact_and_its_gradient_sums_in_float32(dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 16, 16).to(dtype).requires_grad_(True)
    cols = patchfold.unfold(x, 3, padding=1)
    assert cols.dtype == dtype
    assert torch.equal(cols, F.unfold(x.detach().float(), 3, padding=1).to(dtype))
    seed = torch.randn(cols.shape).to(dtype)
    cols.backward(seed)
    assert x.grad.dtype == dtype
    # the fold that is unfold's gradient: summed in float32, rounded once
    expected = F.fold(seed.float(), (16, 16), 3, padding=1).to(dtype)
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_fold_is_the_correctly_rounded_float32_sum(dtype: torch.dtype) -> None:
    """patchfold sums half blocks in float32 and rounds once; PyTorch's CPU fold adds in the half
    type (rounding at every addition), so patchfold is at least as close to the exact sum."""
    torch.manual_seed(2)
    cols = (torch.rand(1, 4 * 49, 400) * 64 + 1000).to(dtype)  # 49 blocks over most pixels
    ours = patchfold.fold(cols, (26, 26), 7)
    exact = F.fold(cols.double(), (26, 26), 7)
    assert ours.dtype == dtype
    assert torch.equal(ours, F.fold(cols.float(), (26, 26), 7).to(dtype))
    theirs = F.fold(cols, (26, 26), 7)
    our_error = (ours.double() - exact).abs().max()
    their_error = (theirs.double() - exact).abs().max()
    assert our_error <= their_error
    # rounding once: within half an ulp of the half type at the sum's magnitude (plus float32's own)
    ulp = torch.finfo(dtype).eps * exact.abs().max()
    assert our_error <= 0.5 * ulp * (1 + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_float_dtype_round_trips_with_gradients(dtype: torch.dtype) -> None:
    x = torch.randn(1, 2, 9, 9).to(dtype).requires_grad_(True)
    back = patchfold.fold(patchfold.unfold(x, 3, stride=2), (9, 9), 3, stride=2, normalize=True)
    assert back.dtype == dtype
    assert torch.equal(back, x.detach())
    back.sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), torch.ones(x.shape))  # each pixel's mean of its copies


STRIDED_CONVOLUTIONS = [
    {"stride": 1, "padding": 0, "dilation": 1},
    {"stride": 2, "padding": 1, "dilation": 1},
    {"stride": (2, 3), "padding": (2, 1), "dilation": (2, 1)},
    {"stride": 3, "padding": 3, "dilation": 2},
]


@pytest.mark.parametrize("params", STRIDED_CONVOLUTIONS, ids=["plain", "s2p1", "mixed", "s3p3d2"])
def test_conv2d_is_unfold_matmul_fold(params: dict) -> None:
    """The identity of PyTorch's Unfold docs: ``conv2d(inp, w)`` equals
    ``fold(unfold(inp).transpose(1, 2) @ w.view(w.size(0), -1).t()).transpose(1, 2)``, here with
    patchfold's ops, forward and backward (input and weight gradients)."""
    inp = torch.randn(2, 3, 13, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(inp, w, **params)
    out_size = expected.shape[2:]
    cols = patchfold.unfold(inp, (3, 3), **params)
    blocks = cols.transpose(1, 2) @ w.view(w.size(0), -1).t()
    # each output pixel is one block: a fold with a 1x1 kernel puts the L values in place
    out = patchfold.fold(blocks.transpose(1, 2), out_size, (1, 1))
    torch.testing.assert_close(out, expected)
    seed = torch.randn_like(expected)
    grads = torch.autograd.grad(out, (inp, w), seed)
    expected_grads = torch.autograd.grad(expected, (inp, w), seed)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_grad_mode_off_runs_the_plain_engine() -> None:
    x = torch.randn(1, 1, 6, 6, requires_grad=True)
    with torch.no_grad():
        assert engines.select(x) == "cpu"
        assert not patchfold.unfold(x, 3).requires_grad
    assert engines.select(x) == "autograd"
    assert engines.select(x, "torch") == "torch"


def test_a_result_that_does_not_need_grad_needs_no_graph() -> None:
    x = torch.randn(1, 1, 6, 6, dtype=torch.bfloat16)  # bfloat16 runs the autograd engine anyway
    assert engines.select(x) == "autograd"
    cols = patchfold.unfold(x, 3)
    assert not cols.requires_grad and cols.grad_fn is None


@pytest.mark.parametrize(("grad_layout", "kernel"), list(itertools.product(["contiguous", "expanded"], [2, 3])))
def test_gradients_that_are_views_fold_correctly(grad_layout: str, kernel: int) -> None:
    """``sum().backward()`` hands the engine an expanded (stride 0) gradient."""
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    cols = patchfold.unfold(x, kernel)
    seed = torch.ones(1, 1, 1).expand_as(cols) if grad_layout == "expanded" else torch.ones_like(cols)
    cols.backward(seed)
    expected = torch.from_numpy(patchfold.divisor((7, 7), kernel)).double().expand_as(x)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_keep_pytorchs_ops_with_gradients() -> None:
    x = torch.randn(1, 2, 8, 8, device="cuda", requires_grad=True)
    assert engines.select(x) == "torch"
    patchfold.fold(patchfold.unfold(x, 3, padding=1), (8, 8), 3, padding=1).sum().backward()
    expected = torch.from_numpy(patchfold.divisor((8, 8), 3, padding=1)).float()
    torch.testing.assert_close(x.grad.cpu(), expected.expand(1, 2, 8, 8))


def test_windowed_fold_gradient_is_the_window() -> None:
    size, k, s = (8, 8), 4, 2
    cols = torch.ones(1, 16, 9, dtype=torch.float64, requires_grad=True)
    patchfold.fold(cols, size, k, stride=s, window="hann").sum().backward()
    weights = patchfold.windows.window_weights(patchfold.Blocks(k, stride=s).at(size), "hann")
    full = np.einsum("ak,bl->klab", *weights).reshape(16, 9)  # (k0*k1, L0*L1)
    torch.testing.assert_close(cols.grad[0], torch.from_numpy(full))


# ----- found by a red-team pass: each failed before its fix -----------------------------------
def test_torch_func_transforms_see_torchs_ops() -> None:
    from torch.func import grad, jvp, vmap

    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(vmap(lambda t: patchfold.unfold(t, 3))(x), vmap(lambda t: F.unfold(t, 3))(x))
    torch.testing.assert_close(
        grad(lambda t: (patchfold.unfold(t, 3) ** 2).sum())(x), grad(lambda t: (F.unfold(t, 3) ** 2).sum())(x)
    )
    ours = jvp(lambda t: patchfold.fold(t, 5, 3), (F.unfold(x, 3),), (torch.ones(3, 18, 9, dtype=torch.float64),))
    theirs = jvp(lambda t: F.fold(t, 5, 3), (F.unfold(x, 3),), (torch.ones(3, 18, 9, dtype=torch.float64),))
    torch.testing.assert_close(ours, theirs)


def test_forward_mode_ad_keeps_the_tangent() -> None:
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        tangent = fwAD.unpack_dual(patchfold.unfold(dual, 3)).tangent
        assert tangent is not None
        torch.testing.assert_close(tangent, F.unfold(torch.ones_like(x), 3))


def test_a_negated_view_is_read_as_its_values() -> None:
    x = torch.randn(1, 1, 4, 4, dtype=torch.complex64).conj().imag  # float32 with the negative bit
    assert x.is_neg()
    torch.testing.assert_close(patchfold.unfold(x, 2), F.unfold(x.resolve_neg(), 2))


@pytest.mark.parametrize("shape", [(0, 27, 36), (2, 0, 36)])
def test_empty_windowed_fold_has_an_empty_gradient(shape: tuple) -> None:
    cols = torch.randn(*shape, requires_grad=True)
    patchfold.fold(cols, 8, 3, window="hann").sum().backward()
    assert cols.grad.shape == shape


def test_tensor_subclasses_are_tensors() -> None:
    class Image(torch.Tensor):  # as torchvision's tv_tensors.Image: defined outside torch
        pass

    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    cols = patchfold.unfold(x.as_subclass(Image), 3)
    assert isinstance(cols, torch.Tensor) and cols.grad_fn is not None
    cols.sum().backward()
    assert x.grad is not None


def test_batched_gradients_and_vectorised_jacobians() -> None:
    from torch.autograd.functional import jacobian

    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: patchfold.unfold(t, 3, padding=1), (x,), check_batched_grad=True)
    cols = F.unfold(x.detach(), 2).requires_grad_(True)
    assert gradcheck(lambda c: patchfold.fold(c, 4, 2, normalize=True), (cols,), check_batched_grad=True)
    ours = jacobian(lambda t: patchfold.unfold(t, 3), x, vectorize=True)
    torch.testing.assert_close(ours, jacobian(lambda t: F.unfold(t, 3), x, vectorize=True))
