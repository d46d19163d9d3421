"""Blocks: the one block-parameter type and its one validator."""

from __future__ import annotations

import json

import numpy as np
import patchfold
import pytest
from hypothesis import given
from hypothesis import strategies as st
from patchfold import Blocks, PatchfoldError


def test_parameters_that_disagree_with_each_other_name_the_one_at_fault() -> None:
    with pytest.raises(PatchfoldError, match="dilation has 3 values") as info:
        Blocks((3, 3), dilation=(1, 2, 1))
    assert info.value.param == "dilation"


block_values = st.one_of(st.integers(1, 9), st.lists(st.integers(1, 9), min_size=2, max_size=2))


@given(
    kernel=block_values,
    stride=block_values,
    padding=st.one_of(st.integers(0, 3), st.lists(st.integers(0, 3), min_size=2, max_size=2)),
    dilation=block_values,
    mode=st.sampled_from(patchfold.PADDING_MODES),
)
def test_to_dict_from_dict_round_trip_through_json(kernel, stride, padding, dilation, mode) -> None:
    blocks = Blocks(kernel, stride=stride, padding=padding, dilation=dilation, padding_mode=mode)
    assert Blocks.from_dict(json.loads(json.dumps(blocks.to_dict()))) == blocks


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"kernel_size": []},
        {"kernel_size": [2.0]},
        {"kernel_size": [True]},
        {"kernel_size": ["2"]},
        {"kernel_size": [0]},
        {"kernel_size": [2], "stride": [0]},
        {"kernel_size": [2], "padding": [-1]},
        {"kernel_size": [2], "padding_mode": "mirror"},
        {"kernel_size": [2, 2], "stride": [1, 1, 1]},
        {"kernel_size": [2**41]},
        [2, 2],
    ],
    ids=repr,
)
def test_from_dict_is_strict_and_names_the_file(record) -> None:
    with pytest.raises(PatchfoldError, match=r"^sidecar 'x\.json'"):
        Blocks.from_dict(record, "sidecar 'x.json'")


def test_one_argument_order_everywhere() -> None:
    """PyTorch's positional order (kernel_size, dilation, padding, stride) for the operations;
    everything after kernel_size is keyword-only for Blocks and Geometry.create."""
    x = np.arange(64.0).reshape(1, 1, 8, 8)
    by_position = patchfold.unfold(x, 3, 2, 1, 2)
    by_name = patchfold.unfold(x, 3, dilation=2, padding=1, stride=2)
    np.testing.assert_array_equal(by_position, by_name)
    blocks = Blocks(3, stride=2, padding=1, dilation=2)
    np.testing.assert_array_equal(patchfold.unfold(x, blocks), by_name)
    assert patchfold.Geometry.create((8, 8), 3, stride=2, padding=1, dilation=2) == blocks.at((8, 8))
    with pytest.raises(TypeError):
        Blocks(3, 2)  # type: ignore[misc]
    with pytest.raises(PatchfoldError, match="either as a Blocks"):
        patchfold.unfold(x, blocks, stride=2)


def test_at_takes_one_value_for_every_dim() -> None:
    assert Blocks(3).at(8).spatial_size == (8, 8)
    assert Blocks((3, 3, 3)).at(8).spatial_size == (8, 8, 8)
    assert Blocks(3).at((8,)).spatial_size == (8,)
    assert Blocks(3).at(np.array([5, 6, 7])).spatial_size == (5, 6, 7)
