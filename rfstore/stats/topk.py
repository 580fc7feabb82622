"""A running per-unit top-K over a stream of image blocks (pure, checkpointable).

Ranking: highest value first; ties broken by the lower image index; NaN values
(unreadable images, units not computed) are never selected. The result does not
depend on how the stream is split into blocks, nor on the order of the blocks,
so partial top-Ks of shards merge into the top-K of the whole.
"""
from __future__ import annotations

from typing import Any

import numpy as np

_NO_IMAGE = np.iinfo(np.int64).max


class RunningTopK:
    """Top-K images of every unit, updated block by block.

    Parameters
    ----------
    n_units : int
        Number of units U.
    k : int
        Number of images kept per unit.
    extras : tuple of str
        Names of per-(image, unit) integer quantities carried along with each
        value (e.g. ``("y", "x")``, the argmax position).
    """

    def __init__(self, n_units: int, k: int, extras: tuple[str, ...] = ()) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.n_units = n_units
        self.k = k
        self.extras = tuple(extras)
        self.values = np.full((k, n_units), -np.inf, dtype=np.float64)
        self.images = np.full((k, n_units), _NO_IMAGE, dtype=np.int64)
        self.extra_values = {name: np.full((k, n_units), -1, dtype=np.int64) for name in self.extras}

    def update(self, values: np.ndarray, image_ids: np.ndarray, **extras: np.ndarray) -> None:
        """Merge one block.

        Parameters
        ----------
        values : np.ndarray
            ``(B, U)`` activations of B images.
        image_ids : np.ndarray
            ``(B,)`` image indices of the rows.
        **extras : np.ndarray
            ``(B, U)`` arrays named as in ``extras``.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.n_units:
            raise ValueError(f"expected values of shape (B, {self.n_units}), got {values.shape}")
        images = np.broadcast_to(np.asarray(image_ids, dtype=np.int64)[:, None], values.shape)
        valid = ~np.isnan(values)
        values = np.where(valid, values, -np.inf)
        images = np.where(valid, images, _NO_IMAGE)
        block_extras = {name: np.asarray(extras[name], dtype=np.int64) for name in self.extras}
        self._merge_rows(values, images, block_extras)

    def merge(self, other: RunningTopK) -> None:
        """Merge another partial top-K (e.g. of another shard of the images)."""
        if (other.n_units, other.k, other.extras) != (self.n_units, self.k, self.extras):
            raise ValueError("cannot merge top-Ks of different shapes")
        self._merge_rows(other.values, other.images, other.extra_values)

    def _merge_rows(self, values: np.ndarray, images: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        """Keep the K best of the current rows and ``(R, U)`` candidate rows."""
        all_values = np.concatenate([self.values, values])
        all_images = np.concatenate([self.images, images])
        order = np.lexsort((all_images, -all_values), axis=0)[: self.k]
        self.values = np.take_along_axis(all_values, order, axis=0)
        self.images = np.take_along_axis(all_images, order, axis=0)
        for name in self.extras:
            merged = np.concatenate([self.extra_values[name], extras[name]])
            self.extra_values[name] = np.take_along_axis(merged, order, axis=0)

    def result(self) -> dict[str, np.ndarray]:
        """``(U, K)`` arrays: ``image`` (-1 where fewer than K images), ``value`` (NaN there) and the extras."""
        empty = self.images == _NO_IMAGE
        out = {
            "image": np.where(empty, -1, self.images).T.copy(),
            "value": np.where(empty, np.nan, self.values).T.copy(),
        }
        for name in self.extras:
            out[name] = np.where(empty, -1, self.extra_values[name]).T.copy()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_units": self.n_units, "k": self.k, "extras": list(self.extras),
            "values": self.values.copy(), "images": self.images.copy(),
            **{f"extra_{n}": v.copy() for n, v in self.extra_values.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RunningTopK:
        topk = cls(int(state["n_units"]), int(state["k"]), tuple(state["extras"]))
        topk.values = np.asarray(state["values"], dtype=np.float64).copy()
        topk.images = np.asarray(state["images"], dtype=np.int64).copy()
        for name in topk.extras:
            topk.extra_values[name] = np.asarray(state[f"extra_{name}"], dtype=np.int64).copy()
        return topk
