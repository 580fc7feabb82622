"""Theoretical receptive fields of the units of any traceable network.

The network is traced with :mod:`torch.fx`, a dummy forward pass of a
``(1, C, H, W)`` zero tensor records every intermediate shape, and the
receptive-field geometry is propagated along the graph, one spatial axis at a
time. For an operation with kernel ``k``, stride ``s``, leading padding ``p``
and dilation ``d`` acting on a map whose units cover ``size`` input pixels,
first pixel ``lo`` and spacing ``jump``::

    lo_out   = lo - p * jump
    size_out = size + (k - 1) * d * jump
    jump_out = jump * s

Internally everything is kept as integers (``lo``, ``size``, ``jump``); the
centre of unit 0 is ``lo + (size - 1) / 2``. See Araujo, Norris & Sim,
"Computing Receptive Fields of Convolutional Neural Networks", Distill 2019.
The per-operation rules live in :mod:`rfstore.rf.propagation`.

Assumptions, stated once:

* An operation that keeps the spatial size and is not a known spatial
  operation (activation, normalisation, dropout, channel slicing, ...) is
  treated as pointwise in space.
* Several spatial inputs merged into one output (add, multiply, concatenation
  along channels) give the union of their receptive fields: the bounding
  interval from the lowest first pixel to the highest last pixel.
* Anything that turns a map into a vector (flatten, global reduction to a
  2-D tensor, ``Linear`` after it) sees the whole input.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from rfstore.rf.propagation import Axis, Failure, Map, ReceptiveFieldError, State, Vector, describe_node, propagate

__all__ = ["ReceptiveField", "ReceptiveFieldError", "describe_table", "theoretical_receptive_fields"]


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of every unit of one layer output, in input pixels.

    Parameters
    ----------
    size : tuple of int
        ``(y, x)`` extent of one unit's receptive field.
    jump : tuple of int
        ``(y, x)`` distance between the centres of neighbouring units.
    start : tuple of float
        ``(y, x)`` centre of unit ``(0, 0)``, with input pixel centres at
        ``0 .. H-1``; may be negative and may end in ``.5``.
    kind : str
        ``"conv"`` for a spatial map, ``"linear"`` for a vector output, whose
        every element sees the whole input (indices are then ignored).

    Notes
    -----
    This is the theoretical field: the extent of the windows, padding
    included. Clipped to the image it is exactly the set of rows and columns
    a unit depends on, except that dilation can leave holes (also at its
    ends, inside the image) and a unit computed from padding alone depends
    on no pixel at all.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "linear"):
            raise ValueError(f"kind must be 'conv' or 'linear', got {self.kind!r}")

    def centre(self, y: int, x: int) -> tuple[float, float]:
        """Centre of unit ``(y, x)`` in input pixel coordinates."""
        if self.kind == "linear":
            return self.start
        return (self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1])

    def bounds(self, y: int, x: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """First and last input pixel covered by unit ``(y, x)``, not clipped to the image.

        Returns
        -------
        tuple
            ``((y_lo, y_hi), (x_lo, x_hi))``, inclusive.
        """
        cy, cx = self.centre(y, x)
        hy, hx = (self.size[0] - 1) / 2, (self.size[1] - 1) / 2
        return ((cy - hy, cy + hy), (cx - hx, cx + hx))


# --------------------------------------------------------------------------- tracing


class _RecordingTracer(torch.fx.Tracer):
    """fx tracer that remembers which graph node is the output of each module call."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[nn.Module, list[Any]] = {}

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = super().call_module(m, forward, args, kwargs)
        self.outputs.setdefault(m, []).append(result.node if isinstance(result, torch.fx.Proxy) else None)
        return result


def _trace(model: nn.Module, input_size: tuple[int, int],
           in_channels: int) -> tuple[torch.fx.GraphModule, dict[nn.Module, list[Any]]]:
    tracer = _RecordingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # the tracer's reason is the useful part
        raise ReceptiveFieldError(
            f"{type(model).__name__} cannot be traced with torch.fx, so its graph is unknown: "
            f"{type(exc).__name__}: {exc}") from exc
    module = torch.fx.GraphModule(model, graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ReceptiveFieldError(f"{type(model).__name__}.forward takes {len(placeholders)} inputs; "
                                  f"exactly one image tensor is supported")
    param = next(iter(model.parameters()), None)
    dummy = torch.zeros((1, in_channels, *input_size), dtype=param.dtype if param is not None else None,
                        device=param.device if param is not None else None)
    try:
        with torch.no_grad():
            ShapeProp(module).propagate(dummy)
    except Exception as exc:
        raise ReceptiveFieldError(
            f"the forward pass of {type(model).__name__} on a {tuple(dummy.shape)} input failed, so its "
            f"shapes are unknown: {type(exc).__name__}: {exc}") from exc
    return module, tracer.outputs


def theoretical_receptive_fields(model: nn.Module, layers: Sequence[str], input_size: tuple[int, int],
                                 *, in_channels: int = 3) -> dict[str, ReceptiveField]:
    """Receptive field of the output of each named module.

    Parameters
    ----------
    model : torch.nn.Module
        Any network :func:`torch.fx.symbolic_trace` can trace, taking one
        ``(N, C, H, W)`` image tensor. It is run once on zeros in eval mode;
        its training flags are restored afterwards.
    layers : sequence of str
        Module names as in ``model.named_modules()``, e.g. ``'features.4'``,
        ``'layer3'``, ``'classifier.1'``; ``''`` is the model output.
    input_size : tuple of int
        ``(H, W)`` of the input image.
    in_channels : int, optional
        Channels of the dummy input, 3 by default.

    Returns
    -------
    dict of str to ReceptiveField
        In the order of ``layers``.

    Raises
    ------
    ReceptiveFieldError
        If the model cannot be traced or run, a name is not a module called
        exactly once, or a layer depends on an operation whose receptive field
        is not exact (named in the message).
    """
    if len(input_size) != 2 or any(int(v) != v or v < 1 for v in input_size):
        raise ReceptiveFieldError(f"input_size must be two positive integers (H, W), got {input_size!r}")
    height, width = int(input_size[0]), int(input_size[1])
    known = dict(model.named_modules(remove_duplicate=False))
    for name in layers:
        if name not in known:
            raise ReceptiveFieldError(f"{type(model).__name__} has no module named '{name}'")
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        graph_module, outputs = _trace(model, (height, width), in_channels)
    finally:
        for m, flag in flags.items():
            m.training = flag
    modules = dict(graph_module.named_modules())
    states: dict[torch.fx.Node, State] = {}
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            states[node] = Map((Axis(0, 1, 1), Axis(0, 1, 1)))
        elif node.op == "output":
            outputs[model] = [node.args[0] if isinstance(node.args[0], torch.fx.Node) else None]
            states[node] = None
        elif node.op == "get_attr":
            states[node] = None
        else:
            try:
                states[node] = propagate(node, states, modules)
            except ReceptiveFieldError as exc:
                states[node] = Failure(f"{describe_node(node, modules)} cannot be analysed: {exc}")
    result: dict[str, ReceptiveField] = {}
    for name in layers:
        label = f"layer '{name}'" if name else "the model output"
        calls = outputs.get(known[name], [])
        if not calls:
            raise ReceptiveFieldError(f"{label} is never called in the forward pass (in eval mode)")
        if len(calls) > 1:
            raise ReceptiveFieldError(f"{label} is called {len(calls)} times in the forward pass, "
                                      f"so its output is ambiguous")
        state = states.get(calls[0]) if calls[0] is not None else None
        if isinstance(state, Failure):
            raise ReceptiveFieldError(f"cannot compute the receptive field of {label}: {state.message}")
        if state is None:
            raise ReceptiveFieldError(f"{label} does not return a single tensor computed from the input")
        if isinstance(state, Vector):
            result[name] = ReceptiveField((height, width), (height, width),
                                          ((height - 1) / 2, (width - 1) / 2), "linear")
        else:
            ay, ax = state.axes
            result[name] = ReceptiveField((ay.size, ax.size), (ay.jump, ax.jump),
                                          (ay.lo + (ay.size - 1) / 2, ax.lo + (ax.size - 1) / 2), "conv")
    return result


def describe_table(rfs: Mapping[str, ReceptiveField]) -> str:
    """Plain-text table of receptive fields, one layer per row.

    Parameters
    ----------
    rfs : mapping of str to ReceptiveField
        As returned by :func:`theoretical_receptive_fields`.

    Returns
    -------
    str
        Columns layer, kind, size, jump and start, each pair as ``y x``.
    """

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:.1f}"

    header = ("layer", "kind", "size (y x)", "jump (y x)", "start (y x)")
    rows = [header] + [(name or "<output>", rf.kind, " ".join(map(num, rf.size)), " ".join(map(num, rf.jump)),
                        " ".join(map(num, rf.start))) for name, rf in rfs.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
