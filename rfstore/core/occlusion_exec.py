"""Execution side of the occlusion engine: counted forward calls, batched occluded crops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from rfstore.core.occlusion_plan import Group

if TYPE_CHECKING:  # pragma: no cover
    from rfstore.core.occlusion import OcclusionStats

__all__ = ["Runner", "run_items"]

_KINDS = ("reference", "guard", "probe", "occluded")


class Runner:
    """Wraps ``forward``: moves inputs to device/dtype, counts work, avoids N=1.

    PyTorch's CPU convolution picks another kernel for a batch of one input on
    small maps (observed on torch 2.14, AlexNet conv3-5), which changes the last
    bits; a single input is therefore sent duplicated so that results do not
    depend on ``batch_size``.

    Parameters
    ----------
    forward : callable
        ``(B, C, h, w) -> {layer: tensor}``.
    device : torch.device
    dtype : torch.dtype
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.forward = forward
        self.device = device
        self.dtype = dtype
        self.calls = 0
        self.padded = 0
        self.pixels = 0
        self.inputs = dict.fromkeys(_KINDS, 0)
        self.kind_pixels = dict.fromkeys(_KINDS, 0)

    def __call__(self, batch: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
        """Run ``forward`` on ``batch`` (B, C, h, w); returns outputs for the B rows."""
        b, _, h, w = batch.shape
        x = batch.to(self.device, self.dtype)
        if b == 1:
            x = torch.cat([x, x])
            self.padded += 1
        self.calls += 1
        self.inputs[kind] += b
        self.kind_pixels[kind] += b * h * w
        self.pixels += b * h * w
        out = self.forward(x)
        if b == 1:
            out = {k: v[:1] for k, v in out.items()}
        return out

    def accepts(self, hw: tuple[int, int], channels: int = 3) -> bool:
        """Whether ``forward`` runs on a zero input of spatial shape ``hw``."""
        try:
            self(torch.zeros(2, channels, *hw), "probe")
        except (RuntimeError, ValueError):
            return False
        return True

    def stats(self, **fields: Any) -> "OcclusionStats":
        """Freeze the counters into an :class:`OcclusionStats`."""
        from rfstore.core.occlusion import OcclusionStats

        return OcclusionStats(
            forward_calls=self.calls,
            occluded_inputs=self.inputs["occluded"],
            occluded_pixels=self.kind_pixels["occluded"],
            reference_inputs=self.inputs["reference"],
            guard_inputs=self.inputs["guard"],
            probe_inputs=self.inputs["probe"],
            padded_inputs=self.padded,
            input_pixels=self.pixels,
            **fields,
        )


def run_items(
    runner: Runner,
    kind: str,
    images: torch.Tensor,
    fill: torch.Tensor,
    groups: Sequence[Group],
    gidx: np.ndarray,
    oy: np.ndarray,
    ox: np.ndarray,
    size: int,
    batch_size: int,
    consume: Callable[[dict[str, torch.Tensor], np.ndarray, slice, Group], None],
    flat: np.ndarray | None = None,
) -> None:
    """Evaluate occluded crops of equal-shape groups in batches of ``batch_size``.

    Item ``i`` is group ``groups[gidx[i]]``'s crop with the window whose top-left
    image pixel is ``(oy[i], ox[i])`` replaced by the same window of ``fill``
    (windows may stick out of the crop; the outside part is irrelevant to the
    group's units).  Each batch is built without a Python loop over items:
    ``where(window_mask, fill_crops[local], base_crops[local])``.

    Parameters
    ----------
    runner : Runner
    kind : str
        Counter to charge (``"occluded"`` or ``"guard"``).
    images, fill : torch.Tensor, shape (N, C, H, W)
        ``fill`` may be a broadcast view.
    groups : sequence of Group
        All with the same crop shape ``(h, w)``.
    gidx : np.ndarray, shape (M,), int
        Group of each item, non-decreasing.
    oy, ox : np.ndarray, shape (M,), int
        Window top-left in image pixels.
    size : int
        Window side.
    batch_size : int
    consume : callable
        ``consume(outputs, flat[rows], rows, group)`` for each run of items of
        one group inside a batch; ``rows`` indexes the batch.
    flat : np.ndarray, shape (M,), optional
        Per-item payload handed to ``consume`` (e.g. flat position indices).
    """
    h, w = groups[0].shape
    dev = runner.device
    flat = np.zeros(gidx.size, dtype=np.int64) if flat is None else flat
    y0 = np.array([g.crop[0] for g in groups], dtype=np.int64)
    x0 = np.array([g.crop[2] for g in groups], dtype=np.int64)
    ar_h = torch.arange(h, device=dev)[None, :]
    ar_w = torch.arange(w, device=dev)[None, :]
    for c in range(0, gidx.size, batch_size):
        g_chunk = gidx[c : c + batch_size]
        uniq, local = np.unique(g_chunk, return_inverse=True)
        crops = [groups[u].crop for u in uniq]
        bases = torch.stack([images[groups[u].image, :, a:b, p:q] for u, (a, b, p, q) in zip(uniq, crops)])
        fills = torch.stack([fill[groups[u].image, :, a:b, p:q] for u, (a, b, p, q) in zip(uniq, crops)])
        bases = bases.to(dev, runner.dtype)
        fills = fills.to(dev, runner.dtype)
        cy = torch.from_numpy(oy[c : c + batch_size] - y0[g_chunk]).to(dev)[:, None]
        cx = torch.from_numpy(ox[c : c + batch_size] - x0[g_chunk]).to(dev)[:, None]
        in_y = (ar_h >= cy) & (ar_h < cy + size)  # (B, h)
        in_x = (ar_w >= cx) & (ar_w < cx + size)  # (B, w)
        window = in_y[:, None, :, None] & in_x[:, None, None, :]  # (B, 1, h, w)
        li = torch.from_numpy(local).to(dev)
        out = runner(torch.where(window, fills[li], bases[li]), kind)
        bounds = np.searchsorted(g_chunk, uniq, side="left").tolist() + [g_chunk.size]
        for k, u in enumerate(uniq):
            rows = slice(bounds[k], bounds[k + 1])
            consume(out, flat[c : c + batch_size][rows], rows, groups[u])
