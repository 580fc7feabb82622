"""Stage-like writer of ``compare --match``: each unit's best-correlated unit in another network.

For two networks run on the same image folder (:func:`rfstore.results.compare.same_images`), every
layer pair of the side-by-side table (the aligned rows where both have a layer,
:meth:`rfstore.results.compare.Comparison.layer_pairs`) gets the Pearson correlation of every unit of one
layer with every unit of the other over the images' ``act_max``, streamed by blocks of image rows
(:mod:`rfstore.results.correlate`); each unit keeps its best match, in both directions.

Reads: both networks' attrs, ``image_path``, ``act_max`` of the paired layers and their activations
records. Writes, per layer pair and direction (:func:`rfstore.store.layout.match_specs`),
``/{network}/{layer}/match/{other}/{other_layer}/``: ``unit`` (coordinate), ``best_unit``, ``best_corr``
(unit); attrs ``n_images``, ``activations`` (both networks' activations tokens). Bookkeeping in
``/{first}/_rfstore/match/{second}`` (the two names sorted): a complete record with the same
fingerprint (the same layer pairs and activations) is not redone; anything else (a changed or killed
computation, ``--force``) is recomputed from scratch, each network's old pairings with the other removed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rfstore.errors import MissingInputError
from rfstore.results.compare import NotComparableError, compare_networks, same_images
from rfstore.results.correlate import act_max_rows, best_matches, correlate_layers
from rfstore.results.matches import activations_token
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import Plan, StageProgress, fingerprint
from rfstore.store import Store
from rfstore.store.layout import MATCH_GROUP, layer_group, match_group, match_specs, write_coordinate

STAGE = "match"
STAGE_VERSION = 1


@dataclass(frozen=True)
class MatchResult:
    """What ``run_match`` did: ``plan`` (SKIP when already current), the layer pairs and the images used."""

    plan: Plan
    pairs: list[tuple[str, str]]
    n_images: int


def _tokens(store: Store, a: str, b: str) -> dict[str, str]:
    tokens = {}
    for name in (a, b):
        token = activations_token(store, name)
        if token is None:
            raise MissingInputError(f"compare --match needs the activations of {name}: "
                                    f"run 'rfstore activations {store.path} --network {name}' first")
        tokens[name] = token
    return tokens


def _clear(store: Store, network: str, other: str) -> None:
    """Remove every pairing of ``network``'s layers with ``other``."""
    for layer in NetworkContext.open(store, network).layers:
        store.delete(f"{layer_group(network, layer)}/{MATCH_GROUP}/{other}")


def _write(store: Store, network: str, layer: str, other: str, other_layer: str, corr: np.ndarray,
           attrs: dict) -> None:
    """One direction: for each unit of ``layer`` (the rows of ``corr``, (p, q)) its best unit of ``other_layer``."""
    group = match_group(network, layer, other, other_layer)
    store.require_group(group)
    best, r = best_matches(corr)
    write_coordinate(store, group, "unit", np.arange(len(best)))
    specs = match_specs(len(best))
    store.create_array(f"{group}/best_unit", specs["best_unit"], data=best)
    store.create_array(f"{group}/best_corr", specs["best_corr"], data=r.astype(np.float32))
    store.update_attrs(group, attrs | {"network": network, "layer": layer, "other_network": other,
                                       "other_layer": other_layer})


def run_match(store: Store, a: str, b: str, force: bool = False, block: int | None = None,
              progress: Callable[[int], Callable[[int], None]] | None = None) -> MatchResult:
    """Pair every unit of ``a`` with its best-correlated unit of ``b`` and back, per aligned layer pair.

    ``block``: image rows read at a time (default: ``a``'s activations block, 1024); ``progress(total
    images)`` returns a function called with the images done after each block.

    Raises
    ------
    NotComparableError
        ``a`` and ``b`` were not run on the same image folder.
    MissingInputError
        The activations of either are not complete.
    """
    if a == b:
        raise NotComparableError(f"compare --match needs two different networks, not {a} twice")
    reason = same_images(store, a, b)
    if reason is not None:
        raise NotComparableError(f"compare --match pairs units over the same images, but {reason}; "
                                 f"init both networks on the same --data folder")
    tokens = _tokens(store, a, b)
    pairs = compare_networks(store, [a, b]).layer_pairs(a, b)
    first, second = sorted((a, b))
    tracker = StageProgress(store, first, STAGE, second)
    params = {"pairs": sorted([la, lb] if a == first else [lb, la] for la, lb in pairs)}
    fp = fingerprint(STAGE, STAGE_VERSION, params, [tokens[first], tokens[second]])
    n_images = store.array_spec(f"{a}/image_path").shape[0]
    if tracker.is_complete(fp) and not force:
        return MatchResult(Plan.SKIP, pairs, n_images)
    tracker.begin(params, fp, n_blocks=1, force=True)
    _clear(store, a, b)
    _clear(store, b, a)
    tick = progress(n_images) if progress else None
    stats = correlate_layers(store, a, b, pairs, block or act_max_rows(store, a), tick)
    for (la, lb), stat in zip(pairs, stats):
        corr = stat.correlation()
        attrs = {"n_images": stat.n, "activations": tokens}
        _write(store, a, la, b, lb, corr, attrs)
        _write(store, b, lb, a, la, corr.T, attrs)
    tracker.complete()
    return MatchResult(Plan.FRESH, pairs, n_images)
