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

Batching: a group's positions are split into a few *parts* (classes of
positions with similar ``|R_s|``, :func:`axis_buckets`); within a part, step
``s`` computes for every position a fixed-size output window of ``n_s`` cells
(the part's largest ``|R_s|``), shifted inside the map where needed, from a
padded input patch of ``(n_s - 1) * stride + kernel`` cells whose start is a
multiple of the stride (execution: :mod:`rfstore.core.occlusion_patches`).
Parts, window sizes and offsets depend on the targets and positions only,
never on the batch, so results do not depend on ``batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rfstore.core.occlusion_chain import Step
from rfstore.core.occlusion_plan import Member

__all__ = [
    "Axis", "Bounds", "Part", "IncGroup", "axis_bounds", "axis_windows", "axis_buckets",
    "schedule_group", "plan_incremental", "crop_macs", "use_gemm",
]

GATHER_COST = 12.0
"""Multiply-add equivalents per gathered patch element (bandwidth, index math)."""

ITEM_COST = 4.0e4
"""Multiply-add equivalents of per-step, per-item overhead (small kernels)."""

GEMM_MAX_OUT = 9
"""Largest output window (cells) computed as im2col + matmul rather than a conv."""

GEMM_MIN_CHANNELS = 16
"""Fewest input channels for the im2col path (narrow rows gather slowly)."""

BATCH_COST = 2.0e7
"""Multiply-add equivalents of the fixed work of one step on one batch."""

MAX_BUCKETS = 4
"""Most position classes per axis (each with its own window sizes)."""

PLAN_BATCH = 256
"""Batch size assumed by the planner's estimates (never the actual one)."""


@dataclass(frozen=True)
class Bounds:
    """Changed-and-needed interval ``R_s`` of every step output, along one axis.

    Attributes
    ----------
    valid : np.ndarray, shape (n_p,), bool
        Positions for which every ``R_s`` is non-empty.
    lo, hi : np.ndarray, shape (S, n_p), int64
        Inclusive bounds of ``R_s`` (meaningless where not valid).
    span : tuple of int
        The targets' span at the last output.
    lengths : tuple of int, length S + 1
        Map length before each step and after the last.
    """

    valid: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    span: tuple[int, int]
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class Axis:
    """Window schedule of a set of positions along one axis.

    Attributes
    ----------
    n, m : tuple of int, length S
        Output window and input patch length of each step.
    start : np.ndarray, shape (S, n_p), int64
        Output window start (in the step's output map).
    patch : np.ndarray, shape (S, n_p), int64
        Patch start (in the step's padded input map), ``start * stride``.
    """

    n: tuple[int, ...]
    m: tuple[int, ...]
    start: np.ndarray
    patch: np.ndarray


def axis_bounds(
    pos: np.ndarray, size: int, steps: Sequence[Step], lengths: Sequence[int], axis: int, lo: int, hi: int
) -> Bounds:
    """``R_s`` for targets spanning ``[lo, hi]`` at the last step's output.

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

    Returns
    -------
    Bounds
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
    los, his = [], []
    for s, step in enumerate(steps):
        k, st, pl = step.kernel[axis], step.stride[axis], step.pad[2 * axis]
        r_lo = np.maximum(-((k - 1 - pl - r_lo) // st), cone[s + 1][0])
        r_hi = np.minimum((r_hi + pl) // st, cone[s + 1][1])
        valid &= r_lo <= r_hi
        los.append(r_lo)
        his.append(r_hi)
    return Bounds(valid, np.stack(los), np.stack(his), (lo, hi), tuple(int(v) for v in lengths))


def axis_windows(b: Bounds, steps: Sequence[Step], axis: int, rows: np.ndarray) -> Axis:
    """Fixed-size windows covering ``R_s`` of every position in ``rows`` (valid ones).

    Step ``s``'s window has the largest ``|R_s|`` over ``rows`` and starts at
    ``R_s``'s start, shifted left to stay inside the map; the last step's
    window is the targets' span, so every target can be read.
    """
    use = b.valid & rows
    n, m, start, patch = [], [], [], []
    for s, step in enumerate(steps):
        if s == len(steps) - 1:
            ns, w = b.span[1] - b.span[0] + 1, np.full(b.valid.shape, b.span[0], dtype=np.int64)
        else:
            ns = int((b.hi[s] - b.lo[s] + 1)[use].max())
            w = np.where(b.valid, np.minimum(b.lo[s], b.lengths[s + 1] - ns), 0)
        n.append(ns)
        m.append((ns - 1) * step.stride[axis] + step.kernel[axis])
        start.append(w)
        patch.append(w * step.stride[axis])
    return Axis(tuple(n), tuple(m), np.stack(start), np.stack(patch))


def axis_buckets(b: Bounds, rows: np.ndarray, weights: np.ndarray, k: int) -> list[np.ndarray]:
    """Split the valid positions of ``rows`` into at most ``k`` classes of similar windows.

    Positions with equal ``|R_s|`` vectors form classes, sorted by weighted
    window area; the adjacent pair whose merge adds the least weighted work
    (count x sum_s weight_s x max |R_s|^2) is merged until ``k`` remain.

    Returns
    -------
    list of np.ndarray, shape (n_p,), bool
    """
    use = np.nonzero(b.valid & rows)[0]
    sizes = (b.hi - b.lo + 1)[:, use].T  # (P, S)
    keys, inv, counts = np.unique(sizes, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    order = np.argsort((weights * keys**2).sum(1), kind="stable")
    tops, counts = keys[order].astype(np.float64), counts[order].astype(np.float64)
    ids: list[list[int]] = [[int(i)] for i in order]
    while len(ids) > k:
        merged = np.maximum(tops[:-1], tops[1:])
        work = (weights * tops**2).sum(1) * counts
        extra = (weights * merged**2).sum(1) * (counts[:-1] + counts[1:]) - work[:-1] - work[1:]
        i = int(np.argmin(extra))
        tops = np.concatenate([tops[:i], merged[i : i + 1], tops[i + 2 :]])
        counts = np.concatenate([counts[:i], counts[i : i + 1] + counts[i + 1 : i + 2], counts[i + 2 :]])
        ids[i : i + 2] = [ids[i] + ids[i + 1]]
    out = []
    for group in ids:
        mask = np.zeros(b.valid.shape, dtype=bool)
        mask[use[np.isin(inv, group)]] = True
        out.append(mask)
    return out


@dataclass
class Part:
    """Positions of a group sharing window sizes: ``mask``, with schedules ``ys``, ``xs``."""

    ys: Axis
    xs: Axis
    mask: np.ndarray


@dataclass
class IncGroup:
    """Targets of one image and one chain depth evaluated incrementally together.

    Attributes
    ----------
    image : int
    members : list of Member
    depth : int
        Number of steps S up to the members' layer.
    by, bx : Bounds
        Per axis, for the targets' bounding box.
    mask : np.ndarray, shape (n_oy, n_ox), bool
        Positions evaluated (some member overlaps and the cone changes).
    cost : float
        Estimated multiply-add equivalents with one window size per axis.
    parts : list of Part
        Execution plan (set by :func:`plan_incremental`).
    """

    image: int
    members: list[Member]
    depth: int
    by: Bounds
    bx: Bounds
    mask: np.ndarray
    cost: float
    parts: list[Part] = field(default_factory=list)


def _position_cost(steps: Sequence[Step], chans: Sequence[int], ys: Axis, xs: Axis) -> float:
    """Estimated cost of one position: multiply-adds, gathered elements, overhead."""
    total = 0.0
    for s, st in enumerate(steps):
        outs = ys.n[s] * xs.n[s]
        read = outs * st.taps[0] * st.taps[1] if use_gemm(st, chans[s], outs) else ys.m[s] * xs.m[s]
        total += st.macs * outs + GATHER_COST * chans[s] * read + ITEM_COST
    return total


def schedule_group(
    image: int, members: list[Member], steps: Sequence[Step], shapes: Sequence[tuple[int, int]],
    chans: Sequence[int], pos: tuple[np.ndarray, np.ndarray], size: int,
) -> IncGroup | None:
    """One group for ``members`` (one window size per axis), or None if no position changes them.

    Parameters
    ----------
    image : int
    members : list of Member
        Same image, all at the output of ``steps``.
    steps : sequence of Step, length S
    shapes : sequence of tuple of int, length S + 1
    chans : sequence of int, length S + 1
    pos : tuple of np.ndarray
        Occluder positions ``(pos_y, pos_x)``.
    size : int

    Returns
    -------
    IncGroup or None
        ``parts`` left empty; ``cost`` estimated.
    """
    union = np.logical_or.reduce([m.mask for m in members])
    ty = [m.target.y for m in members]
    tx = [m.target.x for m in members]
    by = axis_bounds(pos[0], size, steps, [h for h, _ in shapes], 0, min(ty), max(ty))
    bx = axis_bounds(pos[1], size, steps, [w for _, w in shapes], 1, min(tx), max(tx))
    mask = union & np.outer(by.valid, bx.valid)
    if not mask.any():
        return None
    ys, xs = axis_windows(by, steps, 0, mask.any(1)), axis_windows(bx, steps, 1, mask.any(0))
    cost = _position_cost(steps, chans, ys, xs) * int(mask.sum())
    return IncGroup(image, members, len(steps), by, bx, mask, cost)


def _split(g: IncGroup, steps: Sequence[Step], chans: Sequence[int]) -> list[Part]:
    """Parts of ``g`` (1 to ``MAX_BUCKETS`` classes per axis) of least estimated cost.

    The estimate assumes batches of ``PLAN_BATCH`` positions whatever the
    actual batch size, so that the windows, hence the results, do not depend
    on it.
    """
    rows, cols = g.mask.any(1), g.mask.any(0)
    macs = np.array([float(st.macs) for st in steps])
    best: tuple[float, list[Part]] | None = None
    for k in range(1, MAX_BUCKETS + 1):
        parts, cost = [], 0.0
        wy = macs * ((g.bx.hi - g.bx.lo + 1)[:, g.bx.valid & cols].mean(1) if k > 1 else 1.0)
        wx = macs * ((g.by.hi - g.by.lo + 1)[:, g.by.valid & rows].mean(1) if k > 1 else 1.0)
        col_sets = axis_buckets(g.bx, cols, wx, k) if k > 1 else [cols & g.bx.valid]
        col_axes = [axis_windows(g.bx, steps, 1, rx) for rx in col_sets]
        for ry in axis_buckets(g.by, rows, wy, k) if k > 1 else [rows & g.by.valid]:
            ys = axis_windows(g.by, steps, 0, ry)
            for rx, xs in zip(col_sets, col_axes):
                mask = g.mask & np.outer(ry, rx)
                count = int(mask.sum())
                if not count:
                    continue
                parts.append(Part(ys, xs, mask))
                cost += _position_cost(steps, chans, ys, xs) * count
                cost += -(-count // PLAN_BATCH) * len(steps) * BATCH_COST
        if best is None or cost < best[0]:
            best = (cost, parts)
    return best[1]  # type: ignore[index]


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
    are dropped (all-zero maps).  Each group's positions are then split into
    parts with their own window sizes (:func:`axis_buckets`).

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
             if (g := schedule_group(image, [m], steps, shapes, chans, pos, size)) is not None]
    groups: list[IncGroup] = []
    for _, _, g in sorted(alone, key=lambda c: (-c[0], c[1])):
        best, best_saving, best_group = -1, 0.0, None
        for j, h in enumerate(groups):
            merged = schedule_group(image, h.members + g.members, steps, shapes, chans, pos, size)
            if merged is not None and h.cost + g.cost - merged.cost >= best_saving:
                best, best_saving, best_group = j, h.cost + g.cost - merged.cost, merged
        if best_group is not None:
            groups[best] = best_group
        else:
            groups.append(g)
    for g in groups:
        g.parts = _split(g, steps, chans)
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


def use_gemm(step: Step, channels: int, outputs: int) -> bool:
    """Whether a step runs as im2col + matmul (ungrouped conv, few outputs, many channels)."""
    return step.matrix is not None and outputs <= GEMM_MAX_OUT and channels >= GEMM_MIN_CHANNELS
