"""The per-target cone strategy: recompute only the changed cells that a few targets read.

Targets of one image at one step are merged greedily into groups; a group's cone is the
dependency cone of the bounding box of its targets, and an incremental pass recomputes
``R_s = C_s ∩ cone_s`` (:mod:`rfstore.occlusion.regions`) at the positions that can change
some member.  Merging changes only which cells are recomputed, never a cell's value
(:mod:`rfstore.occlusion.kernels`), so the grouping is a pure cost decision: cheapest
when one or two targets use an image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rfstore.occlusion.cost import pass_cost
from rfstore.occlusion.prefix import Prefix
from rfstore.occlusion.regions import Regions

__all__ = ["ConeGroup", "cone_group", "plan_cones", "MAX_MERGE"]

MAX_MERGE = 256
"""Most cone groups a step's targets are merged from (more locations: one group per location)."""


@dataclass
class ConeGroup:
    """Targets at one step sharing an incremental pass.

    Attributes
    ----------
    step : int
        The members are cells of this step's output.
    members : list of int
        Target indices.
    span_y, span_x : tuple of int
        Bounding box of the members' cells.
    regions : Regions
        ``R_s`` for steps ``0 .. step``.
    mask : np.ndarray, shape (n_oy, n_ox), bool
        Positions evaluated: some member's RF touches the occluder and the cone changes.
    cost : float
    """

    step: int
    members: list[int]
    span_y: tuple[int, int]
    span_x: tuple[int, int]
    regions: Regions
    mask: np.ndarray
    cost: float


def cone_group(prefix: Prefix, step: int, members: list[int], ys: Sequence[int], xs: Sequence[int],
               mask: np.ndarray, batch_size: int) -> ConeGroup:
    """The group of ``members`` (cells ``(ys, xs)`` of ``step``) over the union ``mask`` of their positions."""
    span_y, span_x = (min(ys), max(ys)), (min(xs), max(xs))
    regions = prefix.cone_regions(step + 1, span_y, span_x)
    evaluated = mask & regions.changes()
    cost = pass_cost(prefix.steps, prefix.channels, regions, evaluated, batch_size)
    return ConeGroup(step, list(members), span_y, span_x, regions, evaluated, cost)


def plan_cones(prefix: Prefix, step: int, members: Sequence[int], ys: Sequence[int], xs: Sequence[int],
               masks: Sequence[np.ndarray], batch_size: int) -> list[ConeGroup]:
    """Greedily merge one step's targets into cone groups.

    Targets at one location share a group from the start.  Groups are visited by
    decreasing stand-alone cost; each joins the group whose merge saves the most, or
    stays alone.  Beyond :data:`MAX_MERGE` locations no merge is tried.
    """
    where: dict[tuple[int, int], list[int]] = {}
    for k, (y, x) in enumerate(zip(ys, xs)):
        where.setdefault((int(y), int(x)), []).append(k)
    alone = []
    for (y, x), ks in where.items():
        union = np.logical_or.reduce([masks[k] for k in ks])
        alone.append((cone_group(prefix, step, [members[k] for k in ks], [y], [x], union, batch_size), union))
    if len(alone) > MAX_MERGE:
        return [g for g, _ in alone]
    alone.sort(key=lambda item: -item[0].cost)
    groups: list[tuple[ConeGroup, np.ndarray]] = []
    for g, union in alone:
        best, best_saving, best_group = -1, 0.0, None
        for j, (h, h_union) in enumerate(groups):
            merged_union = h_union | union
            merged = cone_group(prefix, step, h.members + g.members, [h.span_y[0], h.span_y[1], g.span_y[0]],
                                [h.span_x[0], h.span_x[1], g.span_x[0]], merged_union, batch_size)
            saving = h.cost + g.cost - merged.cost
            if saving >= best_saving:
                best, best_saving, best_group = j, saving, (merged, merged_union)
        if best_group is not None:
            groups[best] = best_group
        else:
            groups.append((g, union))
    return [g for g, _ in groups if g.mask.any()]
