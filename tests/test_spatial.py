"""The per-unit spatial summaries (max, mean, argmax) on paper-sized maps and against a plain argmax."""
from __future__ import annotations

import pytest
import torch

from rfstore.stats.spatial import spatial_summary


def reference(activation: torch.Tensor) -> tuple[torch.Tensor, ...]:
    batch, units, height, width = activation.shape
    flat = activation.contiguous().reshape(batch, units, height * width)
    index = flat.argmax(dim=2)
    return (flat.gather(2, index.unsqueeze(2)).squeeze(2), flat.mean(dim=2),
            (index // width).to(torch.int32), (index % width).to(torch.int32))


def test_hand_map() -> None:
    act = torch.tensor([[[[0.0, 2.0, 1.0],
                          [2.0, 0.0, 2.0]],     # ties: the first in row-major order wins
                         [[0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0]],     # all equal: position (0, 0)
                         [[-1.0, -3.0, -2.0],
                          [-5.0, -0.5, -4.0]]]])  # negative values (no ReLU)
    act_max, act_mean, act_y, act_x = spatial_summary(act)
    assert act_max.tolist() == [[2.0, 0.0, -0.5]]
    assert act_mean[0].tolist() == pytest.approx([7 / 6, 0.0, -15.5 / 6])
    assert act_y.tolist() == [[0, 0, 1]]
    assert act_x.tolist() == [[1, 0, 1]]
    assert act_y.dtype == act_x.dtype == torch.int32


def test_nan_position_is_the_first_nan() -> None:
    act = torch.zeros(1, 2, 3, 4)
    act[0, 0, 1, 2] = float("nan")
    act[0, 0, 2, 3] = float("nan")
    act[0, 0, 0, 0] = 7.0
    act[0, 1, 2, 1] = 3.0
    act_max, _, act_y, act_x = spatial_summary(act)
    assert torch.isnan(act_max[0, 0]) and act_max[0, 1] == 3.0
    assert (act_y.tolist(), act_x.tolist()) == ([[1, 2]], [[2, 1]])


@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_argmax_on_relu_maps_with_ties(channels_last: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    act = torch.relu(torch.randn(5, 17, 13, 11, generator=generator))
    act[:, 3] = 0.0  # dead units
    act[:, 5, 4:7, 2:9] = 9.0  # a plateau of ties
    act = act.round(decimals=1)  # many ties everywhere
    if channels_last:
        act = act.contiguous(memory_format=torch.channels_last)
    got, want = spatial_summary(act), reference(act)
    for name, a, b in zip(("max", "mean", "y", "x"), got, want):
        if name == "mean":
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(a, b), name


def test_linear_layer() -> None:
    act = torch.tensor([[1.0, -2.0]])
    act_max, act_mean, act_y, act_x = spatial_summary(act)
    assert act_max.tolist() == act_mean.tolist() == [[1.0, -2.0]]
    assert act_y.tolist() == act_x.tolist() == [[0, 0]]
