"""Per image, the cheapest exact way to compute its targets.

Each target's *route* is a function of the target alone (so that its bits never depend
on what else is requested):

* a unit of a layer inside the trusted prefix is read off an incremental pass, cone or
  shared; both give the same bits, so the planner picks by estimated cost;
* a unit after the prefix whose aligned crop is smaller than the image runs on its crop;
* any other unit (a linear layer, or an RF covering the image) runs through the tail of
  a shared pass, or on full occluded images when the network has no usable prefix.

For the prefix's targets the planner compares one shared whole-map pass with greedy cone
groups (:func:`rfstore.occlusion.cone.plan_cones`) by :mod:`rfstore.occlusion.cost`;
when the tail runs anyway, the shared pass is there and every prefix target is read off it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rfstore.occlusion.cone import ConeGroup, plan_cones
from rfstore.occlusion.cost import FORWARD_COST, pass_cost
from rfstore.occlusion.prefix import Prefix
from rfstore.occlusion.types import Method

__all__ = ["Route", "ImageWork", "plan_image"]


@dataclass(frozen=True)
class Route:
    """Where one target is computed: ``"prefix"`` (step), ``"crop"`` (crop) or ``"full"``."""

    kind: str
    step: int = -1
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class ImageWork:
    """The plan of one image.

    Attributes
    ----------
    shared_depth : int
        Steps of the shared pass (0: none).
    shared : list of int
        Prefix targets read off the shared pass.
    cones : list of ConeGroup
    full : list of int
        Targets computed on full occluded maps (the tail of the shared pass, or full images).
    crops : dict
        ``crop -> target indices``.
    cost, alternative : float
        Estimated cost of the plan, and of the other incremental choice (``inf`` if none).
    """

    shared_depth: int = 0
    shared: list[int] = field(default_factory=list)
    cones: list[ConeGroup] = field(default_factory=list)
    full: list[int] = field(default_factory=list)
    crops: dict[tuple[int, int, int, int], list[int]] = field(default_factory=dict)
    cost: float = 0.0
    alternative: float = float("inf")

    def methods(self, tail: bool) -> dict[Method, int]:
        """Targets per method (``full`` targets are the shared pass's when it has a tail)."""
        counts = {Method.SHARED: len(self.shared) + (len(self.full) if tail else 0),
                  Method.CONE: sum(len(g.members) for g in self.cones),
                  Method.CROP: sum(len(v) for v in self.crops.values()),
                  Method.PLAIN: 0 if tail else len(self.full)}
        return {m: n for m, n in counts.items() if n}


def plan_image(prefix: Prefix, routes: Sequence[Route], cells: Sequence[tuple[int, int]], masks: Sequence[np.ndarray],
               tail_step: int | None, tail_macs: int, full_macs: int, crop_macs: Sequence[float],
               batch_size: int, method: Method | None) -> ImageWork:
    """Plan one image's targets.

    Parameters
    ----------
    prefix : Prefix
    routes : sequence of Route, length T
    cells : sequence of (y, x), length T
        Each target's cell in its layer's map.
    masks : sequence of np.ndarray, length T
        Positions that can change each target.
    tail_step : int or None
        Step whose output the tail takes (None: full targets run on full images).
    tail_macs, full_macs : int
        Multiply-adds per sample of the tail and of a whole forward pass.
    crop_macs : sequence of float, length T
        Multiply-adds per position of each target's crop (0 for others).
    batch_size : int
        Positions per incremental batch.
    method : Method or None
        Force ``CONE`` or ``SHARED`` for the prefix's targets (None: cheapest).
    """
    work = ImageWork()
    n_pos = masks[0].size if masks else 0
    by_step: dict[int, list[int]] = {}
    for i, route in enumerate(routes):
        if route.kind == "prefix":
            by_step.setdefault(route.step, []).append(i)
        elif route.kind == "crop":
            work.crops.setdefault(route.crop, []).append(i)
        else:
            work.full.append(i)
    crop_cost = sum(FORWARD_COST * macs * float(masks[i].sum()) for i, macs in enumerate(crop_macs) if macs)
    full_cost = FORWARD_COST * n_pos * (tail_macs if tail_step is not None else full_macs) if work.full else 0.0
    tail = bool(work.full) and tail_step is not None
    prefix_targets = [i for ts in by_step.values() for i in ts]
    if not prefix_targets and not tail:
        work.cost = crop_cost + full_cost
        return work
    depth = max([s + 1 for s in by_step] + ([tail_step + 1] if tail else []))
    every = np.ones(masks[0].shape, dtype=bool)
    union = every if tail else np.logical_or.reduce([masks[i] for i in prefix_targets])
    shared_cost = pass_cost(prefix.steps, prefix.channels, prefix.full_regions(depth), union, batch_size)
    if tail or method is Method.SHARED:
        work.shared_depth, work.shared = depth, prefix_targets
        work.cost = shared_cost + crop_cost + full_cost
        return work
    cones = [g for s, ts in sorted(by_step.items())
             for g in plan_cones(prefix, s, ts, [cells[i][0] for i in ts], [cells[i][1] for i in ts],
                                 [masks[i] for i in ts], batch_size)]
    cone_cost = sum(g.cost for g in cones)
    if method is Method.CONE or cone_cost <= shared_cost:
        work.cones, work.cost, work.alternative = cones, cone_cost, shared_cost
    else:
        work.shared_depth, work.shared, work.cost, work.alternative = depth, prefix_targets, shared_cost, cone_cost
    work.cost += crop_cost + full_cost
    return work
