"""A small AlexNet-like CNN for the demo (five conv layers, ReLUs, max-pools, two linear layers).

Two factories:

- :func:`tiny_alexnet` (``--model rfstore.demo.network:tiny_alexnet``): random
  initialisation (seeded by the caller), used by tests;
- :func:`tiny_alexnet_trained` (``--model rfstore.demo.network:tiny_alexnet_trained``):
  the weights trained by :mod:`rfstore.demo.train` on the generated scenes and
  shipped with rfstore (``rfstore/demo/weights/tiny_alexnet.pt``, a state dict;
  ``tiny_alexnet.json`` beside it records its sha256, the training parameters
  and the accuracies).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from torch import nn

from rfstore.errors import InputError
from rfstore.demo.scenes import CLASSES

#: the shipped weights, relative to the ``rfstore.demo`` package.
WEIGHTS_FILE = "weights/tiny_alexnet.pt"
WEIGHTS_INFO = "weights/tiny_alexnet.json"


class TinyAlexNet(nn.Module):
    """AlexNet's layout at a fifth of its width, for 96x96 inputs with pixel values in [0, 1].

    Parameters
    ----------
    num_classes : int
        Outputs of the classifier (the demo's scene classes by default).
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
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
    """Factory for ``--model rfstore.demo.network:tiny_alexnet`` (random init)."""
    return TinyAlexNet()


def shipped_weights() -> Path:
    """Path of the state dict shipped as package data."""
    path = Path(str(resources.files("rfstore.demo").joinpath(WEIGHTS_FILE)))
    if not path.is_file():
        raise InputError(f"the demo's trained weights are missing ({path}); "
                                f"reinstall rfstore or run 'rfstore demo --retrain'")
    return path


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict (``torch.load(..., weights_only=True)``) into ``model``; returns it in eval mode."""
    import torch

    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def tiny_alexnet_trained() -> TinyAlexNet:
    """Factory for ``--model rfstore.demo.network:tiny_alexnet_trained``: the shipped trained weights."""
    return load_weights(TinyAlexNet(), shipped_weights())
