"""Multiply-add cost model of the strategies, used by the planner and by ``rfstore plan``.

Costs are in *multiply-add equivalents*: the multiply-adds themselves plus the data
movement and the fixed work around them, each weighted by what it costs on a CPU
relative to one multiply-add in a matrix product.  The planner only compares costs;
``rfstore plan`` turns them into seconds with a calibration measured on the machine
(:class:`Calibration`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rfstore.occlusion.chain import Step
from rfstore.occlusion.regions import Regions

__all__ = ["GATHER_COST", "INDEX_COST", "CALL_COST", "BATCH_COST", "FORWARD_COST", "cell_cost", "pass_cost",
           "Calibration"]

GATHER_COST = 12.0
"""Per element gathered into a cell's taps (memory traffic)."""
INDEX_COST = 40.0
"""Per tap of a recomputed cell (index arithmetic on the host)."""
CALL_COST = 2.0e5
"""Per kernel call of a fixed number of cells."""
BATCH_COST = 3.0e6
"""Per step and batch of positions (planning the batch, launching its calls)."""
FORWARD_COST = 1.15
"""Per multiply-add of the network's own modules (a full pass, a crop or the tail), relative to a matrix product's."""


def cell_cost(step: Step, channels_in: int) -> float:
    """Cost of recomputing one cell of ``step`` whose input has ``channels_in`` channels."""
    taps = step.taps[0] * step.taps[1]
    return float(step.macs) + GATHER_COST * taps * channels_in + INDEX_COST * taps


def pass_cost(steps: list[Step], channels: list[int], regions: Regions, mask: np.ndarray, batch_size: int,
              rows_per_call: int = 256) -> float:
    """Cost of an incremental pass over the positions of ``mask`` with rectangles ``regions``.

    ``channels[s]`` is step ``s``'s input channels; ``regions.depth`` steps run.
    """
    depth = regions.depth
    if depth == 0:
        return 0.0
    cells = regions.cells(mask)
    per_cell = np.array([cell_cost(steps[s], channels[s]) for s in range(depth)])
    positions = int(mask.sum())
    batches = -(-positions // max(1, batch_size))
    calls = np.ceil(cells / rows_per_call).sum()
    return float(cells @ per_cell + calls * CALL_COST + batches * depth * BATCH_COST)


@dataclass(frozen=True)
class Calibration:
    """Seconds per cost unit on this machine, measured by running the engine for a few seconds.

    Attributes
    ----------
    incremental : float
        Seconds per cost unit of incremental passes.
    forward : float
        Seconds per cost unit of the network's own modules.
    """

    incremental: float
    forward: float

    def seconds(self, incremental_cost: float, forward_cost: float) -> float:
        return incremental_cost * self.incremental + forward_cost * self.forward
