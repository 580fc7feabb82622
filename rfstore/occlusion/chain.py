"""The sequential prefix of a network, described as steps the incremental passes can recompute cell by cell.

:func:`trace_chain` runs the caller's opaque ``forward`` once under global module hooks
and keeps the longest prefix in which the network is a *chain*: leaf modules called one
after another, each taking exactly the previous one's output (same tensor object, values
unchanged in between), starting with the input batch itself.  Functional code between
modules (a residual addition, a ``flatten``) ends the chain there.  Each requested layer
is located in the chain by the values it returned.

:func:`build_steps` describes the chain as *steps* ``pad -> window op -> pointwise
modules``.  A step's output cell is a function of one window of its padded input (its
*taps*), so the incremental passes (:mod:`rfstore.occlusion.kernels`) can recompute any
set of cells from gathered taps.  Only known module types (matched exactly, not by
subclass) are accepted; the engine checks every step on the whole unoccluded map before
trusting it.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

__all__ = ["Chain", "Step", "trace_chain", "build_steps", "POINTWISE", "GEMM_ALIGN"]

POINTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.BatchNorm2d, nn.LocalResponseNorm,
)
"""Module types acting on each spatial location separately (in eval mode)."""

_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)

GEMM_ALIGN = 16
"""Output columns of a step's weight matrix are padded to a multiple of this: some BLAS
kernels round a row differently by its place in the call for odd column counts (seen
for 5 and 10 columns), never for multiples of 16."""


@dataclass(frozen=True)
class Chain:
    """Leaf modules of a network prefix, in call order.

    Attributes
    ----------
    modules : tuple of nn.Module
        Called one after another, each on the previous one's output.
    layers : dict
        ``layer -> index`` of the chain module whose output ``forward`` returns for that
        layer (layers outside the chain are absent).
    calls : tuple of nn.Module
        Every leaf module call of the traced pass, in order (the chain is its start).
    call_macs : tuple of int
        Multiply-adds of each call of ``calls`` per input sample (convolutions and linear
        layers; 0 for the rest).
    call_bytes : tuple of int
        Bytes of each call's output per input sample.
    """

    modules: tuple[nn.Module, ...]
    layers: dict[str, int]
    calls: tuple[nn.Module, ...] = ()
    call_macs: tuple[int, ...] = ()
    call_bytes: tuple[int, ...] = ()

    def macs(self, start: int = 0, stop: int | None = None) -> int:
        """Multiply-adds per sample of the calls ``start .. stop - 1``."""
        return int(sum(self.call_macs[start:stop]))

    def sample_bytes(self, start: int = 0) -> int:
        """Bytes of the outputs of the calls from ``start`` on, per sample."""
        return int(sum(self.call_bytes[start:]))

    def called_after(self, index: int) -> bool:
        """Whether a module of ``modules[: index + 1]`` is called again later in the pass."""
        prefix = {id(m) for m in self.modules[: index + 1]}
        return any(id(m) in prefix for m in self.calls[index + 1:])


@dataclass(frozen=True)
class Step:
    """``pad -> op -> post`` on a ``(B, C, h, w)`` map; geometry per axis ``(y, x)``.

    Attributes
    ----------
    kind : str
        ``"conv"``, ``"max"`` (max pooling), ``"avg"`` (average pooling) or ``"copy"``
        (padding only, or pointwise modules at the start of the chain).
    kernel, stride, dilation : tuple of int
        Window extent (``dilation * (k - 1) + 1``), stride and tap spacing of ``op``.
    pad : tuple of int
        ``(top, bottom, left, right)``, including ceil-mode overhang.
    value : float
        Padding value (``-inf`` for max pooling).
    post : tuple of nn.Module
        Pointwise modules applied after ``op``.
    macs : int
        Multiply-adds (or comparisons) per output cell, all channels.
    channels : int
        Output channels.
    matrix : torch.Tensor or None, shape (taps_y * taps_x * C_in, C_out padded to GEMM_ALIGN)
        Ungrouped convolutions: the weight over ``(tap_y, tap_x, channel)`` rows.
    bias : torch.Tensor or None, shape (C_out padded,)
    conv : nn.Conv2d or None
        Grouped convolutions: the module (run on one window per cell).
    divisor : float
        Average pooling: the number the window sum is divided by.
    """

    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]
    value: float
    post: tuple[nn.Module, ...]
    macs: int
    channels: int
    dilation: tuple[int, int] = (1, 1)
    matrix: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    conv: nn.Conv2d | None = None
    divisor: float = 1.0

    @property
    def taps(self) -> tuple[int, int]:
        """Kernel taps per axis."""
        return tuple((k - 1) // d + 1 for k, d in zip(self.kernel, self.dilation))  # type: ignore[return-value]

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., h, w) padded to (..., h + top + bottom, w + left + right)."""
        t, b, l, r = self.pad
        return torch.nn.functional.pad(x, (l, r, t, b), value=self.value) if any(self.pad) else x

    def out_length(self, length: int, axis: int) -> int:
        """Output length along ``axis`` for an input of ``length``."""
        p = self.pad[2 * axis] + self.pad[2 * axis + 1]
        return (length + p - self.kernel[axis]) // self.stride[axis] + 1


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_out(length: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's pooling output length (ceil mode: the last window starts inside)."""
    num = length + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= length + p:
        out -= 1
    return out


def _conv_step(m: nn.Conv2d) -> Step | None:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return None
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    p = _pair(m.padding)
    ext = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    macs = m.out_channels * (m.in_channels // m.groups) * k[0] * k[1]
    matrix = bias = conv = None
    if m.groups == 1:
        cols = -(-m.out_channels // GEMM_ALIGN) * GEMM_ALIGN
        w = m.weight.detach().permute(2, 3, 1, 0).reshape(-1, m.out_channels)
        matrix = w.new_zeros((w.shape[0], cols))
        matrix[:, : m.out_channels] = w
        bias = w.new_zeros(cols)
        if m.bias is not None:
            bias[: m.out_channels] = m.bias.detach()
    else:
        conv = m
    return Step("conv", ext, s, (p[0], p[0], p[1], p[1]), 0.0, (), macs, m.out_channels, d, matrix, bias, conv)


def _pool_step(m: nn.Module, hw: tuple[int, int], channels: int) -> Step | None:
    kind = type(m)
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    p = _pair(m.padding)
    d = _pair(m.dilation) if kind is nn.MaxPool2d else (1, 1)
    if kind is nn.MaxPool2d and m.return_indices:
        return None
    ext = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    extra = [max(0, (_pool_out(hw[a], k[a], s[a], p[a], d[a], m.ceil_mode) - 1) * s[a] + ext[a] - hw[a] - 2 * p[a])
             for a in (0, 1)]
    pad = (p[0], p[0] + extra[0], p[1], p[1] + extra[1])
    macs = channels * k[0] * k[1]
    if kind is nn.MaxPool2d:
        return Step("max", ext, s, pad, -math.inf, (), macs, channels, d)
    divisor = m.divisor_override
    if divisor is None and (any(extra) or (any(p) and not m.count_include_pad)):
        return None  # border windows would use another divisor
    return Step("avg", ext, s, pad, 0.0, (), macs, channels, divisor=float(divisor or k[0] * k[1]))


def _window_step(m: nn.Module, hw: tuple[int, int], channels: int) -> Step | None:
    """Step for one window module on an ``hw`` map, or None if unsupported."""
    kind = type(m)
    if kind is nn.Conv2d:
        return _conv_step(m) if m.in_channels == channels else None
    if kind in (nn.MaxPool2d, nn.AvgPool2d):
        return _pool_step(m, hw, channels)
    if kind in (nn.ZeroPad2d, nn.ConstantPad2d):
        l, r, t, b = (int(v) for v in m.padding)
        if min(l, r, t, b) < 0:
            return None
        return Step("copy", (1, 1), (1, 1), (t, b, l, r), float(getattr(m, "value", 0.0)), (), 0, channels)
    return None


def _pointwise(m: nn.Module) -> bool:
    kind = type(m)
    if kind not in POINTWISE:
        return False
    if kind is nn.BatchNorm2d:  # batch statistics mix locations
        return not m.training and m.running_mean is not None and m.running_var is not None
    if kind in _IDENTITY[1:]:  # random in training mode
        return not m.training
    return True


def build_steps(modules: Sequence[nn.Module], hw: tuple[int, int], channels: int,
                cuts: Sequence[int] = ()) -> tuple[list[Step], list[tuple[int, int]], list[int]]:
    """Describe a chain prefix as steps, as far as its modules are supported.

    Parameters
    ----------
    modules : sequence of nn.Module
        Chain modules, in call order.
    hw : tuple of int
        Input map shape ``(H, W)``.
    channels : int
        Input channels.
    cuts : sequence of int
        Chain indices that must end a step (layers read by targets): a pointwise module
        after a cut opens a new ``copy`` step instead of extending the current one.

    Returns
    -------
    steps : list of Step, length S
    shapes : list of tuple of int, length S + 1
        Map shape before each step and after the last.
    ends : list of int, length S
        Per step, the chain index of its last module.  The prefix stops before the first
        unsupported module.
    """
    steps: list[Step] = []
    shapes = [hw]
    ends: list[int] = []
    cut = set(cuts)
    for i, m in enumerate(modules):
        if _pointwise(m):
            if not steps or ends[-1] in cut:
                steps.append(Step("copy", (1, 1), (1, 1), (0, 0, 0, 0), 0.0, (), 0, channels))
                shapes.append(shapes[-1])
                ends.append(i)
            steps[-1] = replace(steps[-1], post=steps[-1].post + (m,))
            ends[-1] = i
            continue
        step = _window_step(m, shapes[-1], channels)
        if step is None:
            break
        h, w = (step.out_length(shapes[-1][a], a) for a in (0, 1))
        if h < 1 or w < 1:
            break
        steps.append(step)
        shapes.append((h, w))
        ends.append(i)
        channels = step.channels
    return steps, shapes, ends


def _record_leaf_calls(forward: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], x: torch.Tensor
                       ) -> tuple[list[list], dict[str, torch.Tensor]]:
    """``forward(x)`` with every leaf module call on this thread recorded, in call order, as
    ``[module, input, input value, output, output value]`` (the values cloned); and what it returned."""
    owner = threading.get_ident()
    recs: list[list] = []

    def leaf(m: nn.Module) -> bool:
        return threading.get_ident() == owner and next(m.children(), None) is None

    def pre(m: nn.Module, args: tuple) -> None:
        if leaf(m):
            arg = args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
            recs.append([m, arg, None if arg is None else arg.clone(), None, None])

    def post(m: nn.Module, args: tuple, out: object) -> None:
        if leaf(m) and recs and recs[-1][0] is m and recs[-1][3] is None and isinstance(out, torch.Tensor):
            recs[-1][3], recs[-1][4] = out, out.clone()

    handles = [nn.modules.module.register_module_forward_pre_hook(pre),
               nn.modules.module.register_module_forward_hook(post)]
    try:
        outputs = dict(forward(x))
    finally:
        for h in handles:
            h.remove()
    return recs, outputs


def _locate(layers: Sequence[str], outputs: Mapping[str, torch.Tensor], modules: list[nn.Module],
            values: list[torch.Tensor]) -> dict[str, int]:
    """``{layer: index in the chain}`` of each layer whose output equals a chain module's output (the last of
    equal ones when only identity modules lie between them)."""
    found: dict[str, int] = {}
    for name in layers:
        v = outputs.get(name)
        if not isinstance(v, torch.Tensor):
            continue
        hits = [i for i, val in enumerate(values) if val.shape == v.shape and torch.equal(val, v)]
        if hits and all(type(modules[j]) in _IDENTITY for j in range(hits[0] + 1, hits[-1] + 1)):
            found[name] = hits[-1]
    return found


def trace_chain(forward: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], x: torch.Tensor,
                layers: Sequence[str]) -> tuple[Chain, dict[str, torch.Tensor]]:
    """Run ``forward(x)`` once and find its sequential prefix.

    Parameters
    ----------
    forward : callable
        ``(B, C, H, W) -> {layer: tensor}``.
    x : torch.Tensor, shape (B, C, H, W)
        Input batch (on the forward's device and dtype).
    layers : sequence of str
        Layers to locate in the chain.

    Returns
    -------
    chain : Chain
    outputs : dict
        What ``forward(x)`` returned.
    """
    recs, outputs = _record_leaf_calls(forward, x)
    modules: list[nn.Module] = []
    values: list[torch.Tensor] = []
    prev_obj, prev_val = x, x
    for mod, arg, arg_val, out, out_val in recs:
        if out is None or arg is not prev_obj or arg_val is None or not torch.equal(arg_val, prev_val):
            break
        modules.append(mod)
        values.append(out_val)
        prev_obj, prev_val = out, out_val
    found = _locate(layers, outputs, modules, values)
    batch = max(1, x.shape[0])
    sizes = tuple(0 if r[4] is None else r[4].numel() * r[4].element_size() // batch for r in recs)
    macs = tuple(_call_macs(r[0], r[4]) // batch for r in recs)
    return Chain(tuple(modules), found, tuple(r[0] for r in recs), macs, sizes), outputs


def _call_macs(module: nn.Module, out: torch.Tensor | None) -> int:
    """Multiply-adds of one call of a convolution or linear layer that returned ``out``."""
    if out is None:
        return 0
    if isinstance(module, nn.modules.conv._ConvNd):
        return out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0
