"""Krypton-style incremental occlusion (Nakandala et al., SIGMOD 2019), exact.

For a target unit reached through a chain of steps (:mod:`rfstore.core.occlusion_chain`),
every map of the unoccluded image is computed once and kept, padded, as the
*cache*.  An occluder at ``(oy, ox)`` changes, at step ``s``'s input, a
rectangle ``R_s``; only outputs whose window meets ``R_s`` *and* that lie in the
target's dependency cone (the outputs it reads, transitively) are recomputed:

    ``R_0 = window ∩ cone_0``,  ``R_{s+1} = {o : window(o) ∩ R_s ≠ ∅} ∩ cone_{s+1}``

(per axis: intervals).  An output in ``cone_{s+1}`` reads only cone cells of
step ``s``'s input, each either recomputed (in ``R_s``) or unchanged (cached),
so its recomputed value is exact; cells computed outside the cone may be
wrong but are never read by cone cells.  Positions where some ``R_s`` is empty
leave the target unchanged (discrepancy exactly 0).

Batching: per group, step ``s`` computes for every position a fixed-size output
window of ``n_s`` cells (the largest ``|R_s|``), shifted inside the map where
needed, from a padded input patch of ``(n_s - 1) * stride + kernel`` cells
whose start is a multiple of the stride; the patch is gathered from the cache
and overlaid with the previous step's window (or the occluder's fill).  Window
sizes and offsets depend on the position only, never on the batch, so results
do not depend on ``batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from rfstore.core.occlusion_chain import Step
from rfstore.core.occlusion_plan import Member

__all__ = ["Axis", "IncGroup", "axis_schedule", "plan_incremental", "crop_macs", "Cache", "run_group"]

GATHER_COST = 12.0
"""Multiply-add equivalents per gathered patch element (bandwidth, index math)."""

ITEM_COST = 4.0e4
"""Multiply-add equivalents of per-step, per-item overhead (small kernels)."""


@dataclass(frozen=True)
class Axis:
    """Schedule of one group along one axis, over the occluder positions.

    Attributes
    ----------
    valid : np.ndarray, shape (n_p,), bool
        Positions that change the group's cone at every step.
    n, m : tuple of int, length S
        Output window and input patch length of each step.
    start : np.ndarray, shape (S, n_p), int64
        Output window start (in the step's output map).
    patch : np.ndarray, shape (S, n_p), int64
        Patch start (in the step's padded input map), ``start * stride``.
    """

    valid: np.ndarray
    n: tuple[int, ...]
    m: tuple[int, ...]
    start: np.ndarray
    patch: np.ndarray


def axis_schedule(
    pos: np.ndarray,
    size: int,
    steps: Sequence[Step],
    lengths: Sequence[int],
    axis: int,
    lo: int,
    hi: int,
    rows: np.ndarray,
) -> Axis | None:
    """Windows of every step for targets spanning ``[lo, hi]`` at the last step's output.

    Parameters
    ----------
    pos : np.ndarray, shape (n_p,), int
        Occluder positions along the axis.
    size : int
        Occluder side.
    steps : sequence of Step, length S
    lengths : sequence of int, length S + 1
        Map length before each step and after the last.
    axis : int
        0 for y, 1 for x.
    lo, hi : int
        Target span at the last output.
    rows : np.ndarray, shape (n_p,), bool
        Positions the group evaluates (window sizes are maxima over these).

    Returns
    -------
    Axis, or None when no evaluated position changes the targets.
    """
    S = len(steps)
    cone = [(lo, hi)] * (S + 1)
    for s in range(S - 1, -1, -1):
        k, st, pl = steps[s].kernel[axis], steps[s].stride[axis], steps[s].pad[2 * axis]
        a, b = cone[s + 1]
        cone[s] = (max(0, a * st - pl), min(lengths[s] - 1, b * st - pl + k - 1))
    r_lo = np.maximum(pos, cone[0][0])
    r_hi = np.minimum(pos + size - 1, cone[0][1])
    valid = r_lo <= r_hi
    bounds = []
    for s, step in enumerate(steps):
        k, st, pl = step.kernel[axis], step.stride[axis], step.pad[2 * axis]
        r_lo = np.maximum(-((k - 1 - pl - r_lo) // st), cone[s + 1][0])
        r_hi = np.minimum((r_hi + pl) // st, cone[s + 1][1])
        valid &= r_lo <= r_hi
        bounds.append((r_lo, r_hi))
    use = valid & rows
    if not use.any():
        return None
    n, m, start, patch = [], [], [], []
    for s, (r_lo, r_hi) in enumerate(bounds):
        k, st = steps[s].kernel[axis], steps[s].stride[axis]
        ns = int((r_hi - r_lo + 1)[use].max())
        w = np.where(valid, np.minimum(r_lo, lengths[s + 1] - ns), 0)
        n.append(ns)
        m.append((ns - 1) * st + k)
        start.append(w)
        patch.append(w * st)
    return Axis(valid, tuple(n), tuple(m), np.stack(start), np.stack(patch))


@dataclass
class IncGroup:
    """Targets of one image and one chain depth evaluated incrementally together.

    Attributes
    ----------
    image : int
    members : list of Member
    depth : int
        Number of steps S up to the members' layer.
    ys, xs : Axis
    mask : np.ndarray, shape (n_oy, n_ox), bool
        Positions evaluated (some member overlaps and the cone changes).
    cost : float
        Estimated multiply-add equivalents.
    """

    image: int
    members: list[Member]
    depth: int
    ys: Axis
    xs: Axis
    mask: np.ndarray
    cost: float


def _step_cost(steps: Sequence[Step], chans: Sequence[int], ys: Axis, xs: Axis) -> float:
    """Estimated cost of one evaluated position."""
    return float(sum(
        st.macs * ys.n[s] * xs.n[s] + GATHER_COST * chans[s] * ys.m[s] * xs.m[s] + ITEM_COST
        for s, st in enumerate(steps)
    ))


def _schedule(
    image: int, members: list[Member], steps: Sequence[Step], shapes: Sequence[tuple[int, int]],
    chans: Sequence[int], pos: tuple[np.ndarray, np.ndarray], size: int,
) -> IncGroup | None:
    union = np.logical_or.reduce([m.mask for m in members])
    ty = [m.target.y for m in members]
    tx = [m.target.x for m in members]
    ys = axis_schedule(pos[0], size, steps, [h for h, _ in shapes], 0, min(ty), max(ty), union.any(1))
    xs = axis_schedule(pos[1], size, steps, [w for _, w in shapes], 1, min(tx), max(tx), union.any(0))
    if ys is None or xs is None:
        return None
    mask = union & np.outer(ys.valid, xs.valid)
    if not mask.any():
        return None
    cost = _step_cost(steps, chans, ys, xs) * int(mask.sum())
    return IncGroup(image, members, len(steps), ys, xs, mask, cost)


def plan_incremental(
    image: int,
    members: Sequence[Member],
    steps: Sequence[Step],
    shapes: Sequence[tuple[int, int]],
    chans: Sequence[int],
    pos: tuple[np.ndarray, np.ndarray],
    size: int,
) -> list[IncGroup]:
    """Greedily merge one image's same-depth members into incremental groups.

    Members are visited by decreasing stand-alone cost; each joins the group
    whose merge (targets' bounding box, union of positions) saves the most
    estimated work, or opens a new one.  Members whose targets never change
    are dropped (all-zero maps).

    Parameters
    ----------
    image : int
    members : sequence of Member
        Same image, all at the output of ``steps``.
    steps : sequence of Step, length S
    shapes : sequence of tuple of int, length S + 1
        Map shapes before each step and after the last.
    chans : sequence of int, length S + 1
        Channels of those maps.
    pos : tuple of np.ndarray
        Occluder positions ``(pos_y, pos_x)``.
    size : int

    Returns
    -------
    list of IncGroup
    """
    alone = [(g.cost, i, g) for i, m in enumerate(members)
             if (g := _schedule(image, [m], steps, shapes, chans, pos, size)) is not None]
    groups: list[IncGroup] = []
    for _, _, g in sorted(alone, key=lambda c: (-c[0], c[1])):
        best, best_saving = -1, 0.0
        for j, h in enumerate(groups):
            merged = _schedule(image, h.members + g.members, steps, shapes, chans, pos, size)
            saving = h.cost + g.cost - merged.cost if merged is not None else -1.0
            if saving >= best_saving:
                best, best_saving = j, saving
        if best >= 0:
            groups[best] = _schedule(image, groups[best].members + g.members, steps, shapes, chans, pos, size)  # type: ignore[assignment]
        else:
            groups.append(g)
    return groups


def crop_macs(steps: Sequence[Step], hw: tuple[int, int]) -> float:
    """Multiply-adds of running ``steps`` on a ``hw`` input (crop path, per position)."""
    total, (h, w) = 0.0, hw
    for st in steps:
        h, w = st.out_length(h, 0), st.out_length(w, 1)
        if h < 1 or w < 1:
            break
        total += st.macs * h * w + ITEM_COST / 4
    return total


@dataclass
class Cache:
    """Padded unoccluded maps of one image, channels last.

    Attributes
    ----------
    maps : list of torch.Tensor, length S
        Step ``s``'s padded input, shape (H_s + top + bottom, W_s + left + right, C_s).
    fill : torch.Tensor, shape (H_0 + top + bottom, W_0 + left + right, C_0)
        The occluder content, padded like ``maps[0]``.
    """

    maps: list[torch.Tensor]
    fill: torch.Tensor


def _grid(idx: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) starts -> (B, length) consecutive indices."""
    return idx[:, None] + torch.arange(length, device=idx.device)[None, :]


def run_group(
    g: IncGroup,
    steps: Sequence[Step],
    cache: Cache,
    pos: tuple[np.ndarray, np.ndarray],
    size: int,
    batch_size: int,
    consume: Callable[[np.ndarray, np.ndarray], None],
) -> int:
    """Evaluate every position of ``g.mask``; returns the number of positions.

    Parameters
    ----------
    g : IncGroup
    steps : sequence of Step
        At least ``g.depth`` steps (the first ``g.depth`` are used).
    cache : Cache
        Of image ``g.image``.
    pos : tuple of np.ndarray
        Occluder positions ``(pos_y, pos_x)``.
    size, batch_size : int
    consume : callable
        ``consume(flat, acts)`` with flat position indices ``(B,)`` and the
        members' activations ``(M, B)`` (float64).
    """
    dev = cache.fill.device
    flat_all = np.nonzero(g.mask.ravel())[0]
    n_ox = g.mask.shape[1]
    units = torch.tensor([m.target.unit for m in g.members], device=dev)
    tys = torch.tensor([m.target.y for m in g.members], device=dev)
    txs = torch.tensor([m.target.x for m in g.members], device=dev)
    for c in range(0, flat_all.size, batch_size):
        flat = flat_all[c : c + batch_size]
        run = np.concatenate([flat, flat]) if flat.size == 1 else flat  # never a batch of one
        iy, ix = run // n_ox, run % n_ox
        y: torch.Tensor | None = None
        for s in range(g.depth):
            st = steps[s]
            rows = _grid(torch.from_numpy(g.ys.patch[s][iy]).to(dev), g.ys.m[s])  # (B, my)
            cols = _grid(torch.from_numpy(g.xs.patch[s][ix]).to(dev), g.xs.m[s])  # (B, mx)
            base = cache.maps[s][rows[:, :, None], cols[:, None, :]]  # (B, my, mx, C)
            if s == 0:
                oy = torch.from_numpy(pos[0][iy]).to(dev)[:, None] + st.pad[0]
                ox = torch.from_numpy(pos[1][ix]).to(dev)[:, None] + st.pad[2]
                in_y = (rows >= oy) & (rows < oy + size)
                in_x = (cols >= ox) & (cols < ox + size)
                fresh = cache.fill[rows[:, :, None], cols[:, None, :]]
            else:
                fy = rows - st.pad[0] - torch.from_numpy(g.ys.start[s - 1][iy]).to(dev)[:, None]
                fx = cols - st.pad[2] - torch.from_numpy(g.xs.start[s - 1][ix]).to(dev)[:, None]
                in_y = (fy >= 0) & (fy < g.ys.n[s - 1])
                in_x = (fx >= 0) & (fx < g.xs.n[s - 1])
                b = torch.arange(rows.shape[0], device=dev)[:, None, None]
                fresh = y[b, fy.clamp(0, g.ys.n[s - 1] - 1)[:, :, None], fx.clamp(0, g.xs.n[s - 1] - 1)[:, None, :]]  # type: ignore[index]
            inside = (in_y[:, :, None] & in_x[:, None, :])[..., None]
            patch = torch.where(inside, fresh, base).permute(0, 3, 1, 2)
            y = st.run(patch).permute(0, 2, 3, 1)  # (B, n_y, n_x, C')
        last = g.depth - 1
        wy = torch.from_numpy(g.ys.start[last][iy]).to(dev)
        wx = torch.from_numpy(g.xs.start[last][ix]).to(dev)
        b = torch.arange(len(run), device=dev)
        acts = y[b[None, :], tys[:, None] - wy[None, :], txs[:, None] - wx[None, :], units[:, None]]  # type: ignore[index]
        consume(flat, acts[:, : flat.size].double().cpu().numpy())
    return int(flat_all.size)
