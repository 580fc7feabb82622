"""How many channels a network's input images have: grayscale (1) or RGB (3).

The number is read from the model, not assumed: the ``in_channels`` of its first
convolution (registration order), confirmed by a forward pass on zeros of the
input size. A model without a convolution (or one whose first registered
convolution does not run first) is tried on three channels, then on one. Images
are read as RGB for three channels and as grayscale (PIL ``L``, ITU-R 601-2 luma)
for one; other counts are refused.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from rfstore.errors import ModelError

from ._errors import short_error
from .probe import device_of, eval_mode

__all__ = ["SUPPORTED_CHANNELS", "InputChannelsError", "first_conv_channels", "input_channels", "probe_forward"]

log = logging.getLogger(__name__)

SUPPORTED_CHANNELS = (1, 3)
"""Grayscale and RGB: the images rfstore can read."""


class InputChannelsError(ModelError, ValueError):
    """The network cannot take grayscale or RGB images, or not the number of channels asked for."""


def first_conv_channels(model: nn.Module) -> tuple[str, int] | None:
    """``(name, in_channels)`` of the first 2-D convolution in registration order, or None.

    TorchScript convolutions count too (their ``in_channels`` is read from the weight).
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, int(module.in_channels)
        if isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") == "Conv2d":
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 4:
                return name, int(weight.shape[1]) * int(getattr(module, "groups", 1))
    return None


def probe_forward(model: nn.Module, input_shape: tuple[int, int, int]) -> Any:
    """The model's output on one ``(1, *input_shape)`` zero input, in eval mode (flags restored)."""
    dummy = torch.zeros((1, *input_shape), device=device_of(model))
    with eval_mode(model), torch.inference_mode():
        return model(dummy)


def _try(model: nn.Module, channels: int, input_hw: tuple[int, int]) -> str | None:
    """None when the model runs on ``channels``-channel images of size ``input_hw``, else why not."""
    try:
        probe_forward(model, (channels, *input_hw))
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward is the answer
        return short_error(err)
    return None


def input_channels(model: nn.Module, input_hw: tuple[int, int], requested: int | None = None) -> int:
    """The number of input channels of `model`: 1 (grayscale) or 3 (RGB).

    Parameters
    ----------
    model : nn.Module
        The network.
    input_hw : tuple[int, int]
        ``(H, W)`` of the preprocessed images.
    requested : int, optional
        ``--channels``: use this count (1 or 3), checked by a forward pass.

    Returns
    -------
    int
        1 or 3; the model ran on a ``(1, C, H, W)`` zero input.

    Raises
    ------
    InputChannelsError
        If `requested` is not 1 or 3, the model does not run on it, the first
        convolution takes another number of channels, or the model runs on
        neither one nor three channels.
    """
    height, width = input_hw
    if requested is not None:
        if requested not in SUPPORTED_CHANNELS:
            raise InputChannelsError(f"--channels must be 1 (grayscale) or 3 (RGB), not {requested}")
        failure = _try(model, requested, input_hw)
        if failure is not None:
            raise InputChannelsError(f"the model cannot be run on {_images(requested)} of {height}x{width} "
                                     f"(--channels {requested}): {failure}")
        return requested
    first = first_conv_channels(model)
    if first is not None and first[1] not in SUPPORTED_CHANNELS:
        raise InputChannelsError(
            f"the model's first convolution ({first[0]}) takes {first[1]} input channels, but rfstore reads "
            f"images as grayscale (1 channel) or RGB (3 channels) only")
    order = [first[1]] if first is not None else []
    order += [c for c in (3, 1) if c not in order]
    failures = []
    for channels in order:
        failure = _try(model, channels, input_hw)
        if failure is None:
            if first is not None and channels != first[1]:
                log.warning("the first convolution (%s) takes %d channels but the model runs on %d",
                            first[0], first[1], channels)
            return channels
        failures.append(f"on {_images(channels)}: {failure}")
    raise InputChannelsError(f"the model cannot be run on grayscale or RGB images of {height}x{width} "
                             f"({'; '.join(failures)}); if it takes another input size (dense layers after a "
                             f"flatten fix it), give that size: --resize and --crop at init, --input-size for "
                             f"rf-theory")


def _images(channels: int) -> str:
    return {1: "grayscale images (1 channel)", 3: "RGB images (3 channels)"}.get(channels, f"{channels}-channel images")
