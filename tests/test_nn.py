"""``patchfold.nn.Unfold`` / ``Fold`` as drop-in replacements for PyTorch's modules."""

from __future__ import annotations

import copy
import io
import pickle

import patchfold
import pytest
import torch
from patchfold import PatchfoldError, nn

TORCH_ARGS = [
    {"kernel_size": 3},
    {"kernel_size": (3, 2), "dilation": (2, 1), "padding": (1, 2), "stride": (2, 3)},
    {"kernel_size": 4, "stride": 2, "padding": 1},
]


class PatchMixer(torch.nn.Module):
    """A small model built on Unfold -> Linear -> Fold (a learned, overlapping patch transform)."""

    def __init__(self, unfold: torch.nn.Module, fold: torch.nn.Module, length: int) -> None:
        super().__init__()
        self.unfold, self.fold = unfold, fold
        self.mix = torch.nn.Linear(length, length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = self.unfold(x)
        return self.fold(self.mix(cols.transpose(1, 2)).transpose(1, 2).relu())


@pytest.mark.parametrize("args", TORCH_ARGS, ids=["k3", "mixed", "k4s2p1"])
def test_swapped_into_a_model_same_outputs_and_gradients(args: dict) -> None:
    size = (11, 12)
    torch.manual_seed(0)
    k = args["kernel_size"] if isinstance(args["kernel_size"], tuple) else (args["kernel_size"],) * 2
    length = 2 * k[0] * k[1]
    theirs = PatchMixer(torch.nn.Unfold(**args), torch.nn.Fold(size, **args), length).double()
    ours = copy.deepcopy(theirs)
    ours.unfold, ours.fold = nn.Unfold(**args), nn.Fold(size, **args)
    assert theirs.state_dict().keys() == ours.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 2, *size, dtype=torch.float64)
    x_theirs, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_theirs, out_ours = theirs(x_theirs), ours(x_ours)
    torch.testing.assert_close(out_ours, out_theirs)
    out_theirs.square().sum().backward()
    out_ours.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad)
    for (name, ours_p), (_, theirs_p) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(ours_p.grad, theirs_p.grad, msg=name)


@pytest.mark.parametrize("args", TORCH_ARGS, ids=["k3", "mixed", "k4s2p1"])
def test_repr_attributes_and_state_dict_are_pytorchs(args: dict) -> None:
    assert repr(nn.Unfold(**args)) == repr(torch.nn.Unfold(**args))
    assert repr(nn.Fold((9, 9), **args)) == repr(torch.nn.Fold((9, 9), **args))
    for ours, theirs in ((nn.Unfold(**args), torch.nn.Unfold(**args)), (nn.Fold(9, **args), torch.nn.Fold(9, **args))):
        assert ours.extra_repr() == theirs.extra_repr()
        for name in theirs.__constants__:
            assert getattr(ours, name) == getattr(theirs, name)
        assert ours.state_dict() == theirs.state_dict() == {}
        assert list(ours.parameters()) == [] and list(ours.buffers()) == []


def test_extras_show_in_the_repr_only_when_set() -> None:
    fold = nn.Fold((8, 8), 4, stride=2, padding_mode="reflect", normalize=True, window="hann", layout="nlc")
    assert repr(fold) == (
        "Fold(output_size=(8, 8), kernel_size=4, dilation=1, padding=0, stride=2, padding_mode='reflect', "
        "layout='nlc', normalize=True, window='hann')"
    )
    assert repr(nn.Unfold(2, padding_mode="circular")) == (
        "Unfold(kernel_size=2, dilation=1, padding=0, stride=1, padding_mode='circular')"
    )


def test_extras_round_trip_through_the_modules() -> None:
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64, requires_grad=True)
    extras = {"padding": 2, "stride": 2, "padding_mode": "reflect", "layout": "nlc"}
    cols = nn.Unfold(4, **extras)(x)
    assert cols.shape == (2, 6 * 5, 3 * 16)
    back = nn.Fold((10, 9), 4, **extras, normalize=True, window="gaussian")(cols)
    torch.testing.assert_close(back, x)
    back.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_bad_arguments_fail_at_construction_with_patchfold_error() -> None:
    with pytest.raises(PatchfoldError, match="kernel_size"):
        nn.Unfold(0)
    with pytest.raises(PatchfoldError, match="padding_mode"):
        nn.Fold(8, 2, padding_mode="mirror")
    with pytest.raises(PatchfoldError, match="layout"):
        nn.Unfold(2, layout="nhwc")
    with pytest.raises(PatchfoldError, match="window"):
        nn.Fold(8, 2, window="bartlett")
    with pytest.raises(PatchfoldError, match="normalize"):
        nn.Fold(8, 2, normalize="yes")


def test_pickle_and_deepcopy() -> None:
    fold = nn.Fold((6, 6), 3, padding=1, window="hann", normalize=True)
    for clone in (pickle.loads(pickle.dumps(fold)), copy.deepcopy(fold)):
        assert repr(clone) == repr(fold)
        cols = torch.randn(1, 9, 36)
        torch.testing.assert_close(clone(cols), fold(cols))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates torch.jit for torch.export
def test_script_runs_pytorchs_module_where_it_has_the_parameters() -> None:
    args = {"kernel_size": 3, "padding": 1, "stride": 2}
    model = torch.nn.Sequential(nn.Unfold(**args), nn.Fold((9, 9), **args))
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(scripted(x), model(x))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), model(x))


@pytest.mark.parametrize(
    "module",
    [nn.Unfold(2, padding_mode="reflect"), nn.Unfold(2, layout="nlc"), nn.Fold(8, 2, normalize=True)],
    ids=["padding_mode", "layout", "normalize"],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_script_refuses_extras_and_says_why(module: torch.nn.Module) -> None:
    with pytest.raises(PatchfoldError, match=r"cannot be scripted.*torch\.jit\.trace"):
        torch.jit.script(module)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_trace_records_torch_ops_extras_included() -> None:
    extras = {"padding": 1, "padding_mode": "replicate"}
    model = torch.nn.Sequential(nn.Unfold(3, **extras), nn.Fold((8, 8), 3, **extras, normalize=True))
    example = torch.randn(1, 2, 8, 8)
    traced = torch.jit.trace(model, example)
    x = torch.randn(1, 2, 8, 8)  # other values, same shape: a trace is shape-specialised
    torch.testing.assert_close(traced(x), x)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), x)


def test_export_records_torch_ops_extras_included() -> None:
    extras = {"padding": 2, "stride": 2, "padding_mode": "circular", "layout": "nlc"}
    model = torch.nn.Sequential(nn.Unfold(4, **extras), nn.Fold((9, 10), 4, **extras, normalize=True, window="hann"))
    exported = torch.export.export(model, (torch.randn(2, 3, 9, 10),))
    x = torch.randn(2, 3, 9, 10)
    torch.testing.assert_close(exported.module()(x), x)


def test_attribute_access_to_the_submodule() -> None:
    assert patchfold.nn is nn


def test_attributes_changed_after_construction_take_effect_as_in_pytorch() -> None:
    x = torch.randn(1, 1, 8, 8)
    theirs, ours = torch.nn.Unfold(2), nn.Unfold(2)
    theirs.stride = ours.stride = 2
    assert torch.equal(ours(x), theirs(x))
    fold = nn.Fold(4, 2)
    fold.stride, fold.normalize = 2, True
    assert torch.equal(fold(torch.ones(1, 4, 4)), torch.ones(1, 1, 4, 4))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_window_none_is_no_window() -> None:
    fold = nn.Fold(4, 2, window="none")
    assert fold.window is None and repr(fold) == repr(torch.nn.Fold(4, 2))
    torch.jit.script(fold)
    assert nn.Fold(4, 2, window="HANN").window == "hann"


@pytest.mark.parametrize("shape", [(4, 4), (1, 1, 2, 2, 2, 2)])
def test_a_rank_the_module_cannot_take_is_named_without_advice_it_has_no_argument_for(shape) -> None:
    with pytest.raises(PatchfoldError, match=r"Unfold takes \(N, C, H, W\)") as info:
        nn.Unfold(2)(torch.randn(*shape))
    assert "spatial_dims" not in str(info.value)
