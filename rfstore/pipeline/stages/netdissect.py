"""Stage ``dissect --method netdissect``: Network Dissection's dataset-wide IoU on a Broden folder.

Bau et al. 2017 as NetDissect-Lite computes it (:mod:`rfstore.stats.netdissect`
defines every count): every image of the split that the chosen categories
annotate goes through the network twice.

1. ``netdissect-quantile``: each unit's 99.5% quantile over every position of
   every image, exact and streaming (:class:`~rfstore.stats.quantile.TopQuantile`:
   only the values above it are kept; no activation map is stored).
2. ``netdissect-tally``: each map resized to its image's segmentation and
   thresholded; intersections, the labels' totals and the per-category
   activation counted per block of images.

Both passes work in blocks of :data:`~rfstore.store.layout.IMAGE_BLOCK` images
flagged done in the store (:mod:`rfstore.pipeline.stages.netdissect_store` says how), so
a killed run resumes with the blocks not done and gives the same numbers; with a
Dask client each block is a task (:func:`quantile_task`, :func:`tally_task`)
whose result the client folds in. The quantiles' state is saved at most every
``checkpoint_seconds`` (and at the end of the pass): a state is about 0.5% of
the activation values, and saving it after every block would write it over and over.

Reads: the Broden folder (checked against init's ``broden_digest``), the network,
``image_path`` and ``image_split``. Writes, per layer, the group
``{network}/{layer}/netdissect`` (:func:`~rfstore.store.layout.netdissect_specs`),
with attrs ``split``, ``categories``, ``quantile``, ``min_iou``, ``images`` (dissected),
``unreadable_images`` and ``detectors``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfstore.pipeline import defaults
from rfstore.pipeline.stage import Job, Stage, counted
from rfstore.stats.netdissect import DETECTOR_IOU, TOP_QUANTILE, best_labels, iou
from rfstore.stats.quantile import TopQuantile
from rfstore.datasets.broden import BrodenDataset, read_broden
from rfstore.errors import MissingInputError, RfstoreError
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.devices import resolve_device
from rfstore.pipeline.stages.netdissect_passes import Block, DissectionPlan, QuantileWork, TallyWork, run_blocks
from rfstore.pipeline.stages.netdissect_store import QuantileCheckpoint, TallyPartials, str_array
from rfstore.recorded.progress import Plan, StageProgress, fingerprint
from rfstore.store import ArraySpec, layout
from rfstore.store.layout import netdissect_group, netdissect_specs, write_coordinate

STAGE_VERSION = 1
QUANTILE_STAGE, TALLY_STAGE = "netdissect-quantile", "netdissect-tally"


class NotBrodenError(MissingInputError):
    """The store's dataset is not a Broden folder: there are no Broden annotations to dissect against."""


@dataclass(frozen=True)
class NetDissectConfig:
    """Parameters of ``dissect --method netdissect``.

    ``layers``, ``split`` and ``categories`` choose what is dissected (they make the
    fingerprint); ``min_iou`` only decides which units count as detectors, and the
    rest only how the work runs.
    """

    layers: tuple[str, ...] = ()
    split: str | None = None
    categories: tuple[str, ...] = ()
    min_iou: float = defaults.MIN_IOU
    batch_size: int = defaults.NETDISSECT_BATCH_SIZE
    device: str = defaults.DEVICE
    num_workers: int | None = None
    checkpoint_seconds: float = defaults.CHECKPOINT_SECONDS

    def params(self) -> dict[str, object]:
        return {"layers": list(self.layers), "split": self.split, "categories": list(self.categories),
                "quantile": TOP_QUANTILE}


@dataclass
class NetDissectResult:
    """What :func:`run_netdissect` did."""

    quantile_plan: Plan
    tally_plan: Plan
    images: int = 0
    detectors: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    min_iou: float = 0.04


# -- what to dissect ------------------------------------------------------------------
def open_broden(ctx: NetworkContext) -> BrodenDataset:
    """The store's Broden folder, checked to be the one init recorded."""
    if ctx.attrs.get("dataset_kind") != "broden":
        raise NotBrodenError(f"dissect --method netdissect needs a Broden dataset, and {ctx.dataset_root} is not one: "
                             f"run 'rfstore init' with --data pointing at a Broden folder (index.csv, label.csv, "
                             f"category.csv, images/)")
    dataset = read_broden(ctx.dataset_root)
    if dataset.digest != ctx.attrs.get("broden_digest"):
        raise RfstoreError(f"the Broden folder {ctx.dataset_root} changed since 'rfstore init' (its CSV files differ): "
                           f"rerun 'rfstore init --force'")
    return dataset


def make_plan(ctx: NetworkContext, dataset: BrodenDataset, config: NetDissectConfig, block: int) -> DissectionPlan:
    """The images (of the split, annotated in the chosen categories), conv layers and labels to dissect."""
    crop = ctx.preprocessing.crop
    if crop is not None:
        raise RfstoreError(f"the store's preprocessing crops the images to {crop}x{crop}, but Network Dissection "
                           f"compares activation maps with segmentations of the whole image: run 'rfstore init "
                           f"--force' without --preprocess/--crop (a Broden folder's default keeps images whole)")
    chosen = dataset.category_indices(config.categories)
    layers = [layer for layer in ctx.check_layers(list(config.layers)) if ctx.layer_attrs(layer)["kind"] == "conv"]
    if config.layers and len(layers) != len(config.layers) or not layers:
        convs = [name for name in ctx.layers if ctx.layer_attrs(name)["kind"] == "conv"]
        raise RfstoreError("dissect --method netdissect needs conv layers (a linear layer has no activation map); "
                           f"conv layers here: {', '.join(convs) or 'none'}")
    splits = ctx.store.read(f"{ctx.network}/image_split")
    if config.split is not None and config.split not in set(splits):
        raise RfstoreError(f"no image of split {config.split!r} in the store (it has {', '.join(sorted(set(splits)))})")
    by_path = dataset.rows_by_path()
    rows = [by_path[str(path)] for path in ctx.image_paths()]
    images = np.array([i for i, row in enumerate(rows) if (config.split is None or splits[i] == config.split)
                       and row.has_data(chosen)], dtype=np.int64)
    if not images.size:
        names = ", ".join(dataset.categories[c] for c in chosen)
        raise RfstoreError(f"no image{' of split ' + config.split if config.split else ''} of the store is annotated "
                           f"in the categories {names}")
    return DissectionPlan(dataset, chosen, dataset.primary_categories(chosen), images, tuple(rows[i] for i in images),
                          layers, {layer: ctx.n_units(layer) for layer in layers},
                          {layer: tuple(ctx.layer_attrs(layer)["output_shape"][1:3]) for layer in layers}, block)


def _begin(ctx: NetworkContext, dataset: BrodenDataset, stage: str, config: NetDissectConfig, upstream: str,
           force: bool, after: str) -> tuple[StageProgress, Plan, DissectionPlan]:
    """Start or resume a pass; a pass resumed keeps the block size it started with."""
    tracker = StageProgress(ctx.store, ctx.network, stage)
    record = tracker.record()
    fp = fingerprint(stage, STAGE_VERSION, config.params(), [upstream])
    resuming = not force and record is not None and record.fingerprint == fp
    block = int(record.params["block"]) if resuming else layout.IMAGE_BLOCK
    plan = make_plan(ctx, dataset, config, block)
    return tracker, tracker.begin(config.params() | {"block": block}, fp, plan.n_blocks, force, upstream=(after,)), plan


# -- the stage ------------------------------------------------------------------------
def run_netdissect(ctx: NetworkContext, config: NetDissectConfig, force: bool = False,
                   progress: Callable[[str], Callable[[Iterator, int], Iterator]] | None = None,
                   client: Any = None) -> NetDissectResult:
    """Dissect the conv layers on the store's Broden folder (see the module docstring).

    ``progress(description)`` wraps each pass's iterator of batches; with a
    ``distributed.Client`` the blocks run as tasks on its cluster.
    """
    if client is not None:
        require_zarr(ctx.store.path)
    dataset = open_broden(ctx)
    tracker, plan1, plan = _begin(ctx, dataset, QUANTILE_STAGE, config, ctx.attrs["init_fingerprint"], force, "init")
    thresholds = _quantile_pass(ctx, plan, config, tracker, plan1, progress, client)
    token = tracker.record().token
    tally_tracker, plan2, plan = _begin(ctx, dataset, TALLY_STAGE, config, token, force, QUANTILE_STAGE)
    partials = _tally_pass(ctx, plan, config, thresholds, tally_tracker, plan2, progress, client)
    result = NetDissectResult(plan1, plan2, partials.images(), min_iou=config.min_iou)
    paths = ctx.image_paths()
    result.unreadable = [(str(paths[plan.images[p]]), str(e)) for p, e in enumerate(partials.errors()) if e]
    for layer in plan.layers:
        result.detectors[layer] = _write_results(ctx, plan, config, layer, thresholds[layer], partials,
                                                 tally_tracker.record().token, len(result.unreadable))
    return result


def _quantile_pass(ctx: NetworkContext, plan: DissectionPlan, config: NetDissectConfig, tracker: StageProgress,
                   state: Plan, progress: Callable | None, client: Any) -> dict[str, np.ndarray]:
    """Pass 1: each unit's threshold, ``(U,)`` float64 per layer."""
    checkpoint = QuantileCheckpoint(ctx.store, tracker.group, plan.capacity())
    if state is not Plan.SKIP:
        if state is Plan.FRESH:
            checkpoint.create(plan.n_blocks)
        done = tracker.done_mask()
        running = checkpoint.load(done, plan.empty_quantiles())
        folded, saved = done.copy(), time.monotonic()
        for block_id, partial in _blocks(ctx, plan, config, QuantileWork(plan), np.flatnonzero(~done),
                                         progress and progress("netdissect 1/2: quantiles"), client):
            for layer, quantile in partial.items():
                running[layer].merge(quantile)
            folded[block_id] = True
            if folded.all() or time.monotonic() - saved >= config.checkpoint_seconds:
                checkpoint.save(running, folded, done)
                tracker.mark_done(np.flatnonzero(folded & ~done))
                done, saved = folded.copy(), time.monotonic()
        for layer, quantile in running.items():
            ctx.store.create_array(f"{tracker.group}/{layer}/threshold",
                                   ArraySpec((plan.units[layer],), "float64", ("unit",), (plan.units[layer],),
                                             float("nan")), data=quantile.result())
        tracker.complete()
    checkpoint.remove()
    return {layer: ctx.store.read(f"{tracker.group}/{layer}/threshold") for layer in plan.layers}


def _tally_pass(ctx: NetworkContext, plan: DissectionPlan, config: NetDissectConfig, thresholds: dict[str, np.ndarray],
                tracker: StageProgress, state: Plan, progress: Callable | None, client: Any) -> TallyPartials:
    """Pass 2: every block's counts, in the store."""
    partials = TallyPartials(ctx.store, tracker.group)
    if state is Plan.SKIP:
        return partials
    if state is Plan.FRESH:
        partials.create(plan.units, plan.dataset.n_labels, len(plan.chosen), plan.n_blocks, len(plan.images),
                        plan.block)
    work = TallyWork(plan, thresholds, resolve_device(config.device))
    for block_id, result in _blocks(ctx, plan, config, work, np.flatnonzero(~tracker.done_mask()),
                                    progress and progress("netdissect 2/2: tally"), client, thresholds):
        _, start, stop = plan.blocks(np.array([block_id]))[0]
        errors = np.full(stop - start, "", dtype=object)
        for position, reason in result.errors.items():
            errors[position - start] = reason
        partials.write(block_id, slice(start, stop), result.values, result.truth, result.images, errors)
        tracker.mark_done(block_id)
    tracker.complete()
    return partials


def _blocks(ctx: NetworkContext, plan: DissectionPlan, config: NetDissectConfig, work: QuantileWork | TallyWork,
            todo: np.ndarray, progress: Callable | None, client: Any,
            thresholds: dict[str, np.ndarray] | None = None) -> Iterator[tuple[int, Any]]:
    """``(block id, result)`` of each block of ``todo``, in this process or as cluster tasks."""
    blocks = plan.blocks(todo)
    if client is None:
        for block_id, result in run_blocks(ctx, plan, work, blocks, config.batch_size, config.device,
                                           config.num_workers, progress):
            yield block_id, result if isinstance(work, TallyWork) else result.values
        return
    yield from _cluster_blocks(ctx, plan, config, blocks, client, thresholds, progress)


# -- results --------------------------------------------------------------------------
def _write_results(ctx: NetworkContext, plan: DissectionPlan, config: NetDissectConfig, layer: str,
                   threshold: np.ndarray, partials: TallyPartials, token: str, unreadable: int) -> int:
    """Write one layer's results (unless they are there for these counts); its number of detectors."""
    group = netdissect_group(ctx.network, layer)
    attrs = ctx.store.attrs(group) if ctx.store.has(group) else {}
    if attrs.get("tally_token") == token and attrs.get("min_iou") == config.min_iou:
        return int(attrs["detectors"])
    intersect, activation = partials.totals(layer)
    truth = partials.truth()
    scores = iou(intersect, activation, truth, plan.label_category)
    labels = best_labels(scores, plan.label_category, len(plan.chosen))
    names, categories = np.asarray(plan.dataset.label_names, dtype=object), plan.categories
    name_of = np.vectorize(lambda n: names[n] if n >= 0 else "", otypes=[object])
    data = {
        "concept_label": names,
        "concept_category": np.array([categories[c] if c >= 0 else "" for c in plan.label_category], dtype=object),
        "threshold": threshold, "truth": truth, "intersect": intersect, "activation": activation, "iou": scores,
        "category_concept": labels.category_label, "category_label": name_of(labels.category_label),
        "category_iou": labels.category_iou, "label_concept": labels.label, "label": name_of(labels.label),
        "label_category": np.array([categories[c] if c >= 0 else "" for c in labels.category], dtype=object),
        "score": labels.score, "detector": labels.detectors(config.min_iou).astype(np.uint8),
    }
    ctx.store.delete(group)
    write_coordinate(ctx.store, group, "concept", np.arange(plan.dataset.n_labels))
    str_array(ctx.store, f"{group}/category", "category", categories)
    for name, spec in netdissect_specs(plan.units[layer], plan.dataset.n_labels, len(categories)).items():
        ctx.store.create_array(f"{group}/{name}", spec, data=data[name])
    detectors = int(data["detector"].sum())
    ctx.store.update_attrs(group, {"method": "netdissect", "split": config.split, "categories": categories,
                                   "quantile": TOP_QUANTILE, "min_iou": config.min_iou, "images": partials.images(),
                                   "unreadable_images": unreadable, "detectors": detectors, "tally_token": token})
    ctx.store.flush()
    return detectors


# -- on a Dask cluster ----------------------------------------------------------------
_PLANS: dict[tuple[str, str, str], DissectionPlan] = {}  # per worker process: the plan of the last task


def _worker_plan(ctx: NetworkContext, config: NetDissectConfig, block: int) -> DissectionPlan:
    key = (str(ctx.store.path), repr(config.params()), str(block))
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = make_plan(ctx, open_broden(ctx), config, block)
    return _PLANS[key]


def _task_blocks(store_path: str, network: str, config: NetDissectConfig, block: Block, plan_block: int,
                 work_of: Callable[[DissectionPlan], QuantileWork | TallyWork]) -> Any:
    import dataclasses

    from rfstore.pipeline.worker import WorkerContext
    from rfstore.store import open_store

    with open_store(store_path, "r") as store:
        ctx = WorkerContext(store, network)
        plan = _worker_plan(ctx, config, plan_block)
        # DataLoader worker processes cannot start inside a Dask worker (a daemon process)
        local = dataclasses.replace(config, num_workers=0)
        ((block_id, result),) = run_blocks(ctx, plan, work_of(plan), [block], local.batch_size, local.device, 0)
    return block_id, result


def quantile_task(store_path: str, network: str, config: NetDissectConfig, block: Block,
                  plan_block: int) -> tuple[int, dict[str, dict[str, Any]]]:
    """Worker: pass 1 of one block; ``(block id, {layer: TopQuantile state})``."""
    block_id, result = _task_blocks(store_path, network, config, block, plan_block, QuantileWork)
    return block_id, {layer: quantile.state_dict() for layer, quantile in result.values.items()}


def tally_task(store_path: str, network: str, config: NetDissectConfig, block: Block, plan_block: int,
               thresholds: dict[str, np.ndarray]) -> tuple[int, Any]:
    """Worker: pass 2 of one block; ``(block id, its BlockResult)``."""
    return _task_blocks(store_path, network, config, block, plan_block,
                        lambda plan: TallyWork(plan, thresholds, resolve_device(config.device)))


def _cluster_blocks(ctx: NetworkContext, plan: DissectionPlan, config: NetDissectConfig, blocks: list[Block],
                    client: Any, thresholds: dict[str, np.ndarray] | None,
                    progress: Callable | None) -> Iterator[tuple[int, Any]]:
    """Client: one task per block; yield each block's result as its task returns."""
    from rfstore.pipeline.cluster import Task, completed
    from rfstore.pipeline.worker import store_location

    path = store_location(ctx.store)
    if thresholds is None:
        tasks = [Task(f"netdissect-quantile-block{b[0]}", quantile_task, (path, ctx.network, config, b, plan.block))
                 for b in blocks]
    else:
        tasks = [Task(f"netdissect-tally-block{b[0]}", tally_task,
                      (path, ctx.network, config, b, plan.block, thresholds)) for b in blocks]

    sizes = {block_id: stop - start for block_id, start, stop in blocks}

    def finished() -> Iterator[tuple[Any, ...]]:  # (images, ...): what a progress wrapper counts
        for block_id, value in completed(client, tasks):
            if thresholds is None:
                value = {layer: TopQuantile.from_state_dict(state) for layer, state in value.items()}
            yield range(sizes[block_id]), block_id, value

    stream = finished() if progress is None else progress(finished(), sum(sizes.values()))
    for _, block_id, value in stream:
        yield block_id, value


# -- the stage (``dissect --method netdissect``) ----------------------------------------------
def _run(job: Job) -> NetDissectResult:
    progress = None
    if job.progress is not None:
        def progress(description: str) -> Callable[[Iterator, int], Iterator]:
            return lambda batches, total: counted(batches, job.ticker(description, total, "img"),
                                                  lambda batch: len(batch[0]))
    return run_netdissect(job.ctx, job.config, job.force, progress=progress, client=job.client)


def summary(result: NetDissectResult, ctx: NetworkContext) -> list[str]:
    from rfstore.pipeline.stages.netdissect_export import detector_summary

    lines = ["dissect: netdissect already complete with these settings; nothing to do"] \
        if result.tally_plan is Plan.SKIP else []
    for layer, detectors in result.detectors.items():
        group = netdissect_group(ctx.network, layer)
        named = detector_summary(ctx.store.read(f"{group}/label"), ctx.store.read(f"{group}/detector"))
        lines.append(f"dissect: {layer}: {detectors}/{ctx.n_units(layer)} units detect a concept "
                     f"(IoU >= {result.min_iou}) over {result.images} images" + (f" ({named})" if named else ""))
    if result.unreadable:
        lines.append(f"dissect: {len(result.unreadable)} image(s) could not be read and were left out, e.g. "
                     f"{result.unreadable[0][0]}: {result.unreadable[0][1]}")
    return lines


def changed(ctx: NetworkContext, config: NetDissectConfig) -> bool:
    record = StageProgress(ctx.store, ctx.network, TALLY_STAGE).record()
    return record is None or record.state != "complete" or \
        {k: v for k, v in record.params.items() if k != "block"} != config.params()


STAGE = Stage("netdissect", ("init",), NetDissectConfig, _run, summary, changed, distributed=True, record=TALLY_STAGE)
