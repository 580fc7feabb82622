"""The rest of the network after the prefix: run the forward from a map injected at a chain module.

For the shared strategy the occluded maps at the end of the prefix are built
incrementally; the layers after it (the dense layers of AlexNet, the residual stages of a
ResNet) run in full on them.  :class:`Tail` calls the caller's own ``forward`` with the
chain modules up to the injection point replaced, for that call only, by modules that
pass their input on and, at the injection point, return the injected maps, so the code
after it (``flatten``, the classifier, hooks that capture layers) runs unchanged.

Where this is valid is checked, not assumed (:func:`find_tail`): no module of the
replaced part may be called again later in the pass, and the injected unoccluded map
must reproduce ``forward``'s own outputs for every layer after the prefix.

Batches are cut in fixed-size calls (:func:`tail_rows`, a function of the network and
device only), so a row's result never depends on the other rows of the work.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from rfstore.occlusion.chain import Chain

__all__ = ["Tail", "find_tail", "tail_rows", "TAIL_BYTES"]

TAIL_BYTES = 1 << 29
"""Memory allowed to one tail call's activations (bytes)."""


def tail_rows(chain: Chain, start: int, device: torch.device) -> int:
    """Rows per call of the network from call ``start`` on: a power of two from 2 to 512 (1024 on a GPU)
    whose outputs fit :data:`TAIL_BYTES` (a function of the network and the device only)."""
    cap = 1024 if device.type == "cuda" else 512
    rows = 2
    while rows * 2 <= cap and rows * 2 * max(chain.sample_bytes(start), 1) <= TAIL_BYTES:
        rows *= 2
    return rows


@contextlib.contextmanager
def _injected(modules: Sequence[nn.Module], maps: torch.Tensor) -> Iterator[None]:
    """Modules ``[:-1]`` pass their input on and the last returns ``maps``, inside the block only."""
    saved = [m.__dict__.get("forward") for m in modules]

    def passthrough(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x

    def inject(*args: object, **kwargs: object) -> torch.Tensor:
        return maps

    try:
        for m in modules[:-1]:
            m.forward = passthrough
        modules[-1].forward = inject
        yield
    finally:
        for m, old in zip(modules, saved):
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = old


class Tail:
    """``forward`` resumed after chain module ``index`` on injected maps.

    Parameters
    ----------
    forward : callable
        ``(B, C, H, W) -> {layer: tensor}``.
    chain : Chain
    index : int
        Chain index of the last replaced module (the injection point).
    channels : int
        Input channels (the stand-in input is ``(B, channels, 1, 1)``).
    """

    def __init__(self, forward: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], chain: Chain, index: int,
                 channels: int) -> None:
        self.forward, self.modules, self.index, self.channels = forward, chain.modules[: index + 1], index, channels

    def __call__(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of every layer after the injection point for ``maps`` ``(B, C, h, w)`` (B >= 2)."""
        stand_in = maps.new_zeros((maps.shape[0], self.channels, 1, 1))
        with _injected(self.modules, maps):
            return dict(self.forward(stand_in))


def find_tail(forward: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], chain: Chain,
              candidates: Sequence[int], clean: Sequence[torch.Tensor], layers: Sequence[str],
              expected: Mapping[str, torch.Tensor], channels: int, rtol: float) -> Tail | None:
    """The deepest valid injection point among chain indices ``candidates``, or None.

    ``clean[k]`` is the unoccluded output ``(C, h, w)`` of ``candidates[k]``; ``expected``
    holds ``forward``'s outputs (batch of two) for ``layers``, the layers after the prefix.
    """
    for index, map_ in sorted(zip(candidates, clean), key=lambda c: -c[0]):
        if chain.called_after(index):
            continue
        tail = Tail(forward, chain, index, channels)
        try:
            got = tail(torch.stack([map_, map_]))
        except Exception:  # noqa: BLE001 - model code that cannot take the injection: try an earlier point
            continue
        if all(_close(got.get(name), expected[name], rtol) for name in layers):
            return tail
    return None


def _close(got: torch.Tensor | None, want: torch.Tensor, rtol: float) -> bool:
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    scale = max(float(want.abs().max()), 1e-12)
    return float((got.float() - want.float()).abs().max()) <= rtol * scale
