"""Routing targets between the incremental path and the crop path, with run-time checks.

:func:`incremental_maps` traces the forward's sequential prefix once, estimates
for each conv target the work of the incremental path
(:mod:`rfstore.core.occlusion_incremental`) and of the crop path (multiply-adds
of the chain on the target's aligned crop), and evaluates incrementally the
targets where that is cheaper (or every supported target when forced).

Checks, per image, before any incremental result is used:

* every step's emulation (explicit padding + padding-free op + pointwise
  modules) reproduces the module outputs on the whole unoccluded map, within
  ``guard_rtol`` of the map's max |value|; deeper targets go back otherwise;
* the chain replayed from the image reproduces each target's reference
  activation (from ``forward``) within ``guard_rtol`` of the unit's max |value|.

Targets failing a check, or outside the chain, are returned to the caller,
which runs them on the crop path.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from rfstore.core.occlusion_chain import Step, build_steps, trace_chain
from rfstore.core.occlusion_exec import Runner
from rfstore.core.occlusion_incremental import IncGroup, crop_macs, plan_incremental, schedule_group
from rfstore.core.occlusion_patches import build_cache, fresh_rows, run_group
from rfstore.core.occlusion_plan import Member, aligned_crop

__all__ = ["incremental_maps", "GROUP_COST"]

GROUP_COST = 5e7
"""Multiply-add equivalents of the fixed work of one incremental group (and of its
image's cache, counted on top as one pass over the image)."""

Prefix = tuple[list[Step], list[tuple[int, int]], list[int]]


def incremental_maps(
    runner: Runner,
    images: torch.Tensor,
    fill: torch.Tensor,
    members: Sequence[Member],
    ref: np.ndarray,
    scale: np.ndarray,
    maps: np.ndarray,
    pos: tuple[np.ndarray, np.ndarray],
    size: int,
    batch_size: int,
    mode: bool | None,
    rtol: float,
) -> tuple[list[Member], dict[str, int]]:
    """Fill ``maps`` for the targets best (or, if forced, able to be) done incrementally.

    Parameters
    ----------
    runner : Runner
        Its ``forward`` is traced once, on the first image.
    images, fill : torch.Tensor, shape (N, C, H, W)
    members : sequence of Member
        Conv targets with at least one overlapping position.
    ref, scale : np.ndarray, shape (T,)
        Reference activations and unit scales (see ``reference``).
    maps : np.ndarray, shape (T, n_oy, n_ox)
        Written in place at each done member's positions.
    pos : tuple of np.ndarray
        Occluder positions ``(pos_y, pos_x)``.
    size, batch_size : int
    mode : bool or None
        None: choose by estimated work; True: every supported target.
    rtol : float
        Check tolerance.

    Returns
    -------
    rest : list of Member
        Targets left to the crop path.
    counters : dict
        ``incremental_targets``, ``incremental_inputs``, ``incremental_rejected``.
    """
    counters = {"incremental_targets": 0, "incremental_inputs": 0, "incremental_rejected": 0}
    if not members:
        return list(members), counters
    hw = (int(images.shape[-2]), int(images.shape[-1]))
    chans0 = int(images.shape[1])
    x = images[:1].to(runner.device, runner.dtype).clone()  # structure only: one image is enough
    runner.count("reference", x)
    chain, _ = trace_chain(runner.forward, x, sorted({m.target.layer for m in members}))
    full: Prefix = build_steps(chain.modules, hw, chans0)
    prefixes: dict[int, Prefix] = {}
    chosen: dict[tuple[int, int], list[Member]] = {}
    rest: list[Member] = []
    for m in members:
        j = chain.layers.get(m.target.layer)
        if j is not None and j not in prefixes:
            p = build_steps(chain.modules[: j + 1], hw, chans0)
            if p[2] and p[2][-1] == j and p[2][:-1] == full[2][: len(p[2]) - 1]:
                prefixes[j] = p
        if j is None or j not in prefixes:
            rest.append(m)
            continue
        steps, shapes, _ = prefixes[j]
        chans = [chans0] + [st.channels for st in steps]
        alone = schedule_group(m.target.image, [m], steps, shapes, chans, pos, size)
        if alone is None:  # the occluder never changes the unit: all zeros
            counters["incremental_targets"] += 1
            continue
        if mode is None:  # crop on the RF alone (no probe yet): a lower bound of its cost
            y0, y1 = aligned_crop(m.lo[0], m.hi[0], hw[0], m.jump[0], 1)
            x0, x1 = aligned_crop(m.lo[1], m.hi[1], hw[1], m.jump[1], 1)
            crop = crop_macs(steps, (int(y1 - y0), int(x1 - x0))) * int(m.mask.sum())
            if alone.cost + GROUP_COST + crop_macs(steps, hw) >= crop:
                rest.append(m)
                continue
        chosen.setdefault((m.target.image, j), []).append(m)
    by_image: dict[int, list[tuple[int, list[Member]]]] = {}
    for (img, j), ms in chosen.items():
        by_image.setdefault(img, []).append((j, ms))
    checked, limit = 0, 1 << 30  # steps checked so far; first step whose emulation failed
    for img in sorted(by_image):
        jobs = [(j, plan_incremental(img, ms, *_plan_args(prefixes[j], chans0), pos, size))
                for j, ms in by_image[img]]
        jobs = [(j, gs) for j, gs in jobs if gs]
        if not jobs:
            continue
        deep = max(jobs, key=lambda job: len(prefixes[job[0]][0]))[0]
        steps, _, ends = prefixes[deep]
        extra = [max((fresh_rows(g, s, batch_size) for _, gs in jobs for g in gs if g.depth > s), default=0)
                 for s in range(len(steps))]
        reads: dict[int, list[tuple[int, int, int, int]]] = {}
        for j, gs in jobs:
            reads.setdefault(j, []).extend((m.index, m.target.unit, m.target.y, m.target.x)
                                           for g in gs for m in g.members)
        cache, ok_depth, values = build_cache(
            chain.modules, steps, ends, images[img : img + 1].to(runner.device, runner.dtype),
            fill[img : img + 1].to(runner.device, runner.dtype), extra, reads,
            checked < min(len(steps), limit), rtol,
        )
        checked = max(checked, ok_depth)
        limit = min(limit, ok_depth) if ok_depth < len(steps) else limit
        runner.count("reference", images[img : img + 1])
        for j, gs in jobs:
            for g in gs:
                ok = [g.depth <= limit and abs(values[m.index] - ref[m.index]) <= rtol * scale[m.index]
                      for m in g.members]
                rest += [m for m, good in zip(g.members, ok) if not good]
                counters["incremental_rejected"] += ok.count(False)
                g.members = [m for m, good in zip(g.members, ok) if good]  # same windows: still exact
                if g.members:
                    writer = _writer(g, maps, ref)
                    counters["incremental_inputs"] += run_group(g, prefixes[j][0], cache, pos, size, batch_size, writer)
                    counters["incremental_targets"] += len(g.members)
    return rest, counters


def _plan_args(prefix: Prefix, chans0: int) -> tuple[list[Step], list[tuple[int, int]], list[int]]:
    steps, shapes, _ = prefix
    return steps, shapes, [chans0] + [st.channels for st in steps]


def _writer(g: IncGroup, maps: np.ndarray, ref: np.ndarray) -> Callable[[np.ndarray, np.ndarray], None]:
    def consume(flat: np.ndarray, acts: np.ndarray) -> None:
        for m, act in zip(g.members, acts):
            sel = m.mask.ravel()[flat]
            maps[m.index].ravel()[flat[sel]] = ref[m.index] - act[sel]

    return consume
