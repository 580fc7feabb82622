"""Pearson correlations between the units of two layers over the images' ``act_max``, streamed by blocks.

``act_max`` (image, unit) can be 100k images x 4096 units per layer: :func:`correlate_layers` reads one
block of image rows of each layer at a time and merges it into running statistics (means, co-moments
in float64, by the pairwise update of Chan, Golub and LeVeque), so memory is one block of rows per layer
plus the ``(p, q)`` co-moment matrix of each layer pair.

An image takes part in a layer pair's correlations when every unit of both layers has a finite
``act_max`` for it (images not computed yet, or unreadable, hold NaN). A unit whose ``act_max`` is the
same for every such image (a dead ReLU) has no correlation: NaN, and it is nobody's best match.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rfstore.store import Store
from rfstore.store.layout import layer_group


class RunningCorrelation:
    """Pearson correlation of every column of ``a`` (p columns) with every column of ``b`` (q columns),
    from row blocks given one at a time to :meth:`update`.
    """

    def __init__(self, p: int, q: int) -> None:
        self.n = 0
        self.mean_a, self.mean_b = np.zeros(p), np.zeros(q)
        self.m2_a, self.m2_b = np.zeros(p), np.zeros(q)  # sums of squared deviations from the mean
        self.co = np.zeros((p, q))  # sum of products of the deviations
        self.min_a, self.max_a = np.full(p, np.inf), np.full(p, -np.inf)
        self.min_b, self.max_b = np.full(q, np.inf), np.full(q, -np.inf)

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge a block: ``a`` (rows, p) and ``b`` (rows, q), the same images in the same order.

        Rows with a non-finite value in ``a`` or ``b`` are left out.
        """
        keep = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
        a, b = np.asarray(a[keep], dtype=np.float64), np.asarray(b[keep], dtype=np.float64)
        m = len(a)
        if m == 0:
            return
        block_a, block_b = a.mean(axis=0), b.mean(axis=0)
        da, db = a - block_a, b - block_b
        n = self.n + m
        delta_a, delta_b = block_a - self.mean_a, block_b - self.mean_b
        weight = self.n * m / n
        self.co += da.T @ db + np.outer(delta_a, delta_b) * weight
        self.m2_a += np.einsum("ij,ij->j", da, da) + delta_a ** 2 * weight
        self.m2_b += np.einsum("ij,ij->j", db, db) + delta_b ** 2 * weight
        self.mean_a += delta_a * (m / n)
        self.mean_b += delta_b * (m / n)
        self.n = n
        np.minimum(self.min_a, a.min(axis=0), out=self.min_a)
        np.maximum(self.max_a, a.max(axis=0), out=self.max_a)
        np.minimum(self.min_b, b.min(axis=0), out=self.min_b)
        np.maximum(self.max_b, b.max(axis=0), out=self.max_b)

    def correlation(self) -> np.ndarray:
        """``(p, q)`` float64 Pearson r; NaN for a unit constant over the rows (or with fewer than 2 rows)."""
        varies_a = self.max_a > self.min_a
        varies_b = self.max_b > self.min_b
        scale = np.sqrt(np.outer(np.where(varies_a, self.m2_a, np.nan), np.where(varies_b, self.m2_b, np.nan)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.clip(self.co / scale, -1.0, 1.0)


def best_matches(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``corr`` (p, q): the column of highest correlation (-1 when the row is all NaN;
    the lowest column on ties) and that correlation. Returns ``(best (p,) int64, r (p,) float64)``."""
    valid = ~np.isnan(corr)
    has = valid.any(axis=1)
    best = np.where(valid, corr, -np.inf).argmax(axis=1)
    r = np.where(has, corr[np.arange(len(corr)), best], np.nan)
    return np.where(has, best, -1).astype(np.int64), r


def act_max_rows(store: Store, network: str) -> int:
    """Images per chunk of the network's per-image arrays (the activations stage's block)."""
    return int(store.array_spec(f"{network}/image_error").chunks[0])


def correlate_layers(store: Store, a: str, b: str, pairs: Sequence[tuple[str, str]], block: int,
                     tick: Callable[[int], None] | None = None) -> list[RunningCorrelation]:
    """Correlations of each layer pair ``(layer of a, layer of b)`` over the images' ``act_max``.

    Reads ``act_max`` of each layer ``block`` image rows at a time (networks ``a`` and ``b`` must hold the
    same images in the same order); ``tick(rows)`` after each block. Returns one
    :class:`RunningCorrelation` per pair, in order.
    """
    n_images = store.array_spec(f"{a}/image_path").shape[0]
    stats = []
    for la, lb in pairs:
        p = store.array_spec(f"{layer_group(a, la)}/act_max").shape[1]
        q = store.array_spec(f"{layer_group(b, lb)}/act_max").shape[1]
        stats.append(RunningCorrelation(p, q))
    for start in range(0, n_images, block):
        rows = slice(start, min(n_images, start + block))
        for (la, lb), stat in zip(pairs, stats):
            stat.update(store.read(f"{layer_group(a, la)}/act_max", rows),
                        store.read(f"{layer_group(b, lb)}/act_max", rows))
        if tick:
            tick(rows.stop - rows.start)
    return stats
