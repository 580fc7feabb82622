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
from collections.abc import Sequence

import torch
from torch import nn

from rfstore.errors import ModelError

__all__ = ["LayerSelectionError", "resolve_layers"]


class LayerSelectionError(ModelError, ValueError):
    """A layer selection names unknown modules or unsupported outputs."""


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
