"""Sequential prefixes of a network, for incremental occlusion.

:func:`trace_chain` runs the caller's opaque ``forward`` once under global
module hooks and keeps the longest prefix in which the network is a *chain*:
leaf modules called one after another, each taking exactly the previous one's
output (same tensor object, values unchanged in between), starting with the
input batch itself.  Functional code between modules (a residual addition, a
``flatten``) breaks the chain there; whatever comes after is left to the crop
path.  Each requested layer is located in the chain by the values it returned.

:func:`build_steps` describes the chain as *steps* ``pad -> window op ->
pointwise modules``: the window op (convolution or pooling) runs with
``padding=0`` on an explicitly padded map, so it can run on any sub-window of
the padded map whose start is a multiple of the stride and give the same
outputs as on the whole map.  Only known module types (matched exactly, not by
subclass) are accepted; the executor further checks every step on the whole
unoccluded map before trusting it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Chain", "Step", "trace_chain", "build_steps", "POINTWISE"]

POINTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.BatchNorm2d, nn.LocalResponseNorm,
)
"""Module types acting on each spatial location separately (in eval mode)."""

_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


@dataclass(frozen=True)
class Chain:
    """Leaf modules of a network prefix, in call order.

    Attributes
    ----------
    modules : tuple of nn.Module
        Called one after another, each on the previous one's output.
    layers : dict
        ``layer -> index`` of the chain module whose output ``forward``
        returns for that layer (layers outside the chain are absent).
    """

    modules: tuple[nn.Module, ...]
    layers: dict[str, int]


@dataclass(frozen=True)
class Step:
    """``pad -> op -> post`` on a ``(B, C, h, w)`` map; geometry per axis ``(y, x)``.

    Attributes
    ----------
    kernel, stride : tuple of int
        Window extent (``dilation * (k - 1) + 1``) and stride of ``op``.
    pad : tuple of int
        ``(top, bottom, left, right)``, including ceil-mode overhang.
    value : float
        Padding value (``-inf`` for max pooling).
    op : callable
        Padding-free window op (or identity).
    post : tuple of nn.Module
        Pointwise modules applied after ``op``.
    macs : int
        Multiply-adds (or comparisons) per output location, all channels.
    channels : int
        Output channels.
    dilation : tuple of int
        Spacing of the kernel taps.
    matrix : torch.Tensor or None, shape (k_y * k_x * C_in, C_out)
        For ungrouped convolutions: the weight as a matrix over
        ``(tap_y, tap_x, channel)`` rows (im2col form), channels last.
    bias : torch.Tensor or None, shape (C_out,)
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]
    value: float
    op: Callable[[torch.Tensor], torch.Tensor]
    post: tuple[nn.Module, ...]
    macs: int
    channels: int
    dilation: tuple[int, int] = (1, 1)
    matrix: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @property
    def taps(self) -> tuple[int, int]:
        """Kernel taps per axis."""
        return tuple((k - 1) // d + 1 for k, d in zip(self.kernel, self.dilation))  # type: ignore[return-value]

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., h, w) padded to (..., h + top + bottom, w + left + right)."""
        t, b, l, r = self.pad
        return F.pad(x, (l, r, t, b), value=self.value) if any(self.pad) else x

    def run(self, patch: torch.Tensor) -> torch.Tensor:
        """Apply ``op`` then ``post`` to an already padded (B, C, h, w) patch."""
        return self.finish(self.op(patch))

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """Apply ``post`` to the op's output (B, C, h, w)."""
        for m in self.post:
            y = m(y)
        return y

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


def _window_step(m: nn.Module, hw: tuple[int, int], channels: int) -> Step | None:
    """Step for one window module on an ``hw`` map, or None if unsupported."""
    kind = type(m)
    if kind is nn.Conv2d:
        if m.padding_mode != "zeros":
            return None
        k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
        l, r, t, b = (int(v) for v in m._reversed_padding_repeated_twice)
        ext = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
        w, bias, groups = m.weight.contiguous(memory_format=torch.channels_last), m.bias, m.groups

        def conv(x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, w, bias, s, 0, d, groups)

        macs = m.out_channels * (m.in_channels // groups) * k[0] * k[1]
        matrix = m.weight.permute(2, 3, 1, 0).reshape(-1, m.out_channels).contiguous() if groups == 1 else None
        return Step(ext, s, (t, b, l, r), 0.0, conv, (), macs, m.out_channels, d, matrix, bias)
    if kind in (nn.MaxPool2d, nn.AvgPool2d):
        k = _pair(m.kernel_size)
        s = _pair(m.stride if m.stride is not None else m.kernel_size)
        p = _pair(m.padding)
        d = _pair(m.dilation) if kind is nn.MaxPool2d else (1, 1)
        if kind is nn.MaxPool2d and m.return_indices:
            return None
        ext = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
        extra = [
            max(0, (_pool_out(hw[a], k[a], s[a], p[a], d[a], m.ceil_mode) - 1) * s[a] + ext[a] - hw[a] - 2 * p[a])
            for a in (0, 1)
        ]
        pad = (p[0], p[0] + extra[0], p[1], p[1] + extra[1])
        macs = channels * k[0] * k[1]
        if kind is nn.MaxPool2d:

            def pool(x: torch.Tensor) -> torch.Tensor:
                return F.max_pool2d(x, k, s, 0, d)

            return Step(ext, s, pad, -math.inf, pool, (), macs, channels, d)
        divisor = m.divisor_override
        if divisor is None and (any(extra) or (any(p) and not m.count_include_pad)):
            return None  # border windows would use another divisor

        def avg(x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, k, s, 0, False, True, divisor)

        return Step(ext, s, pad, 0.0, avg, (), macs, channels)
    if kind in (nn.ZeroPad2d, nn.ConstantPad2d):
        l, r, t, b = (int(v) for v in m.padding)
        if min(l, r, t, b) < 0:
            return None
        return Step((1, 1), (1, 1), (t, b, l, r), float(getattr(m, "value", 0.0)), _identity, (), 0, channels)
    return None


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _pointwise(m: nn.Module) -> bool:
    kind = type(m)
    if kind not in POINTWISE:
        return False
    if kind is nn.BatchNorm2d:  # batch statistics mix locations
        return not m.training and m.running_mean is not None and m.running_var is not None
    if kind in _IDENTITY[1:]:  # random in training mode
        return not m.training
    return True


def build_steps(
    modules: Sequence[nn.Module], hw: tuple[int, int], channels: int
) -> tuple[list[Step], list[tuple[int, int]], list[int]]:
    """Describe a chain prefix as steps, as far as its modules are supported.

    Parameters
    ----------
    modules : sequence of nn.Module
        Chain modules, in call order.
    hw : tuple of int
        Input map shape ``(H, W)``.
    channels : int
        Input channels.

    Returns
    -------
    steps : list of Step, length S
    shapes : list of tuple of int, length S + 1
        Map shape before each step and after the last.
    ends : list of int, length S
        Per step, the chain index of its last module.  The prefix stops before
        the first unsupported module; a pointwise module extends the current
        step (or opens an identity step at the start).
    """
    steps: list[Step] = []
    shapes = [hw]
    ends: list[int] = []
    for i, m in enumerate(modules):
        if _pointwise(m):
            if not steps:
                steps.append(Step((1, 1), (1, 1), (0, 0, 0, 0), 0.0, _identity, (), 0, channels))
                shapes.append(hw)
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


def trace_chain(
    forward: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    x: torch.Tensor,
    layers: Sequence[str],
) -> tuple[Chain, dict[str, torch.Tensor]]:
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
    owner = threading.get_ident()
    recs: list[list] = []  # [module, arg, arg value, out, out value] per leaf call

    def leaf(m: nn.Module) -> bool:
        return threading.get_ident() == owner and next(m.children(), None) is None

    def pre(m: nn.Module, args: tuple) -> None:
        if leaf(m):
            arg = args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
            recs.append([m, arg, None if arg is None else arg.clone(), None, None])

    def post(m: nn.Module, args: tuple, out: object) -> None:
        if leaf(m) and recs and recs[-1][0] is m and recs[-1][3] is None and isinstance(out, torch.Tensor):
            recs[-1][3], recs[-1][4] = out, out.clone()

    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre),
        nn.modules.module.register_module_forward_hook(post),
    ]
    try:
        outputs = dict(forward(x))
    finally:
        for h in handles:
            h.remove()
    modules: list[nn.Module] = []
    values: list[torch.Tensor] = []
    prev_obj, prev_val = x, x
    for mod, arg, arg_val, out, out_val in recs:
        if out is None or arg is not prev_obj or arg_val is None or not torch.equal(arg_val, prev_val):
            break
        modules.append(mod)
        values.append(out_val)
        prev_obj, prev_val = out, out_val
    found: dict[str, int] = {}
    for name in layers:
        v = outputs.get(name)
        if not isinstance(v, torch.Tensor):
            continue
        hits = [i for i, val in enumerate(values) if val.shape == v.shape and torch.equal(val, v)]
        if hits and all(type(modules[j]) in _IDENTITY for j in range(hits[0] + 1, hits[-1] + 1)):
            found[name] = hits[-1]
    return Chain(tuple(modules), found), outputs
