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
    values = activation.float()
    if values.device.type in ("cpu", "cuda"):
        # a max pool over the whole map gives the maximum and its index in one pass, several
        # times faster than argmax + gather, above all on channels_last maps; its kernels keep
        # the first of tied maxima (strict ">"), as argmax does (tests/test_spatial.py)
        pooled, index = torch.nn.functional.adaptive_max_pool2d(values, 1, return_indices=True)
        act_max, flat_index = pooled.reshape(batch, units), index.reshape(batch, units)
        nan = torch.isnan(act_max)
        if bool(nan.any()):  # the pool keeps the last NaN, argmax the first
            flat_index = flat_index.clone()
            flat_index[nan] = _first_max_index(values[nan.nonzero(as_tuple=True)].reshape(-1, height * width))
    else:
        flat = values.reshape(batch, units, height * width)
        flat_index = _first_max_index(flat)
        act_max = flat.gather(2, flat_index.unsqueeze(2)).squeeze(2)
    act_mean = values.mean(dim=(2, 3))
    return act_max, act_mean, (flat_index // width).to(torch.int32), (flat_index % width).to(torch.int32)


def _first_max_index(flat: torch.Tensor) -> torch.Tensor:
    """Index of the maximum along the last axis; the first of ties, the first NaN if any."""
    return flat.argmax(dim=-1)  # documented to return the first of tied maxima
