"""The network's sequential prefix as the incremental strategies see it, found once per engine.

:func:`find_prefix` traces the forward on one image, describes its chain as steps
(:mod:`rfstore.occlusion.chain`), keeps the leading steps whose cell arithmetic
reproduces the modules (:func:`rfstore.occlusion.incremental.check_steps`), and
computes every step's changed intervals for every occluder position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from rfstore.occlusion.chain import Chain, Step, build_steps, trace_chain
from rfstore.occlusion.incremental import check_steps
from rfstore.occlusion.regions import AxisRegions, Regions, axis_changed, axis_cone
from rfstore.occlusion.types import Occluder

__all__ = ["Prefix", "find_prefix"]


@dataclass
class Prefix:
    """Steps of the sequential prefix, with their geometry for one occluder.

    Attributes
    ----------
    chain : Chain
        The traced chain (its modules, located layers, every leaf call).
    steps : list of Step, length S
        The trusted steps (possibly none).
    shapes : list of tuple of int, length S + 1
        Map shapes before each step and after the last.
    ends : list of int, length S
        Chain index of each step's last module.
    channels : list of int, length S + 1
        Channels of those maps.
    layer_step : dict
        ``layer -> step`` whose output is the layer, for layers inside the trusted steps.
    changed : Regions
        ``C_s(p)``: every step's changed intervals for every occluder row and column.
    """

    chain: Chain
    steps: list[Step]
    shapes: list[tuple[int, int]]
    ends: list[int]
    channels: list[int]
    layer_step: dict[str, int]
    changed: Regions

    def cone_regions(self, depth: int, span_y: tuple[int, int], span_x: tuple[int, int]) -> Regions:
        """``R_s = C_s ∩ cone_s`` for the cells ``span_y x span_x`` of step ``depth - 1``'s output."""
        steps = self.steps[:depth]
        hs, ws = [h for h, _ in self.shapes[: depth + 1]], [w for _, w in self.shapes[: depth + 1]]
        cy, cx = axis_cone(steps, hs, 0, *span_y), axis_cone(steps, ws, 1, *span_x)
        return Regions(self.changed.y.upto(depth).restrict(cy), self.changed.x.upto(depth).restrict(cx))

    def full_regions(self, depth: int) -> Regions:
        """``C_s`` for steps ``0 .. depth - 1`` (whole maps)."""
        return Regions(self.changed.y.upto(depth), self.changed.x.upto(depth))

    def fresh_rows(self, batch_size: int) -> list[int]:
        """Rows each step's source needs after its map, for batches of ``batch_size`` positions."""
        cells = [int((self.changed.y.lengths[s].max() if self.changed.y.lo.size else 0)
                     * (self.changed.x.lengths[s].max() if self.changed.x.lo.size else 0))
                 for s in range(len(self.steps))]
        return [0] + [batch_size * c for c in cells[:-1]]


def find_prefix(forward: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], image: torch.Tensor,
                layers: Sequence[str], occluder: Occluder, rtol: float) -> tuple[Prefix, dict[str, torch.Tensor]]:
    """Trace ``forward`` on ``image`` ``(C, H, W)`` (on its device and dtype) and describe its prefix.

    Returns the prefix and ``forward``'s outputs on the image (a batch of two copies).
    """
    hw = (int(image.shape[-2]), int(image.shape[-1]))
    chain, outputs = trace_chain(forward, torch.stack([image, image]), list(layers))
    cuts = sorted(set(chain.layers.values()))
    steps, shapes, ends = build_steps(chain.modules, hw, int(image.shape[0]), cuts)
    trusted = check_steps(chain.modules, steps, ends, image, rtol) if steps else 0
    steps, shapes, ends = steps[:trusted], shapes[: trusted + 1], ends[:trusted]
    layer_step = {name: ends.index(j) for name, j in chain.layers.items() if j in ends}
    channels = [int(image.shape[0])] + [st.channels for st in steps]
    pos_y, pos_x = occluder.grid(hw)
    empty = AxisRegions(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64))
    changed = Regions(
        axis_changed(pos_y, occluder.size, steps, [h for h, _ in shapes], 0) if steps else empty,
        axis_changed(pos_x, occluder.size, steps, [w for _, w in shapes], 1) if steps else empty,
    )
    return Prefix(chain, steps, shapes, ends, channels, layer_step, changed), outputs
