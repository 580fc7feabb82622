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

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from rfstore.errors import RfstoreError

__all__ = ["ReceptiveField", "ReceptiveFieldError", "describe_table", "theoretical_receptive_fields"]


class ReceptiveFieldError(ValueError, RfstoreError):
    """A network or one of its layers cannot be analysed; the message says which and why."""


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


# --------------------------------------------------------------------------- propagation state


@dataclass(frozen=True)
class _Axis:
    lo: int  # first input pixel covered by unit 0
    size: int
    jump: int


@dataclass(frozen=True)
class _Map:
    """A tensor with a spatial map; ``dims`` are the (negative) positions of its y and x axes."""

    axes: tuple[_Axis, _Axis]
    dims: tuple[int, int] = (-2, -1)


@dataclass(frozen=True)
class _Vector:
    """A tensor whose every element sees the whole input."""


@dataclass(frozen=True)
class _Failure:
    message: str


_State = _Map | _Vector | _Failure | None
_Hw = tuple[int, int]

_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_MAXPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVGPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_FUNCTIONS: dict[Any, tuple[str, tuple[str, ...]]] = {
    F.conv2d: ("conv", _CONV_ARGS),
    F.max_pool2d: ("pool", _MAXPOOL_ARGS),
    F.max_pool2d_with_indices: ("pool", _MAXPOOL_ARGS),
    torch.max_pool2d: ("pool", _MAXPOOL_ARGS),
    F.avg_pool2d: ("pool", _AVGPOOL_ARGS),
    F.lp_pool2d: ("pool", ("input", "norm_type", "kernel_size", "stride", "ceil_mode")),
    F.pad: ("pad", ("input", "pad", "mode", "value")),
    F.adaptive_avg_pool2d: ("adaptive", ()),
    F.adaptive_max_pool2d: ("adaptive", ()),
    F.adaptive_max_pool2d_with_indices: ("adaptive", ()),
}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
_PERMUTATIONS = {"transpose", "swapaxes", "swapdims", "permute", torch.transpose, torch.swapaxes, torch.permute}
_UNSUPPORTED_MODULES = (
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Conv1d, nn.Conv3d,
    nn.MaxPool1d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool3d, nn.FractionalMaxPool2d,
    nn.MaxUnpool2d, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.Fold, nn.Unfold,
    nn.ReflectionPad2d, nn.CircularPad2d,
)
_UNSUPPORTED_TARGETS = {
    F.interpolate, F.grid_sample, F.conv_transpose2d, F.conv1d, F.conv3d, F.unfold, F.fold,
    F.pixel_shuffle, F.pixel_unshuffle, torch.roll, torch.flip, torch.rot90, torch.movedim,
    "roll", "flip", "rot90", "unfold", "movedim", "fliplr", "flipud",
    torch.einsum, torch.matmul, torch.bmm, operator.matmul, "matmul", "bmm", "__matmul__",
}
# Operations along one dimension, and the position of that dimension among their arguments.
_DIM_OPS: dict[Any, int] = {
    F.softmax: 1, F.log_softmax: 1, torch.softmax: 1, torch.log_softmax: 1, torch.cumsum: 1,
    torch.cumprod: 1, torch.sort: 1, torch.argsort: 1, F.normalize: 2, "softmax": 1,
    "log_softmax": 1, "cumsum": 1, "cumprod": 1, "sort": 1, "argsort": 1,
}
# Functions from outside torch that fx treats as opaque but that are known to be pointwise in space.
_POINTWISE_EXTERNAL = {"torchvision.ops.stochastic_depth.stochastic_depth"}


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, torch.fx.Node):
        raise ReceptiveFieldError(f"its {what} is computed at run time, not a constant")
    if isinstance(value, int):
        return (value, value)
    values = tuple(value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(isinstance(v, torch.fx.Node) for v in values):
        raise ReceptiveFieldError(f"its {what} {value!r} is not a constant pair")
    return (int(values[0]), int(values[1]))


def _tensor_shapes(node: Any) -> list[tuple[int, ...]]:
    """Shapes of all tensors in a node's output, from the shape-propagation pass."""
    found: list[tuple[int, ...]] = []

    def collect(meta: Any) -> None:
        if isinstance(meta, TensorMetadata):
            found.append(tuple(meta.shape))
        elif isinstance(meta, (list, tuple)):
            for item in meta:
                collect(item)
        elif isinstance(meta, dict):
            for item in meta.values():
                collect(item)

    if isinstance(node, torch.fx.Node):
        collect(node.meta.get("tensor_meta"))
    return found


def _describe(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(modules[str(node.target)]).__name__})"
    if node.op == "call_method":
        return f"method call .{node.target}() (graph node '{node.name}')"
    return f"function {getattr(node.target, '__name__', node.target)}() (graph node '{node.name}')"


def _window(state: _Map, kernel: _Hw, stride: _Hw, pad: _Hw, dilation: _Hw, in_hw: _Hw, out_hw: _Hw,
            pad_hi: _Hw | None = None, ceil_mode: bool = False) -> _Map:
    """Apply one sliding-window operation to both axes, checking its output size."""
    if state.dims != (-2, -1):
        raise ReceptiveFieldError("the spatial axes of its input are not its last two dimensions")
    pad_hi = pad if pad_hi is None else pad_hi
    axes = []
    for i, ax in enumerate(state.axes):
        k, s, p, d = kernel[i], stride[i], pad[i], dilation[i]
        span = in_hw[i] + p + pad_hi[i] - d * (k - 1) - 1
        expected = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (expected - 1) * s >= in_hw[i] + p:
            expected -= 1  # PyTorch drops a last window that would start in the right padding
        if expected != out_hw[i]:
            raise ReceptiveFieldError(
                f"kernel {kernel}, stride {stride}, padding {pad} and dilation {dilation} predict "
                f"an output of length {expected} on axis {'yx'[i]} but the forward pass gave {out_hw[i]}")
        axes.append(_Axis(ax.lo - p * ax.jump, ax.size + (k - 1) * d * ax.jump, ax.jump * s))
    return _Map((axes[0], axes[1]))


def _adaptive(state: _Map, in_hw: _Hw, out_hw: _Hw) -> _Map:
    """Adaptive pooling or a spatial reduction: exact only when it is a plain pool."""
    for n_in, n_out in zip(in_hw, out_hw):
        if n_out != n_in and (n_out < 1 or n_in % n_out != 0):
            raise ReceptiveFieldError(
                f"it pools {in_hw[0]}x{in_hw[1]} to {out_hw[0]}x{out_hw[1]}; input length {n_in} is not "
                f"a multiple of output length {n_out}, so its windows differ in size")
    kernel = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
    return _window(state, kernel, kernel, (0, 0), (1, 1), in_hw, out_hw)


def _conv(state: _Map, kernel: _Hw, stride: Any, padding: Any, dilation: _Hw, in_hw: _Hw, out_hw: _Hw) -> _Map:
    stride = _pair(stride, "stride")
    if padding == "valid":
        return _window(state, kernel, stride, (0, 0), dilation, in_hw, out_hw)
    if padding == "same":  # PyTorch puts the odd extra pixel at the end
        total = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
        lo = (total[0] // 2, total[1] // 2)
        return _window(state, kernel, stride, lo, dilation, in_hw, out_hw,
                       pad_hi=(total[0] - lo[0], total[1] - lo[1]))
    return _window(state, kernel, stride, _pair(padding, "padding"), dilation, in_hw, out_hw)


def _pool(state: _Map, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: Any,
          in_hw: _Hw, out_hw: _Hw) -> _Map:
    kernel = _pair(kernel, "kernel")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else stride
    return _window(state, kernel, _pair(stride, "stride"), _pair(padding, "padding"),
                   _pair(dilation, "dilation"), in_hw, out_hw, ceil_mode=bool(ceil_mode))


def _pad(state: _Map, padding: Any, in_hw: _Hw, out_hw: _Hw) -> _Map:
    pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
    if any(isinstance(v, torch.fx.Node) for v in pads):
        raise ReceptiveFieldError("its padding is computed at run time, not a constant")
    left, right, top, bottom = (tuple(int(v) for v in pads) + (0, 0, 0, 0))[:4]  # F.pad order
    return _window(state, (1, 1), (1, 1), (top, left), (1, 1), in_hw, out_hw, pad_hi=(bottom, right))


def _spatial_op(node: torch.fx.Node, module: nn.Module | None, state: _Map, in_hw: _Hw, out_hw: _Hw) -> _Map | None:
    """Geometry of a known spatial operation, or ``None`` when the node is not one."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode in ("reflect", "circular"):
            raise ReceptiveFieldError(
                f"padding_mode='{module.padding_mode}' feeds units with pixels outside their window")
        return _conv(state, _pair(module.kernel_size, "kernel"), module.stride, module.padding,
                     _pair(module.dilation, "dilation"), in_hw, out_hw)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)):
        return _pool(state, module.kernel_size, module.stride, getattr(module, "padding", 0),
                     getattr(module, "dilation", 1), module.ceil_mode, in_hw, out_hw)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return _adaptive(state, in_hw, out_hw)
    if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReplicationPad2d)):
        return _pad(state, module.padding, in_hw, out_hw)
    if module is not None:
        return None
    if node.op == "call_method":
        return None
    kind, names = _FUNCTIONS.get(node.target, ("", ()))
    if kind == "adaptive":
        return _adaptive(state, in_hw, out_hw)
    bound = dict(zip(names, node.args)) | dict(node.kwargs)
    if kind == "pad":
        if bound.get("mode", "constant") not in ("constant", "replicate"):
            raise ReceptiveFieldError(f"mode='{bound['mode']}' feeds units with pixels outside their window")
        return _pad(state, bound["pad"], in_hw, out_hw)
    if kind == "conv":
        shapes = _tensor_shapes(bound["weight"])
        if not shapes or len(shapes[0]) != 4:
            raise ReceptiveFieldError("the shape of its weight is unknown")
        return _conv(state, (shapes[0][2], shapes[0][3]), bound.get("stride", 1), bound.get("padding", 0),
                     _pair(bound.get("dilation", 1), "dilation"), in_hw, out_hw)
    if kind == "pool":
        return _pool(state, bound["kernel_size"], bound.get("stride"), bound.get("padding", 0),
                     bound.get("dilation", 1), bound.get("ceil_mode", False), in_hw, out_hw)
    return None


def _reduction(node: torch.fx.Node, state: _Map, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> _Map:
    """A sum, mean, amax or amin: a pool over the whole of each reduced spatial axis."""
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    dims = list(range(len(in_shape))) if dims is None else [dims] if isinstance(dims, int) else list(dims)
    if any(not isinstance(d, int) for d in dims) or not isinstance(keep, bool):
        raise ReceptiveFieldError("its dimensions are computed at run time")
    if not keep:
        if any(d % len(in_shape) >= len(in_shape) + min(state.dims) for d in dims):
            raise ReceptiveFieldError("it drops a spatial dimension, or one behind them, without keepdim")
        return state
    in_hw, out_hw = _hw(in_shape, state.dims), _hw(out_shape, state.dims)
    return _adaptive(state, in_hw, out_hw) if in_hw and out_hw else state


def _permute(node: torch.fx.Node, state: _Map, ndim: int) -> _Map:
    """Follow the spatial axes through a transpose or permute."""
    dims = list(node.args[1:]) + list(node.kwargs.values())
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = list(dims[0])
    if any(not isinstance(d, int) for d in dims):
        raise ReceptiveFieldError("its dimensions are computed at run time")
    if node.target in ("permute", torch.permute):
        order = [d % ndim for d in dims]
    else:
        order = list(range(ndim))
        a, b = dims[0] % ndim, dims[1] % ndim
        order[a], order[b] = order[b], order[a]
    new = tuple(order.index(d % ndim) - ndim for d in state.dims)
    return _Map(state.axes, (new[0], new[1]))


def _check_opaque(node: torch.fx.Node, state: _Map, ndim: int) -> None:
    """Refuse functions whose effect on space cannot be read from the graph."""
    if node.op == "call_function":
        where = getattr(node.target, "__module__", None) or ""
        name = f"{where}.{getattr(node.target, '__qualname__', '')}"
        inside_torch = where.startswith("torch") and not where.startswith("torchvision")
        if not inside_torch and where not in ("_operator", "operator", "builtins", "math") \
                and name not in _POINTWISE_EXTERNAL:
            raise ReceptiveFieldError("it is a function fx did not trace into, so its effect on space is unknown")
    if node.op in ("call_function", "call_method") and node.target in _DIM_OPS:
        position = _DIM_OPS[node.target]
        dim = node.kwargs.get("dim", node.args[position] if len(node.args) > position else None)
        if not isinstance(dim, int) or dim % ndim in {d % ndim for d in state.dims}:
            raise ReceptiveFieldError("it works along a spatial dimension (or one it cannot determine)")


def _hw(shape: tuple[int, ...], dims: tuple[int, int]) -> _Hw | None:
    if len(shape) < 3 or len(shape) < -min(dims):
        return None
    return (shape[dims[0]], shape[dims[1]])


def _propagate(node: torch.fx.Node, states: Mapping[torch.fx.Node, _State],
               modules: Mapping[str, nn.Module]) -> _State:
    """Receptive-field state of ``node`` from the states of its inputs."""
    inputs = [(n, states[n]) for n in node.all_input_nodes]
    failures = [s for _, s in inputs if isinstance(s, _Failure)]
    if failures:
        return failures[0]
    live = [(n, s) for n, s in inputs if s is not None]
    out_shapes = _tensor_shapes(node)
    if not live or not out_shapes:
        return None  # constants, shapes, parameters
    module = modules[str(node.target)] if node.op == "call_module" else None
    if isinstance(module, _UNSUPPORTED_MODULES) or (module is None and node.target in _UNSUPPORTED_TARGETS):
        raise ReceptiveFieldError("this operation moves or resamples pixels and is not supported")
    if node.target is operator.getitem and len(_tensor_shapes(node.args[0])) > 1:
        return live[0][1]  # one element of a tuple of tensors
    maps = [(n, s) for n, s in live if isinstance(s, _Map)]
    if not maps:
        return _Vector()
    if len(maps) != len(live):
        raise ReceptiveFieldError("it combines a spatial map with a vector that sees the whole input")
    if len(out_shapes[0]) <= 2:
        return _Vector()  # flatten, global reduction, Linear on a flattened map
    _check_opaque(node, maps[0][1], len(_tensor_shapes(maps[0][0])[0]))
    if len(maps) == 1:
        source, state = maps[0]
        ndim = len(_tensor_shapes(source)[0])
        if module is None and node.target in _PERMUTATIONS and len(out_shapes[0]) == ndim:
            return _permute(node, state, ndim)
        if module is None and node.target in _REDUCTIONS:
            return _reduction(node, state, _tensor_shapes(source)[0], out_shapes[0])
        in_hw, out_hw = _hw(_tensor_shapes(source)[0], state.dims), _hw(out_shapes[0], state.dims)
        if in_hw is not None and out_hw is not None:
            result = _spatial_op(node, module, state, in_hw, out_hw)
            if result is not None:
                return result
    # Pointwise in space: one input passes through, several are merged.
    dims = maps[0][1].dims
    if any(s.dims != dims for _, s in maps):
        raise ReceptiveFieldError("it merges maps whose spatial axes sit at different positions")
    in_hws = [_hw(_tensor_shapes(n)[0], dims) for n, _ in maps]
    out_hws = {_hw(shape, dims) for shape in out_shapes}
    if len(out_hws) != 1 or any(hw != next(iter(out_hws)) for hw in in_hws):
        sizes = ", ".join("x".join(map(str, hw)) if hw else "?" for hw in in_hws)
        out = "x".join(map(str, next(iter(out_hws)) or ()))
        if len(maps) > 1:
            raise ReceptiveFieldError(
                f"it combines maps of spatial sizes {sizes} into {out}; broadcasting a smaller map (such "
                f"as a squeeze-and-excitation gate) gives units a receptive field no single size describes")
        raise ReceptiveFieldError(f"it changes the spatial size {sizes} to {out} and is not a known "
                                  f"spatial operation")
    first = maps[0][1].axes
    if any(a.jump != b.jump for _, s in maps for a, b in zip(first, s.axes)):
        jumps = ", ".join(str((s.axes[0].jump, s.axes[1].jump)) for _, s in maps)
        raise ReceptiveFieldError(f"it merges maps with different jumps {jumps}")
    axes = []
    for i in range(2):
        lo = min(s.axes[i].lo for _, s in maps)
        hi = max(s.axes[i].lo + s.axes[i].size - 1 for _, s in maps)
        axes.append(_Axis(lo, hi - lo + 1, first[i].jump))
    return _Map((axes[0], axes[1]), dims)


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
    states: dict[torch.fx.Node, _State] = {}
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            states[node] = _Map((_Axis(0, 1, 1), _Axis(0, 1, 1)))
        elif node.op == "output":
            outputs[model] = [node.args[0] if isinstance(node.args[0], torch.fx.Node) else None]
            states[node] = None
        elif node.op == "get_attr":
            states[node] = None
        else:
            try:
                states[node] = _propagate(node, states, modules)
            except ReceptiveFieldError as exc:
                states[node] = _Failure(f"{_describe(node, modules)} cannot be analysed: {exc}")
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
        if isinstance(state, _Failure):
            raise ReceptiveFieldError(f"cannot compute the receptive field of {label}: {state.message}")
        if state is None:
            raise ReceptiveFieldError(f"{label} does not return a single tensor computed from the input")
        if isinstance(state, _Vector):
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
