"""Networks for the comparison tests, loadable as ``--model tests/compare_nets.py:NAME`` or pickled whole.

:class:`TwoClassAlexNet` is the seed study's network in miniature: AlexNet's layout (conv, ReLU, max-pool
stages, then a ReLU classifier) at a small width, with two outputs (the ``geo`` and ``lmk`` classes). It
runs on any input of at least 32x32 pixels.
"""
from __future__ import annotations

import torch
from torch import nn


class TwoClassAlexNet(nn.Module):
    """Three conv stages (16, 24, 32 channels), global average pool, Linear(32, 16), ReLU, Linear(16, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=2), nn.ReLU(inplace=True),   # 0, 1
            nn.MaxPool2d(kernel_size=3, stride=2),                                          # 2
            nn.Conv2d(16, 24, kernel_size=3, padding=1), nn.ReLU(inplace=True),             # 3, 4
            nn.MaxPool2d(kernel_size=3, stride=2),                                          # 5
            nn.Conv2d(24, 32, kernel_size=3, padding=1), nn.ReLU(inplace=True),             # 6, 7
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(inplace=True), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def two_class_alexnet(seed: int = 0) -> nn.Module:
    """A :class:`TwoClassAlexNet` with weights drawn from ``torch.manual_seed(seed)``, in eval mode."""
    torch.manual_seed(seed)
    return TwoClassAlexNet().eval()
