"""Block arithmetic and parameter validation (Geometry, and the errors unfold/fold raise)."""

from __future__ import annotations

import math

import numpy as np
import patchfold
import pytest
import torch
import torch.nn.functional as F
from helpers_ref import blocks_per_dim
from patchfold import Geometry, PatchfoldError


def torch_blocks(size, kernel_size, dilation, padding, stride) -> int:
    x = torch.zeros(1, 1, *size)
    return F.unfold(x, kernel_size, dilation, padding, stride).shape[-1]


@pytest.mark.parametrize(
    ("size", "kernel_size", "dilation", "padding", "stride"),
    [
        ((5, 7), 3, 1, 0, 2),
        ((5, 7), (3, 2), (2, 1), (1, 0), (2, 3)),
        ((9, 4), (1, 4), 1, (0, 2), (4, 1)),
        ((6, 6), 2, 3, 1, 3),
        ((1, 1), 1, 1, 0, 1),
        ((3, 11), (3, 5), (1, 2), 0, (1, 5)),
    ],
)
def test_blocks_per_dim_formula(size, kernel_size, dilation, padding, stride):
    g = Geometry.create(size, kernel_size, stride=stride, padding=padding, dilation=dilation)
    expected = blocks_per_dim(size, kernel_size, dilation, padding, stride)
    assert g.blocks_per_dim == expected
    assert g.num_blocks == math.prod(expected) == torch_blocks(size, kernel_size, dilation, padding, stride)
    k = g.kernel_size
    assert g.unfold_shape(2, 3) == (2, 3 * math.prod(k), g.num_blocks)
    assert g.unfold_shape(2, 3, "nlc") == (2, g.num_blocks, 3 * math.prod(k))
    assert g.fold_shape(2, 3) == (2, 3, *size)


def test_ints_replicate_and_length_one_sequences_replicate():
    g = Geometry.create((10, 8, 6), kernel_size=2, stride=[3], padding=(1,), dilation=2)
    assert g.kernel_size == (2, 2, 2)
    assert g.stride == (3, 3, 3)
    assert g.padding == (1, 1, 1)
    assert g.dilation == (2, 2, 2)
    assert g.blocks_per_dim == blocks_per_dim((10, 8, 6), 2, 2, 1, 3)


def test_numpy_integer_parameters_are_accepted():
    g = Geometry.create((7, 7), np.int64(3), stride=(np.int32(2), 2))
    assert g.kernel_size == (3, 3)
    assert g.stride == (2, 2)


def test_one_d_and_three_d_geometries():
    g1 = Geometry.create((11,), 3, stride=2, padding=1, dilation=2)
    assert g1.blocks_per_dim == ((11 + 2 - 4 - 1) // 2 + 1,)
    g3 = Geometry.create((4, 5, 6), (2, 3, 4))
    assert g3.blocks_per_dim == (3, 3, 3)
    assert g3.kernel_volume == 24


@pytest.mark.parametrize(
    ("size", "kernel_size", "dilation", "padding", "stride"),
    [
        ((5, 7), 6, 1, 0, 1),  # kernel larger than the input
        ((5, 7), (3, 8), 1, 0, 1),  # one dim too small
        ((5, 7), 3, 3, 0, 1),  # dilated span 7 > 5
        ((2, 2), 4, 1, 0, 1),  # padding would make it fit, none given
        ((4,), 3, 2, 0, 1),  # 1-D
        ((3, 3, 3), (2, 2, 6), 1, (0, 0, 1), 1),  # 3-D, padded still too small
    ],
)
def test_no_block_fits_names_parameters_size_and_counts(size, kernel_size, dilation, padding, stride):
    counts = blocks_per_dim(size, kernel_size, dilation, padding, stride)
    assert min(counts) < 1
    with pytest.raises(PatchfoldError) as info:
        Geometry.create(size, kernel_size, stride=stride, padding=padding, dilation=dilation)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.param is None  # the fault only shows against the input size
    for name in ("kernel_size", "dilation", "padding", "stride"):
        assert name in message
    nd = len(size)
    kernel = [kernel_size] * nd if isinstance(kernel_size, int) else list(kernel_size)
    assert str(kernel) in message
    assert str(list(size)) in message
    assert str(list(counts)) in message  # the computed L_d


def test_unfold_geometry_error_mentions_input_shape():
    x = np.zeros((2, 3, 4, 5), dtype=np.float32)
    with pytest.raises(PatchfoldError) as info:
        patchfold.unfold(x, kernel_size=(3, 6))
    message = str(info.value)
    assert "(2, 3, 4, 5)" in message
    assert str(list(blocks_per_dim((4, 5), (3, 6)))) in message
    assert "kernel_size" in message


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"kernel_size": 0}, "kernel_size"),
        ({"kernel_size": (3, -1)}, "kernel_size"),
        ({"kernel_size": 3, "stride": 0}, "stride"),
        ({"kernel_size": 3, "stride": (1, -2)}, "stride"),
        ({"kernel_size": 3, "dilation": 0}, "dilation"),
        ({"kernel_size": 3, "dilation": (-1, 1)}, "dilation"),
        ({"kernel_size": 3, "padding": -1}, "padding"),
        ({"kernel_size": 3, "padding": (0, -2)}, "padding"),
        ({"kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"kernel_size": 3, "stride": (1, 1, 1)}, "stride"),
        ({"kernel_size": 3, "padding": (1, 1, 1, 1)}, "padding"),
        ({"kernel_size": 3, "dilation": (1, 2, 1)}, "dilation"),
        ({"kernel_size": 2.5}, "kernel_size"),
        ({"kernel_size": (2, 2.0)}, "kernel_size"),
        ({"kernel_size": True}, "kernel_size"),
        ({"kernel_size": "3"}, "kernel_size"),
        ({"kernel_size": 3, "padding_mode": "mirror"}, "padding_mode"),
    ],
)
def test_values_wrong_on_their_own_set_param(kwargs, param):
    with pytest.raises(PatchfoldError) as info:
        Geometry.create((8, 8), **kwargs)
    assert info.value.param == param
    assert param in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"kernel_size": 0}, "kernel_size"),
        ({"kernel_size": 2, "stride": 0}, "stride"),
        ({"kernel_size": 2, "dilation": 0}, "dilation"),
        ({"kernel_size": 2, "padding": -1}, "padding"),
        ({"kernel_size": (2, 2), "spatial_dims": 3}, "kernel_size"),
        ({"kernel_size": 2, "layout": "nchw"}, "layout"),
        ({"kernel_size": 2, "engine": "gpu"}, "engine"),
        ({"kernel_size": 2, "padding_mode": "wrap"}, "padding_mode"),
    ],
)
def test_unfold_rejects_bad_options_with_param(kwargs, param):
    x = np.zeros((1, 2, 6, 6), dtype=np.float32)
    with pytest.raises(PatchfoldError) as info:
        patchfold.unfold(x, **kwargs)
    assert info.value.param == param


def test_wrong_length_message_names_counts():
    with pytest.raises(PatchfoldError) as info:
        Geometry.create((8, 8), kernel_size=(3, 3, 3))
    message = str(info.value)
    assert "3 values" in message
    assert "2 spatial" in message


@pytest.mark.parametrize(
    ("size", "padding", "mode", "ok"),
    [
        ((4, 4), 3, "reflect", True),
        ((4, 4), 4, "reflect", False),
        ((4, 4), 4, "circular", True),
        ((4, 4), 5, "circular", False),
        ((4, 4), 9, "replicate", True),
        ((4, 4), 9, "zeros", True),
    ],
)
def test_padding_limits_per_mode(size, padding, mode, ok):
    if ok:
        g = Geometry.create(size, 2, padding=padding, padding_mode=mode)
        assert g.padded_size == tuple(s + 2 * padding for s in size)
    else:
        with pytest.raises(PatchfoldError) as info:
            Geometry.create(size, 2, padding=padding, padding_mode=mode)
        assert str(list(size)) in str(info.value)


@pytest.mark.parametrize("size", [(0, 5), (-1, 5)])
def test_nonpositive_spatial_size_rejected(size):
    with pytest.raises(PatchfoldError, match="spatial_size must be positive") as info:
        Geometry.create(size, 1)
    assert info.value.param == "spatial_size"
    assert str(list(size)) in str(info.value)


def test_fold_block_count_mismatch():
    cols = np.zeros((1, 9, 10), dtype=np.float32)  # 9 = 1·3·3 but (6, 6) with k=3 gives L=16
    with pytest.raises(PatchfoldError) as info:
        patchfold.fold(cols, (6, 6), 3)
    message = str(info.value)
    assert "L=10" in message
    assert "L=16" in message
    assert "[6, 6]" in message
    assert info.value.param is None


def test_fold_patch_length_not_multiple_of_kernel():
    cols = np.zeros((1, 10, 16), dtype=np.float32)
    with pytest.raises(PatchfoldError) as info:
        patchfold.fold(cols, (6, 6), 3)
    assert "9" in str(info.value)


@pytest.mark.parametrize("engine", ["cpu", "torch"])
def test_fold_mismatch_same_error_for_both_engines(engine):
    cols = torch.zeros(2, 12, 5)
    with pytest.raises(PatchfoldError) as info:
        patchfold.fold(cols, (4, 4), 2, engine=engine)
    assert str(info.value).startswith("the patch matrix has L=5 blocks but output_size=[4, 4]")
    assert "gives L=9" in str(info.value) and info.value.param is None


def test_fold_geometry_error_mentions_matrix_shape():
    cols = np.zeros((1, 4, 1), dtype=np.float32)
    with pytest.raises(PatchfoldError) as info:
        patchfold.fold(cols, (2, 2), 3)
    assert "(1, 4, 1)" in str(info.value)


@pytest.mark.parametrize(
    ("shape", "kernel_size"),
    [((1, 1, 1, 4, 4, 4, 4), 2), ((4, 4), (2, 2))],  # 5 spatial dims; 2-D needs at least (C, H, W)
)
def test_unfold_wrong_rank_input(shape, kernel_size):
    with pytest.raises(PatchfoldError, match="cannot tell the spatial dims") as info:
        patchfold.unfold(np.zeros(shape), kernel_size=kernel_size)
    assert info.value.param == "spatial_dims"
    assert str(shape) in str(info.value)


def test_patchfold_error_is_value_error():
    error = PatchfoldError("bad", param="stride")
    assert isinstance(error, ValueError)
    assert error.param == "stride"
    assert PatchfoldError("bad").param is None


def test_redundancy_and_covered_extent():
    g = Geometry.create((7, 9), 3, stride=2)
    assert g.redundancy() == pytest.approx(9 * 3 * 4 / 63)
    assert g.covered_extent == (7, 9)
    g = Geometry.create((8,), 3, stride=3)
    assert g.covered_extent == (6,)


def test_block_box_in_unpadded_coordinates():
    g = Geometry.create((7, 9), (3, 2), stride=(2, 3), padding=1, dilation=(1, 2))
    assert g.block_box((0, 0)) == ((-1, 2), (-1, 2))
    assert g.block_box((1, 2)) == ((1, 4), (5, 8))
