"""The occlusion engine's one entry: discrepancy maps of many targets, image by image.

For an image and its targets (every unit, of every requested layer, whose top-K holds
the image), each occluder position is evaluated once and every target is read off that
evaluation: the planner (:mod:`rfstore.occlusion.planner`) routes each target and picks,
for the network's sequential prefix, between per-target cones and one shared pass.
Every route is exact: it agrees with full re-inference (:mod:`rfstore.occlusion.plain`)
to float32 rounding, and a target's bits depend on the image, the target and the
network only: not on the batch size, on the other targets, on resumption or on how the
work is split between processes.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from rfstore.occlusion.cost import pass_cost
from rfstore.occlusion.crop import crop_pass, crop_positions, min_extent
from rfstore.occlusion.geometry import target_crop, target_mask
from rfstore.occlusion.incremental import ImageCache, build_cache, sweep
from rfstore.occlusion.plain import read_targets
from rfstore.occlusion.planner import ImageWork, Route, plan_image
from rfstore.occlusion.prefix import Prefix, find_prefix
from rfstore.occlusion.shared import TailReads, position_batches, shared_pass
from rfstore.occlusion.tail import Tail, find_tail, tail_rows
from rfstore.occlusion.types import ImagePlan, LayerGeometry, Method, Occluder, OcclusionStats, OcclusionTarget

__all__ = ["OcclusionEngine", "occlusion_maps"]

Forward = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


class OcclusionEngine:
    """Discrepancy maps of targets, one image at a time, for one network and one occluder.

    Parameters
    ----------
    forward : callable
        ``(B, C, H, W) -> {layer: (B, C', h, w) or (B, F)}`` for every layer of ``geometry``.
    geometry : mapping
        ``layer -> LayerGeometry`` (theoretical RF and kind) of every layer targets may use.
    occluder : Occluder
    truncated : callable, optional
        ``truncated(layer)`` is a forward stopping at ``layer`` (used on crops; without it
        ``forward`` itself runs on crops when it accepts them).
    device, dtype
        Where and in which precision the network runs.
    batch_size : int
        Positions per incremental batch (bounds memory; results do not depend on it).
    method : Method, optional
        Force a route: ``CONE`` or ``SHARED`` for the prefix's targets, ``CROP`` (every
        conv target on its crop, nothing incremental) or ``PLAIN`` (every target on full
        occluded images).  None: the planner's choice.
    rtol : float
        Tolerance of the run-time checks (emulated steps, injection point, crops),
        relative to the largest magnitude involved.
    """

    def __init__(self, forward: Forward, geometry: Mapping[str, LayerGeometry], occluder: Occluder, *,
                 truncated: Callable[[str], Forward] | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 256, method: Method | None = None,
                 rtol: float = 1e-5) -> None:
        self.forward, self.geometry, self.occluder = forward, dict(geometry), occluder
        self.truncated = truncated
        self.device, self.dtype = torch.device(device), dtype
        self.batch_size, self.method, self.rtol = max(2, int(batch_size)), method, rtol
        self.prefix: Prefix | None = None
        self.tail: Tail | None = None
        self.tail_step: int | None = None
        self.rows = self.crop_rows = 2
        self._extents: dict[str, int] = {}
        self._truncated: dict[str, Forward] = {}

    # -- set-up, once per engine ------------------------------------------------------
    def prepare(self, image: torch.Tensor) -> Prefix:
        """Trace the network on ``image`` ``(C, H, W)`` (once): its prefix, tail and call sizes."""
        with torch.inference_mode():
            return self._prepare(image.to(self.device, self.dtype))

    def _prepare(self, image: torch.Tensor) -> Prefix:
        if self.prefix is not None:
            return self.prefix
        incremental = self.method not in (Method.CROP, Method.PLAIN)
        prefix, outputs = find_prefix(self.forward, image, list(self.geometry), self.occluder, self.rtol)
        if not incremental:
            prefix.steps, prefix.shapes, prefix.ends, prefix.layer_step = [], prefix.shapes[:1], [], {}
        beyond = [name for name in self.geometry if name in outputs and name not in prefix.layer_step]
        if beyond and prefix.steps and self.method is not Method.PLAIN:
            clean = build_cache(prefix.chain.modules, prefix.steps, prefix.ends, image, image,
                                [0] * len(prefix.steps)).outputs
            self.tail = find_tail(self.forward, prefix.chain, prefix.ends, clean, beyond, outputs,
                                  int(image.shape[0]), self.rtol)
            self.tail_step = None if self.tail is None else prefix.ends.index(self.tail.index)
        self.rows = tail_rows(prefix.chain, 0 if self.tail is None else self.tail.index + 1, self.device)
        self.crop_rows = min(64, tail_rows(prefix.chain, 0, self.device))
        self.prefix = prefix
        return prefix

    def _extent(self, layer: str, channels: int, hw: tuple[int, int]) -> int:
        """Smallest crop side the network accepts up to ``layer``."""
        if layer not in self._extents:
            forward = self._crop_forward(layer)
            forward(torch.zeros(2, channels, *hw, device=self.device, dtype=self.dtype))  # a first, whole pass
            self._extents[layer] = min_extent(forward, hw, channels, self.device, self.dtype)
        return self._extents[layer]

    def _crop_forward(self, layer: str) -> Forward:
        """The forward run on ``layer``'s crops (kept: a capture calibrates on its first pass)."""
        if self.truncated is None:
            return self.forward
        if layer not in self._truncated:
            self._truncated[layer] = self.truncated(layer)
        return self._truncated[layer]

    def route(self, target: OcclusionTarget, channels: int, hw: tuple[int, int]) -> Route:
        """Where ``target`` is computed (a function of the target and the network only)."""
        prefix = self.prefix
        geo = self.geometry[target.layer]
        if self.method is not Method.PLAIN and target.layer in prefix.layer_step:
            return Route("prefix", prefix.layer_step[target.layer])
        if geo.kind == "conv" and self.method is not Method.PLAIN:
            crop = target_crop(target, geo, hw, self._extent(target.layer, channels, hw))
            if crop != (0, hw[0], 0, hw[1]):
                return Route("crop", crop=crop)
        return Route("full")

    # -- estimates (rfstore plan) ------------------------------------------------------
    def estimate(self, targets: Sequence[OcclusionTarget], channels: int,
                 hw: tuple[int, int]) -> tuple[ImageWork, int, float]:
        """The plan of one image's ``targets`` without computing it (after :meth:`prepare`).

        Returns the plan, the occluded inputs it evaluates (positions of every pass) and
        the multiply-adds of the network's own modules (crops, full images, the tail).
        """
        routes = [self.route(t, channels, hw) for t in targets]
        masks = [target_mask(t, self.geometry[t.layer], self.occluder, hw) for t in targets]
        work = self._plan(self.prefix, targets, routes, masks, hw)
        n_pos = masks[0].size if masks else 0
        chain = self.prefix.chain
        tail = bool(work.full) and self.tail is not None
        passes = n_pos if tail else (int(np.logical_or.reduce([masks[i] for i in work.shared]).sum())
                                     if work.shared else 0)
        passes += sum(int(g.mask.sum()) for g in work.cones)
        macs = float(chain.macs(self.tail.index + 1)) * (n_pos + 1) if tail else 0.0
        if work.full and not tail:
            passes += n_pos
            macs += float(chain.macs()) * (n_pos + 1)
        for crop in work.crops:
            count = int(crop_positions(crop, self.occluder, hw).sum()) + 1
            passes += count
            macs += float(chain.macs()) * count * (crop[1] - crop[0]) * (crop[3] - crop[2]) / (hw[0] * hw[1])
        return work, passes, macs

    def calibrate(self, image: torch.Tensor, fill: torch.Tensor, seconds: float = 2.0) -> float:
        """Seconds per cost unit of this image's incremental work, timed on its first batches of positions."""
        import time

        with torch.inference_mode():
            image = image.to(self.device, self.dtype)
            fill = fill.to(self.device, self.dtype).expand_as(image)
            prefix = self._prepare(image)
            if not prefix.steps:
                return 0.0
            hw = (int(image.shape[-2]), int(image.shape[-1]))
            grid = self.occluder.grid(hw)
            depth = len(prefix.steps)
            batch = max(self.batch_size, self.rows + 1)
            cache = build_cache(prefix.chain.modules, prefix.steps, prefix.ends, image, fill, prefix.fresh_rows(batch))
            regions = prefix.full_regions(depth)
            flat = np.arange(grid[0].size * grid[1].size)
            done, spent, began = 0, 0.0, time.perf_counter()
            for chunk in position_batches(flat, self.batch_size):
                sweep(prefix.steps, cache, regions, [chunk], [], grid, self.occluder.size)
                done += chunk.size
                spent = time.perf_counter() - began
                if spent >= seconds:
                    break
            mask = np.zeros(flat.size, dtype=bool)
            mask[:done] = True
            cost = pass_cost(prefix.steps, prefix.channels, regions, mask.reshape(grid[0].size, -1), self.batch_size)
        return spent / max(cost, 1.0)

    # -- one image --------------------------------------------------------------------
    def image_maps(self, image: torch.Tensor, fill: torch.Tensor,
                   targets: Sequence[OcclusionTarget]) -> tuple[np.ndarray, OcclusionStats, ImagePlan]:
        """Maps ``(T, n_oy, n_ox)`` float32 of ``targets`` (all on this ``image`` ``(C, H, W)``).

        ``fill`` ``(C, H, W)`` is the occluder's content for this image.  Exactly 0.0 where
        the occluder cannot change the target (outside its theoretical RF, or where the
        recomputation leaves its cell unchanged).
        """
        with torch.inference_mode():
            image = image.to(self.device, self.dtype)
            fill = fill.to(self.device, self.dtype).expand_as(image)
            prefix = self._prepare(image)
            hw = (int(image.shape[-2]), int(image.shape[-1]))
            grid = self.occluder.grid(hw)
            stats = OcclusionStats(images=1, targets=len(targets), positions=grid[0].size * grid[1].size)
            routes = [self.route(t, int(image.shape[0]), hw) for t in targets]
            masks = [target_mask(t, self.geometry[t.layer], self.occluder, hw) for t in targets]
            values = np.full((len(targets), stats.positions), np.nan)
            refs = np.zeros(len(targets))
            failed = self._crops(image, fill, targets, routes, values, refs, stats)
            routes = [Route("full") if i in failed else r for i, r in enumerate(routes)]
            work = self._plan(prefix, targets, routes, masks, hw)
            self._incremental(prefix, image, fill, targets, masks, work, grid, values, refs, stats)
            if work.full and self.tail is None:
                self._full(image, fill, targets, work.full, values, refs, stats)
        maps = np.where(np.stack(masks).reshape(len(targets), -1) & ~np.isnan(values), refs[:, None] - values, 0.0)
        stats.target_positions = int(sum(m.sum() for m in masks))
        stats.fallbacks = len(failed)
        stats.estimated_cost = work.cost
        plan = ImagePlan(int(targets[0].image) if targets else -1, work.methods(self.tail is not None),
                         work.cost, work.alternative)
        return maps.astype(np.float32).reshape(len(targets), *grid[0].shape, *grid[1].shape), stats, plan

    def _plan(self, prefix: Prefix, targets: Sequence[OcclusionTarget], routes: list[Route],
              masks: list[np.ndarray], hw: tuple[int, int]) -> ImageWork:
        chain = prefix.chain
        full_macs = chain.macs()
        tail_macs = chain.macs(self.tail.index + 1) if self.tail is not None else full_macs
        crop_macs = [full_macs * (r.crop[1] - r.crop[0]) * (r.crop[3] - r.crop[2]) / (hw[0] * hw[1])
                     if r.kind == "crop" else 0.0 for r in routes]
        force = self.method if self.method in (Method.CONE, Method.SHARED) else None
        return plan_image(prefix, routes, [(t.y, t.x) for t in targets], masks, self.tail_step, tail_macs, full_macs,
                          crop_macs, self.batch_size, force)

    def _incremental(self, prefix: Prefix, image: torch.Tensor, fill: torch.Tensor,
                     targets: Sequence[OcclusionTarget], masks: Sequence[np.ndarray], work: ImageWork,
                     grid: tuple[np.ndarray, np.ndarray], values: np.ndarray, refs: np.ndarray,
                     stats: OcclusionStats) -> None:
        tail = work.full if self.tail is not None else []
        if not (work.shared_depth or work.cones or tail):
            return
        batch = max(self.batch_size, self.rows + 1)
        cache = build_cache(prefix.chain.modules, prefix.steps, prefix.ends, image, fill, prefix.fresh_rows(batch))
        stats.reference_inputs += 1
        size = self.occluder.size
        if work.shared_depth:
            reads = [(prefix.layer_step[targets[i].layer], targets[i].unit, targets[i].y, targets[i].x)
                     for i in work.shared]
            tail_reads = None
            if tail:
                tail_reads = TailReads(self.tail, self.tail_step,
                                       [(targets[i].layer, targets[i].unit, targets[i].y, targets[i].x) for i in tail])
            mask = np.ones((grid[0].size, grid[1].size), dtype=bool)
            if not tail:
                mask = np.logical_or.reduce([masks[i] for i in work.shared])
            got = shared_pass(prefix, cache, work.shared_depth, mask, reads, tail_reads, grid, size,
                              self.batch_size, self.rows)
            self._store(work.shared, got, cache, reads, values, refs)
            if tail_reads is not None:
                values[tail] = tail_reads.values
                refs[tail] = tail_reads.clean
                stats.tail_rows += stats.positions + 1
            stats.shared_images += 1
            stats.incremental_positions += stats.positions
            stats.incremental_cells += int(prefix.full_regions(work.shared_depth).cells(mask).sum())
        for group in work.cones:
            reads = [(group.step, targets[i].unit, targets[i].y, targets[i].x) for i in group.members]
            batches = position_batches(np.flatnonzero(group.mask), self.batch_size)
            got = sweep(prefix.steps, cache, group.regions, batches, reads, grid, size)
            self._store(group.members, got, cache, reads, values, refs)
            stats.incremental_positions += int(group.mask.sum())
            stats.incremental_cells += int(group.regions.cells(group.mask).sum())
        stats.cone_groups += len(work.cones)
        stats.cone_images += int(bool(work.cones))

    @staticmethod
    def _store(indices: Sequence[int], got: np.ndarray, cache: ImageCache, reads: Sequence[tuple[int, int, int, int]],
               values: np.ndarray, refs: np.ndarray) -> None:
        for row, (i, (s, unit, y, x)) in enumerate(zip(indices, reads)):
            values[i] = got[row]
            refs[i] = float(cache.outputs[s][unit, y, x])

    def _crops(self, image: torch.Tensor, fill: torch.Tensor, targets: Sequence[OcclusionTarget],
               routes: Sequence[Route], values: np.ndarray, refs: np.ndarray, stats: OcclusionStats) -> set[int]:
        """Crop targets into ``values``/``refs``; returns those whose crop failed its guard."""
        groups: dict[tuple[str, tuple[int, int, int, int]], list[int]] = {}
        for i, r in enumerate(routes):
            if r.kind == "crop":
                groups.setdefault((targets[i].layer, r.crop), []).append(i)
        if not groups:
            return set()
        full_out = self.forward(torch.stack([image, image]))
        stats.reference_inputs += 1
        failed: set[int] = set()
        rows = self.crop_rows
        for (layer, crop), members in groups.items():
            jump = self.geometry[layer].jump
            reads = [(layer, targets[i].unit, targets[i].y - crop[0] // jump[0], targets[i].x - crop[2] // jump[1])
                     for i in members]
            got, clean = crop_pass(self._crop_forward(layer), image, fill, crop, reads, self.occluder, rows)
            stats.crop_inputs += int(np.isfinite(got[0]).sum()) + 1
            for row, i in enumerate(members):
                t = targets[i]
                unit_map = full_out[layer][0, t.unit]
                full = float(unit_map[t.y, t.x])
                if abs(clean[row] - full) <= self.rtol * max(float(unit_map.abs().max()), 1e-12):
                    values[i], refs[i] = got[row], clean[row]
                else:
                    failed.add(i)
        return failed

    def _full(self, image: torch.Tensor, fill: torch.Tensor, targets: Sequence[OcclusionTarget],
              members: Sequence[int], values: np.ndarray, refs: np.ndarray, stats: OcclusionStats) -> None:
        """Targets on full occluded images (no usable prefix)."""
        hw = (int(image.shape[-2]), int(image.shape[-1]))
        reads = [(targets[i].layer, targets[i].unit, targets[i].y, targets[i].x) for i in members]
        got, clean = crop_pass(self.forward, image, fill, (0, hw[0], 0, hw[1]), reads, self.occluder, self.rows)
        values[list(members)], refs[list(members)] = got, clean
        stats.plain_inputs += stats.positions + 1


def occlusion_maps(forward: Forward, images: torch.Tensor, fills: torch.Tensor, targets: Sequence[OcclusionTarget],
                   geometry: Mapping[str, LayerGeometry], occluder: Occluder, *, batch_size: int = 256,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   method: Method | None = None, truncated: Callable[[str], Forward] | None = None,
                   rtol: float = 1e-5) -> tuple[np.ndarray, OcclusionStats]:
    """Discrepancy maps of ``targets`` over ``images`` ``(N, C, H, W)``, image by image.

    ``fills`` is broadcastable to ``images`` (the occluder's content per image).  Returns
    ``(T, n_oy, n_ox)`` float32 maps in the order of ``targets`` and the summed counters.
    See :class:`OcclusionEngine` for the other parameters.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    fills = torch.broadcast_to(fills, images.shape)
    engine = OcclusionEngine(forward, geometry, occluder, truncated=truncated, device=device, dtype=dtype,
                             batch_size=batch_size, method=method, rtol=rtol)
    hw = images.shape[-2:]
    n_oy, n_ox = (occluder.positions(int(n)).size for n in hw)
    maps = np.zeros((len(targets), n_oy, n_ox), dtype=np.float32)
    stats = OcclusionStats()
    by_image: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        if not 0 <= t.image < images.shape[0]:
            raise IndexError(f"target image {t.image} out of range")
        by_image.setdefault(t.image, []).append(i)
    for image, members in sorted(by_image.items()):
        got, image_stats, _ = engine.image_maps(images[image], fills[image], [targets[i] for i in members])
        maps[members] = got
        stats.add(image_stats)
    return maps, stats
