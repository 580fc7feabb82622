"""The per-target crop strategy, for units beyond the sequential prefix whose RF is smaller than the image.

The network (stopping at the target's layer) runs on an input crop aligned to the layer's
stride that covers the target's RF (:func:`rfstore.occlusion.geometry.target_crop`), once
per occluder position that touches the crop.  The crop is a function of the target alone
and its positions of the crop alone, cut in calls of a fixed size, so a target's bits do
not depend on what else is computed.  Targets with the same crop share every call.  The
unoccluded crop runs as the last row: the guard compares its activation with the full
image's and sends the target to the full image where they differ.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from rfstore.occlusion.plain import occluded_batch, read_targets
from rfstore.occlusion.types import Occluder

__all__ = ["crop_positions", "crop_pass", "min_extent"]

Forward = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]
FAR = -(10**9)
"""Window position of the unoccluded row (a window far outside any image)."""


def crop_positions(crop: tuple[int, int, int, int], occluder: Occluder, hw: tuple[int, int]) -> np.ndarray:
    """``(n_oy, n_ox)`` bool: positions whose window overlaps the crop ``(y0, y1, x0, x1)``."""
    pos_y, pos_x = occluder.grid(hw)
    y0, y1, x0, x1 = crop
    return np.outer((pos_y < y1) & (pos_y + occluder.size > y0), (pos_x < x1) & (pos_x + occluder.size > x0))


def crop_pass(forward: Forward, image: torch.Tensor, fill: torch.Tensor, crop: tuple[int, int, int, int],
              reads: Sequence[tuple[str, int, int, int]], occluder: Occluder, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Activations of ``reads`` (crop-map coordinates) at every position touching ``crop``.

    Returns ``values`` ``(R, n_oy * n_ox)`` float64 (NaN at positions not evaluated) and
    ``clean`` ``(R,)``, the activations on the unoccluded crop.
    """
    hw = (int(image.shape[-2]), int(image.shape[-1]))
    pos_y, pos_x = occluder.grid(hw)
    flat = np.flatnonzero(crop_positions(crop, occluder, hw))
    tops = np.append(pos_y[flat // pos_x.size], FAR)
    lefts = np.append(pos_x[flat % pos_x.size], FAR)
    acts = np.empty((len(reads), tops.size))
    for start in range(0, tops.size, rows):
        stop = min(tops.size, start + rows)
        sel = np.arange(start, stop)
        run = np.concatenate([sel, sel]) if sel.size == 1 else sel
        batch = occluded_batch(image, fill, crop, tops[run], lefts[run], occluder.size)
        acts[:, start:stop] = read_targets(forward(batch), reads)[:, : sel.size]
    values = np.full((len(reads), pos_y.size * pos_x.size), np.nan)
    values[:, flat] = acts[:, :-1]
    return values, acts[:, -1]


def min_extent(forward: Forward, hw: tuple[int, int], channels: int, device: torch.device,
               dtype: torch.dtype) -> int:
    """Smallest side ``e`` such that ``forward`` runs on ``(min(e, H), min(e, W))`` inputs (binary search)."""

    def accepts(side: int) -> bool:
        try:
            forward(torch.zeros(2, channels, min(side, hw[0]), min(side, hw[1]), device=device, dtype=dtype))
        except (RuntimeError, ValueError):
            return False
        return True

    lo, hi = 1, max(hw)
    while lo < hi:
        mid = (lo + hi) // 2
        if accepts(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
