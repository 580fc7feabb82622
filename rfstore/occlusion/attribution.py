"""From discrepancy maps (per occluder position) to per-pixel attributions."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["pixel_attribution"]


def pixel_attribution(maps: np.ndarray, height: int, width: int, size: int, stride: int) -> np.ndarray:
    """Per-pixel mean of the discrepancies of the windows covering each pixel.

    This is Captum's ``Occlusion`` attribution when ``(H - size) % stride == 0`` (Captum
    then places windows exactly at the occluder's positions).

    Parameters
    ----------
    maps : np.ndarray, shape (T, n_oy, n_ox)
    height, width, size, stride : int

    Returns
    -------
    np.ndarray, shape (T, height, width), float64
        0 where no window covers a pixel.
    """
    m = torch.from_numpy(np.asarray(maps, dtype=np.float64))[:, None]
    ones = torch.ones(1, 1, size, size, dtype=torch.float64)
    total = torch.nn.functional.conv_transpose2d(m, ones, stride=stride)[:, 0]
    count = torch.nn.functional.conv_transpose2d(torch.ones_like(m[:1]), ones, stride=stride)[:, 0]
    out = np.zeros((maps.shape[0], height, width), dtype=np.float64)
    th, tw = total.shape[-2:]
    out[:, :th, :tw] = (total / count).numpy()
    return out
