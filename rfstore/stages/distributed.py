"""The stages' work as Dask tasks: ``activations`` by image blocks, ``topk`` by shards (``occlude``'s own tasks are in its module).

The client (the process that runs the stage, holding the store's writer lock)
plans as in one process (:class:`~rfstore.stages.progress.StageProgress`
decides what is left, the arrays are created), submits one task per unit of
checkpointed work, and flags each one done as its result arrives. Workers open
the Zarr store with :func:`~rfstore.store.open_store_for_worker` (no lock) and
write only whole chunks that their task owns:

- ``activations``: one task per block of :data:`~rfstore.store.layout.IMAGE_BLOCK`
  images. Reads the images; writes the block's rows of ``act_max``, ``act_mean``,
  ``act_y``, ``act_x`` (chunk rows = one block), ``act_map`` (chunks divide the
  block) and ``/{network}/image_error`` (one chunk per block).
- ``topk``: one task per image block of a layer, reading ``act_*`` (read-only)
  and returning that shard's partial top-K; the client merges them
  (:meth:`~rfstore.core.topk.RunningTopK.merge`, independent of order and
  sharding) and writes ``topk_*`` itself.
- ``occlude``: one task per block of images (:mod:`rfstore.stages.occlude`).

Each task computes exactly what one process computes for the same block or
group, in the same batches, so a cluster run gives the same bits. A task checks
that its stage's generation (:attr:`~rfstore.stages.progress.StageRecord.generation`)
is still the store's right before writing, so a straggler from a run restarted
with ``--force`` cannot overwrite newer results. Workers keep the network
loaded between tasks (one per process).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rfstore.core.topk import RunningTopK
from rfstore.errors import MissingInputError, RfstoreError
from rfstore.stages.cluster import Task, completed
from rfstore.stages.context import NetworkContext
from rfstore.stages.progress import StageProgress
from rfstore.store import Store, open_store, open_store_for_worker
from rfstore.store.layout import layer_group

#: the network loaded by this worker process, keyed by (model spec, parameters sha256).
_LOADED: dict[tuple[str, str], Any] = {}


class StaleTaskError(RfstoreError):
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


# -- activations -------------------------------------------------------------------
def activations_task(store_path: str, network: str, config: Any, generation: str, block: tuple[int, int, int],
                     units: dict[str, int], map_shapes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Worker: compute one block of images and write its rows; returns (block id, images)."""
    from rfstore.stages.activations import _stream, write_block_arrays

    block_id, start, stop = block
    with open_store_for_worker(store_path) as store:
        ctx = WorkerContext(store, network)

        def write(_: int, buffer: Any) -> None:
            check_generation(store, network, "activations", None, generation)
            write_block_arrays(ctx, buffer)

        # DataLoader worker processes cannot start inside a Dask worker (a daemon process)
        _stream(ctx, dataclasses.replace(config, num_workers=0), None, [block], list(range(start, stop)),
                units, map_shapes, None, write)
    return block_id, stop - start


def activations_on_cluster(client: Any, ctx: NetworkContext, config: Any, tracker: StageProgress,
                           blocks: list[tuple[int, int, int]], units: dict[str, int],
                           map_shapes: dict[str, tuple[int, int]], progress: Callable | None) -> None:
    """Client: one task per block still to do; flag each block done when its task returns.

    ``progress`` is the one-process stage's wrapper of an iterator of batches
    (it counts ``len(batch[0])`` images); here each item is a finished block.
    """
    path, generation = store_location(ctx.store), stage_generation(tracker)
    tasks = [Task(f"activations-block{block[0]}", activations_task,
                  (path, ctx.network, config, generation, block, units, map_shapes)) for block in blocks]

    def finished() -> Iterator[tuple[range]]:
        for block_id, n_images in completed(client, tasks):
            tracker.mark_done(block_id)
            yield (range(n_images),)

    stream = finished() if progress is None else progress(finished(), sum(stop - start for _, start, stop in blocks))
    for _ in stream:
        pass


# -- topk --------------------------------------------------------------------------
def topk_task(store_path: str, network: str, layer: str, k: int, measure: str, rows: tuple[int, int]) -> dict:
    """Worker: the partial top-K (a :meth:`RunningTopK.state_dict`) of images ``rows`` of one layer."""
    group = layer_group(network, layer)
    with open_store(store_path, "r") as store:
        n_units = store.array_spec(f"{group}/act_{measure}").shape[1]
        topk = RunningTopK(n_units, k, extras=("y", "x"))
        selection = slice(*rows)
        topk.update(store.read(f"{group}/act_{measure}", selection), np.arange(*rows),
                    y=store.read(f"{group}/act_y", selection), x=store.read(f"{group}/act_x", selection))
    return topk.state_dict()


def layer_topk_on_cluster(client: Any, ctx: NetworkContext, layer: str, config: Any) -> dict[str, np.ndarray]:
    """Client: ``(U, K)`` arrays ``image``, ``value``, ``y``, ``x`` of one layer, merged from per-block shards."""
    group = layer_group(ctx.network, layer)
    source = f"{group}/act_{config.measure}"
    if not ctx.store.is_array(source):
        raise MissingInputError(f"layer {layer} has no activations: run 'rfstore activations' first")
    block = ctx.store.array_spec(source).chunks[0]
    path = store_location(ctx.store)
    tasks = [Task(f"topk-{layer}-rows{start}", topk_task,
                  (path, ctx.network, layer, config.k, config.measure, (start, min(ctx.n_images, start + block))))
             for start in range(0, ctx.n_images, block)]
    merged = RunningTopK(ctx.n_units(layer), config.k, extras=("y", "x"))
    for state in completed(client, tasks):
        merged.merge(RunningTopK.from_state_dict(state))
    return merged.result()
