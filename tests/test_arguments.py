"""How the operations take their arguments: ints of every kind, spatial dims from the input's
rank, and the engine that a tensor's needs choose (gradients)."""

from __future__ import annotations

import numpy as np
import patchfold
import pytest
import torch
from patchfold import PatchfoldError

#: Integers as users pass them: Python, numpy scalars, 0-d arrays and 0-d tensors.
INTEGER_FORMS = [
    lambda v: v,
    np.int64,
    np.int32,
    np.uint16,
    lambda v: np.array(v),
    lambda v: torch.tensor(v),
]
#: Values that are not ints and must never be truncated or read as one.
NOT_INTEGERS = [4.0, 2.5, True, np.True_, "4", b"4", None, np.float64(4), torch.tensor(4.0), torch.tensor(True), []]


@pytest.mark.parametrize("form", INTEGER_FORMS)
def test_integers_of_every_kind_are_accepted_wherever_torch_accepts_them(form) -> None:
    x = np.arange(2 * 36, dtype=np.float32).reshape(1, 2, 6, 6)
    cols = patchfold.unfold(x, form(3), stride=form(1), padding=form(1), dilation=form(1))
    np.testing.assert_array_equal(cols, patchfold.unfold(x, 3, padding=1))
    back = patchfold.fold(cols, form(6), form(3), padding=form(1))
    np.testing.assert_array_equal(back, patchfold.fold(cols, (6, 6), 3, padding=1))
    assert patchfold.divisor(form(6), form(3)).shape == (6, 6)
    assert patchfold.overlap_stats(form(6), form(3), channels=form(2))["patch_length"] == 18


def test_sequences_of_numpy_ints_arrays_and_tensors() -> None:
    x = np.zeros((1, 1, 8, 6), np.uint8)
    reference = patchfold.unfold(x, (4, 2), stride=(2, 2))
    for kernel in ((np.int64(4), np.int64(2)), np.array([4, 2]), torch.tensor([4, 2]), [4, 2]):
        np.testing.assert_array_equal(patchfold.unfold(x, kernel, stride=np.array([2, 2])), reference)
    assert patchfold.fold(reference, np.array([8, 6]), (4, 2), stride=2).shape == (1, 1, 8, 6)


@pytest.mark.parametrize("bad", NOT_INTEGERS, ids=repr)
@pytest.mark.parametrize("where", ["kernel_size", "stride", "output_size", "divisor_size"])
def test_non_integers_raise_patchfold_error(bad, where: str) -> None:
    x = np.zeros((1, 1, 6, 6), np.float32)
    cols = patchfold.unfold(x, 2)
    calls = {
        "kernel_size": lambda: patchfold.unfold(x, bad),
        "stride": lambda: patchfold.unfold(x, 2, stride=bad),
        "output_size": lambda: patchfold.fold(cols, bad, 2),
        "divisor_size": lambda: patchfold.divisor(bad, 2),
    }
    with pytest.raises(PatchfoldError) as info:
        calls[where]()
    assert info.value.param in ("kernel_size", "stride", "spatial_size")


def test_parameter_lists_must_match_the_spatial_dims_of_the_input() -> None:
    """(2, 3, 5, 5) is a batch of 2-D images: a 3-value kernel is an error (as in torch), not an
    unbatched 3-D volume; spatial_dims=3 says it is one."""
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(PatchfoldError, match=r"kernel_size has 3 values") as info:
        patchfold.unfold(x, (2, 2, 2))
    assert info.value.param == "kernel_size"
    with pytest.raises(RuntimeError):
        torch.nn.functional.unfold(torch.from_numpy(x), (2, 2, 2))
    assert patchfold.unfold(x, (2, 2, 2), spatial_dims=3).shape == (2 * 8, 2 * 4 * 4)  # (C, D, H, W)
    with pytest.raises(PatchfoldError, match="stride has 3 values") as info:
        patchfold.unfold(x, 2, stride=(1, 1, 1))
    assert info.value.param == "stride"
    with pytest.raises(PatchfoldError) as info:
        patchfold.unfold(np.zeros((1, 1, 4, 5, 6)), (2, 2))
    assert info.value.param == "kernel_size"


@pytest.mark.parametrize("layout", ["ncl", "nlc"])
def test_tensors_that_require_grad_keep_their_gradient(layout: str) -> None:
    """The default engine must not detach: a CPU tensor that requires grad gets a result with a
    gradient equal to PyTorch's (the adjoint of unfold is fold)."""
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    cols = patchfold.unfold(x, 3, padding=1, layout=layout)
    assert cols.requires_grad
    weights = torch.randn(cols.shape, dtype=torch.float64)
    (cols * weights).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    expected = torch.nn.functional.unfold(reference, 3, padding=1)
    (expected * (weights if layout == "ncl" else weights.transpose(1, 2))).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    summed = patchfold.fold(cols, (8, 8), 3, padding=1, layout=layout)
    assert summed.requires_grad
    with torch.no_grad():  # no gradient wanted: the CPU engine may run
        assert not patchfold.unfold(x, 3).requires_grad


def test_engine_cpu_keeps_the_gradient_of_a_tensor_that_needs_it() -> None:
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    patchfold.unfold(x, 2, engine="cpu").sum().backward()
    torch.testing.assert_close(x.grad, torch.from_numpy(patchfold.divisor((4, 4), 2)).double()[None, None])
