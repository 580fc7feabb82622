"""The unit pairings ``compare --match`` wrote, read back.

Reads ``/{network}/{layer}/match/{other}/{other_layer}/``: ``best_unit``, ``best_corr`` (unit) and the
attrs ``n_images`` (images the correlations are over) and ``activations`` (the activations tokens of both
networks when it was computed, to tell whether it is still current); and each network's activations
record. Writes nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import StageProgress
from rfstore.store import Store
from rfstore.store.layout import MATCH_GROUP, layer_group, match_group


@dataclass(frozen=True)
class LayerMatch:
    """Each unit of ``network``'s ``layer`` and its best-correlated unit of ``other``'s ``other_layer``.

    ``best_unit`` (n_units,) int64, -1 where the unit has no correlation (constant over the images);
    ``best_corr`` (n_units,) float32 Pearson r, NaN there. ``current`` is False when either network's
    activations were recomputed since (rerun ``compare --match``).
    """

    network: str
    layer: str
    other: str
    other_layer: str
    best_unit: np.ndarray
    best_corr: np.ndarray
    n_images: int
    current: bool


def activations_token(store: Store, network: str) -> str | None:
    """The token of the network's complete activations, None when they are not complete."""
    record = StageProgress(store, network, "activations").record()
    return record.token if record is not None and record.state == "complete" else None


def read_match(store: Store, network: str, layer: str, other: str, other_layer: str) -> LayerMatch:
    """One direction of one layer pair (the group must exist)."""
    group = match_group(network, layer, other, other_layer)
    tokens = store.attrs(group).get("activations", {})
    current = all(tokens.get(name) == activations_token(store, name) for name in (network, other))
    return LayerMatch(network=network, layer=layer, other=other, other_layer=other_layer,
                      best_unit=store.read(f"{group}/best_unit"), best_corr=store.read(f"{group}/best_corr"),
                      n_images=int(store.attrs(group).get("n_images", 0)), current=current)


def read_matches(store: Store, network: str, other: str) -> list[LayerMatch]:
    """Every layer pair of ``network`` matched with ``other``, in ``network``'s layer order."""
    found = []
    for layer in NetworkContext.open(store, network).layers:
        base = f"{layer_group(network, layer)}/{MATCH_GROUP}/{other}"
        if store.has(base):
            groups, _ = store.children(base)
            found += [read_match(store, network, layer, other, other_layer) for other_layer in groups]
    return found


def mutual_pairs(forward: LayerMatch, backward: LayerMatch) -> list[tuple[int, int, float]]:
    """``(unit, other unit, r)`` of the units that are each other's best match, highest r first.

    ``forward`` matches a layer of network A to a layer of B, ``backward`` the same pair from B's side.
    """
    pairs = [(unit, int(other), float(forward.best_corr[unit])) for unit, other in enumerate(forward.best_unit)
             if other >= 0 and backward.best_unit[other] == unit]
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0]))


@dataclass(frozen=True)
class PairSummary:
    """A matched layer pair seen from both sides, with its mutual best pairs."""

    forward: LayerMatch
    backward: LayerMatch
    mutual: list[tuple[int, int, float]]


def pair_summaries(store: Store, a: str, b: str) -> list[PairSummary]:
    """Every matched layer pair of networks ``a`` and ``b`` (empty before ``compare --match``)."""
    summaries = []
    for forward in read_matches(store, a, b):
        if store.has(match_group(b, forward.other_layer, a, forward.layer)):
            backward = read_match(store, b, forward.other_layer, a, forward.layer)
            summaries.append(PairSummary(forward, backward, mutual_pairs(forward, backward)))
    return summaries


def _median(values: np.ndarray) -> str:
    values = values[~np.isnan(values)]
    return f"{float(np.median(values)):.2f}" if values.size else "-"


def format_pairs(summaries: Sequence[PairSummary], top: int) -> str:
    """The matched layer pairs as text: per pair its sizes, mutual best pairs and the ``top`` best of them."""
    lines = []
    for s in summaries:
        f, b = s.forward, s.backward
        stale = "" if f.current and b.current else " (STALE: activations recomputed since; rerun compare --match)"
        lines.append(f"{f.network} {f.layer} ({len(f.best_unit)} units) <-> {f.other} {f.other_layer} "
                     f"({len(b.best_unit)} units), over {f.n_images} images{stale}: {len(s.mutual)} mutual best "
                     f"pairs; median best r {_median(f.best_corr)} ({f.network}), {_median(b.best_corr)} ({f.other})")
        if s.mutual[:top]:
            width = max(len(f.network), len(f.other), 4) + 5
            lines.append(f"    {f.network + ' unit':>{width}}  {f.other + ' unit':>{width}}       r")
            lines += [f"    {unit:>{width}}  {other:>{width}}  {r:6.3f}" for unit, other, r in s.mutual[:top]]
    return "\n".join(lines)
