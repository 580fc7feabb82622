"""Empirical receptive fields from discrepancy maps (Zhou et al. 2015, sec. 3.2). Pure maths.

Steps, for one unit and its K top images:

1. :func:`discrepancy_to_pixels`: each occluder position's discrepancy is spread
   over the pixels its window covers; a pixel's value is the mean over the windows
   that cover it (the convention of Captum's ``Occlusion``), and pixels outside
   the unit's theoretical RF are set to exactly 0, since they cannot influence it.
2. :func:`recentre`: the pixel map is cut out around the unit's RF centre in that
   image (``start + index * jump``), so the K maps line up.
3. their mean over K is the unit's ``rf_map(ry, rx)``; ``ry = rx = 0`` is the centre.
4. :func:`rf_size_from_map`: the empirical RF size is the side of the square with
   the area of the region where ``rf_map >= threshold * max(rf_map)`` (default
   0.5: the half-maximum width, which for a unit uniformly sensitive over its
   theoretical RF gives back the theoretical size despite the occluder's blur).
"""
from __future__ import annotations

import math

import numpy as np

from rfstore.rf.attribution import pixel_attribution

DEFAULT_THRESHOLD = 0.5


def window_radius(rf_size: tuple[int, int], occluder: int) -> tuple[int, int]:
    """Half-extent (ry, rx) of the re-centred window: the theoretical RF plus one occluder width."""
    return tuple(int(math.ceil((s - 1) / 2)) + occluder - 1 for s in rf_size)  # type: ignore[return-value]


def rf_centre_pixels(start: tuple[float, float], jump: tuple[int, int], y: np.ndarray, x: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel of the RF centre of units at (y, x); x.5 centres round down."""
    cy = np.floor(start[0] + np.asarray(y) * jump[0]).astype(np.int64)
    cx = np.floor(start[1] + np.asarray(x) * jump[1]).astype(np.int64)
    return cy, cx


def rf_box(centre: tuple[float, float], size: tuple[int, int], input_hw: tuple[int, int]
           ) -> tuple[slice, slice]:
    """Pixel slices of a theoretical RF centred at ``centre``, clipped to the image."""
    out = []
    for c, s, n in zip(centre, size, input_hw):
        lo = max(0, int(math.ceil(c - (s - 1) / 2)))
        hi = min(n, int(math.floor(c + (s - 1) / 2)) + 1)
        out.append(slice(lo, max(lo, hi)))
    return out[0], out[1]


def discrepancy_to_pixels(maps: np.ndarray, size: int, stride: int, input_hw: tuple[int, int]) -> np.ndarray:
    """Spread per-position discrepancies over pixels (mean over the covering windows).

    Parameters
    ----------
    maps : np.ndarray
        ``(K, n_oy, n_ox)`` discrepancy per occluder top-left position ``(i*stride, j*stride)``.
    size, stride : int
        Occluder side and stride in pixels.
    input_hw : tuple of int
        ``(H, W)`` of the preprocessed input.

    Returns
    -------
    np.ndarray
        ``(K, H, W)`` float32; pixels covered by no window are 0.
    """
    height, width = input_hw
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float64))
    return pixel_attribution(maps, height, width, size, stride).astype(np.float32)


def recentre(pixel_maps: np.ndarray, centres_y: np.ndarray, centres_x: np.ndarray, radius: tuple[int, int]
             ) -> np.ndarray:
    """Cut ``(2*ry+1, 2*rx+1)`` windows centred on each map's centre pixel; NaN outside the image.

    Parameters
    ----------
    pixel_maps : np.ndarray
        ``(K, H, W)``.
    centres_y, centres_x : np.ndarray
        ``(K,)`` integer centre pixels.
    radius : tuple of int
        ``(ry, rx)``.

    Returns
    -------
    np.ndarray
        ``(K, 2*ry+1, 2*rx+1)`` float32.
    """
    k, height, width = pixel_maps.shape
    ry, rx = radius
    centres_y, centres_x = np.asarray(centres_y, dtype=np.int64), np.asarray(centres_x, dtype=np.int64)
    # centres may lie outside the image (negative RF start): pad enough for any of them
    py = ry + int(max(0, -centres_y.min(initial=0), centres_y.max(initial=0) - height + 1))
    px = rx + int(max(0, -centres_x.min(initial=0), centres_x.max(initial=0) - width + 1))
    padded = np.full((k, height + 2 * py, width + 2 * px), np.nan, dtype=np.float32)
    padded[:, py:py + height, px:px + width] = pixel_maps
    out = np.empty((k, 2 * ry + 1, 2 * rx + 1), dtype=np.float32)
    for i in range(k):
        top, left = int(centres_y[i]) - ry + py, int(centres_x[i]) - rx + px
        out[i] = padded[i, top:top + 2 * ry + 1, left:left + 2 * rx + 1]
    return out


def unit_rf_map(maps: np.ndarray, topk_y: np.ndarray, topk_x: np.ndarray, rf_start: tuple[float, float],
                rf_jump: tuple[int, int], rf_size: tuple[int, int], size: int, stride: int,
                input_hw: tuple[int, int]) -> np.ndarray:
    """The empirical RF map of one unit from its K discrepancy maps.

    Parameters
    ----------
    maps : np.ndarray
        ``(K, n_oy, n_ox)``; ranks whose image is missing are all-NaN and ignored.
    topk_y, topk_x : np.ndarray
        ``(K,)`` location of the unit in each image.
    rf_start, rf_jump, rf_size : tuple
        The layer's theoretical RF geometry.
    size, stride : int
        Occluder geometry.
    input_hw : tuple of int
        ``(H, W)``.

    Returns
    -------
    np.ndarray
        ``(2*ry+1, 2*rx+1)`` mean of the re-centred pixel maps (NaN where no image has data).
    """
    radius = window_radius(rf_size, size)
    valid = ~np.all(np.isnan(maps.reshape(maps.shape[0], -1)), axis=1)
    if not valid.any():
        return np.full((2 * radius[0] + 1, 2 * radius[1] + 1), np.nan, dtype=np.float32)
    pixels = discrepancy_to_pixels(maps[valid], size, stride, input_hw)
    cy, cx = rf_centre_pixels(rf_start, rf_jump, topk_y[valid], topk_x[valid])
    inside = np.zeros_like(pixels, dtype=bool)
    for i in range(pixels.shape[0]):
        centre = (rf_start[0] + topk_y[valid][i] * rf_jump[0], rf_start[1] + topk_x[valid][i] * rf_jump[1])
        box = rf_box(centre, rf_size, input_hw)
        inside[i, box[0], box[1]] = True
    pixels = np.where(inside, pixels, 0.0).astype(np.float32)
    return mean_over_images(recentre(pixels, cy, cx, radius))


def mean_over_images(windows: np.ndarray) -> np.ndarray:
    """Mean of ``(K, h, w)`` re-centred maps where each has data; NaN where none has."""
    counts = np.sum(~np.isnan(windows), axis=0)
    total = np.nansum(windows, axis=0)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan).astype(np.float32)


def rf_mask(rf_map: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean mask of ``rf_map >= threshold * max(rf_map)``; all False if the map has no positive value."""
    values = np.nan_to_num(rf_map, nan=0.0)
    peak = values.max(initial=0.0)
    if peak <= 0:
        return np.zeros(values.shape, dtype=bool)
    return values >= threshold * peak


def rf_size_from_map(rf_map: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Side (pixels) of the square of the same area as :func:`rf_mask`; NaN for a unit with no response."""
    mask = rf_mask(rf_map, threshold)
    return float(math.sqrt(mask.sum())) if mask.any() else float("nan")
