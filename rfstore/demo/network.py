"""A small AlexNet-like CNN for the demo (five conv layers, ReLUs, max-pools, two linear layers).

Built by :func:`tiny_alexnet`, usable as ``--model rfstore.demo.network:tiny_alexnet``.
"""
from __future__ import annotations

from torch import nn


class TinyAlexNet(nn.Module):
    """AlexNet's layout at a fifth of its width, for 96x96 inputs.

    Parameters
    ----------
    num_classes : int
        Outputs of the classifier.
    """

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=7, stride=2, padding=3),    # 0
            nn.ReLU(inplace=True),                                   # 1
            nn.MaxPool2d(kernel_size=3, stride=2),                   # 2
            nn.Conv2d(16, 32, kernel_size=5, padding=2),             # 3
            nn.ReLU(inplace=True),                                   # 4
            nn.MaxPool2d(kernel_size=3, stride=2),                   # 5
            nn.Conv2d(32, 48, kernel_size=3, padding=1),             # 6
            nn.ReLU(inplace=True),                                   # 7
            nn.Conv2d(48, 48, kernel_size=3, padding=1),             # 8
            nn.ReLU(inplace=True),                                   # 9
            nn.Conv2d(48, 32, kernel_size=3, padding=1),             # 10
            nn.ReLU(inplace=True),                                   # 11
            nn.MaxPool2d(kernel_size=3, stride=2),                   # 12
        )
        self.avgpool = nn.AdaptiveAvgPool2d((5, 5))  # identity at 96x96 input: keeps the RF analysable
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 5 * 5, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):  # noqa: D102 - standard nn.Module forward
        return self.classifier(self.avgpool(self.features(x)))


def tiny_alexnet() -> TinyAlexNet:
    """Factory for ``--model rfstore.demo.network:tiny_alexnet``."""
    return TinyAlexNet()
