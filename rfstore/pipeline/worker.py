"""What every stage's Dask tasks share: the worker's network, the store's location, the generation check.

The client (the process that runs a stage, holding the store's writer lock) plans as in one
process (:class:`~rfstore.recorded.progress.StageProgress` decides what is left, the arrays
are created), submits one task per unit of checkpointed work (each stage module holds its
own tasks) and flags each one done as its result arrives. Workers open the Zarr store with
:func:`~rfstore.store.open_store_for_worker` (no lock) and write only whole chunks that
their task owns. Each task computes exactly what one process computes for the same work,
in the same batches, so a cluster run gives the same bits. A task checks that its stage's
generation (:attr:`~rfstore.recorded.progress.StageRecord.generation`) is still the
store's right before writing, so a straggler from a run restarted with ``--force`` cannot
overwrite newer results. Workers keep the network loaded between tasks (one per process).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rfstore.errors import RfstoreError, StoreError
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import StageProgress
from rfstore.store import Store

#: the network loaded by this worker process, keyed by (model spec, parameters sha256).
_LOADED: dict[tuple[str, str], Any] = {}


class StaleTaskError(StoreError):
    """A task's stage was restarted (``--force``) after the task was sent; it wrote nothing."""


class WorkerContext(NetworkContext):
    """A :class:`NetworkContext` that keeps the loaded network for the next task of this process."""

    def load_model(self) -> Any:
        key = (json.dumps(self.attrs["model"], sort_keys=True), str(self.attrs.get("parameters_sha256")))
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = super().load_model()
        return _LOADED[key]


def store_location(store: Store) -> str:
    """The store's absolute path, as the workers must open it."""
    return str(Path(store.path).resolve())


def check_generation(store: Store, network: str, stage: str, layer: str | None, generation: str) -> None:
    """Raise :class:`StaleTaskError` unless ``stage`` is still at ``generation`` in the store."""
    record = StageProgress(store, network, stage, layer).record()
    if record is None or record.generation != generation:
        what = stage if layer is None else f"{stage} of layer {layer}"
        raise StaleTaskError(f"{what} was restarted after this task was sent; its results were not written")


def stage_generation(tracker: StageProgress) -> str:
    """The generation of a running stage (a task checks it before writing)."""
    record = tracker.record()
    if record is None:
        raise RfstoreError(f"{tracker.label} has no record in the store")
    return record.generation
