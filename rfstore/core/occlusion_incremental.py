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

GEMM_MAX_OUT = 9
"""Largest output window (cells) computed as im2col + matmul rather than a conv."""

GEMM_MIN_CHANNELS = 16
"""Fewest input channels for the im2col path (narrow rows gather slowly)."""


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
        if s == S - 1:  # the whole target span, so that every target can be read
            ns, w = hi - lo + 1, np.full(pos.shape, lo, dtype=np.int64)
        else:
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


def _t(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(dev)


def _sources(g: IncGroup, cache: Cache, rows: int) -> list[torch.Tensor]:
    """Per step, a (cells, C) gather source: the padded map, then room for fresh values.

    Step 0's fresh part is the padded fill; step ``s``'s holds the previous
    step's output windows of up to ``rows`` positions.
    """
    out = []
    for s in range(g.depth):
        hp, wp, c = cache.maps[s].shape
        extra = hp * wp if s == 0 else rows * g.ys.n[s - 1] * g.xs.n[s - 1]
        buf = cache.maps[s].new_empty((hp * wp + extra, c))
        buf[: hp * wp] = cache.maps[s].reshape(-1, c)
        if s == 0:
            buf[hp * wp :] = cache.fill.reshape(-1, c)
        out.append(buf)
    return out


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

    Each step gathers, with one ``index_select`` from a source holding the
    cached map and the fresh values (indices choose between them per cell),
    either its padded input patches ``(B, m_y, m_x, C)`` and runs the step's op
    on them (channels last), or, for ungrouped convolutions with few outputs
    per window, their im2col rows ``(B * n_y * n_x, taps * C)`` and multiplies
    by the weight matrix.  Outputs are copied into the next step's source.

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
    srcs = _sources(g, cache, max(2, min(batch_size, flat_all.size)))
    units = torch.tensor([m.target.unit for m in g.members], device=dev)[:, None]
    tys = torch.tensor([m.target.y for m in g.members], device=dev)[:, None]
    txs = torch.tensor([m.target.x for m in g.members], device=dev)[:, None]
    ys, xs = g.ys, g.xs
    for c in range(0, flat_all.size, batch_size):
        flat = flat_all[c : c + batch_size]
        run = np.concatenate([flat, flat]) if flat.size == 1 else flat  # never a batch of one
        iy, ix = run // n_ox, run % n_ox
        b = torch.arange(run.size, device=dev)[:, None, None, None, None]
        y = cache.fill
        for s in range(g.depth):
            st = steps[s]
            hp, wp, ch = cache.maps[s].shape
            ny, nx = ys.n[s], xs.n[s]
            gemm = use_gemm(st, ch, ny * nx)
            ry = _cells(_t(ys.patch[s][iy], dev), st, 0, ny, ys.m[s], gemm)  # (B, a, b)
            rx = _cells(_t(xs.patch[s][ix], dev), st, 1, nx, xs.m[s], gemm)  # (B, c, d)
            idx = ry[:, :, None, :, None] * wp + rx[:, None, :, None, :]  # (B, a, c, b, d)
            if s == 0:
                fy = ry - (_t(pos[0][iy], dev)[:, None, None] + st.pad[0])
                fx = rx - (_t(pos[1][ix], dev)[:, None, None] + st.pad[2])
                in_y, in_x = (fy >= 0) & (fy < size), (fx >= 0) & (fx < size)
                fresh = idx + hp * wp
            else:
                py, px = ys.n[s - 1], xs.n[s - 1]
                fy = ry - st.pad[0] - _t(ys.start[s - 1][iy], dev)[:, None, None]
                fx = rx - st.pad[2] - _t(xs.start[s - 1][ix], dev)[:, None, None]
                in_y, in_x = (fy >= 0) & (fy < py), (fx >= 0) & (fx < px)
                fresh = hp * wp + (b * py + fy[:, :, None, :, None]) * px + fx[:, None, :, None, :]
            idx = torch.where(in_y[:, :, None, :, None] & in_x[:, None, :, None, :], fresh, idx)
            rows = srcs[s].index_select(0, idx.view(-1))
            if gemm:
                mat = rows.view(run.size * ny * nx, -1)
                out = mat @ st.matrix if st.bias is None else torch.addmm(st.bias, mat, st.matrix)  # type: ignore[operator]
                y = st.finish(out.view(run.size, ny, nx, -1).permute(0, 3, 1, 2))
            else:
                y = st.run(rows.view(run.size, ys.m[s], xs.m[s], ch).permute(0, 3, 1, 2))  # (B, C', ny, nx)
            if s + 1 < g.depth:
                start = cache.maps[s + 1].shape[0] * cache.maps[s + 1].shape[1]
                vals = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
                srcs[s + 1][start : start + vals.shape[0]] = vals
        last = g.depth - 1
        uy = tys - _t(ys.start[last][iy], dev)[None, :]
        ux = txs - _t(xs.start[last][ix], dev)[None, :]
        acts = y[b.view(1, -1), units, uy, ux]  # (M, B)
        consume(flat, acts[:, : flat.size].double().cpu().numpy())
    return int(flat_all.size)


def use_gemm(step: Step, channels: int, outputs: int) -> bool:
    """Whether a step runs as im2col + matmul (ungrouped conv, few outputs, many channels)."""
    return step.matrix is not None and outputs <= GEMM_MAX_OUT and channels >= GEMM_MIN_CHANNELS


def _cells(start: torch.Tensor, step: Step, axis: int, n: int, m: int, gemm: bool) -> torch.Tensor:
    """Padded input coordinates read per position along one axis.

    Returns (B, n, taps) for im2col (output, tap) pairs, else (B, m, 1) for the patch.
    """
    dev = start.device
    if gemm:
        outs = torch.arange(n, device=dev) * step.stride[axis]
        taps = torch.arange(step.taps[axis], device=dev) * step.dilation[axis]
        return start[:, None, None] + outs[None, :, None] + taps[None, None, :]
    return start[:, None, None] + torch.arange(m, device=dev)[None, :, None]
