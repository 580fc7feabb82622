"""Turning a user's ``--layers`` text into module names.

Rules
-----
* **Default** (no selection, ``""``): every *activation module* of the network, in
  registration order (``model.named_modules()``, execution order for torchvision
  models). An activation module is an instance (subclasses included) of one of
  :data:`ACTIVATION_TYPES`: the ReLU family (ReLU, ReLU6, LeakyReLU, PReLU, RReLU),
  ELU, SELU, CELU, GELU, SiLU, Mish, Hardswish, Hardtanh, Softplus, Softsign, Tanh
  and Threshold. Sigmoid, Hardsigmoid and the softmax family are left out: in CNNs
  they gate (squeeze-and-excitation) or give probabilities, they are not a layer's
  activation. For torchvision's AlexNet this is its five conv ReLUs and the two
  classifier ReLUs, as in Zhou et al. 2015.
* Otherwise a comma-separated list of items, each one of
    - a module name (``features.4``, ``layer3``, containers included);
    - a shell-style pattern over module names (``features.*``, ``*prelu*``,
      ``layer?.0.relu``; ``*`` also crosses dots), matched with
      :func:`fnmatch.fnmatchcase`;
    - ``type:NAME``: every module whose class, or one of its base classes, is
      called NAME (case-insensitive; ``type:PReLU``, ``type:conv2d``).
  ``relu`` alone is kept from earlier versions and means ``type:ReLU``; a module
  literally named ``relu`` is selected with ``relu,``.
* Items expand in order, matches of a pattern in registration order; a module
  named twice is kept at its first place.
* When the input shape is known, patterns, types and the default keep only the
  modules that can be recorded: those that run in a forward pass and return a
  2-D ``(N, F)`` or 4-D ``(N, C, H, W)`` tensor (at their last call). Names given
  exactly are kept as they are (:func:`~rfstore.models.probe.probe_layers`
  then says what is wrong with them).
* A pattern or type that selects nothing, or a default that finds no activation
  module, is an error listing the candidate modules (name, type, output shape).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from .layers import LayerSelectionError, resolve_layers
from .probe import device_of, eval_mode

__all__ = ["ACTIVATION_TYPES", "Candidate", "is_activation", "module_candidates", "module_types",
           "select_recorded", "select_layers", "type_name"]

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanh, nn.Threshold,
)
"""The module types recorded by default (instances of subclasses count too)."""

_ACTIVATION_NAMES = frozenset(cls.__name__ for cls in ACTIVATION_TYPES)
_GLOB_CHARACTERS = frozenset("*?[")
_LEGACY_RELU = "relu"
_MAX_LISTED = 40


@dataclass(frozen=True)
class Candidate:
    """A module as a layer could record it, from one forward pass on zeros.

    ``output_shape`` is the shape of its (last) output without the batch
    dimension, or None when it did not run or did not return a tensor
    (``note`` then says which).
    """

    name: str
    type_name: str
    output_shape: tuple[int, ...] | None
    note: str = ""

    @property
    def recordable(self) -> bool:
        """Whether its output is ``(N, F)`` or ``(N, C, H, W)``."""
        return self.output_shape is not None and len(self.output_shape) in (1, 3)


def type_name(module: nn.Module) -> str:
    """The module's class name; a TorchScript module's ``original_name``."""
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    return type(module).__name__


def is_activation(module: nn.Module) -> bool:
    """Whether `module` is an activation module (see the module docstring)."""
    if isinstance(module, torch.jit.ScriptModule):
        return type_name(module) in _ACTIVATION_NAMES
    return isinstance(module, ACTIVATION_TYPES)


def _has_type(module: nn.Module, wanted: str) -> bool:
    wanted = wanted.lower()
    if isinstance(module, torch.jit.ScriptModule):
        return type_name(module).lower() == wanted
    return any(cls.__name__.lower() == wanted for cls in type(module).__mro__)


def module_types(module: nn.Module) -> list[str]:
    """The names a ``type:`` item matches for ``module``: its class and base classes up to ``nn.Module``
    (a scripted module: its original class), as init records them per layer (``module_types``)."""
    if isinstance(module, torch.jit.ScriptModule):
        return [type_name(module)]
    names = []
    for cls in type(module).__mro__:
        if cls is nn.Module:
            break
        names.append(cls.__name__)
    return names


def select_recorded(selection: list[str], recorded: list[str], types: dict[str, list[str]]) -> list[str]:
    """The recorded layers a later stage's ``--layers`` items select, in recorded order.

    Items are as at init (names, shell patterns, ``type:NAME``), matched against the recorded layer names
    and each layer's recorded ``types`` (:func:`module_types`; absent for stores made before they were
    recorded). Returns the selected names; an item that selects no recorded layer is left to the caller's
    error by being returned as it is, after the selected names (``unknown = [n for n in result if n not in
    recorded]``).
    """
    chosen: set[str] = set()
    unknown: list[str] = []
    for item in selection:
        if item.startswith("type:"):
            wanted = item[len("type:"):].strip().lower()
            names = [name for name in recorded if wanted in (t.lower() for t in types.get(name, []))]
        elif _GLOB_CHARACTERS & set(item):
            names = [name for name in recorded if fnmatch.fnmatchcase(name, item)]
        else:
            names = [item] if item in recorded else []
        chosen.update(names)
        if not names:
            unknown.append(item)
    return [name for name in recorded if name in chosen] + unknown


def module_candidates(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, Candidate] | None:
    """Every named module with the shape it outputs on a ``(1, *input_shape)`` zero input.

    Returns None for a TorchScript model (no forward hooks). The model runs once
    in eval mode (its flags are restored); a module called several times reports
    its last call. Modules reachable under two names are listed under the first.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return None
    named = [(name, module) for name, module in model.named_modules() if name]
    seen: dict[str, object] = {}
    handles = []

    def hook_for(name: str):  # noqa: ANN202 - a forward hook
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            seen[name] = output.shape[1:] if isinstance(output, torch.Tensor) else type(output).__name__
        return hook

    try:
        for name, module in named:
            if not isinstance(module, torch.jit.ScriptModule):
                handles.append(module.register_forward_hook(hook_for(name)))
        dummy = torch.zeros((1, *input_shape), device=device_of(model))
        with eval_mode(model), torch.inference_mode():
            model(dummy)
    finally:
        for handle in handles:
            handle.remove()
    candidates = {}
    for name, module in named:
        output = seen.get(name)
        if isinstance(output, torch.Size):
            candidates[name] = Candidate(name, type_name(module), tuple(int(s) for s in output))
        else:
            note = "not run" if output is None else f"returns a {output}"
            candidates[name] = Candidate(name, type_name(module), None, note)
    return candidates


def _listing(model: nn.Module, candidates: dict[str, Candidate] | None) -> str:
    """The candidate modules, one per line: recordable ones with their shapes."""
    if candidates is None:
        rows = [(name, type_name(module), "") for name, module in model.named_modules() if name]
        header = "candidates (name, type; output shapes unknown)"
    else:
        rows = [(c.name, c.type_name, str(c.output_shape)) for c in candidates.values() if c.recordable]
        header = "candidates (name, type, output shape)"
        if not rows:
            return "no module of this model returns a 2-D or 4-D tensor"
    more = len(rows) - _MAX_LISTED
    rows = rows[:_MAX_LISTED]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"  {name:<{widths[0]}}  {kind:<{widths[1]}}  {shape}".rstrip() for name, kind, shape in rows]
    lines += [f"  ... and {more} more"] if more > 0 else []
    return f"{header}:\n" + "\n".join(lines)


def _is_pattern(item: str) -> bool:
    """A ``type:`` item or a shell pattern, as opposed to one module name."""
    return item.startswith("type:") or bool(_GLOB_CHARACTERS & set(item))


def _expand(model: nn.Module, item: str, candidates: dict[str, Candidate] | None) -> list[str]:
    """The names one pattern or ``type:`` item selects, recordable ones only when shapes are known."""
    modules = [(name, module) for name, module in model.named_modules() if name]
    if item.startswith("type:"):
        wanted = item[len("type:"):].strip()
        if not wanted:
            raise LayerSelectionError("--layers item 'type:' names no type; write e.g. type:PReLU")
        names = [name for name, module in modules if _has_type(module, wanted)]
    else:
        names = [name for name, _ in modules if fnmatch.fnmatchcase(name, item)]
    if candidates is not None:
        names = [name for name in names if name in candidates and candidates[name].recordable]
    return names


def select_layers(model: nn.Module, selection: str | None,
                  input_shape: tuple[int, int, int] | None = None) -> list[str]:
    """Turn a user's layer selection into module names (rules in the module docstring).

    Parameters
    ----------
    model : nn.Module
        The network.
    selection : str or None
        None or ``""`` for the default (every activation module), else a
        comma-separated list of names, patterns and ``type:NAME`` items.
    input_shape : tuple[int, int, int], optional
        ``(C, H, W)`` of one input. When given (and the selection is the default
        or has a pattern or type), one forward pass on zeros finds every module's
        output shape: patterns, types and the default keep only recordable
        modules, and errors list the candidates with their shapes.

    Returns
    -------
    list[str]
        Module names, in selection order, without repeats.

    Raises
    ------
    LayerSelectionError
        For unknown names (listing near matches), a pattern or type that selects
        nothing, or a default that finds no activation module (both listing the
        candidate modules).
    """
    text = (selection or "").strip()
    items = ["type:ReLU"] if text == _LEGACY_RELU else [p.strip() for p in text.split(",") if p.strip()]
    if text and not items:
        raise LayerSelectionError(f"--layers {selection!r} names no layer")
    needs_shapes = input_shape is not None and (not items or any(_is_pattern(item) for item in items))
    candidates = module_candidates(model, input_shape) if needs_shapes else None  # type: ignore[arg-type]
    if not items:
        names = [name for name, module in model.named_modules() if name and is_activation(module)]
        if candidates is not None:
            names = [name for name in names if name in candidates and candidates[name].recordable]
        if not names:
            kinds = ", ".join(cls.__name__ for cls in ACTIVATION_TYPES)
            raise LayerSelectionError(
                f"the model has no activation module ({kinds}) whose output can be recorded; choose the "
                f"layers with --layers: names, patterns such as 'features.*' or types such as type:Conv2d; "
                f"{_listing(model, candidates)}")
        return names
    selected: dict[str, None] = {}
    for item in items:
        if _is_pattern(item):
            names = _expand(model, item, candidates)
            if not names:
                what = "module type" if item.startswith("type:") else "pattern"
                recordable = " that can be recorded (a 2-D or 4-D tensor output)" if candidates is not None else ""
                raise LayerSelectionError(
                    f"--layers {what} {item!r} selects no module{recordable}; {_listing(model, candidates)}")
        else:
            resolve_layers(model, [item])
            names = [item]
        selected.update(dict.fromkeys(names))
    return list(selected)
