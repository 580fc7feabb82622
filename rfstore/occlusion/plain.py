"""Full re-inference: every occluded full image through the network (the reference every strategy is tested against).

Slow (one whole forward pass per occluder position) and obviously right: the occluded
image is the image with the occluder's window replaced by the fill, and the discrepancy
is the activation on the image minus the activation on the occluded image.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from rfstore.occlusion.types import Occluder, OcclusionTarget

__all__ = ["occluded_batch", "plain_maps", "read_targets"]

Forward = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def occluded_batch(image: torch.Tensor, fill: torch.Tensor, crop: tuple[int, int, int, int],
                   tops: np.ndarray, lefts: np.ndarray, size: int) -> torch.Tensor:
    """``(B, C, h, w)``: the crop ``(y0, y1, x0, x1)`` of ``image`` ``(C, H, W)``, each with one window filled.

    Window ``b`` has its top-left image pixel at ``(tops[b], lefts[b])``; a window may stick
    out of the crop (its outside part is dropped).  Built without a Python loop over ``B``.
    """
    y0, y1, x0, x1 = crop
    base, content = image[:, y0:y1, x0:x1], fill[:, y0:y1, x0:x1]
    dev = image.device
    ys = torch.arange(y0, y1, device=dev)[None, :]
    xs = torch.arange(x0, x1, device=dev)[None, :]
    top = torch.as_tensor(tops, device=dev)[:, None]
    left = torch.as_tensor(lefts, device=dev)[:, None]
    in_y = (ys >= top) & (ys < top + size)
    in_x = (xs >= left) & (xs < left + size)
    window = in_y[:, None, :, None] & in_x[:, None, None, :]
    return torch.where(window, content[None], base[None])


def read_targets(outputs: Mapping[str, torch.Tensor], reads: Sequence[tuple[str, int, int, int]]) -> np.ndarray:
    """``(R, B)`` float64 activations of ``reads`` = ``(layer, unit, y, x)`` (y, x ignored for ``(B, F)`` outputs)."""
    values = []
    for layer, unit, y, x in reads:
        act = outputs[layer][:, unit]
        values.append(act if act.ndim == 1 else act[:, y, x])
    if not values:
        return np.zeros((0, 0))
    return torch.stack(values).double().cpu().numpy()


def plain_maps(forward: Forward, image: torch.Tensor, fill: torch.Tensor, targets: Sequence[OcclusionTarget],
               occluder: Occluder, batch_size: int = 64) -> np.ndarray:
    """``(T, n_oy, n_ox)`` float32 maps of ``targets`` (of this image) by full re-inference.

    ``image`` and ``fill`` are ``(C, H, W)`` on the forward's device and dtype; every
    position is evaluated (no skipping), in batches of ``batch_size`` occluded images.
    """
    hw = (int(image.shape[-2]), int(image.shape[-1]))
    pos_y, pos_x = occluder.grid(hw)
    reads = [(t.layer, t.unit, t.y, t.x) for t in targets]
    with torch.inference_mode():
        ref = read_targets(forward(torch.stack([image, image])), reads)[:, 0]
        flat = np.arange(pos_y.size * pos_x.size)
        acts = np.zeros((len(targets), flat.size))
        for start in range(0, flat.size, batch_size):
            chunk = flat[start: start + batch_size]
            run = np.concatenate([chunk, chunk]) if chunk.size == 1 else chunk
            batch = occluded_batch(image, fill, (0, hw[0], 0, hw[1]), pos_y[run // pos_x.size], pos_x[run % pos_x.size],
                                   occluder.size)
            acts[:, chunk] = read_targets(forward(batch), reads)[:, : chunk.size]
    maps = (ref[:, None] - acts).astype(np.float32)
    return maps.reshape(len(targets), pos_y.size, pos_x.size)
