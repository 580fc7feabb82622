"""The layers whose units are recorded: resolving their names and probing their output shapes.

Which modules a ``--layers`` text selects is :mod:`rfstore.models.selection`.

Layers are named by their module path in ``model.named_modules()``
(``"features.4"``, ``"layer3"``, ``"classifier.1"``).  A module that runs more
than once per forward pass (torchvision's ``BasicBlock.relu`` is applied after
``bn1`` and again after the residual addition) is recorded at its **last** call
in that pass, which for ResNet blocks is the block output; see
:class:`rfstore.models.features.FeatureExtractor`.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from rfstore.errors import RfstoreError

__all__ = [
    "LayerInfo",
    "LayerSelectionError",
    "probe_layers",
    "resolve_layers",
]


class LayerSelectionError(ValueError, RfstoreError):
    """A layer selection names unknown modules or unsupported outputs."""


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


def _unknown_layer_error(name: str, available: Sequence[str]) -> LayerSelectionError:
    close = difflib.get_close_matches(name, list(available), n=5, cutoff=0.6)
    if close:
        hint = f"near matches: {', '.join(close)}"
    else:
        top = [n for n in available if "." not in n][:8]
        hint = f"no near matches; top-level modules: {', '.join(top)}"
    return LayerSelectionError(
        f"the model has no module named {name!r} ({hint}); "
        "use names from model.named_modules()"
    )


def resolve_layers(model: nn.Module, layers: Sequence[str]) -> list[nn.Module]:
    """The modules named `layers`, in the same order.

    Raises
    ------
    LayerSelectionError
        If `layers` is empty, repeats a name, or names an unknown module.
    """
    if not layers:
        raise LayerSelectionError("no layers were requested; name at least one module")
    if len(set(layers)) != len(layers):
        raise LayerSelectionError(
            f"layer names repeat in {list(layers)!r}; name each layer once"
        )
    modules = dict(model.named_modules(remove_duplicate=False))
    modules.pop("", None)
    resolved = []
    for name in layers:
        if name not in modules:
            raise _unknown_layer_error(name, list(modules))
        resolved.append(modules[name])
    return resolved


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put every submodule in eval mode, restoring the flags after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _device_of(model: nn.Module) -> torch.device:
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
    from .features import FeatureExtractor

    if len(input_shape) != 3:
        raise LayerSelectionError(
            f"input_shape must be (C, H, W), got {tuple(input_shape)!r}; pass three sizes"
        )
    dummy = torch.zeros((1, *input_shape), device=_device_of(model))
    with FeatureExtractor(model, layers) as extractor, _eval_mode(model):
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
