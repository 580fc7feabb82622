"""Tiny networks with hand-set weights, loadable as ``--model tests/tiny_nets.py:NAME``.

``hand_cnn`` (for 8x8 inputs): Conv2d(3, 2, 3, padding=1) -> ReLU -> MaxPool2d(2) -> Conv2d(2, 1, 3)
-> ReLU -> Flatten -> Linear(4, 2).
Unit 0 of the first conv sums the 3x3x3 window (all weights 1, bias 0); unit 1 is the
centre red pixel minus the centre blue pixel (bias -0.1). The second conv sums the 2x3x3
window of pooled maps, weights 0.5. The linear layer's unit 0 sums the 2x2 map, unit 1
is its first minus its last value. Every number in tests can be worked out on paper.
"""
from __future__ import annotations

import torch
from torch import nn


def hand_cnn() -> nn.Module:
    conv1 = nn.Conv2d(3, 2, 3, padding=1)
    conv2 = nn.Conv2d(2, 1, 3)
    linear = nn.Linear(4, 2)
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.weight[0] = 1.0
        conv1.weight[1, 0, 1, 1] = 1.0
        conv1.weight[1, 2, 1, 1] = -1.0
        conv1.bias.copy_(torch.tensor([0.0, -0.1]))
        conv2.weight.fill_(0.5)
        conv2.bias.zero_()
        linear.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, -1.0]]))
        linear.bias.zero_()
    model = nn.Sequential(
        conv1, nn.ReLU(inplace=True), nn.MaxPool2d(2),
        conv2, nn.ReLU(inplace=True),
        nn.Flatten(), linear,
    )
    return model.eval()


def box_filter() -> nn.Module:
    """One 3x3 conv, all weights 1 over the 3 channels, no bias, no padding: the simplest RF (3x3)."""
    conv = nn.Conv2d(3, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return nn.Sequential(conv, nn.ReLU()).eval()


class _CountingSlowNet(nn.Module):
    """hand_cnn, slowed down and counting its forward passes in a file, for kill -9 tests."""

    def __init__(self) -> None:
        super().__init__()
        self.net = hand_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os
        import time

        counter = os.environ.get("RFSTORE_TEST_COUNTER")
        if counter:
            with open(counter, "a") as f:
                f.write("x\n")
        time.sleep(float(os.environ.get("RFSTORE_TEST_DELAY", "0")))
        return self.net(x)


def slow_hand_cnn() -> nn.Module:
    return _CountingSlowNet().eval()


class _ViewingCNN(nn.Module):
    """hand_cnn's first conv, then ``view`` to flatten: a view fails on a channels_last map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*list(hand_cnn())[:3])
        self.head = nn.Linear(2 * 4 * 4, 1)
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        return self.head(maps.view(maps.shape[0], -1))


def viewing_cnn() -> nn.Module:
    return _ViewingCNN().eval()


def fc_cnn() -> nn.Module:
    """hand_cnn's layers with a ReLU after the linear layer: its default layers are a conv ReLU and a linear ReLU."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(),
    ).eval()
