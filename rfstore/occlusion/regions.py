"""Which feature-map cells an occluder changes, step by step (pure NumPy geometry).

An occluder at top-left ``p`` changes the input rows ``[p, p + size - 1]``.  A step's
output cell ``o`` reads the padded input cells ``o * stride + [0, kernel)``, so it can
change only if that window meets the changed input: per axis the changed cells of every
step form an interval ``C_s(p)``, and a position's changed region is the rectangle of
its two axes' intervals.  A *cone* (the cells some targets read, transitively) restricts
it: ``R_s(p) = C_s(p) ∩ cone_s``.  A cell of ``R_s`` reads only cells of ``cone_{s-1}``,
and those of them that changed are in ``R_{s-1}``; every other cell it reads holds its
unoccluded value.  So recomputing exactly ``R_s`` from ``R_{s-1}`` and the unoccluded
maps is exact, and a cell's recomputed value does not depend on the cone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rfstore.occlusion.chain import Step

__all__ = ["AxisRegions", "axis_changed", "axis_cone", "Regions"]


@dataclass(frozen=True)
class AxisRegions:
    """Per step and position along one axis, the inclusive interval ``[lo, hi]`` of cells to recompute.

    Attributes
    ----------
    lo, hi : np.ndarray, shape (S, n_p), int64
        Empty where ``lo > hi``.
    """

    lo: np.ndarray
    hi: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """``(S, n_p)`` interval lengths (0 where empty)."""
        return np.maximum(self.hi - self.lo + 1, 0)

    def restrict(self, cone: Sequence[tuple[int, int]]) -> AxisRegions:
        """Intervals intersected with ``cone[s] = (lo, hi)`` for each step."""
        c = np.asarray(cone, dtype=np.int64)
        return AxisRegions(np.maximum(self.lo, c[:, :1]), np.minimum(self.hi, c[:, 1:]))

    def upto(self, depth: int) -> AxisRegions:
        return AxisRegions(self.lo[:depth], self.hi[:depth])


def axis_changed(pos: np.ndarray, size: int, steps: Sequence[Step], lengths: Sequence[int], axis: int) -> AxisRegions:
    """``C_s(p)`` along ``axis`` for every step and occluder position ``pos`` ``(n_p,)``.

    ``lengths`` are the map lengths before each step and after the last (``S + 1``).
    """
    lo = np.maximum(pos, 0)
    hi = np.minimum(pos + size - 1, lengths[0] - 1)
    los, his = [], []
    for s, st in enumerate(steps):
        k, stride, pl = st.kernel[axis], st.stride[axis], st.pad[2 * axis]
        lo = np.maximum(-((k - 1 - pl - lo) // stride), 0)  # ceil((lo + pl - k + 1) / stride)
        hi = np.minimum((hi + pl) // stride, lengths[s + 1] - 1)
        los.append(lo)
        his.append(hi)
    return AxisRegions(np.stack(los).astype(np.int64), np.stack(his).astype(np.int64))


def axis_cone(steps: Sequence[Step], lengths: Sequence[int], axis: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """Cells of each step's output that the cells ``[lo, hi]`` of the last step's output read, transitively."""
    cone = [(lo, hi)]
    for s in range(len(steps) - 1, 0, -1):
        k, stride, pl = steps[s].kernel[axis], steps[s].stride[axis], steps[s].pad[2 * axis]
        a, b = cone[0]
        cone.insert(0, (max(0, a * stride - pl), min(lengths[s] - 1, b * stride - pl + k - 1)))
    return cone


@dataclass(frozen=True)
class Regions:
    """The recomputed rectangles of a set of positions: ``R_s(p) = y[s, iy(p)] x x[s, ix(p)]``.

    Attributes
    ----------
    y, x : AxisRegions
        Intervals per step for every row / column of occluder positions.
    """

    y: AxisRegions
    x: AxisRegions

    @property
    def depth(self) -> int:
        return int(self.y.lo.shape[0])

    def cells(self, mask: np.ndarray) -> np.ndarray:
        """``(S,)`` cells recomputed per step, summed over the positions of ``mask`` ``(n_oy, n_ox)``."""
        ly, lx = self.y.lengths.astype(np.float64), self.x.lengths.astype(np.float64)
        return np.einsum("sy,yx,sx->s", ly, mask.astype(np.float64), lx)

    def changes(self) -> np.ndarray:
        """``(n_oy, n_ox)`` bool: positions whose region is non-empty at every step."""
        return np.outer((self.y.lengths > 0).all(0), (self.x.lengths > 0).all(0))
