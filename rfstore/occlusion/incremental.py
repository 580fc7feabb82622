"""The one loop of every incremental pass: recompute the changed cells, step by step, for batches of positions.

Per image, :func:`build_cache` runs the chain once on the unoccluded image and keeps
each step's padded input as the start of its gather source (:mod:`rfstore.occlusion.kernels`)
and each step's output (for reference values and for the rest of the network).  Then
:func:`run_pass` evaluates a batch of occluder positions: at step ``s`` it recomputes the
cells of every position's rectangle ``R_s(p)`` (:mod:`rfstore.occlusion.regions`) from
their taps, each tap read from the fresh rows where the previous step recomputed it and
from the unoccluded map elsewhere.  The cone and shared strategies are this loop with
other rectangles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from rfstore.occlusion.chain import Step
from rfstore.occlusion.kernels import compute_cells, to_device
from rfstore.occlusion.regions import Regions

__all__ = ["ImageCache", "build_cache", "Batch", "run_pass", "check_steps", "sweep", "batch_cells"]


@dataclass
class ImageCache:
    """Unoccluded maps of one image, ready for incremental passes.

    Attributes
    ----------
    sources : list of torch.Tensor, length S
        Step ``s``: ``(hp * wp + fresh_s, C_s)``; the first ``hp * wp`` rows are the padded
        unoccluded input map, row-major, channels last; the rest is room for fresh rows
        (step 0: the padded occluder fill).
    padded : list of tuple of int, length S
        ``(hp, wp)`` per step.
    outputs : list of torch.Tensor, length S
        Each step's unoccluded output ``(C, h, w)``.
    """

    sources: list[torch.Tensor]
    padded: list[tuple[int, int]]
    outputs: list[torch.Tensor]


def build_cache(modules: Sequence[nn.Module], steps: Sequence[Step], ends: Sequence[int], image: torch.Tensor,
                fill: torch.Tensor, fresh: Sequence[int]) -> ImageCache:
    """Run the chain on one unoccluded image ``(C, H, W)`` (as a batch of two copies) and keep its maps.

    ``fill`` ``(C, H, W)`` is the occluder's content; ``fresh[s]`` the rows step ``s``'s
    source needs beyond its map (``s >= 1``).  The modules run as they are, so the maps
    are the network's own; a batch of two keeps the kernels those of any batch.
    """
    x = torch.stack([image, image])
    sources, padded, outputs = [], [], []
    first = 0
    for s, st in enumerate(steps):
        p = st.padded(x[:1])
        hp, wp = p.shape[-2:]
        extra = hp * wp if s == 0 else fresh[s]
        src = p.new_empty((hp * wp + extra, p.shape[1]))
        src[: hp * wp].view(hp, wp, -1).copy_(p[0].permute(1, 2, 0))
        if s == 0:
            src[hp * wp:].view(hp, wp, -1).copy_(st.padded(fill[None])[0].permute(1, 2, 0))
        sources.append(src)
        padded.append((hp, wp))
        for i in range(first, ends[s] + 1):
            x = modules[i](x)
        first = ends[s] + 1
        outputs.append(x[0].clone())
    return ImageCache(sources, padded, outputs)


@dataclass
class Batch:
    """Recomputed cells of one batch of positions at one step.

    Attributes
    ----------
    cells : torch.Tensor, shape (M, C)
        Rows of the step's output (a view into the next source, or a scratch tensor).
    y0, x0, width, offset : np.ndarray, shape (B,)
        Per position: the rectangle's top-left cell, its width, its first row in ``cells``.
    y1, x1 : np.ndarray, shape (B,)
        Inclusive bottom-right cell (``y1 < y0`` where the rectangle is empty).
    """

    cells: torch.Tensor
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    width: np.ndarray
    offset: np.ndarray

    def rows_of(self, positions: np.ndarray, y: int, x: int) -> np.ndarray:
        """Row in ``cells`` of cell ``(y, x)`` for each batch position of ``positions``, -1 if not recomputed."""
        inside = (self.y0[positions] <= y) & (y <= self.y1[positions]) & (self.x0[positions] <= x) & (x <= self.x1[positions])
        rows = self.offset[positions] + (y - self.y0[positions]) * self.width[positions] + (x - self.x0[positions])
        return np.where(inside, rows, -1)


def _tap_offsets(step: Step) -> tuple[np.ndarray, np.ndarray]:
    ty, tx = step.taps
    oy = np.repeat(np.arange(ty) * step.dilation[0], tx)
    ox = np.tile(np.arange(tx) * step.dilation[1], ty)
    return oy, ox


def _step_index(step: Step, s: int, cache: ImageCache, rect: tuple[np.ndarray, ...], prev: Batch | None,
                window: tuple[np.ndarray, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(index (M, T), cell position (M,))``: source rows of every recomputed cell's taps."""
    y0, y1, x0, x1 = rect
    heights, widths = np.maximum(y1 - y0 + 1, 0), np.maximum(x1 - x0 + 1, 0)
    counts = heights * widths
    pc = np.repeat(np.arange(y0.size), counts)
    local = np.arange(pc.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cy = y0[pc] + local // widths[pc]
    cx = x0[pc] + local % widths[pc]
    hp, wp = cache.padded[s]
    ty, tx = _tap_offsets(step)
    iy = cy[:, None] * step.stride[0] + ty[None, :]  # padded coordinates
    ix = cx[:, None] * step.stride[1] + tx[None, :]
    uy, ux = iy - step.pad[0], ix - step.pad[2]  # map coordinates
    if prev is None:  # step 0: the fresh rows are the padded fill, laid out like the image
        py, px, size = window
        fresh = ((uy >= py[pc, None]) & (uy < py[pc, None] + size) & (ux >= px[pc, None]) & (ux < px[pc, None] + size))
        fresh_rows = hp * wp + iy * wp + ix
    else:
        fresh = ((uy >= prev.y0[pc, None]) & (uy <= prev.y1[pc, None])
                 & (ux >= prev.x0[pc, None]) & (ux <= prev.x1[pc, None]))
        fresh_rows = (hp * wp + prev.offset[pc, None] + (uy - prev.y0[pc, None]) * prev.width[pc, None]
                      + (ux - prev.x0[pc, None]))
    return np.where(fresh, fresh_rows, iy * wp + ix), pc


def run_pass(steps: Sequence[Step], cache: ImageCache, regions: Regions, iy: np.ndarray, ix: np.ndarray,
             window: tuple[np.ndarray, np.ndarray, int], depth: int,
             gather: dict[int, torch.Tensor] | None = None) -> list[Batch]:
    """Recompute ``R_s(p)`` for steps ``0 .. depth - 1`` and the positions ``(iy, ix)`` ``(B,)``.

    Parameters
    ----------
    steps : sequence of Step
    cache : ImageCache
        Its sources must have room for every step's fresh rows.
    regions : Regions
        Rectangles per step, indexed by position row ``iy`` and column ``ix``.
    iy, ix : np.ndarray, shape (B,)
        Occluder position indices.
    window : tuple
        ``(top (B,), left (B,), size)`` of each occluder in image pixels.
    depth : int
        Steps to run.
    gather : dict, optional
        Reusable gather buffers per input channel count (filled in).

    Returns
    -------
    list of Batch, length ``depth``
        Per step, the recomputed cells (the last one in a scratch tensor, the others as
        fresh rows of the next step's source, valid until the next pass).
    """
    gather = {} if gather is None else gather
    out: list[Batch] = []
    prev: Batch | None = None
    for s in range(depth):
        rect = (regions.y.lo[s][iy], regions.y.hi[s][iy], regions.x.lo[s][ix], regions.x.hi[s][ix])
        index, _ = _step_index(steps[s], s, cache, rect, prev, window)
        src = cache.sources[s]
        if s + 1 < depth:
            hp, wp = cache.padded[s + 1]
            dst = cache.sources[s + 1][hp * wp: hp * wp + index.shape[0]]
        else:
            dst = src.new_empty((index.shape[0], steps[s].channels))
        key = src.shape[1]
        gather[key] = compute_cells(steps[s], src, to_device(index, src.device), dst, gather.get(key))
        widths = np.maximum(rect[3] - rect[2] + 1, 0)
        counts = np.maximum(rect[1] - rect[0] + 1, 0) * widths
        prev = Batch(dst, rect[0], rect[1], rect[2], rect[3], widths, np.cumsum(counts) - counts)
        out.append(prev)
    return out


def check_steps(modules: Sequence[nn.Module], steps: Sequence[Step], ends: Sequence[int], image: torch.Tensor,
                rtol: float) -> int:
    """Number of leading steps whose cell arithmetic reproduces the modules on a whole unoccluded map.

    Every cell of every step is recomputed from the modules' own input map and compared
    with the modules' output, within ``rtol`` of the map's largest magnitude.
    """
    x = torch.stack([image, image])
    first = 0
    for s, st in enumerate(steps):
        p = st.padded(x[:1])
        hp, wp = p.shape[-2:]
        src = p[0].permute(1, 2, 0).reshape(hp * wp, -1).contiguous()
        for i in range(first, ends[s] + 1):
            x = modules[i](x)
        first = ends[s] + 1
        h, w = x.shape[-2:]
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        ty, tx = _tap_offsets(st)
        index = (ys.reshape(-1, 1) * st.stride[0] + ty) * wp + xs.reshape(-1, 1) * st.stride[1] + tx
        cells = src.new_empty((h * w, st.channels))
        compute_cells(st, src, to_device(index, src.device), cells)
        want = x[0].permute(1, 2, 0).reshape(h * w, -1)
        if cells.shape != want.shape:
            return s
        scale = max(float(want.abs().max()), 1e-12)
        if not float((cells - want).abs().max()) <= rtol * scale:
            return s
    return len(steps)


def batch_cells(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(position, y, x)`` ``(M,)`` of every row of ``batch.cells``."""
    heights = np.maximum(batch.y1 - batch.y0 + 1, 0)
    counts = heights * batch.width
    pc = np.repeat(np.arange(batch.y0.size), counts)
    local = np.arange(pc.size) - batch.offset[pc]
    return pc, batch.y0[pc] + local // batch.width[pc], batch.x0[pc] + local % batch.width[pc]


def sweep(steps: Sequence[Step], cache: ImageCache, regions: Regions, batches: Sequence[np.ndarray],
          reads: Sequence[tuple[int, int, int, int]], grid: tuple[np.ndarray, np.ndarray], size: int,
          after: Callable[[np.ndarray, list[Batch]], None] | None = None) -> np.ndarray:
    """Run incremental passes over batches of positions and read targets off every step.

    Parameters
    ----------
    steps, cache, regions
        As for :func:`run_pass` (``regions.depth`` steps run).
    batches : sequence of np.ndarray
        Flat position indices ``iy * n_ox + ix`` of each batch.
    reads : sequence of (step, unit, y, x)
        Cells to read.
    grid : tuple of np.ndarray
        Occluder positions ``(pos_y (n_oy,), pos_x (n_ox,))`` in pixels.
    size : int
        Occluder side.
    after : callable, optional
        ``after(flat, batches)`` once per batch, with that pass's recomputed cells.

    Returns
    -------
    np.ndarray, shape (R, n_oy * n_ox), float64
        The read activation where the cell was recomputed, NaN where it was not (there
        it holds its unoccluded value) and at positions not evaluated.
    """
    pos_y, pos_x = grid
    values = np.full((len(reads), pos_y.size * pos_x.size), np.nan)
    by_step: dict[int, list[int]] = {}
    for r, (s, _, _, _) in enumerate(reads):
        by_step.setdefault(s, []).append(r)
    buffers: dict[int, torch.Tensor] = {}
    for flat in batches:
        iy, ix = flat // pos_x.size, flat % pos_x.size
        passes = run_pass(steps, cache, regions, iy, ix, (pos_y[iy], pos_x[ix], size), regions.depth, buffers)
        for s, rs in by_step.items():
            _read(passes[s], [reads[r] for r in rs], values, np.asarray(rs), flat)
        if after is not None:
            after(flat, passes)
    return values


def _read(batch: Batch, reads: Sequence[tuple[int, int, int, int]], values: np.ndarray, rows_out: np.ndarray,
          flat: np.ndarray) -> None:
    """Write the recomputed values of ``reads`` (one step) at the batch's positions into ``values``."""
    _, units, ys, xs = (np.asarray(v)[:, None] for v in zip(*reads))
    inside = (batch.y0 <= ys) & (ys <= batch.y1) & (batch.x0 <= xs) & (xs <= batch.x1)  # (R, B)
    if not inside.any():
        return
    rows = batch.offset + (ys - batch.y0) * batch.width + (xs - batch.x0)
    r_idx, b_idx = np.nonzero(inside)
    channels = batch.cells.shape[1]
    index = rows[r_idx, b_idx] * channels + units[r_idx, 0]
    got = batch.cells.reshape(-1).index_select(0, to_device(index, batch.cells.device))
    values[rows_out[r_idx], flat[b_idx]] = got.double().cpu().numpy()
