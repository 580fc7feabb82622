"""Pixel geometry of targets: RF bounds, the occluder positions that can change a unit, aligned crops.

Alignment argument (why a crop gives the same activation as the full image)
--------------------------------------------------------------------------
Let the layer have effective stride ``J`` and theoretical RF ``[lo, hi]`` (per axis,
unclipped).  Take the crop ``[a, b)`` with ``a = floor(max(lo, 0) / L) * L`` (``L`` a
multiple of ``J``) and ``b >= min(H, ceil(hi) + 1)``.

* ``a`` is a multiple of every stride product ``J_l`` of the prefix, so the feature-map
  grid of every intermediate layer computed on the crop is the full-image grid shifted
  by the integer ``a / J_l``; the unit sits at ``y - a / J`` in the crop's map.
* Every unit of the dependency cone has its RF inside ``[lo, hi]``.  A left-padding cell
  of the crop at layer ``l`` stands for the full-image unit ``a / J_l - 1`` whose RF
  starts before ``a <= lo``, so it is outside the cone -- unless ``a = 0``, where the
  crop's padding is the image's padding.
* On the right, every cone unit reads only cells whose RF ends at ``<= hi <= b - 1``;
  these exist in the crop and hold the full-image values.  If ``b = H`` the crop's
  right edge is the image's edge and right padding coincides too.

The crop path still checks this at run time on the unoccluded crop (its guard).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from rfstore.occlusion.types import LayerGeometry, Occluder, OcclusionTarget

__all__ = ["rf_pixel_bounds", "target_bounds", "overlap_mask", "target_mask", "aligned_crop", "target_crop"]


def rf_pixel_bounds(size: int, jump: int, start: float, index: int) -> tuple[int, int]:
    """Conservative inclusive pixel bounds ``(lo, hi)`` of unit ``index``'s RF along one axis.

    ``floor(centre - (size-1)/2)`` and ``ceil(centre + (size-1)/2)`` with ``centre =
    start + index * jump``; not clipped to the image, so they may be negative or beyond it.
    """
    centre = float(start) + index * jump
    half = (size - 1) / 2.0
    return int(math.floor(centre - half)), int(math.ceil(centre + half))


def target_bounds(target: OcclusionTarget, geometry: LayerGeometry,
                  hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((lo_y, lo_x), (hi_y, hi_x))``: the target's RF bounds (the whole image for linear layers)."""
    if geometry.kind == "linear":
        return (0, 0), (hw[0] - 1, hw[1] - 1)
    lo_y, hi_y = rf_pixel_bounds(geometry.size[0], geometry.jump[0], geometry.start[0], target.y)
    lo_x, hi_x = rf_pixel_bounds(geometry.size[1], geometry.jump[1], geometry.start[1], target.x)
    return (lo_y, lo_x), (hi_y, hi_x)


def overlap_mask(positions: np.ndarray, size: int, lo: int, hi: int) -> np.ndarray:
    """``(n,)`` bool: which windows ``[p, p + size - 1]`` intersect ``[lo, hi]``."""
    return (positions <= hi) & (positions + size - 1 >= lo)


def target_mask(target: OcclusionTarget, geometry: LayerGeometry, occluder: Occluder,
                hw: tuple[int, int]) -> np.ndarray:
    """``(n_oy, n_ox)`` bool: the occluder positions that touch the target's RF.

    Elsewhere the target cannot change: its discrepancy is exactly 0.
    """
    pos_y, pos_x = occluder.grid(hw)
    if geometry.kind == "linear":
        return np.ones((pos_y.size, pos_x.size), dtype=bool)
    if geometry.kind != "conv":
        raise ValueError(f"unknown layer kind {geometry.kind!r} for {target.layer!r}")
    (lo_y, lo_x), (hi_y, hi_x) = target_bounds(target, geometry, hw)
    return np.outer(overlap_mask(pos_y, occluder.size, lo_y, hi_y), overlap_mask(pos_x, occluder.size, lo_x, hi_x))


def aligned_crop(lo: ArrayLike, hi: ArrayLike, length: int, align: ArrayLike,
                 min_extent: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``[a, b)`` covering ``[lo, hi]`` with ``a`` a multiple of ``align`` (elementwise).

    The crop is grown to the right, then to the left (keeping alignment), to reach
    ``min_extent`` (the smallest input the network accepts).  Returns int64 ``(a, b)``
    with ``0 <= a < b <= length`` where ``lo <= length - 1`` and ``hi >= 0``.
    """
    lo, hi, align = (np.asarray(v, dtype=np.int64) for v in (lo, hi, align))
    a = (np.maximum(lo, 0) // align) * align
    b = np.minimum(length, np.maximum(hi, 0) + 1)
    need = min(min_extent, length)
    b = np.where(b - a < need, np.minimum(length, a + need), b)
    a = np.where(b - a < need, np.maximum(0, ((length - need) // align) * align), a)
    return a, b


def target_crop(target: OcclusionTarget, geometry: LayerGeometry, hw: tuple[int, int],
                min_extent: int) -> tuple[int, int, int, int]:
    """The target's own aligned crop ``(y0, y1, x0, x1)``, half-open, in image pixels."""
    (lo_y, lo_x), (hi_y, hi_x) = target_bounds(target, geometry, hw)
    y0, y1 = aligned_crop(lo_y, hi_y, hw[0], geometry.jump[0], min_extent)
    x0, x1 = aligned_crop(lo_x, hi_x, hw[1], geometry.jump[1], min_extent)
    return int(y0), int(y1), int(x0), int(x1)
