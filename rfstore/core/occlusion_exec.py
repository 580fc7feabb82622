"""Execution side of the occlusion engine: counted forward calls, batched occluded crops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from rfstore.core.occlusion_plan import Group, Member, regroup

if TYPE_CHECKING:  # pragma: no cover
    from rfstore.core.occlusion import OcclusionTarget

__all__ = ["Consumer", "Runner", "run_items", "evaluate_groups", "reference", "unit_values", "min_extent", "guard"]

Consumer = Callable[[dict[str, torch.Tensor], np.ndarray, slice, Group], None]
"""``consume(outputs, payload[rows], rows, group)``: reads one group's rows of a batch."""

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
        b = batch.shape[0]
        x = batch.to(self.device, self.dtype)
        if b == 1:
            x = torch.cat([x, x])
            self.padded += 1
        self.count(kind, batch)
        out = self.forward(x)
        if b == 1:
            out = {k: v[:1] for k, v in out.items()}
        return out

    def count(self, kind: str, batch: torch.Tensor) -> None:
        """Charge one forward call on ``batch`` (B, C, h, w) to counter ``kind``."""
        b, _, h, w = batch.shape
        self.calls += 1
        self.inputs[kind] += b
        self.kind_pixels[kind] += b * h * w
        self.pixels += b * h * w

    def accepts(self, hw: tuple[int, int], channels: int = 3) -> bool:
        """Whether ``forward`` runs on a zero input of spatial shape ``hw``."""
        try:
            self(torch.zeros(2, channels, *hw), "probe")
        except (RuntimeError, ValueError):
            return False
        return True

    def counters(self) -> dict[str, int]:
        """Work counters, named as the fields of ``OcclusionStats``."""
        return {
            "forward_calls": self.calls,
            "occluded_inputs": self.inputs["occluded"],
            "occluded_pixels": self.kind_pixels["occluded"],
            "reference_inputs": self.inputs["reference"],
            "guard_inputs": self.inputs["guard"],
            "probe_inputs": self.inputs["probe"],
            "padded_inputs": self.padded,
            "input_pixels": self.pixels,
        }


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
    consume: Consumer,
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


def evaluate_groups(
    runner: Runner,
    images: torch.Tensor,
    fill: torch.Tensor,
    groups: Sequence[Group],
    pos_y: np.ndarray,
    pos_x: np.ndarray,
    size: int,
    batch_size: int,
    consume: Consumer,
) -> None:
    """Every group at every position of its mask; equal crop shapes share batches.

    Parameters
    ----------
    runner : Runner
    images, fill : torch.Tensor, shape (N, C, H, W)
    groups : sequence of Group
    pos_y, pos_x : np.ndarray, shapes (n_oy,), (n_ox,)
        Occluder positions.
    size, batch_size : int
    consume : Consumer
        Receives flat position indices ``iy * n_ox + ix`` as payload.
    """
    shapes: dict[tuple[int, int], list[Group]] = {}
    for g in groups:
        shapes.setdefault(g.shape, []).append(g)
    for gs in shapes.values():
        nz = [np.nonzero(g.mask.ravel())[0] for g in gs]
        gidx = np.repeat(np.arange(len(gs)), [f.size for f in nz])
        flat = np.concatenate(nz)
        oy, ox = pos_y[flat // pos_x.size], pos_x[flat % pos_x.size]
        run_items(runner, "occluded", images, fill, gs, gidx, oy, ox, size, batch_size, consume, flat)


def reference(
    runner: Runner,
    images: torch.Tensor,
    targets: Sequence[OcclusionTarget],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unoccluded full-image activations of the targets.

    Returns
    -------
    ref : np.ndarray, shape (T,), float64
        Activation at the target's location (or of the feature, for (B, C) outputs).
    scale : np.ndarray, shape (T,), float64
        max |activation| over the unit's map (|activation| for (B, C) outputs).
    linear : np.ndarray, shape (T,), bool
        Whether the layer's output is (B, C).
    """
    ref = np.zeros(len(targets), dtype=np.float64)
    scale = np.zeros(len(targets), dtype=np.float64)
    linear = np.zeros(len(targets), dtype=bool)
    img_ids = sorted({t.image for t in targets})
    by_img: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_img.setdefault(t.image, []).append(i)
    for c in range(0, len(img_ids), batch_size):
        chunk = img_ids[c : c + batch_size]
        out = runner(images[chunk], "reference")
        for row, img in enumerate(chunk):
            for i in by_img[img]:
                t = targets[i]
                act = out[t.layer][row, t.unit]
                linear[i] = act.ndim == 0
                ref[i] = float(act) if linear[i] else float(act[t.y, t.x])
                scale[i] = float(act.abs().max())
    return ref, scale, linear


def unit_values(out: dict[str, torch.Tensor], g: Group, rows: slice) -> np.ndarray:
    """Activations of every member of ``g`` on batch rows ``rows``: (M, r) float64."""
    vals = []
    for m in g.members:
        act = out[m.target.layer][rows, m.target.unit]
        if not m.linear:
            uy, ux = g.unit_index(m)
            act = act[:, uy, ux]
        vals.append(act)
    return torch.stack(vals).double().cpu().numpy()


def min_extent(runner: Runner, hw: tuple[int, int], channels: int) -> int:
    """Smallest side ``e`` such that ``forward`` accepts ``(min(e, H), min(e, W))`` inputs.

    Binary search; output sizes of conv/pool layers grow with the input, so
    acceptance is monotone in ``e``.
    """
    lo, hi = 1, max(hw)
    while lo < hi:
        mid = (lo + hi) // 2
        if runner.accepts((min(mid, hw[0]), min(mid, hw[1])), channels):
            hi = mid
        else:
            lo = mid + 1
    return lo


def guard(
    runner: Runner,
    images: torch.Tensor,
    groups: list[Group],
    ref: np.ndarray,
    scale: np.ndarray,
    rtol: float,
    batch_size: int,
) -> tuple[list[Group], dict[int, list[Member]]]:
    """Check each cropped member on its unoccluded crop; split off failures."""
    cropped = [g for g in groups if not g.full]
    ok: dict[int, bool] = {}

    def consume(out: dict[str, torch.Tensor], _flat: np.ndarray, rows: slice, g: Group) -> None:
        for m in g.members:
            uy, ux = g.unit_index(m)
            act = out[m.target.layer]
            inside = 0 <= uy < act.shape[-2] and 0 <= ux < act.shape[-1]
            v = float(act[rows.start, m.target.unit, uy, ux]) if inside else np.inf
            ok[m.index] = bool(abs(v - ref[m.index]) <= rtol * scale[m.index])

    shapes: dict[tuple[int, int], list[Group]] = {}
    for g in cropped:
        shapes.setdefault(g.shape, []).append(g)
    for gs in shapes.values():
        gidx = np.arange(len(gs))
        far = np.full(len(gs), -(10**9), dtype=np.int64)  # window outside: no occlusion
        run_items(runner, "guard", images, images, gs, gidx, far, far, 1, batch_size, consume)

    kept: list[Group] = []
    failed: dict[int, list[Member]] = {}
    for g in groups:
        if g.full:
            kept.append(g)
            continue
        good = [m for m in g.members if ok[m.index]]
        for m in g.members:
            if not ok[m.index]:
                failed.setdefault(g.image, []).append(m)
        if good:
            kept.append(g if len(good) == len(g.members) else regroup(g, good))
    return kept, failed
