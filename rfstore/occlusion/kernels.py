"""Recomputing feature-map cells from gathered taps: the arithmetic of every incremental pass.

A step's *source* is a ``(rows, C)`` matrix, channels last: the padded unoccluded input
map (row-major) followed by fresh rows (the occluder fill at step 0, the previous step's
recomputed cells later).  A cell is recomputed from the source rows of its window's taps,
``index (M, taps)``.  Cells are computed in calls of exactly :func:`call_rows` rows (the
last call padded), each call the same operation on the same shapes:

* convolutions without groups: im2col rows times the weight matrix (one ``addmm``);
* grouped convolutions: the module's weights on one ``(taps_y, taps_x)`` window per cell;
* max pooling: the maximum over the taps (exact in any order);
* average pooling: the taps summed one after another, then divided;
* padding and leading pointwise modules: a copy of the one tap;

then the step's pointwise modules on ``(rows, C, 1, 1)``.  A cell's value is therefore a
function of its taps' values only: it does not depend on which other cells, positions or
targets are computed with it, so every strategy of the engine gives the same bits
(``tests/test_occlusion_engine.py`` checks the row-place independence of the matrix
products this relies on).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rfstore.occlusion.chain import Step

__all__ = ["CALL_ROWS", "CALL_ROWS_CUDA", "call_rows", "to_device", "compute_cells"]

CALL_ROWS = 256
"""Cells per call on a CPU (fixed: a call's shapes never depend on the work)."""
CALL_ROWS_CUDA = 1024
"""Cells per call on a GPU, where each call costs a launch (fixed too)."""


def call_rows(device: torch.device) -> int:
    """Cells per call on ``device``."""
    return CALL_ROWS_CUDA if device.type == "cuda" else CALL_ROWS


def to_device(index: np.ndarray, device: torch.device) -> torch.Tensor:
    """An int64 index array on ``device``; to a GPU through pinned memory, without waiting for the copy."""
    tensor = torch.from_numpy(np.require(index, np.int64, ["C_CONTIGUOUS", "WRITEABLE"]))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _window_op(step: Step, taps: torch.Tensor, dest: torch.Tensor | None = None) -> torch.Tensor:
    """``taps`` (R, T, C_in) -> cells (R, C_out) before the pointwise modules (into ``dest`` when given)."""
    rows, count, channels = taps.shape
    if step.kind == "conv" and step.matrix is not None:
        if dest is not None and step.matrix.shape[1] == step.channels:
            return torch.addmm(step.bias, taps.view(rows, count * channels), step.matrix, out=dest)
        out = torch.addmm(step.bias, taps.view(rows, count * channels), step.matrix)
        return out[:, : step.channels]
    if step.kind == "conv":
        ty, tx = step.taps
        windows = taps.view(rows, ty, tx, channels).permute(0, 3, 1, 2).contiguous()
        conv = step.conv
        return F.conv2d(windows, conv.weight, conv.bias, 1, 0, 1, conv.groups).view(rows, -1)
    if step.kind == "max":
        return taps.amax(dim=1)
    if step.kind == "avg":
        total = taps[:, 0].clone()
        for t in range(1, count):
            total += taps[:, t]
        return total / step.divisor
    return taps[:, 0]


def _pointwise(step: Step, cells: torch.Tensor) -> torch.Tensor:
    """The step's pointwise modules on ``cells`` (R, C), as a ``(R, C, 1, 1)`` batch (in place where they are)."""
    if not step.post:
        return cells
    y = cells.view(cells.shape[0], cells.shape[1], 1, 1) if cells.is_contiguous() else \
        cells.reshape(cells.shape[0], cells.shape[1], 1, 1)
    for module in step.post:
        y = module(y)
    return y.view(cells.shape[0], -1)


def compute_cells(step: Step, source: torch.Tensor, index: torch.Tensor, out: torch.Tensor,
                  gather: torch.Tensor | None = None) -> torch.Tensor:
    """Recompute ``M`` cells of ``step`` into ``out`` ``(M, C_out)``.

    Parameters
    ----------
    step : Step
    source : torch.Tensor, shape (rows, C_in)
        The step's gather source.
    index : torch.Tensor, shape (M, T), int64
        Source rows of each cell's taps, ``T = taps_y * taps_x`` in row-major tap order.
    out : torch.Tensor, shape (M, C_out)
        Destination (e.g. the next step's fresh rows).
    gather : torch.Tensor, optional, shape (>= rows_per_call * T, C_in)
        Reusable buffer for the gathered taps (allocated when missing or too small).

    Returns
    -------
    torch.Tensor
        The gather buffer, to pass to the next call.
    """
    m, count = index.shape
    rows = call_rows(source.device)
    need = rows * count
    if gather is None or gather.shape[0] < need or gather.shape[1] != source.shape[1] or gather.dtype != source.dtype:
        gather = source.new_empty((need, source.shape[1]))
    buffer = gather[:need]
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        chunk = index[start:stop]
        if stop - start < rows:
            chunk = torch.cat([chunk, chunk.new_zeros((rows - (stop - start), count))])
        torch.index_select(source, 0, chunk.reshape(-1), out=buffer)
        taps = buffer.view(rows, count, -1)
        if stop - start == rows:  # straight into the destination (same call shapes, same bits)
            cells = _window_op(step, taps, out[start:stop])
            cells = _pointwise(step, cells)
            if cells.data_ptr() != out[start:stop].data_ptr():
                out[start:stop] = cells
        else:
            out[start:stop] = _pointwise(step, _window_op(step, taps))[: stop - start]
    return gather
