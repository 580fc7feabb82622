"""Gradient-based effective receptive fields (Luo et al. 2016), a cheap cross-check. Pure maths.

For a unit at (y, x) of a layer and an input image, the map is
``sum_c |d activation / d input[c]|``: the pixels whose change moves the unit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def input_gradient_maps(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: torch.Tensor,
    targets: Sequence[tuple[int, str, int, int, int]],
    batch_size: int = 32,
) -> torch.Tensor:
    """Absolute input gradients of units, summed over channels.

    Parameters
    ----------
    forward : callable
        Maps ``(B, 3, H, W)`` to ``{layer: (B, C, h, w) or (B, C)}``.
    images : torch.Tensor
        ``(N, 3, H, W)`` preprocessed images.
    targets : sequence of (image, layer, unit, y, x)
        One map per target (``y``/``x`` ignored for linear layers).
    batch_size : int
        Targets per backward pass.

    Returns
    -------
    torch.Tensor
        ``(T, H, W)`` float32 on the CPU.
    """
    out = torch.zeros(len(targets), images.shape[2], images.shape[3])
    for start in range(0, len(targets), batch_size):
        chunk = targets[start:start + batch_size]
        batch = images[[t[0] for t in chunk]].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            features = forward(batch)
            total = batch.new_zeros(())
            for row, (_, layer, unit, y, x) in enumerate(chunk):
                act = features[layer]
                total = total + (act[row, unit, y, x] if act.dim() == 4 else act[row, unit])
            (grad,) = torch.autograd.grad(total, batch)
        out[start:start + len(chunk)] = grad.abs().sum(dim=1).cpu()
    return out
