"""An exact streaming per-channel quantile near the top of a distribution (pure numpy, checkpointable).

Network Dissection thresholds each unit at the 99.5% quantile of its activations
over every position of every image. Over a large dataset those values do not fit
in memory, but the quantile needs only the values above it: with ``n`` values in
all and numpy's default ``linear`` method at level ``q``, the result interpolates
the sorted values at positions ``floor(v)`` and ``floor(v) + 1``, ``v = q (n - 1)``,
so only the ``kept(q, n) = n - floor(v)`` largest values matter.

:class:`TopQuantile` is told an upper bound ``max_count`` on ``n`` in advance and
keeps, per channel, the ``kept(q, max_count)`` largest values seen (the bound is
needed: a value that is not among the largest of the first values seen may still
be needed after more, smaller values arrive). ``kept`` grows with ``n``, so the
values kept under the bound include those needed for any ``n <= max_count``, and
:meth:`TopQuantile.result` equals ``numpy.quantile(values, q)`` of all the values
(as float64) exactly, whatever the order or grouping of the stream.

Memory. With ``C`` channels, values of ``b`` bytes (4 for float32) and ``B``
values per channel in one :meth:`~TopQuantile.add` call, the kept values take
``C * kept(q, max_count) * b`` bytes and a compaction needs at most twice that
plus one call's block::

    peak bytes <= C * (2 * kept(q, max_count) + B) * b,   kept(q, n) ~ (1 - q) * n + 1

e.g. the 99.5% quantile of 256 units of 13 x 13 maps over 100,000 images keeps
84,501 float32 values per unit: 87 MB, 173 MB while compacting.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def _virtual_index(n: int, level: float) -> float:
    """numpy's virtual index of the ``linear`` method, ``(n - 1) * q``, as numpy computes it."""
    return float((n - 1) * np.float64(level))


def kept(level: float, n: int) -> int:
    """How many of the largest of ``n`` values the ``level`` quantile depends on (0 for ``n = 0``)."""
    if n <= 0:
        return 0
    virtual = _virtual_index(n, level)
    if virtual >= n - 1:
        return 1
    return n - math.floor(virtual)


def quantile_of_top(top_descending: np.ndarray, n: int, level: float) -> np.ndarray:
    """``numpy.quantile`` (linear) of ``n`` values per row, from the largest ones sorted descending.

    Parameters
    ----------
    top_descending : numpy.ndarray
        ``(C, m)`` the ``m >= kept(level, n)`` largest values of each row, largest first.
    n : int
        How many values each row has in all.
    level : float
        Quantile level in [0, 1].

    Returns
    -------
    numpy.ndarray
        ``(C,)`` float64, NaN where ``n == 0``.
    """
    rows = top_descending.shape[0]
    if n == 0:
        return np.full(rows, np.nan)
    virtual = _virtual_index(n, level)
    if virtual >= n - 1:  # numpy takes the largest value
        return top_descending[:, 0].astype(np.float64)
    previous = math.floor(virtual)
    gamma = np.float64(virtual - previous)
    rank = n - 1 - previous  # rank from the top of sorted position ``previous``
    if rank >= top_descending.shape[1]:
        raise ValueError(f"the quantile needs the {rank + 1} largest values, only {top_descending.shape[1]} are kept")
    below = top_descending[:, rank].astype(np.float64)
    above = top_descending[:, rank - 1].astype(np.float64)
    diff = above - below
    if gamma >= 0.5:  # numpy's _lerp: from the upper neighbour when gamma >= 0.5
        return above - diff * (1 - gamma)
    return below + diff * gamma


class TopQuantile:
    """The exact ``level`` quantile of each of ``n_channels`` streams of values (see the module docstring).

    Parameters
    ----------
    n_channels : int
        Number of channels C (units).
    level : float
        Quantile level in (0, 1), e.g. 0.995 for the top 0.5%.
    max_count : int
        Upper bound on the number of values each channel will receive.
    dtype : str
        Storage type of the kept values (``float32`` for float32 activations: exact and half the memory).
    """

    def __init__(self, n_channels: int, level: float, max_count: int, dtype: str = "float64") -> None:
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"level must lie in [0, 1], not {level}")
        self.n_channels, self.level, self.max_count = int(n_channels), float(level), int(max_count)
        self.dtype = np.dtype(dtype)
        self.capacity = kept(self.level, self.max_count)
        self.count = 0
        self._top = np.zeros((self.n_channels, 0), dtype=self.dtype)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    @property
    def nbytes(self) -> int:
        """Bytes held now by the kept and pending values."""
        return self._top.nbytes + sum(block.nbytes for block in self._pending)

    def add(self, values: np.ndarray) -> None:
        """Add ``(N, C)`` values: N observations of every channel (NaN is refused)."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.n_channels:
            raise ValueError(f"expected values of shape (N, {self.n_channels}), got {values.shape}")
        self._add_rows(np.ascontiguousarray(values.T, dtype=self.dtype), values.shape[0])

    def add_candidates(self, top: np.ndarray, count: int) -> None:
        """Add a block of ``count`` values per channel of which only the ``(C, m)`` largest are given.

        The caller must give at least ``min(count, capacity)`` of each channel's
        largest values (``torch.topk`` on a device, say); the rest cannot matter.
        """
        top = np.asarray(top, dtype=self.dtype)
        if top.ndim != 2 or top.shape[0] != self.n_channels or top.shape[1] < min(count, self.capacity):
            raise ValueError(f"expected at least the {min(count, self.capacity)} largest values of each of "
                             f"{self.n_channels} channels, got shape {top.shape}")
        self._add_rows(top, count)

    def _add_rows(self, rows: np.ndarray, count: int) -> None:
        if self.count + count > self.max_count:
            raise ValueError(f"{self.count + count} values per channel exceed max_count {self.max_count}")
        if np.isnan(rows).any():
            raise ValueError("the values hold NaN, which has no place in a quantile")
        self.count += count
        if rows.shape[1]:
            self._pending.append(rows)
            self._pending_size += rows.shape[1]
        if self._pending_size >= max(self.capacity, 1):
            self._compact()

    def _compact(self) -> None:
        """Keep the ``capacity`` largest of the kept and pending values (unsorted)."""
        if not self._pending:
            return
        joined = np.concatenate([self._top, *self._pending], axis=1)
        self._pending, self._pending_size = [], 0
        keep = min(self.capacity, joined.shape[1])
        if keep < joined.shape[1]:
            joined = np.partition(joined, joined.shape[1] - keep, axis=1)[:, joined.shape[1] - keep:]
        self._top = np.ascontiguousarray(joined)

    def merge(self, other: TopQuantile) -> None:
        """Fold in another quantile of the same channels, level and bound (another shard of the stream)."""
        if (other.n_channels, other.level, other.max_count) != (self.n_channels, self.level, self.max_count):
            raise ValueError("cannot merge quantiles of different channels, levels or bounds")
        other._compact()
        self._add_rows(other._top.astype(self.dtype), other.count)

    def top(self) -> np.ndarray:
        """``(C, min(count, capacity))`` the largest values of each channel, largest first."""
        self._compact()
        return -np.sort(-self._top, axis=1)

    def result(self) -> np.ndarray:
        """``(C,)`` float64: ``numpy.quantile(all values as float64, level, axis=0)``; NaN before any value."""
        return quantile_of_top(self.top(), self.count, self.level)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: plain numbers and one ``(C, m)`` array of the kept values."""
        self._compact()
        return {"n_channels": self.n_channels, "level": self.level, "max_count": self.max_count,
                "dtype": self.dtype.name, "count": self.count, "top": self._top.copy()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TopQuantile:
        quantile = cls(int(state["n_channels"]), float(state["level"]), int(state["max_count"]), str(state["dtype"]))
        quantile.count = int(state["count"])
        quantile._top = np.ascontiguousarray(np.asarray(state["top"], dtype=quantile.dtype))
        return quantile
