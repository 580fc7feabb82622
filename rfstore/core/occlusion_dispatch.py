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
from torch import nn

from rfstore.core.occlusion_chain import Step, build_steps, trace_chain
from rfstore.core.occlusion_exec import Runner
from rfstore.core.occlusion_incremental import Cache, IncGroup, _schedule, crop_macs, plan_incremental, run_group
from rfstore.core.occlusion_plan import Member, aligned_crop

__all__ = ["incremental_maps"]

Prefix = tuple[list[Step], list[tuple[int, int]], list[int]]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(float(b.abs().max()), 1e-12) if b.numel() else 1.0
    return bool(((a - b).abs() <= rtol * scale).all())


def _build_cache(
    modules: Sequence[nn.Module],
    prefix: Prefix,
    depth: int,
    image: torch.Tensor,
    fill: torch.Tensor,
    reads: dict[int, list[tuple[int, int, int, int]]],
    rtol: float,
) -> tuple[Cache, int, dict[int, float]]:
    """Unoccluded maps of one image, checked step by step.

    Parameters
    ----------
    modules : sequence of nn.Module
        The chain.
    prefix : (steps, shapes, ends)
        From :func:`build_steps` on the chain.
    depth : int
        Steps to run.
    image, fill : torch.Tensor, shape (1, C, H, W)
    reads : dict
        ``chain index -> [(key, unit, y, x)]`` activations to read on the way.
    rtol : float

    Returns
    -------
    cache : Cache
    ok_depth : int
        Steps whose emulation matched (``depth`` when all did).
    values : dict
        ``key -> activation``.
    """
    steps, _, ends = prefix
    x = image.clone()
    maps: list[torch.Tensor] = []
    values: dict[int, float] = {}
    ok_depth, first = depth, 0
    for s in range(depth):
        padded = steps[s].padded(x)
        maps.append(padded[0].permute(1, 2, 0).clone(memory_format=torch.contiguous_format))
        emulated = steps[s].run(padded.clone()) if ok_depth == depth else None
        for i in range(first, ends[s] + 1):
            x = modules[i](x)
            for key, unit, y, xx in reads.get(i, ()):
                values[key] = float(x[0, unit, y, xx])
        first = ends[s] + 1
        if emulated is not None and not _close(emulated, x, rtol):
            ok_depth = s
    padded_fill = steps[0].padded(fill)[0].permute(1, 2, 0).clone(memory_format=torch.contiguous_format)
    return Cache(maps, padded_fill), ok_depth, values


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
    extent: int,
    mode: bool | None,
    rtol: float,
) -> tuple[list[Member], dict[str, int]]:
    """Fill ``maps`` for the targets best (or, if forced, able to be) done incrementally.

    Parameters
    ----------
    runner : Runner
        Its ``forward`` is traced once, on up to two images.
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
    extent : int
        Smallest crop side the forward accepts (for the crop path's estimate).
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
    x = images[:2].to(runner.device, runner.dtype)
    if x.shape[0] == 1:
        x = torch.cat([x, x])
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
        alone = _schedule(m.target.image, [m], steps, shapes, chans, pos, size)
        if alone is None:  # the occluder never reaches the unit: all zeros
            continue
        if mode is None:
            y0, y1 = aligned_crop(m.lo[0], m.hi[0], hw[0], m.jump[0], extent)
            x0, x1 = aligned_crop(m.lo[1], m.hi[1], hw[1], m.jump[1], extent)
            crop = crop_macs(steps, (int(y1 - y0), int(x1 - x0))) * int(m.mask.sum())
            if alone.cost >= crop:
                rest.append(m)
                continue
        chosen.setdefault((m.target.image, j), []).append(m)
    by_image: dict[int, list[tuple[int, list[Member]]]] = {}
    for (img, j), ms in chosen.items():
        by_image.setdefault(img, []).append((j, ms))
    for img in sorted(by_image):
        jobs = by_image[img]
        deep = max(len(prefixes[j][0]) for j, _ in jobs)
        reads: dict[int, list[tuple[int, int, int, int]]] = {}
        for j, ms in jobs:
            reads.setdefault(j, []).extend((m.index, m.target.unit, m.target.y, m.target.x) for m in ms)
        image = images[img : img + 1].to(runner.device, runner.dtype)
        fill_img = fill[img : img + 1].to(runner.device, runner.dtype)
        with torch.inference_mode():
            cache, ok_depth, values = _build_cache(chain.modules, full, deep, image, fill_img, reads, rtol)
        runner.count("reference", image)
        for j, ms in jobs:
            steps, shapes, _ = prefixes[j]
            good = [m for m in ms if len(steps) <= ok_depth and abs(values[m.index] - ref[m.index]) <= rtol * scale[m.index]]
            rest += [m for m in ms if m not in good]
            counters["incremental_rejected"] += len(ms) - len(good)
            if not good:
                continue
            chans = [chans0] + [st.channels for st in steps]
            for g in plan_incremental(img, good, steps, shapes, chans, pos, size):
                with torch.inference_mode():
                    counters["incremental_inputs"] += run_group(g, steps, cache, pos, size, batch_size, _writer(g, maps, ref))
            counters["incremental_targets"] += len(good)
    return rest, counters


def _writer(g: IncGroup, maps: np.ndarray, ref: np.ndarray) -> Callable[[np.ndarray, np.ndarray], None]:
    def consume(flat: np.ndarray, acts: np.ndarray) -> None:
        for m, act in zip(g.members, acts):
            sel = m.mask.ravel()[flat]
            maps[m.index].ravel()[flat[sel]] = ref[m.index] - act[sel]

    return consume
