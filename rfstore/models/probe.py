"""A network's modules on a probe input: eval mode, device, and the output shape of each recorded layer."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .features import FeatureExtractor
from .layers import LayerSelectionError

__all__ = ["LayerInfo", "probe_layers", "eval_mode", "device_of"]


@dataclass(frozen=True)
class LayerInfo:
    """A recorded layer.

    Attributes
    ----------
    name : str
        Module path in ``model.named_modules()``.
    kind : str
        ``"conv"`` (4-D output ``(N, C, H, W)``, units are the C channels) or
        ``"linear"`` (2-D output ``(N, F)``, units are the F features).
    num_units : int
        C or F.
    output_shape : tuple[int, ...]
        Output shape without the batch dimension: ``(C, H, W)`` or ``(F,)``.
    """

    name: str
    kind: str
    num_units: int
    output_shape: tuple[int, ...]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put every submodule in eval mode, restoring the flags after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def probe_layers(
    model: nn.Module, layers: Sequence[str], input_shape: tuple[int, int, int]
) -> list[LayerInfo]:
    """Find output shapes and kinds of `layers` with one forward pass on zeros.

    Parameters
    ----------
    model : nn.Module
        The network (temporarily put in eval mode).
    layers : Sequence[str]
        Module names, e.g. from :func:`select_layers`.
    input_shape : tuple[int, int, int]
        ``(C, H, W)`` of one input image; the probe runs on ``(1, C, H, W)``.

    Returns
    -------
    list[LayerInfo]
        One entry per layer, in the order of `layers`.

    Raises
    ------
    LayerSelectionError
        If a layer's output is not a 2-D or 4-D tensor, or the model is TorchScript.
    """
    if len(input_shape) != 3:
        raise LayerSelectionError(
            f"input_shape must be (C, H, W), got {tuple(input_shape)!r}; pass three sizes"
        )
    dummy = torch.zeros((1, *input_shape), device=device_of(model))
    with FeatureExtractor(model, layers) as extractor, eval_mode(model):
        with torch.inference_mode():
            outputs = extractor(dummy)
    infos = []
    for name in layers:
        shape = tuple(int(s) for s in outputs[name].shape)
        if len(shape) == 4:
            kind = "conv"
        elif len(shape) == 2:
            kind = "linear"
        else:
            raise LayerSelectionError(
                f"layer {name!r} outputs shape {shape}, but only 4-D (N, C, H, W) and "
                "2-D (N, F) outputs can be recorded; choose another layer"
            )
        infos.append(LayerInfo(name=name, kind=kind, num_units=shape[1], output_shape=shape[1:]))
    return infos
