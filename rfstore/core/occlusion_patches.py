"""Execution of incremental occlusion groups: cached maps, gathered patches, batched steps.

Per image, :func:`build_cache` runs the chain once on the unoccluded image and
keeps every step's padded input map as a *source*: a ``(cells, C)`` matrix,
channels last, followed by room for fresh values (step 0: the padded occluder
fill; step ``s``: the previous step's output windows of one batch).  A patch is
then one ``index_select`` of rows of the source, with indices computed in NumPy
(cheap, single-threaded) that pick the fresh row where a cell was recomputed
and the cached row elsewhere.

:func:`run_group` evaluates a group's positions in batches: per step either a
padded patch ``(B, m_y, m_x, C)`` through the step's padding-free op, or, for
ungrouped convolutions with few outputs per window, im2col rows
``(B * n_y * n_x, taps * C)`` times the weight matrix.

On a GPU the host never waits inside a group: index arrays go to the device
from pinned memory without blocking, and the activations of all batches come
back in one copy at the end of the group, so the CPU queues the next batch
while the GPU runs this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from rfstore.core.occlusion_chain import Step
from rfstore.core.occlusion_incremental import IncGroup, Part, use_gemm

__all__ = ["Cache", "build_cache", "run_group", "fresh_rows", "gemm_rows", "GEMM_ROWS", "GEMM_ROWS_CUDA"]

GEMM_ROWS = 256
"""Rows per matrix product call on the CPU (fixed, for batch-size invariance)."""
GEMM_ROWS_CUDA = 1024
"""Rows per matrix product call on a GPU, where each call costs a launch (fixed too)."""


def gemm_rows(device: torch.device) -> int:
    """Rows per matrix product call on ``device``."""
    return GEMM_ROWS_CUDA if device.type == "cuda" else GEMM_ROWS


def to_device(index: np.ndarray, device: torch.device) -> torch.Tensor:
    """An int64 index array on ``device``; to a GPU through pinned memory, without waiting for the copy."""
    tensor = torch.from_numpy(np.require(index, np.int64, ["C_CONTIGUOUS", "WRITEABLE"]))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class Cache:
    """Gather sources of one image.

    Attributes
    ----------
    sources : list of torch.Tensor, length S
        Step ``s``: shape ``(hp * wp + extra_s, C_s)``; the first ``hp * wp``
        rows are the padded unoccluded input map, row-major.
    padded : list of tuple of int, length S
        ``(hp, wp)`` per step.
    """

    sources: list[torch.Tensor]
    padded: list[tuple[int, int]]


def fresh_rows(g: IncGroup, s: int, batch_size: int) -> int:
    """Rows step ``s``'s source needs after the map for group ``g`` (step 0: the fill)."""
    if s == 0:
        return 0
    return max(max(2, min(batch_size, int(p.mask.sum()))) * p.ys.n[s - 1] * p.xs.n[s - 1] for p in g.parts)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    return float((a - b).abs().max()) <= rtol * max(float(b.abs().max()), 1e-12)


def build_cache(
    modules: Sequence[nn.Module],
    steps: Sequence[Step],
    ends: Sequence[int],
    image: torch.Tensor,
    fill: torch.Tensor,
    extra: Sequence[int],
    reads: dict[int, list[tuple[int, int, int, int]]],
    check: bool,
    rtol: float,
) -> tuple[Cache, int, dict[int, float]]:
    """Run the chain on one unoccluded image and keep the gather sources.

    Parameters
    ----------
    modules : sequence of nn.Module
        The chain (run as is, so the maps are the network's own).
    steps, ends : sequences, length S
        Steps to cache and the chain index ending each.
    image, fill : torch.Tensor, shape (1, C, H, W)
    extra : sequence of int, length S
        Fresh rows to reserve per step (step 0 always gets the fill).
    reads : dict
        ``chain index -> [(key, unit, y, x)]`` activations to read on the way.
    check : bool
        Also check each step's emulation (explicit padding, padding-free op,
        pointwise modules) against the modules' output on the whole map.
    rtol : float
        Emulation tolerance, relative to the map's max |value|.

    Returns
    -------
    cache : Cache
    ok_depth : int
        Leading steps whose emulation matched (S when all did or unchecked).
    values : dict
        ``key -> activation`` read from the chain's own outputs.
    """
    x = image.clone()
    sources: list[torch.Tensor] = []
    padded_hw: list[tuple[int, int]] = []
    values: dict[int, float] = {}
    ok_depth, first = len(steps), 0
    for s, st in enumerate(steps):
        p = st.padded(x)
        hp, wp = p.shape[-2:]
        rows = hp * wp + (hp * wp if s == 0 else extra[s])
        src = p.new_empty((rows, p.shape[1]))
        src[: hp * wp].view(hp, wp, -1).copy_(p[0].permute(1, 2, 0))
        if s == 0:
            src[hp * wp :].view(hp, wp, -1).copy_(st.padded(fill)[0].permute(1, 2, 0))
        sources.append(src)
        padded_hw.append((hp, wp))
        emulated = st.run(p.clone()) if check and ok_depth == len(steps) else None
        for i in range(first, ends[s] + 1):
            x = modules[i](x)
            for key, unit, yy, xx in reads.get(i, ()):
                values[key] = float(x[0, unit, yy, xx])
        first = ends[s] + 1
        if emulated is not None and not _close(emulated, x, rtol):
            ok_depth = s
    return Cache(sources, padded_hw), ok_depth, values


def _cells(start: np.ndarray, step: Step, axis: int, n: int, m: int, gemm: bool) -> np.ndarray:
    """Padded input coordinates read per position along one axis.

    Returns (B, n, taps) (output, tap) coordinates for im2col, else (B, m, 1).
    """
    if gemm:
        outs = np.arange(n) * step.stride[axis]
        taps = np.arange(step.taps[axis]) * step.dilation[axis]
        return start[:, None, None] + outs[None, :, None] + taps[None, None, :]
    return start[:, None, None] + np.arange(m)[None, :, None]


def _indices(
    part: Part, s: int, step: Step, cache: Cache, iy: np.ndarray, ix: np.ndarray,
    pos: tuple[np.ndarray, np.ndarray], size: int, gemm: bool,
) -> np.ndarray:
    """Source rows of step ``s``'s patches (or im2col rows), shape (B, a, c, b, d)."""
    ys, xs = part.ys, part.xs
    hp, wp = cache.padded[s]
    ry = _cells(ys.patch[s][iy], step, 0, ys.n[s], ys.m[s], gemm)  # (B, a, b)
    rx = _cells(xs.patch[s][ix], step, 1, xs.n[s], xs.m[s], gemm)  # (B, c, d)
    idx = ry[:, :, None, :, None] * wp + rx[:, None, :, None, :]
    top, left = step.pad[0], step.pad[2]
    if s == 0:
        fy = ry - (pos[0][iy] + top)[:, None, None]
        fx = rx - (pos[1][ix] + left)[:, None, None]
        in_y, in_x = (fy >= 0) & (fy < size), (fx >= 0) & (fx < size)
        fresh = idx + hp * wp
    else:
        py, px = ys.n[s - 1], xs.n[s - 1]
        fy = ry - top - ys.start[s - 1][iy][:, None, None]
        fx = rx - left - xs.start[s - 1][ix][:, None, None]
        in_y, in_x = (fy >= 0) & (fy < py), (fx >= 0) & (fx < px)
        b = np.arange(iy.size)[:, None, None, None, None]
        fresh = hp * wp + (b * py + fy[:, :, None, :, None]) * px + fx[:, None, :, None, :]
    return np.where(in_y[:, :, None, :, None] & in_x[:, None, :, None, :], fresh, idx)


def _gemm(step: Step, src: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """im2col rows ``src[idx]`` (M, taps * C) times the step's matrix: (M, C_out).

    The product runs in calls of exactly :func:`gemm_rows` rows (the last one
    padded): BLAS may sum in another order for another number of rows, and a
    row's result must not depend on the batch it is in.
    """
    m, rows = idx.shape[0], gemm_rows(src.device)
    pad = -m % rows
    if pad:
        idx = np.concatenate([idx, np.zeros((pad, idx.shape[1]), dtype=idx.dtype)])
    mat = src.index_select(0, to_device(idx.reshape(-1), src.device)).view(m + pad, -1)
    w = step.matrix
    out = mat.new_empty((m + pad, w.shape[1]))  # type: ignore[union-attr]
    for i in range(0, m + pad, rows):
        if step.bias is None:
            torch.mm(mat[i : i + rows], w, out=out[i : i + rows])  # type: ignore[arg-type]
        else:
            torch.addmm(step.bias, mat[i : i + rows], w, out=out[i : i + rows])  # type: ignore[arg-type]
    return out[:m]


def run_group(
    g: IncGroup,
    steps: Sequence[Step],
    cache: Cache,
    pos: tuple[np.ndarray, np.ndarray],
    size: int,
    batch_size: int,
    consume: Callable[[np.ndarray, np.ndarray], None],
) -> int:
    """Evaluate every position of every part of ``g``; returns the number of positions.

    Parameters
    ----------
    g : IncGroup
    steps : sequence of Step
        The group's ``g.depth`` steps.
    cache : Cache
        Of image ``g.image``, with room for ``fresh_rows(g, s, batch_size)`` rows.
    pos : tuple of np.ndarray
        Occluder positions ``(pos_y, pos_x)``.
    size, batch_size : int
    consume : callable
        ``consume(flat, acts)`` with flat position indices ``(B,)`` and the
        members' activations ``(M, B)`` (float64).
    """
    n_ox = g.mask.shape[1]
    done = 0
    flats: list[np.ndarray] = []
    acts: list[torch.Tensor] = []  # on the device until the group ends: one copy back, no wait per batch
    for part in g.parts:
        flat_all = np.nonzero(part.mask.ravel())[0]
        for c in range(0, flat_all.size, batch_size):
            flat = flat_all[c : c + batch_size]
            run = np.concatenate([flat, flat]) if flat.size == 1 else flat  # never a batch of one
            acts.append(_batch(g, part, steps, cache, pos, size, run // n_ox, run % n_ox)[:, : flat.size])
            flats.append(flat)
        done += flat_all.size
    if acts:
        values = torch.cat(acts, dim=1).double().cpu().numpy()
        start = 0
        for flat in flats:
            consume(flat, values[:, start : start + flat.size])
            start += flat.size
    return done


def _batch(
    g: IncGroup, part: Part, steps: Sequence[Step], cache: Cache, pos: tuple[np.ndarray, np.ndarray],
    size: int, iy: np.ndarray, ix: np.ndarray,
) -> torch.Tensor:
    """Members' activations (M, B), on the device, at positions ``(iy, ix)`` (B,) of one part."""
    dev = cache.sources[0].device
    ys, xs, nb = part.ys, part.xs, iy.size
    y = cache.sources[0]
    for s in range(g.depth):
        st, src = steps[s], cache.sources[s]
        ny, nx, ch = ys.n[s], xs.n[s], src.shape[1]
        gemm = use_gemm(st, ch, ny * nx)
        idx = _indices(part, s, st, cache, iy, ix, pos, size, gemm)
        if gemm:
            y = st.finish(_gemm(st, src, idx.reshape(nb * ny * nx, -1)).view(nb, ny, nx, -1).permute(0, 3, 1, 2))
        else:
            rows = src.index_select(0, to_device(idx.reshape(-1), dev))
            y = st.run(rows.view(nb, ys.m[s], xs.m[s], ch).permute(0, 3, 1, 2))  # (B, C', ny, nx)
        if s + 1 < g.depth:
            hp, wp = cache.padded[s + 1]
            dst = cache.sources[s + 1][hp * wp : hp * wp + nb * ny * nx]
            dst.view(nb, ny, nx, -1).copy_(y.permute(0, 2, 3, 1))
    last = g.depth - 1
    uy = np.array([m.target.y for m in g.members])[:, None] - ys.start[last][iy][None, :]
    ux = np.array([m.target.x for m in g.members])[:, None] - xs.start[last][ix][None, :]
    bi = np.broadcast_to(np.arange(nb)[None, :], uy.shape)
    ui = np.broadcast_to(np.array([m.target.unit for m in g.members])[:, None], uy.shape)
    return y[tuple(to_device(a, dev) for a in (bi, ui, uy, ux))]
