"""How each operation of a traced network moves a receptive field: the rules behind
:func:`rfstore.rf.theory.theoretical_receptive_fields`.

Every fx node gets a state: a spatial map (per axis: the first input pixel unit 0
covers, the field's size and the jump between units, and where the y and x axes
sit among the tensor's dimensions), a vector whose every element sees the whole
input, or a failure saying why the layers after it cannot be analysed.
:func:`propagate` turns the states of a node's inputs into its own, for
convolutions, pools, padding, reductions, permutations and pointwise operations;
anything that moves or resamples pixels is refused with a
:class:`ReceptiveFieldError`.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from rfstore.errors import ModelError

__all__ = ["ReceptiveFieldError", "propagate", "tensor_shapes", "describe_node", "Axis", "Map", "Vector",
           "Failure", "State"]


class ReceptiveFieldError(ModelError, ValueError):
    """A network or one of its layers cannot be analysed; the message says which and why."""



@dataclass(frozen=True)
class Axis:
    lo: int  # first input pixel covered by unit 0
    size: int
    jump: int


@dataclass(frozen=True)
class Map:
    """A tensor with a spatial map; ``dims`` are the (negative) positions of its y and x axes."""

    axes: tuple[Axis, Axis]
    dims: tuple[int, int] = (-2, -1)


@dataclass(frozen=True)
class Vector:
    """A tensor whose every element sees the whole input."""


@dataclass(frozen=True)
class Failure:
    message: str


State = Map | Vector | Failure | None
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


def tensor_shapes(node: Any) -> list[tuple[int, ...]]:
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


def describe_node(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(modules[str(node.target)]).__name__})"
    if node.op == "call_method":
        return f"method call .{node.target}() (graph node '{node.name}')"
    return f"function {getattr(node.target, '__name__', node.target)}() (graph node '{node.name}')"


def _window(state: Map, kernel: _Hw, stride: _Hw, pad: _Hw, dilation: _Hw, in_hw: _Hw, out_hw: _Hw,
            pad_hi: _Hw | None = None, ceil_mode: bool = False) -> Map:
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
        axes.append(Axis(ax.lo - p * ax.jump, ax.size + (k - 1) * d * ax.jump, ax.jump * s))
    return Map((axes[0], axes[1]))


def _adaptive(state: Map, in_hw: _Hw, out_hw: _Hw) -> Map:
    """Adaptive pooling or a spatial reduction: exact only when it is a plain pool."""
    for n_in, n_out in zip(in_hw, out_hw):
        if n_out != n_in and (n_out < 1 or n_in % n_out != 0):
            raise ReceptiveFieldError(
                f"it pools {in_hw[0]}x{in_hw[1]} to {out_hw[0]}x{out_hw[1]}; input length {n_in} is not "
                f"a multiple of output length {n_out}, so its windows differ in size")
    kernel = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
    return _window(state, kernel, kernel, (0, 0), (1, 1), in_hw, out_hw)


def _conv(state: Map, kernel: _Hw, stride: Any, padding: Any, dilation: _Hw, in_hw: _Hw, out_hw: _Hw) -> Map:
    stride = _pair(stride, "stride")
    if padding == "valid":
        return _window(state, kernel, stride, (0, 0), dilation, in_hw, out_hw)
    if padding == "same":  # PyTorch puts the odd extra pixel at the end
        total = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
        lo = (total[0] // 2, total[1] // 2)
        return _window(state, kernel, stride, lo, dilation, in_hw, out_hw,
                       pad_hi=(total[0] - lo[0], total[1] - lo[1]))
    return _window(state, kernel, stride, _pair(padding, "padding"), dilation, in_hw, out_hw)


def _pool(state: Map, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: Any,
          in_hw: _Hw, out_hw: _Hw) -> Map:
    kernel = _pair(kernel, "kernel")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else stride
    return _window(state, kernel, _pair(stride, "stride"), _pair(padding, "padding"),
                   _pair(dilation, "dilation"), in_hw, out_hw, ceil_mode=bool(ceil_mode))


def _pad(state: Map, padding: Any, in_hw: _Hw, out_hw: _Hw) -> Map:
    pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
    if any(isinstance(v, torch.fx.Node) for v in pads):
        raise ReceptiveFieldError("its padding is computed at run time, not a constant")
    left, right, top, bottom = (tuple(int(v) for v in pads) + (0, 0, 0, 0))[:4]  # F.pad order
    return _window(state, (1, 1), (1, 1), (top, left), (1, 1), in_hw, out_hw, pad_hi=(bottom, right))


def _spatial_op(node: torch.fx.Node, module: nn.Module | None, state: Map, in_hw: _Hw, out_hw: _Hw) -> Map | None:
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
        shapes = tensor_shapes(bound["weight"])
        if not shapes or len(shapes[0]) != 4:
            raise ReceptiveFieldError("the shape of its weight is unknown")
        return _conv(state, (shapes[0][2], shapes[0][3]), bound.get("stride", 1), bound.get("padding", 0),
                     _pair(bound.get("dilation", 1), "dilation"), in_hw, out_hw)
    if kind == "pool":
        return _pool(state, bound["kernel_size"], bound.get("stride"), bound.get("padding", 0),
                     bound.get("dilation", 1), bound.get("ceil_mode", False), in_hw, out_hw)
    return None


def _reduction(node: torch.fx.Node, state: Map, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Map:
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


def _permute(node: torch.fx.Node, state: Map, ndim: int) -> Map:
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
    return Map(state.axes, (new[0], new[1]))


def _check_opaque(node: torch.fx.Node, state: Map, ndim: int) -> None:
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


def propagate(node: torch.fx.Node, states: Mapping[torch.fx.Node, State],
               modules: Mapping[str, nn.Module]) -> State:
    """Receptive-field state of ``node`` from the states of its inputs."""
    inputs = [(n, states[n]) for n in node.all_input_nodes]
    failures = [s for _, s in inputs if isinstance(s, Failure)]
    if failures:
        return failures[0]
    live = [(n, s) for n, s in inputs if s is not None]
    out_shapes = tensor_shapes(node)
    if not live or not out_shapes:
        return None  # constants, shapes, parameters
    module = modules[str(node.target)] if node.op == "call_module" else None
    if isinstance(module, _UNSUPPORTED_MODULES) or (module is None and node.target in _UNSUPPORTED_TARGETS):
        raise ReceptiveFieldError("this operation moves or resamples pixels and is not supported")
    if node.target is operator.getitem and len(tensor_shapes(node.args[0])) > 1:
        return live[0][1]  # one element of a tuple of tensors
    maps = [(n, s) for n, s in live if isinstance(s, Map)]
    if not maps:
        return Vector()
    if len(maps) != len(live):
        raise ReceptiveFieldError("it combines a spatial map with a vector that sees the whole input")
    if len(out_shapes[0]) <= 2:
        return Vector()  # flatten, global reduction, Linear on a flattened map
    _check_opaque(node, maps[0][1], len(tensor_shapes(maps[0][0])[0]))
    if len(maps) == 1:
        source, state = maps[0]
        ndim = len(tensor_shapes(source)[0])
        if module is None and node.target in _PERMUTATIONS and len(out_shapes[0]) == ndim:
            return _permute(node, state, ndim)
        if module is None and node.target in _REDUCTIONS:
            return _reduction(node, state, tensor_shapes(source)[0], out_shapes[0])
        in_hw, out_hw = _hw(tensor_shapes(source)[0], state.dims), _hw(out_shapes[0], state.dims)
        if in_hw is not None and out_hw is not None:
            result = _spatial_op(node, module, state, in_hw, out_hw)
            if result is not None:
                return result
    # Pointwise in space: one input passes through, several are merged.
    dims = maps[0][1].dims
    if any(s.dims != dims for _, s in maps):
        raise ReceptiveFieldError("it merges maps whose spatial axes sit at different positions")
    in_hws = [_hw(tensor_shapes(n)[0], dims) for n, _ in maps]
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
        axes.append(Axis(lo, hi - lo + 1, first[i].jump))
    return Map((axes[0], axes[1]), dims)


