"""The shared whole-map strategy: every changed cell of every map, once per position, for all targets of an image.

An incremental pass (:func:`rfstore.occlusion.incremental.sweep`) recomputes ``C_s(p)``,
every cell the occluder changes, through the prefix; every target in the prefix is read
off it at its own cell.  Layers after the prefix (dense layers, residual stages) run in
full on the occluded map at the injection point, pasted from the recomputed cells onto
the unoccluded map (:class:`rfstore.occlusion.tail.Tail`).  The tail sees every
position, in calls of a fixed size, with the unoccluded map as the very last row: that
row's outputs are the reference activations of the tail's targets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from rfstore.occlusion.incremental import Batch, ImageCache, batch_cells, sweep
from rfstore.occlusion.plain import read_targets
from rfstore.occlusion.prefix import Prefix
from rfstore.occlusion.tail import Tail

__all__ = ["TailReads", "shared_pass", "position_batches"]


@dataclass
class TailReads:
    """What the tail reads, and its results.

    Attributes
    ----------
    tail : Tail
    step : int
        The prefix step whose output is injected.
    reads : list of (layer, unit, y, x)
    values : np.ndarray, shape (R, n_oy * n_ox), float64
        Filled by :func:`shared_pass`.
    clean : np.ndarray, shape (R,), float64
        Activations on the unoccluded map (the reference).
    """

    tail: Tail
    step: int
    reads: list[tuple[str, int, int, int]]
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    clean: np.ndarray = field(default_factory=lambda: np.zeros(0))


def position_batches(flat: np.ndarray, rows: int) -> list[np.ndarray]:
    """``flat`` cut in consecutive batches of ``rows`` positions."""
    return [flat[i: i + rows] for i in range(0, flat.size, rows)]


def _injected_maps(base: torch.Tensor, batch: Batch, extra_clean: bool) -> torch.Tensor:
    """``(B [+1], C, h, w)``: ``base`` ``(C, h, w)`` with each position's recomputed cells pasted in.

    With ``extra_clean`` the unoccluded map is appended as the last row.
    """
    channels, h, w = base.shape
    rows = batch.y0.size + int(extra_clean)
    maps = base.permute(1, 2, 0)[None].expand(rows, h, w, channels).contiguous()  # channels last
    pc, cy, cx = batch_cells(batch)
    if pc.size:
        index = torch.from_numpy((pc * h + cy) * w + cx).to(base.device)
        maps.view(-1, channels).index_copy_(0, index, batch.cells)
    return maps.permute(0, 3, 1, 2)


def shared_pass(prefix: Prefix, cache: ImageCache, depth: int, mask: np.ndarray,
                chain_reads: Sequence[tuple[int, int, int, int]], tail: TailReads | None,
                grid: tuple[np.ndarray, np.ndarray], size: int, batch_size: int, tail_rows: int) -> np.ndarray:
    """Chain targets' activations ``(R, n_oy * n_ox)`` (NaN where unchanged); fills ``tail.values`` and ``tail.clean``.

    Without a tail the positions of ``mask`` run in batches of ``batch_size``; with one,
    every position runs, in batches of ``tail_rows``.
    """
    pos_y, pos_x = grid
    n = pos_y.size * pos_x.size
    regions = prefix.full_regions(depth)
    if tail is None:
        batches = position_batches(np.flatnonzero(mask), batch_size)
        return sweep(prefix.steps, cache, regions, batches, chain_reads, grid, size)
    batches = position_batches(np.arange(n), tail_rows)
    tail.values = np.full((len(tail.reads), n), np.nan)
    base = cache.outputs[tail.step]

    def run_tail(flat: np.ndarray, passes: list[Batch]) -> None:
        last = flat[-1] == n - 1
        maps = _injected_maps(base, passes[tail.step], extra_clean=last)
        got = read_targets(tail.tail(maps), tail.reads)
        tail.values[:, flat] = got[:, : flat.size]
        if last:
            tail.clean = got[:, flat.size]

    return sweep(prefix.steps, cache, regions, batches, chain_reads, grid, size, after=run_tail)
