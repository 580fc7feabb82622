"""How an RGB image becomes the network's input tensor, as a serialisable value.

:class:`Preprocessing` reproduces exactly (bit for bit) the torchvision pipeline
``Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])``,
with each step optional, and can undo the normalisation to show inputs as pixels.
For a network that takes one channel (``channels=1``) the image is first made
grayscale (PIL ``convert("L")``, ITU-R 601-2 luma), as torchvision's
``Grayscale(1)`` does.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode
from rfstore.errors import UsageError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, in [0, 1] units."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, in [0, 1] units."""

_FIELDS = ("resize", "crop", "mean", "std", "channels")
CHANNEL_MODES = {1: "L", 3: "RGB"}
"""PIL mode of the images a network with 1 or 3 input channels is given."""


class PreprocessingError(UsageError, ValueError):
    """Preprocessing values that cannot work (sizes, normalisation, channels)."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize, center-crop, scale to [0, 1] and normalise an image, RGB or grayscale.

    Parameters
    ----------
    resize : int or None
        Resize so that the shorter side has this many pixels, keeping the aspect ratio
        (``torchvision.transforms.Resize(int)``, bilinear, antialiased). None: keep.
    crop : int or None
        Center-crop a ``crop`` x ``crop`` square (``CenterCrop``; images smaller than
        that are zero-padded, as torchvision does). None: no crop.
    mean, std : tuple of 1 or 3 floats, or None
        Per-channel normalisation ``(x - mean) / std`` of the [0, 1] tensor. Both or
        neither; None: no normalisation. One value applies to every channel; three
        (R, G, B) need ``channels=3``.
    channels : int
        3 (default): RGB input ``(3, H, W)``; 1: grayscale input ``(1, H, W)``.
    """

    resize: int | None
    crop: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    channels: int = 3

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise PreprocessingError(f"{name} must be a positive int or None, got {value!r}")
        if self.channels not in CHANNEL_MODES:
            raise PreprocessingError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if (self.mean is None) != (self.std is None):
            raise PreprocessingError("mean and std must both be given or both be None")
        if self.mean is not None and self.std is not None:
            mean = tuple(float(value) for value in self.mean)
            std = tuple(float(value) for value in self.std)
            if len(mean) != len(std) or len(mean) not in (1, self.channels):
                wanted = "1 value each" if self.channels == 1 else "1 or 3 values (R, G, B) each"
                raise PreprocessingError(f"mean and std need {wanted} for {self.channels}-channel input, "
                                 f"got {mean} and {std}")
            if any(not value > 0 for value in std):
                raise PreprocessingError(f"std must be positive, got {std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)

    @classmethod
    def imagenet(cls) -> Preprocessing:
        """Standard ImageNet evaluation: resize 256, center-crop 224, ImageNet mean/std."""
        return cls(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    @classmethod
    def tensor(cls) -> Preprocessing:
        """Only ``ToTensor``: native size, values in [0, 1], no normalisation."""
        return cls(resize=None, crop=None, mean=None, std=None)

    def with_channels(self, channels: int) -> Preprocessing:
        """The same steps for ``channels``-channel input (ValueError when the normalisation does not fit)."""
        return self if channels == self.channels else dataclasses.replace(self, channels=channels)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: ``{"resize", "crop", "mean", "std"}``, tuples as lists, and
        ``"channels"`` only when it is 1 (so that RGB records are those of earlier versions)."""
        data: dict[str, Any] = {
            "resize": self.resize,
            "crop": self.crop,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }
        if self.channels != 3:
            data["channels"] = self.channels
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`. Missing keys mean None; unknown keys are an error."""
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown Preprocessing keys {sorted(unknown)}; expected {list(_FIELDS)}")
        mean = data.get("mean")
        std = data.get("std")
        return cls(
            resize=data.get("resize"),
            crop=data.get("crop"),
            mean=None if mean is None else tuple(mean),
            std=None if std is None else tuple(std),
            channels=int(data.get("channels", 3)),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Turn an RGB image into the network input.

        Parameters
        ----------
        image : PIL.Image.Image
            Mode ``"RGB"``, e.g. from :func:`~rfstore.datasets.load_rgb`; with
            ``channels=1`` mode ``"L"`` too (RGB is converted to it).

        Returns
        -------
        torch.Tensor
            Float32, shape (C, H, W); (C, crop, crop) when ``crop`` is set; C = ``channels``.
        """
        accepted = ("RGB", "L") if self.channels == 1 else ("RGB",)
        if image.mode not in accepted:
            raise ValueError(f"expected an {' or '.join(accepted)} image, got mode {image.mode!r}")
        if image.mode != CHANNEL_MODES[self.channels]:
            image = image.convert(CHANNEL_MODES[self.channels])
        if self.resize is not None:
            image = TF.resize(image, self.resize, interpolation=InterpolationMode.BILINEAR, antialias=True)
        if self.crop is not None:
            image = TF.center_crop(image, [self.crop, self.crop])
        pixels = TF.to_tensor(image)
        return self.from_pixels(pixels)

    def output_size(self) -> tuple[int, int] | None:
        """(H, W) of every output, ``(crop, crop)``, or None when it depends on the image."""
        return None if self.crop is None else (self.crop, self.crop)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: network inputs back to pixel values in [0, 1].

        Parameters
        ----------
        x : torch.Tensor
            Shape (..., C, H, W), floating point, C = ``channels``.

        Returns
        -------
        torch.Tensor
            ``x * std + mean``, shape (..., C, H, W); not clamped. ``x`` itself when
            there is no normalisation.
        """
        if self.mean is None or self.std is None:
            return x
        mean, std = self._channel_statistics(x)
        return x * std + mean

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Apply only the normalisation to pixel values in [0, 1].

        Parameters
        ----------
        x : torch.Tensor
            Shape (..., C, H, W), floating point, C = ``channels``.

        Returns
        -------
        torch.Tensor
            ``(x - mean) / std``, shape (..., C, H, W), identical to torchvision's
            ``Normalize``. ``x`` itself when there is no normalisation.
        """
        if self.mean is None or self.std is None:
            return x
        mean, std = self._channel_statistics(x)
        return (x - mean) / std

    def _channel_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std shaped (1 or C, 1, 1), in ``x``'s dtype and device."""
        if x.ndim < 3 or x.shape[-3] != self.channels:
            raise ValueError(f"expected shape (..., {self.channels}, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating point tensor, got {x.dtype}")
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return mean, std


def describe_preprocessing(recorded: Mapping[str, Any] | None) -> str:
    """The recorded preprocessing (``Preprocessing.to_dict()`` as stored) in words, e.g.
    ``"RGB; shorter side resized to 256 px; centre crop 224 x 224 px; scaled to [0, 1]; normalised with
    the ImageNet mean and std"``; ``"not recorded"`` for None."""
    if not recorded:
        return "not recorded"
    channels = int(recorded.get("channels", 3))
    parts = ["grayscale" if channels == 1 else "RGB"]
    if recorded.get("resize"):
        parts.append(f"shorter side resized to {recorded['resize']} px")
    if recorded.get("crop"):
        parts.append(f"centre crop {recorded['crop']} x {recorded['crop']} px")
    parts.append("scaled to [0, 1]")
    mean, std = recorded.get("mean"), recorded.get("std")
    if mean is None or std is None:
        parts.append("not normalised")
    elif (tuple(round(float(v), 6) for v in mean) == IMAGENET_MEAN
          and tuple(round(float(v), 6) for v in std) == IMAGENET_STD):
        parts.append("normalised with the ImageNet mean and std")
    else:
        parts.append("normalised with mean " + "/".join(f"{float(v):g}" for v in mean)
                     + " and std " + "/".join(f"{float(v):g}" for v in std))
    return "; ".join(parts)
