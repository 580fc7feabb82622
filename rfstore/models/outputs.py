"""Models with several outputs: naming each tensor a forward pass returns, and choosing the class scores.

A forward pass may return a tensor, or tensors inside tuples, lists, namedtuples,
dicts (``OrderedDict``, Hugging Face ``ModelOutput``), dataclasses or other plain
objects. :func:`named_outputs` flattens any of these into ``(label, tensor)``
pairs, in order:

* a tensor: label ``""`` (the output itself);
* a tuple or list: ``"0"``, ``"1"``, ...; a namedtuple: its field names;
* a mapping: its keys; a dataclass: its fields; another object: its public attributes;
* nested containers: dotted paths (``"aux.0"``).

Values that are not tensors (None, numbers, strings) are skipped. Class scores
are an output of shape ``(N, K)``, or ``(N, K, 1, ..., 1)`` (a fully
convolutional head), read as ``(N, K)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rfstore.errors import ModelError

__all__ = ["OutputChoiceError", "choose_output", "class_count", "describe_outputs", "named_outputs", "pick_output"]


class OutputChoiceError(ModelError, ValueError):
    """The class scores cannot be found among a model's outputs; the message lists the outputs."""


def _children(value: Any) -> list[tuple[str, Any]] | None:
    """The named parts of a container, or None for a leaf."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, Mapping):
        return [(str(key), item) for key, item in value.items()]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return [(str(name), getattr(value, name)) for name in value._fields]
    if isinstance(value, (tuple, list)):
        return [(str(i), item) for i, item in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    if hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
        return [(name, item) for name, item in vars(value).items() if not name.startswith("_")]
    return None


def named_outputs(output: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a model's output with its label (see the module docstring)."""
    if isinstance(output, torch.Tensor):
        return [(prefix, output)]
    children = _children(output)
    if children is None:
        return []
    found = []
    for name, item in children:
        found += named_outputs(item, f"{prefix}.{name}" if prefix else name)
    return found


def class_count(tensor: torch.Tensor) -> int | None:
    """K for class scores ``(N, K)`` or ``(N, K, 1, ..., 1)``; None for any other shape."""
    if tensor.dim() < 2 or any(int(s) != 1 for s in tensor.shape[2:]):
        return None
    return int(tensor.shape[1])


def describe_outputs(outputs: Sequence[tuple[str, torch.Tensor]]) -> str:
    """``"0: (N, 2), 1: (N, 4)"``: each output's label and shape, the batch size written N."""
    def shape(t: torch.Tensor) -> str:
        dims = ["N", *(str(int(s)) for s in t.shape[1:])] if t.dim() else []
        return f"({', '.join(dims)}{',' if len(dims) == 1 else ''})"

    return ", ".join(f"{label or 'output'}: {shape(t)}" for label, t in outputs)


def _chosen(outputs: Sequence[tuple[str, torch.Tensor]], choice: str) -> tuple[str, torch.Tensor]:
    labels = [label for label, _ in outputs]
    if choice in labels:
        return outputs[labels.index(choice)]
    text = choice.strip()
    if text.lstrip("-").isdigit() and -len(outputs) <= int(text) < len(outputs):
        return outputs[int(text)]
    raise OutputChoiceError(f"--output {choice!r} is neither the name nor the position of an output; "
                            f"the model returns {describe_outputs(outputs)}")


def choose_output(outputs: Sequence[tuple[str, torch.Tensor]], choice: str | None,
                  class_counts: Sequence[int]) -> str:
    """The label of the class scores among ``outputs`` (from :func:`named_outputs`).

    Parameters
    ----------
    outputs : sequence of (str, torch.Tensor)
        A model's outputs.
    choice : str or None
        ``--output``: a label (dict key, field name, dotted path) or a position
        in ``outputs`` (0 first, negative from the end).
    class_counts : sequence of int
        Without `choice`: the numbers of classes to look for, in order of
        preference; the first that exactly one output has in its class
        dimension decides. Non-positive counts are ignored.

    Raises
    ------
    OutputChoiceError
        One line listing the outputs and their shapes: the model returns no
        tensor, `choice` names none of them or one that is not ``(N, K)``, or
        without `choice` no count singles out one output.
    """
    if not outputs:
        raise OutputChoiceError("the model's forward returns no tensor, so it gives no class scores")
    if choice is not None:
        label, tensor = _chosen(outputs, choice)
        if class_count(tensor) is None:
            raise OutputChoiceError(f"--output {choice}: {describe_outputs([(label, tensor)])} is not class "
                                    f"scores of shape (N, classes); the model returns {describe_outputs(outputs)}")
        return label
    if len(outputs) == 1:
        return outputs[0][0]
    counts = list(dict.fromkeys(int(n) for n in class_counts if int(n) > 0))
    several: list[str] = []
    for n in counts:
        matches = [label for label, tensor in outputs if class_count(tensor) == n]
        if len(matches) == 1:
            return matches[0]
        several = several or matches
    wanted = " or ".join(str(n) for n in counts) or "a known number of"
    which = f"several of them ({', '.join(several)}) have" if several else "none of them has"
    raise OutputChoiceError(f"the model returns {len(outputs)} outputs ({describe_outputs(outputs)}); {which} "
                            f"{wanted} classes in the last dimension: choose the class scores with "
                            f"--output INDEX|KEY")


def pick_output(output: Any, label: str) -> torch.Tensor:
    """The class scores ``(N, K)`` labelled `label` (from :func:`choose_output`) in one forward's output."""
    outputs = named_outputs(output)
    for name, tensor in outputs:
        if name == label:
            count = class_count(tensor)
            if count is None:
                raise OutputChoiceError(f"output {label or 'of the model'} has shape {tuple(tensor.shape)}, "
                                        f"not class scores (N, classes)")
            return tensor.reshape(tensor.shape[0], count)
    raise OutputChoiceError(f"the model's forward no longer returns the output {label!r} "
                            f"(it returns {describe_outputs(outputs)})")
