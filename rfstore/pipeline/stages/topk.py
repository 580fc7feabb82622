"""Stage ``topk``: each unit's K most activating images.

Reads, per layer: ``act_max`` or ``act_mean`` (``--measure``), ``act_y``, ``act_x`` (image, unit).
Writes, per layer: ``topk_image``, ``topk_value``, ``topk_y``, ``topk_x`` (unit, rank), and a
``rank`` coordinate; layer attrs ``topk_k``, ``topk_measure``.

Ranking: highest value first, ties to the lower image index; unreadable images
(NaN) are never ranked; a unit with fewer than K readable images gets -1/NaN in
the remaining ranks. The activations are read one image block at a time, so
memory does not grow with the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rfstore.pipeline import defaults
from rfstore.recorded.progress import complete_token, is_current
from rfstore.pipeline.stage import Job, Stage
from rfstore.stats.topk import RunningTopK
from rfstore.errors import MissingInputError, UsageError
from rfstore.pipeline.cluster import Task, completed, require_zarr
from rfstore.pipeline.worker import store_location
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import Plan, StageProgress, fingerprint, upstream_token
from rfstore.store import open_store
from rfstore.store.layout import IMAGE_BLOCK, layer_group, topk_specs, write_coordinate

STAGE_VERSION = 1


@dataclass(frozen=True)
class TopKConfig:
    k: int = defaults.K
    measure: str = defaults.MEASURE

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UsageError(f"must be at least 1, not {self.k}", "k")
        if self.measure not in ("max", "mean"):
            raise UsageError(f"must be max or mean, not {self.measure!r}", "measure")

    def params(self) -> dict[str, object]:
        return {"k": self.k, "measure": self.measure}


def run_topk(ctx: NetworkContext, config: TopKConfig, force: bool = False, client: Any = None) -> dict[str, Plan]:
    """Compute and store the top-K of every layer; returns what was done per layer.

    With a ``distributed.Client`` each image block's partial top-K is a task on its
    cluster and this process merges them (same result, see :mod:`rfstore.stats.topk`).
    """
    if client is not None:
        require_zarr(ctx.store.path)
    upstream = upstream_token(ctx.store, ctx.network, "activations", needed_by="topk")
    plans = {}
    for layer in ctx.layers:
        tracker = StageProgress(ctx.store, ctx.network, "topk", layer)
        fp = fingerprint("topk", STAGE_VERSION, config.params(), [upstream])
        plan = tracker.begin(config.params(), fp, 1, force, upstream=("activations",))
        plans[layer] = plan
        if plan is Plan.SKIP:
            continue
        if client is not None:
            result = layer_topk_on_cluster(client, ctx, layer, config)
        else:
            result = layer_topk(ctx, layer, config)
        group = layer_group(ctx.network, layer)
        write_coordinate(ctx.store, group, "rank", np.arange(config.k))
        for name, spec in topk_specs(ctx.n_units(layer), config.k).items():
            ctx.store.create_array(f"{group}/{name}", spec, data=result[name.removeprefix("topk_")])
        ctx.store.update_attrs(group, {"topk_k": config.k, "topk_measure": config.measure})
        tracker.mark_done(0)
        tracker.complete()
    return plans


def layer_topk(ctx: NetworkContext, layer: str, config: TopKConfig) -> dict[str, np.ndarray]:
    """``(U, K)`` arrays ``image``, ``value``, ``y``, ``x`` of one layer, streamed over image blocks."""
    group = layer_group(ctx.network, layer)
    if not ctx.store.is_array(f"{group}/act_{config.measure}"):
        raise MissingInputError(f"layer {layer} has no activations: run 'rfstore activations' first")
    topk = RunningTopK(ctx.n_units(layer), config.k, extras=("y", "x"))
    for start in range(0, ctx.n_images, IMAGE_BLOCK):
        rows = slice(start, min(ctx.n_images, start + IMAGE_BLOCK))
        topk.update(
            ctx.store.read(f"{group}/act_{config.measure}", rows),
            np.arange(rows.start, rows.stop),
            y=ctx.store.read(f"{group}/act_y", rows),
            x=ctx.store.read(f"{group}/act_x", rows),
        )
    return topk.result()


# -- on a Dask cluster -------------------------------------------------------------
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


# -- the stage ---------------------------------------------------------------------------
def _run(job: Job) -> dict[str, Plan]:
    return run_topk(job.ctx, job.config, job.force, client=job.client)


def summary(plans: dict[str, Plan], ctx: NetworkContext) -> list[str]:
    done = [layer for layer, plan in plans.items() if plan is not Plan.SKIP]
    if not done:
        return ["topk: already complete with these settings; nothing to do"]
    k, measure = (ctx.layer_attrs(done[0]).get(key) for key in ("topk_k", "topk_measure"))
    return [f"topk: K={k} by {measure} for {len(done)} layer(s)"]


def changed(ctx: NetworkContext, config: TopKConfig) -> bool:
    token = complete_token(ctx.store, ctx.network, "activations")
    return not is_current(ctx.store, ctx.network, "topk", STAGE_VERSION, config.params(),
                          {layer: token for layer in ctx.layers})


STAGE = Stage("topk", ("activations",), TopKConfig, _run, summary, changed, distributed=True)
