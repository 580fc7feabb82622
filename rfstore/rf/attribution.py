"""From discrepancy maps (per occluder position) to per-pixel attributions."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["pixel_attribution"]


def _spread(values: np.ndarray, axis: int, length: int, size: int, stride: int) -> np.ndarray:
    """Sum of the values of the windows ``[i * stride, i * stride + size)`` covering each index of ``axis``.

    Window ``i`` covers pixel ``p`` when ``ceil((p - size + 1) / stride) <= i <= floor(p / stride)``: a
    difference of prefix sums over ``i`` (float64).
    """
    n = values.shape[axis]
    prefix = np.concatenate([np.zeros_like(np.take(values, [0], axis=axis)), np.cumsum(values, axis=axis)], axis=axis)
    pixels = np.arange(length)
    hi = np.minimum(pixels // stride, n - 1) + 1
    lo = np.clip(-((size - 1 - pixels) // stride), 0, n)
    hi = np.maximum(hi, lo)
    return np.take(prefix, hi, axis=axis) - np.take(prefix, lo, axis=axis)


@lru_cache(maxsize=16)
def _coverage(height: int, width: int, n_y: int, n_x: int, size: int, stride: int) -> np.ndarray:
    """``(H, W)`` number of windows covering each pixel."""
    ones_y = _spread(np.ones(n_y), 0, height, size, stride)
    ones_x = _spread(np.ones(n_x), 0, width, size, stride)
    return np.outer(ones_y, ones_x)


def pixel_attribution(maps: np.ndarray, height: int, width: int, size: int, stride: int) -> np.ndarray:
    """Per-pixel mean of the discrepancies of the windows covering each pixel.

    This is Captum's ``Occlusion`` attribution when ``(H - size) % stride == 0`` (Captum then
    places windows exactly at the occluder's positions).  The window sums are separable:
    spread along y, then along x.

    Parameters
    ----------
    maps : np.ndarray, shape (T, n_oy, n_ox)
    height, width, size, stride : int

    Returns
    -------
    np.ndarray, shape (T, height, width), float64
        0 where no window covers a pixel.
    """
    maps = np.asarray(maps, dtype=np.float64)
    total = _spread(_spread(maps, 1, height, size, stride), 2, width, size, stride)
    count = _coverage(height, width, maps.shape[1], maps.shape[2], size, stride)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)
