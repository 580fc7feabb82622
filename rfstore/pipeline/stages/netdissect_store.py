"""What ``dissect --method netdissect`` keeps in the store: Broden's tables, checkpoints, results.

Network group (written by ``init`` for a Broden folder): ``image_split`` (image) str;
``concept`` (concept) int64, Broden's label numbers 0..L-1; ``concept_label`` (concept)
str, their names; ``concept_category`` (concept) str, their category over every category
("" for none); ``category`` (category) str, the category names.

Pass 1 (``netdissect-quantile``) checkpoints, in its bookkeeping group: two slots
``slot0``, ``slot1``, each ``blocks`` (block) uint8, the image blocks folded into it,
and per layer ``top`` (unit, kept) float32 and ``count`` (one) int64, a
:class:`~rfstore.stats.quantile.TopQuantile` state. A save writes the slot whose
``blocks`` differ from the stage's done flags: ``blocks`` first set invalid (2),
then the state, then ``blocks``, and only then the done flags; so the slot whose
``blocks`` equal the done flags is always a complete state of exactly those blocks,
whenever a run is killed. The thresholds go to ``{layer}/threshold`` (unit) float64.

Pass 2 (``netdissect-tally``) writes each block's counts to its own row of
``truth`` (block, concept), ``images`` (block) and per layer ``intersect`` (block,
unit, concept) and ``activation`` (block, unit, category), int64, and the reason
each unreadable image was left out to ``image_error`` (image position): whole
chunks, so a block redone after a kill writes the same bytes again.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rfstore.stats.netdissect import Tally
from rfstore.stats.quantile import TopQuantile
from rfstore.datasets.broden import BrodenDataset
from rfstore.errors import RfstoreError
from rfstore.store import ArraySpec, Store
from rfstore.store.layout import write_coordinate

SLOTS = ("slot0", "slot1")
_INVALID = 2


def str_array(store: Store, path: str, dim: str, values: Sequence[str]) -> None:
    n = len(values)
    store.create_array(path, ArraySpec((n,), "str", (dim,), (max(n, 1),), ""), data=np.asarray(values, dtype=object))


def write_broden_tables(store: Store, network: str, dataset: BrodenDataset, split: str | None,
                        paths: Sequence[str]) -> None:
    """Record a Broden folder's splits, labels and categories in the network group (see module docstring)."""
    rows = dataset.rows_by_path()
    str_array(store, f"{network}/image_split", "image", [rows[p].split for p in paths])
    write_coordinate(store, network, "concept", np.arange(dataset.n_labels))
    str_array(store, f"{network}/concept_label", "concept", dataset.label_names)
    primary = dataset.primary_categories()
    str_array(store, f"{network}/concept_category", "concept",
               [dataset.categories[c] if c >= 0 else "" for c in primary])
    str_array(store, f"{network}/category", "category", dataset.categories)
    store.update_attrs(network, {"dataset_kind": "broden", "broden_split": split, "broden_digest": dataset.digest,
                                 "broden_categories": list(dataset.categories)})


class QuantileCheckpoint:
    """The two checkpoint slots of pass 1 in group ``group`` (see the module docstring).

    Parameters
    ----------
    store : Store
        The open store.
    group : str
        The pass's bookkeeping group.
    capacity : dict
        Per layer, ``(units, kept)``: the shape of its state.
    """

    def __init__(self, store: Store, group: str, capacity: dict[str, tuple[int, int]]) -> None:
        self.store, self.group, self.capacity = store, group, capacity

    def create(self, n_blocks: int) -> None:
        """Empty slots (call after the stage's bookkeeping was started afresh)."""
        for slot in SLOTS:
            self.store.create_array(f"{self.group}/{slot}/blocks",
                                    ArraySpec((n_blocks,), "uint8", ("block",), (max(n_blocks, 1),), _INVALID),
                                    data=np.full(n_blocks, _INVALID, np.uint8))
            for layer, (units, kept) in self.capacity.items():
                base = f"{self.group}/{slot}/{layer}"
                self.store.create_array(f"{base}/top", ArraySpec((units, kept), "float32", ("unit", "kept"),
                                                                 (max(1, min(units, (1 << 20) // max(kept, 1))), kept),
                                                                 float("nan")))
                self.store.create_array(f"{base}/count", ArraySpec((1,), "int64", ("one",), (1,), 0))

    def load(self, done: np.ndarray, empty: dict[str, TopQuantile]) -> dict[str, TopQuantile]:
        """The state of exactly the ``done`` blocks: ``empty`` when none is done, else the matching slot's."""
        if not done.any():
            return empty
        for slot in SLOTS:
            if np.array_equal(self.store.read(f"{self.group}/{slot}/blocks"), done.astype(np.uint8)):
                return {layer: self._read(slot, layer, quantile) for layer, quantile in empty.items()}
        raise RfstoreError(f"no checkpoint of the netdissect quantiles matches its done flags in {self.store.path} "
                           f"(was the store edited?): rerun with --force")

    def _read(self, slot: str, layer: str, empty: TopQuantile) -> TopQuantile:
        base = f"{self.group}/{slot}/{layer}"
        count = int(self.store.read(f"{base}/count")[0])
        kept = min(count, empty.capacity)
        top = self.store.read(f"{base}/top", (slice(None), slice(0, kept)))
        state = empty.state_dict() | {"count": count, "top": top}
        return TopQuantile.from_state_dict(state)

    def save(self, quantiles: dict[str, TopQuantile], folded: np.ndarray, done: np.ndarray) -> None:
        """Write ``quantiles`` (the state of blocks ``folded``) into the slot that ``done`` does not describe."""
        slot = next(s for s in SLOTS if not np.array_equal(self.store.read(f"{self.group}/{s}/blocks"),
                                                          done.astype(np.uint8)))
        blocks = f"{self.group}/{slot}/blocks"
        self.store.write(blocks, slice(None), np.full(folded.size, _INVALID, np.uint8))
        self.store.flush()
        for layer, quantile in quantiles.items():
            state = quantile.state_dict()
            base = f"{self.group}/{slot}/{layer}"
            self.store.write(f"{base}/top", (slice(None), slice(0, state["top"].shape[1])), state["top"])
            self.store.write(f"{base}/count", slice(None), np.array([state["count"]], dtype=np.int64))
        self.store.flush()
        self.store.write(blocks, slice(None), folded.astype(np.uint8))
        self.store.flush()

    def remove(self) -> None:
        """Drop both slots (once the pass is complete: its thresholds are kept apart)."""
        for slot in SLOTS:
            self.store.delete(f"{self.group}/{slot}")
        self.store.flush()


class TallyPartials:
    """Pass 2's per-block counts in group ``group`` (see the module docstring)."""

    def __init__(self, store: Store, group: str) -> None:
        self.store, self.group = store, group

    def create(self, units: dict[str, int], n_labels: int, n_categories: int, n_blocks: int, n_images: int,
               block: int) -> None:
        self.store.create_array(f"{self.group}/truth", ArraySpec((n_blocks, n_labels), "int64", ("block", "concept"),
                                                                 (1, max(n_labels, 1)), 0))
        self.store.create_array(f"{self.group}/images", ArraySpec((n_blocks,), "int64", ("block",), (1,), 0))
        self.store.create_array(f"{self.group}/image_error", ArraySpec((n_images,), "str", ("image",), (block,), ""))
        for layer, n_units in units.items():
            for name, width, dim in (("intersect", n_labels, "concept"), ("activation", n_categories, "category")):
                self.store.create_array(f"{self.group}/{layer}/{name}",
                                        ArraySpec((n_blocks, n_units, width), "int64", ("block", "unit", dim),
                                                  (1, max(n_units, 1), max(width, 1)), 0))

    def write(self, block_id: int, rows: slice, tallies: dict[str, Tally], truth: np.ndarray, images: int,
              errors: np.ndarray) -> None:
        """One block's counts (``rows``: its image positions; ``errors`` ``(len(rows),)`` str, "" if read)."""
        for layer, tally in tallies.items():
            self.store.write(f"{self.group}/{layer}/intersect", block_id, tally.intersect)
            self.store.write(f"{self.group}/{layer}/activation", block_id, tally.activation)
        self.store.write(f"{self.group}/truth", block_id, truth)
        self.store.write(f"{self.group}/images", slice(block_id, block_id + 1), np.array([images], dtype=np.int64))
        self.store.write(f"{self.group}/image_error", rows, errors)

    def totals(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """``intersect (U, L)`` and ``activation (U, C)`` summed over the blocks, one block at a time."""
        spec = self.store.array_spec(f"{self.group}/{layer}/intersect")
        intersect = np.zeros(spec.shape[1:], dtype=np.int64)
        activation = np.zeros(self.store.array_spec(f"{self.group}/{layer}/activation").shape[1:], dtype=np.int64)
        for block_id in range(spec.shape[0]):
            intersect += self.store.read(f"{self.group}/{layer}/intersect", block_id)
            activation += self.store.read(f"{self.group}/{layer}/activation", block_id)
        return intersect, activation

    def truth(self) -> np.ndarray:
        return self.store.read(f"{self.group}/truth").sum(axis=0)

    def images(self) -> int:
        return int(self.store.read(f"{self.group}/images").sum())

    def errors(self) -> np.ndarray:
        return self.store.read(f"{self.group}/image_error")
