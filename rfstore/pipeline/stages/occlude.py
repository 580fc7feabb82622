"""Stage ``occlude``: discrepancy maps of each unit's top-K images (Zhou et al. 2015, sec. 3.2), image by image.

Reads: ``/{network}`` attrs and ``image_path``; per layer ``topk_image``, ``topk_y``,
``topk_x`` (unit, rank) and the ``rf_theory_*`` attrs.
Writes, per layer: ``discrepancy`` (unit, rank, oy, ox) = activation(original) -
activation(occluded) of the unit at (topk_y, topk_x), one chunk per (unit, rank);
coordinates ``oy``/``ox`` (top-left pixel of the occluder) and ``rank``; attrs
``occluder_size``, ``occluder_stride``, ``occluder_fill``, ``occluder_seed``.

The work is image-major: every distinct image in the top-K of a selected unit (any
selected layer) is occluded once per occluder position, and the maps of every selected
(unit, rank) that holds the image are read off that pass
(:class:`rfstore.occlusion.OcclusionEngine`).  A map's bits depend only on its image,
unit and the network, so the checkpoints (a flag per (unit, rank), set after its map is
written), resumption, ``--units``/``--layers`` selections and Dask tasks (blocks of
images) all give the same store bit for bit.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rfstore.pipeline import defaults
from rfstore.recorded.progress import complete_token, is_current
from rfstore.pipeline.stage import Job, Stage
from rfstore.errors import RfstoreError, UsageError
from rfstore.occlusion import LayerGeometry, Occluder, OccluderError, OcclusionEngine, OcclusionStats, OcclusionTarget
from rfstore.pipeline.cluster import Task, completed, require_zarr
from rfstore.pipeline.worker import WorkerContext, check_generation, stage_generation, store_location
from rfstore.recorded.network import NetworkContext, load_images
from rfstore.pipeline.devices import exact_float32, resolve_device
from rfstore.recorded.progress import Plan, StageProgress, fingerprint, upstream_token
from rfstore.pipeline.writer import BackgroundWriter
from rfstore.store import open_store_for_worker
from rfstore.store.layout import discrepancy_spec, layer_group, write_coordinate

STAGE_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")
CHECKPOINT_SECONDS = 2.0
"""Finished maps are written and flagged at least this often (and after the last image)."""


@dataclass(frozen=True)
class OccludeConfig:
    """Parameters of ``rfstore occlude``; size, stride, fill, seed and dtype define the results.

    ``dtype`` float32 (the default) is exact; bfloat16 and float16 run the network in
    that precision (fast on a GPU, slow on most CPUs) and give approximate maps: a
    discrepancy is a difference of two activations, so its error is a fraction of the
    layer's activations, not of the discrepancy.  ``batch_size`` (positions per
    incremental batch) and ``images_per_task`` (Dask) bound memory and split work;
    they never change a result.
    """

    size: int = defaults.OCCLUDER_SIZE
    stride: int = defaults.OCCLUDER_STRIDE
    fill: str = defaults.OCCLUDER_FILL
    seed: int = defaults.NOISE_SEED
    layers: tuple[str, ...] = ()
    units: slice | None = None
    device: str = defaults.DEVICE
    batch_size: int = defaults.POSITIONS_PER_BATCH
    dtype: str = defaults.OCCLUDER_DTYPE
    images_per_task: int = defaults.IMAGES_PER_TASK

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"must be one of {', '.join(DTYPES)}, not {self.dtype!r}", "dtype")
        self.occluder  # its own checks: an OccluderError is a UsageError

    @property
    def occluder(self) -> Occluder:
        return Occluder(self.size, self.stride, self.fill, self.seed)

    def params(self) -> dict[str, object]:
        params: dict[str, object] = {"size": self.size, "stride": self.stride, "fill": self.fill, "seed": self.seed}
        if self.dtype != "float32":  # float32 stores written before the option keep their fingerprint
            params["dtype"] = self.dtype
        return params

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class Work:
    """One (layer, unit, rank) map to compute, on image ``image`` at cell ``(y, x)``."""

    layer: str
    unit: int
    rank: int
    image: int
    y: int
    x: int


@dataclass
class OccludeResult:
    units_done: dict[str, int] = field(default_factory=dict)
    maps_done: dict[str, int] = field(default_factory=dict)
    skipped_layers: list[str] = field(default_factory=list)
    images: int = 0
    stats: OcclusionStats = field(default_factory=OcclusionStats)
    notes: list[str] = field(default_factory=list)


def occluder_notes(ctx: NetworkContext, config: OccludeConfig, layers: list[str]) -> list[str]:
    """What a researcher should know about this occluder on this network: input pixels at the bottom and right
    edges that no position covers (they get no discrepancy: 0 in the maps and the RF), and layers whose
    theoretical RF is smaller than the occluder (their empirical RF then measures the occluder)."""
    height, width = ctx.input_size
    notes = []
    rows, cols = config.occluder.uncovered(height), config.occluder.uncovered(width)
    if rows or cols:
        spans = sorted({height - config.size, width - config.size})
        notes.append(f"the {config.size} px occluder at stride {config.stride} never covers the last {rows} row(s) "
                     f"and {cols} column(s) of the {height}x{width} input; a stride that divides "
                     f"{' and '.join(map(str, spans))} covers every pixel")
    small = [layer for layer in layers if max(ctx.layer_attrs(layer).get("rf_theory_size", [10**9])) < config.size]
    if small:
        notes.append(f"the theoretical RF of layer(s) {', '.join(small)} is smaller than the {config.size} px occluder: "
                     f"their empirical RF measures the occluder more than the unit; a smaller --size fits them")
    return notes


def layer_geometry(ctx: NetworkContext, layer: str) -> LayerGeometry:
    attrs = ctx.layer_attrs(layer)
    if "rf_theory_size" not in attrs:
        raise RfstoreError(f"layer {layer} has no theoretical receptive field ({attrs.get('rf_theory_error')}), "
                           f"which occlusion needs")
    return LayerGeometry(size=tuple(attrs["rf_theory_size"]), jump=tuple(attrs["rf_theory_jump"]),
                         start=tuple(attrs["rf_theory_start"]), kind=attrs["kind"])


def selected_units(ctx: NetworkContext, layer: str, units: slice | None) -> np.ndarray:
    """The units of ``layer`` that ``--units`` selects (all without it); a clear error if none."""
    n_units = ctx.n_units(layer)
    chosen = np.arange(n_units)[units] if units is not None else np.arange(n_units)
    if units is not None and (units.start >= n_units or not len(chosen)):
        raise UsageError(f"{units.start}:{units.stop} selects no unit of layer {layer}, which has units 0..{n_units - 1}",
                         "units")
    return chosen


def prepare_layer(ctx: NetworkContext, layer: str, config: OccludeConfig, force: bool) -> StageProgress | None:
    """Begin ``layer``'s bookkeeping (and its arrays when fresh); None when it is already complete."""
    height, width = ctx.input_size
    oy, ox = config.occluder.grid((height, width))
    n_units, k = ctx.n_units(layer), int(ctx.layer_attrs(layer)["topk_k"])
    upstream = upstream_token(ctx.store, ctx.network, "topk", layer, needed_by="occlude")
    tracker = StageProgress(ctx.store, ctx.network, "occlude", layer)
    fp = fingerprint("occlude", STAGE_VERSION, config.params(), [upstream])
    plan = tracker.begin(config.params(), fp, n_units, force, sub_blocks=k, upstream=("topk",))
    if plan is Plan.SKIP:
        return None
    if plan is Plan.FRESH:
        group = layer_group(ctx.network, layer)
        write_coordinate(ctx.store, group, "oy", oy)
        write_coordinate(ctx.store, group, "ox", ox)
        ctx.store.create_array(f"{group}/discrepancy", discrepancy_spec(n_units, k, len(oy), len(ox)))
        ctx.store.update_attrs(group, {"occluder_size": config.size, "occluder_stride": config.stride,
                                       "occluder_fill": config.fill, "occluder_seed": config.seed})
    return tracker


def layer_work(ctx: NetworkContext, layer: str, tracker: StageProgress, units: np.ndarray) -> list[Work]:
    """The maps of ``units`` not done yet; ranks without an image are flagged done (their maps stay NaN)."""
    group = layer_group(ctx.network, layer)
    images, ys, xs = (ctx.store.read(f"{group}/topk_{name}") for name in ("image", "y", "x"))
    k = images.shape[1]
    done = tracker.done_parts().reshape(-1, k)
    empty = [int(u) * k + r for u in units for r in range(k) if images[u, r] < 0 and not done[u, r]]
    if empty:
        tracker.mark_done(empty)
    linear = ctx.layer_attrs(layer)["kind"] == "linear"
    return [Work(layer, int(u), r, int(images[u, r]), 0 if linear else int(ys[u, r]), 0 if linear else int(xs[u, r]))
            for u in units for r in range(k) if images[u, r] >= 0 and not done[u, r]]


def run_occlude(ctx: NetworkContext, config: OccludeConfig, force: bool = False,
                progress: Callable[[int], Callable[[int], None]] | None = None,
                client: Any = None) -> OccludeResult:
    """Compute the discrepancy maps of the selected units (see module docstring).

    ``progress(total_images)`` returns a ticker called with the images finished.  With a
    ``distributed.Client`` blocks of images run as tasks on its cluster (a Zarr store
    only); this process keeps the bookkeeping.
    """
    if client is not None:
        require_zarr(ctx.store.path)
    layers = ctx.check_layers(list(config.layers))
    height, width = ctx.input_size
    try:
        config.occluder.grid((height, width))
    except OccluderError:
        raise RfstoreError(f"an occluder of {config.size} px does not fit in the {height}x{width} input") from None
    result = OccludeResult(notes=occluder_notes(ctx, config, layers))
    trackers: dict[str, StageProgress] = {}
    work: list[Work] = []
    for layer in layers:
        units = selected_units(ctx, layer, config.units)
        layer_geometry(ctx, layer)  # fail early, before any work, for a layer without RF
        tracker = prepare_layer(ctx, layer, config, force)
        if tracker is None:
            result.skipped_layers.append(layer)
            continue
        trackers[layer] = tracker
        before = tracker.done_mask()
        work += layer_work(ctx, layer, tracker, units)
        result.units_done[layer] = int((tracker.done_mask() & ~before).sum())
    if work:
        by_image = group_by_image(work)
        tick = progress(len(by_image)) if progress else None
        if client is not None:
            _on_cluster(client, ctx, config, by_image, trackers, tick, result)
        else:
            _compute(ctx, config, by_image, trackers, tick, result)
    for layer, tracker in trackers.items():
        if tracker.done_mask().all():
            tracker.complete()
    return result


def group_by_image(work: list[Work]) -> dict[int, list[Work]]:
    """Work grouped by image, images in increasing order."""
    by_image: dict[int, list[Work]] = {}
    for item in work:
        by_image.setdefault(item.image, []).append(item)
    return dict(sorted(by_image.items()))


class MapMaker:
    """The network, its occlusion engine and the dataset of a store, ready to compute images' maps.

    Parameters
    ----------
    ctx : NetworkContext
    config : OccludeConfig
    layers : list of str
        Layers whose units the work holds.
    """

    def __init__(self, ctx: NetworkContext, config: OccludeConfig, layers: list[str]) -> None:
        from rfstore.models import FeatureExtractor

        self.ctx, self.config = ctx, config
        device = resolve_device(config.device)
        model = ctx.load_model().module.to(device, config.torch_dtype)
        geometry = {layer: layer_geometry(ctx, layer) for layer in layers}
        self.engine = OcclusionEngine(FeatureExtractor(model, layers), geometry, config.occluder,
                                      truncated=lambda layer: FeatureExtractor(model, [layer]), device=device,
                                      dtype=config.torch_dtype, batch_size=config.batch_size)
        self.preprocessing = ctx.preprocessing

    def maps(self, image: int, items: list[Work]) -> tuple[np.ndarray, OcclusionStats]:
        """``(len(items), n_oy, n_ox)`` float32 maps of the items of one image, and the engine's counters."""
        pixels = load_images(self.ctx, [image])[0]
        fill = self.config.occluder.content(pixels, image, self.preprocessing.from_pixels)
        targets = [OcclusionTarget(0, w.layer, w.unit, w.y, w.x) for w in items]
        with exact_float32():
            maps, stats, _ = self.engine.image_maps(pixels, fill, targets)
        return maps, stats


def write_maps(ctx: NetworkContext, items: list[Work], maps: np.ndarray) -> None:
    """Write each item's map: one whole chunk of ``discrepancy`` per (unit, rank)."""
    for item, map_ in zip(items, maps):
        ctx.store.write(f"{layer_group(ctx.network, item.layer)}/discrepancy", (item.unit, item.rank), map_)


def mark_maps_done(trackers: dict[str, StageProgress], items: list[Work], k: dict[str, int],
                   result: OccludeResult) -> None:
    """Flag written maps done (per layer) and count the units they complete."""
    by_layer: dict[str, list[int]] = {}
    for item in items:
        by_layer.setdefault(item.layer, []).append(item.unit * k[item.layer] + item.rank)
    for layer, parts in by_layer.items():
        before = trackers[layer].done_mask()
        trackers[layer].mark_done(parts)
        result.units_done[layer] = result.units_done.get(layer, 0) + int((trackers[layer].done_mask() & ~before).sum())
        result.maps_done[layer] = result.maps_done.get(layer, 0) + len(parts)


def _compute(ctx: NetworkContext, config: OccludeConfig, by_image: dict[int, list[Work]],
             trackers: dict[str, StageProgress], tick: Callable[[int], None] | None, result: OccludeResult) -> None:
    """Image by image; each image's maps are written on a background thread while the next one computes,
    and the written maps are flagged done every :data:`CHECKPOINT_SECONDS` and after the last image."""
    maker = MapMaker(ctx, config, sorted({w.layer for ws in by_image.values() for w in ws}, key=ctx.layers.index))
    k = {layer: int(ctx.layer_attrs(layer)["topk_k"]) for layer in trackers}
    writer = BackgroundWriter()
    pending: list[Work] = []
    last = time.monotonic()
    try:
        for n, (image, items) in enumerate(by_image.items(), start=1):
            maps, stats = maker.maps(image, items)
            result.stats.add(stats)
            result.images += 1
            pending += items
            due = n == len(by_image) or time.monotonic() - last >= CHECKPOINT_SECONDS
            writer.submit(_write_and_flag, ctx, items, maps, (trackers, pending, k, result) if due else None)
            if due:
                pending, last = [], time.monotonic()
            if tick:
                tick(1)
    except BaseException:
        writer.abandon()
        raise
    writer.close()


def _write_and_flag(ctx: NetworkContext, items: list[Work], maps: np.ndarray,
                    flag: tuple[dict[str, StageProgress], list[Work], dict[str, int], OccludeResult] | None) -> None:
    write_maps(ctx, items, maps)
    if flag is not None:
        mark_maps_done(*flag)


# -- on a Dask cluster -------------------------------------------------------------------
def occlude_task(store_path: str, network: str, config: OccludeConfig, layers: list[str],
                 block: list[tuple[int, list[Work]]], generations: dict[str, str]) -> tuple[list[Work], OcclusionStats]:
    """Worker: the maps of one block of images, written; returns the items and the counters."""
    with open_store_for_worker(store_path) as store:
        ctx = WorkerContext(store, network)
        maker = MapMaker(ctx, config, layers)
        stats = OcclusionStats()
        results = []
        for image, items in block:
            maps, image_stats = maker.maps(image, items)
            results.append((items, maps))
            stats.add(image_stats)
        for layer in sorted({w.layer for _, items in block for w in items}):
            check_generation(store, network, "occlude", layer, generations[layer])
        for items, maps in results:
            write_maps(ctx, items, maps)
    return [w for _, items in block for w in items], stats


def _on_cluster(client: Any, ctx: NetworkContext, config: OccludeConfig, by_image: dict[int, list[Work]],
                trackers: dict[str, StageProgress], tick: Callable[[int], None] | None, result: OccludeResult) -> None:
    """Client: one task per block of ``images_per_task`` images; flag maps done as tasks return."""
    layers = sorted({w.layer for ws in by_image.values() for w in ws}, key=ctx.layers.index)
    generations = {layer: stage_generation(trackers[layer]) for layer in trackers}
    k = {layer: int(ctx.layer_attrs(layer)["topk_k"]) for layer in trackers}
    images = list(by_image.items())
    size = max(1, config.images_per_task)
    blocks = [images[i: i + size] for i in range(0, len(images), size)]
    path = store_location(ctx.store)
    tasks = [Task(f"occlude-images-{block[0][0]}", occlude_task, (path, ctx.network, config, layers, block, generations))
             for block in blocks]
    for items, stats in completed(client, tasks):
        mark_maps_done(trackers, items, k, result)
        result.stats.add(stats)
        n = len({w.image for w in items})
        result.images += n
        if tick:
            tick(n)


# -- the stage ---------------------------------------------------------------------------
def _run(job: Job) -> OccludeResult:
    progress = None if job.progress is None else (lambda total: job.ticker("occlude", total, "img"))
    return run_occlude(job.ctx, job.config, job.force, progress=progress, client=job.client)


def summary(result: OccludeResult, ctx: NetworkContext) -> list[str]:
    lines = [f"occlude: {layer}: {n} map(s) computed, {result.units_done.get(layer, 0)} unit(s) complete"
             for layer, n in result.maps_done.items()]
    if result.skipped_layers:
        lines.append(f"occlude: already complete for {', '.join(result.skipped_layers)}; nothing to do there")
    if not result.maps_done and not result.skipped_layers:
        lines.append("occlude: the selected units were already done")
    return lines + [f"occlude: note: {note}" for note in result.notes]


def changed(ctx: NetworkContext, config: OccludeConfig) -> bool:
    layers = ctx.check_layers(list(config.layers))
    if not is_current(ctx.store, ctx.network, "occlude", STAGE_VERSION, config.params(),
                      {layer: complete_token(ctx.store, ctx.network, "topk", layer) for layer in layers}):
        # complete or not, a layer whose selected maps are all done has nothing to compute
        return any(_has_work(ctx, layer, config) for layer in layers)
    return False


def _has_work(ctx: NetworkContext, layer: str, config: OccludeConfig) -> bool:
    tracker = StageProgress(ctx.store, ctx.network, "occlude", layer)
    record = tracker.record()
    if record is None or complete_token(ctx.store, ctx.network, "topk", layer) is None:
        return True
    fp = fingerprint("occlude", STAGE_VERSION, config.params(), [complete_token(ctx.store, ctx.network, "topk", layer)])
    if record.fingerprint != fp:
        return True
    images = ctx.store.read(f"{layer_group(ctx.network, layer)}/topk_image")
    units = selected_units(ctx, layer, config.units)
    parts = tracker.done_parts().reshape(-1, images.shape[1])
    return bool(((images[units] >= 0) & ~parts[units]).any())


STAGE = Stage("occlude", ("topk",), OccludeConfig, _run, summary, changed, distributed=True)
