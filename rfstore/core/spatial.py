"""Per-unit summaries of a layer's activation over space (max, mean, argmax)."""
from __future__ import annotations

import torch


def spatial_summary(activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max, mean and argmax position of every unit over space.

    Parameters
    ----------
    activation : torch.Tensor
        ``(B, U, H, W)`` for a convolutional layer or ``(B, U)`` for a linear one.

    Returns
    -------
    act_max, act_mean : torch.Tensor
        ``(B, U)`` float32.
    act_y, act_x : torch.Tensor
        ``(B, U)`` int32 position of the maximum; the first one in row-major
        order when several positions tie. 0 for linear layers.
    """
    if activation.dim() == 2:
        values = activation.float()
        zeros = torch.zeros(values.shape, dtype=torch.int32, device=values.device)
        return values, values.clone(), zeros, zeros.clone()
    if activation.dim() != 4:
        raise ValueError(f"expected a (B, U) or (B, U, H, W) activation, got shape {tuple(activation.shape)}")
    batch, units, height, width = activation.shape
    flat = activation.float().reshape(batch, units, height * width)
    flat_index = flat.argmax(dim=2)  # documented to return the first of tied maxima
    act_max = flat.gather(2, flat_index.unsqueeze(2)).squeeze(2)
    act_mean = flat.mean(dim=2)
    return act_max, act_mean, (flat_index // width).to(torch.int32), (flat_index % width).to(torch.int32)
