"""Stage ``activations``: one pass over the dataset, every unit's spatial max/mean/argmax.

Reads: ``/{network}`` attrs (model, preprocessing, dataset root, layers), ``image_path``.
Writes, per layer: ``act_max``, ``act_mean``, ``act_y``, ``act_x`` (image, unit);
``act_map`` (image, unit, map_y, map_x) in float16 for the layers given with ``--maps``;
``/{network}/image_error`` (image): why an image could not be read ("" if it was).

The images are streamed in blocks of :data:`~rfstore.store.layout.IMAGE_BLOCK` images
(one chunk along ``image``); a block's arrays are written, flushed and only then
flagged done, so a killed run redoes at most the blocks in flight and memory
stays flat whatever the dataset's size: a block is written on a background
thread while the next one computes, so at most two are held. Batches never
straddle two blocks (each block is cut into batches from its first image), so
every image is computed in
the same batch whether the run is fresh, resumed, or split over a Dask cluster
(``client``, see :mod:`rfstore.pipeline.worker`), which makes all three give
the same bits.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rfstore.pipeline import defaults
from rfstore.recorded.progress import is_current
from rfstore.pipeline.stage import Job, Stage, counted
from rfstore.stats.spatial import spatial_summary
from rfstore.datasets import ImageFolderDataset
from rfstore.errors import UsageError
from rfstore.models import FeatureExtractor
from rfstore.recorded.network import NetworkContext, ParameterCheck
from rfstore.pipeline.cluster import Task, completed, require_zarr
from rfstore.pipeline.devices import channels_last_for, exact_float32, resolve_device
from rfstore.pipeline.worker import WorkerContext, check_generation, stage_generation, store_location
from rfstore.pipeline.writer import BackgroundWriter
from rfstore.recorded.progress import Plan, StageProgress, fingerprint
from rfstore.store import layout, open_store_for_worker
from rfstore.store.layout import activation_map_spec, activation_specs, image_specs, layer_group, n_blocks

STAGE_VERSION = 2  # 2: summaries by a whole-map max pool; memory format
QUANTITIES = ("act_max", "act_mean", "act_y", "act_x")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class ActivationsConfig:
    """Parameters of ``rfstore activations``.

    ``maps`` and ``memory_format`` change the results (the memory format by
    rounding only: the order of the sums inside the convolutions); they make
    the stage's fingerprint. ``memory_format="auto"`` runs a CPU in
    channels_last, where oneDNN's convolutions are faster, and other
    devices in the contiguous format; a model that cannot run channels_last
    (a ``view`` of an activation, say) falls back to contiguous by itself.
    """

    batch_size: int = defaults.BATCH_SIZE
    device: str = defaults.DEVICE
    num_workers: int | None = None
    maps: tuple[str, ...] = ()
    memory_format: str = defaults.MEMORY_FORMAT

    def __post_init__(self) -> None:
        if self.memory_format not in MEMORY_FORMATS:
            raise UsageError(f"must be one of {', '.join(MEMORY_FORMATS)}, "
                             f"not {self.memory_format!r}", "memory_format")

    def params(self) -> dict[str, object]:
        return {"maps": sorted(self.maps), "memory_format": self.memory_format}


@dataclass
class ActivationsResult:
    plan: Plan
    images_done: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class _BlockBuffer:
    """The outputs of one block of images for every layer, filled batch by batch."""

    def __init__(self, start: int, stop: int, units: dict[str, int], maps: dict[str, tuple[int, int]]) -> None:
        self.start, self.stop = start, stop
        n = stop - start
        self.filled = 0
        self.arrays: dict[tuple[str, str], np.ndarray] = {}
        for layer, n_units in units.items():
            for q in QUANTITIES:
                is_index = q in ("act_y", "act_x")
                self.arrays[layer, q] = np.full((n, n_units), -1 if is_index else np.nan,
                                                dtype=np.int32 if is_index else np.float32)
            if layer in maps:
                self.arrays[layer, "act_map"] = np.full((n, n_units, *maps[layer]), np.nan, dtype=np.float16)
        self.errors = np.full(n, "", dtype=object)

    @property
    def complete(self) -> bool:
        return self.filled == self.stop - self.start

    def fill(self, image_ids: np.ndarray, pos: int, end: int, outputs: dict[str, dict[str, np.ndarray]],
             error_of: dict[int, str]) -> None:
        """Copy the batch's images ``image_ids[pos:end]`` (all in this block) into the buffer.

        ``outputs[layer][quantity]`` holds one row per readable image of the batch,
        in batch order; ``error_of`` gives the reason for each unreadable one.
        """
        readable = np.array([int(i) not in error_of for i in image_ids]) if error_of else None
        readable_before = pos if readable is None else int(readable[:pos].sum())
        if readable is None or readable[pos:end].all():  # the usual case: contiguous rows in, contiguous rows out
            rows = slice(readable_before, readable_before + end - pos)
            first = int(image_ids[pos]) - self.start
            for (layer, q), array in self.arrays.items():
                array[first:first + end - pos] = outputs[layer][q][rows]
        else:
            local = image_ids[pos:end] - self.start
            ok = readable[pos:end]
            rows = readable_before + np.cumsum(ok) - 1
            for (layer, q), array in self.arrays.items() if ok.any() else ():
                array[local[ok]] = outputs[layer][q][rows[ok]]
            for i in np.flatnonzero(~ok):
                self.errors[local[i]] = error_of[int(image_ids[pos + i])]
        self.filled += end - pos


def _blocks(todo: np.ndarray, n_images: int, block: int) -> list[tuple[int, int, int]]:
    """(block id, first image, stop) of each block still to do."""
    return [(int(b), int(b) * block, min(n_images, (int(b) + 1) * block)) for b in todo]


def default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def run_activations(ctx: NetworkContext, config: ActivationsConfig, force: bool = False,
                    progress: Callable[[Iterator, int], Iterator] | None = None,
                    client: Any = None) -> ActivationsResult:
    """Compute and store the activation summaries of every recorded layer (see module docstring).

    With a ``distributed.Client`` the blocks of images run as tasks on its cluster
    (a Zarr store only); this process keeps the bookkeeping.
    """
    store, network = ctx.store, ctx.network
    if client is not None:
        require_zarr(store.path)
    maps = ctx.check_layers(list(config.maps)) if config.maps else []
    tracker = StageProgress(store, network, "activations")
    fp = fingerprint("activations", STAGE_VERSION, config.params(), [ctx.attrs["init_fingerprint"]])
    record = tracker.record()
    fresh = force or record is None or record.fingerprint != fp
    # a run in progress keeps the block size it started with; a fresh one takes the current default
    block = layout.IMAGE_BLOCK if fresh else store.array_spec(f"{network}/image_error").chunks[0]
    plan = tracker.begin(config.params(), fp, n_blocks(ctx.n_images, block), force, upstream=("init",))
    result = ActivationsResult(plan)
    if plan is Plan.SKIP:
        result.unreadable = unreadable_images(ctx)
        return result

    units = {layer: ctx.n_units(layer) for layer in ctx.layers}
    map_shapes = {layer: tuple(ctx.layer_attrs(layer)["output_shape"][1:3]) for layer in maps}
    for layer in maps:
        if ctx.layer_attrs(layer)["kind"] != "conv":
            raise UsageError(f"{layer} is a linear layer, which has no activation map", "maps")
    if plan is Plan.FRESH:
        for layer, n_units in units.items():
            for name, spec in activation_specs(ctx.n_images, n_units, block).items():
                store.create_array(f"{layer_group(network, layer)}/{name}", spec)
            if layer in maps:
                store.create_array(f"{layer_group(network, layer)}/act_map",
                                   activation_map_spec(ctx.n_images, n_units, map_shapes[layer], block))
        store.create_array(f"{network}/image_error", image_specs(ctx.n_images, block)["image_error"])

    todo = np.flatnonzero(~tracker.done_mask())
    blocks = _blocks(todo, ctx.n_images, block)
    indices = [i for _, start, stop in blocks for i in range(start, stop)]
    if indices and client is not None:

        activations_on_cluster(client, ctx, config, tracker, blocks, units, map_shapes, progress)
        result.images_done = len(indices)
    elif indices:
        _stream(ctx, config, tracker, blocks, indices, units, map_shapes, progress)
        result.images_done = len(indices)
    tracker.complete()
    result.unreadable = unreadable_images(ctx)
    return result


def block_batches(blocks: list[tuple[int, int, int]], batch_size: int) -> list[list[int]]:
    """Dataset positions of each batch: every block cut into batches from its first image."""
    batches, offset = [], 0
    for _, start, stop in blocks:
        n = stop - start
        batches += [list(range(offset + b, offset + min(n, b + batch_size))) for b in range(0, n, batch_size)]
        offset += n
    return batches


def _stream(ctx: NetworkContext, config: ActivationsConfig, tracker: StageProgress | None,
            blocks: list[tuple[int, int, int]], indices: list[int], units: dict[str, int],
            map_shapes: dict[str, tuple[int, int]], progress: Callable | None,
            write_block: Callable[[int, _BlockBuffer], None] | None = None) -> None:
    """Compute ``blocks`` (whose images are ``indices``) and write each block as it completes.

    ``write_block(block_id, buffer)`` replaces the default write-then-flag-done
    (a cluster task writes its block and leaves the flag to the client).
    """
    device = resolve_device(config.device)
    dataset = ImageFolderDataset(ctx.dataset_root, list(ctx.image_paths()), ctx.preprocessing, indices)
    workers = default_workers() if config.num_workers is None else config.num_workers
    loader = DataLoader(dataset, batch_sampler=block_batches(blocks, config.batch_size), num_workers=workers,
                        collate_fn=dataset.collate, pin_memory=device.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    # start the loader's workers first: they read the first batches while the model is rebuilt
    batches = iter(loader)
    if progress is not None:
        batches = progress(batches, len(indices))
    module = ctx.load_model_unchecked().module
    parameters = ParameterCheck(ctx, module)  # hashed while the first batches compute
    runner = _LayerRunner(module.to(device), ctx.layers, _summariser(map_shapes), device,
                          channels_last_for(device, config.memory_format))
    pending = iter(blocks)
    block_id, start, stop = next(pending)
    buffer = _BlockBuffer(start, stop, units, map_shapes)
    writer = BackgroundWriter()
    try:
        with torch.inference_mode(), exact_float32():
            for image_ids, images, errors in batches:
                outputs = runner(images) if images.shape[0] else {}
                image_ids, error_of = image_ids.numpy(), dict(errors)
                # image ids ascend within and across batches: fill the block buffers segment by segment
                pos = 0
                while pos < len(image_ids):
                    while image_ids[pos] >= buffer.stop:
                        block_id, start, stop = next(pending)
                        buffer = _BlockBuffer(start, stop, units, map_shapes)
                    end = pos + int(np.searchsorted(image_ids[pos:], buffer.stop))
                    buffer.fill(image_ids, pos, end, outputs, error_of)
                    if buffer.complete:
                        parameters.result()  # nothing computed by a model other than init's is stored
                        # written while the next block computes; at most one block waits to be written
                        writer.submit(write_block or partial(_write_block, ctx, tracker), block_id, buffer)
                    pos = end
    except BaseException:
        writer.abandon()
        raise
    writer.close()


class _LayerRunner:
    """The model's forward pass returning the recorded layers' summaries, channels_last if asked.

    A model that fails channels_last on its first batch (a ``view`` of an
    activation, an op that needs contiguous input) is switched back to the
    contiguous format for the whole run; the same model always takes the same
    path, so a resumed or distributed run gives the same bits.
    """

    def __init__(self, model: torch.nn.Module, layers: list[str], reduce: Callable, device: torch.device,
                 channels_last: bool) -> None:
        self.model, self.device = model, device
        self.channels_last = channels_last
        self.extractor = FeatureExtractor(model, layers, reduce=reduce)
        self._tried = False
        if channels_last:
            model.to(memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor) -> dict[str, dict[str, np.ndarray]]:
        if not self.channels_last or images.dim() != 4:
            return self.extractor(images.to(self.device, non_blocking=True))
        if self._tried:
            return self.extractor(images.to(self.device, memory_format=torch.channels_last, non_blocking=True))
        self._tried = True
        try:
            return self.extractor(images.to(self.device, memory_format=torch.channels_last))
        except RuntimeError:
            self.channels_last = False
            self.model.to(memory_format=torch.contiguous_format)
            return self.extractor(images.to(self.device))


def _summariser(map_shapes: dict[str, tuple[int, int]]) -> Callable[[str, torch.Tensor], dict[str, np.ndarray]]:
    """The extractor's in-hook reduction: a layer's output to its per-unit summaries.

    Summarising in the hook needs no copy of the (B, U, H, W) output and frees it
    as the pass goes on; ``act_map`` (float16) is kept only for ``--maps`` layers.
    """

    def summarise(layer: str, act: torch.Tensor) -> dict[str, np.ndarray]:
        summary = dict(zip(QUANTITIES, (t.cpu().numpy() for t in spatial_summary(act))))
        if layer in map_shapes:
            summary["act_map"] = act.to(torch.float16).cpu().numpy()
        return summary

    return summarise


def _write_block(ctx: NetworkContext, tracker: StageProgress, block_id: int, buffer: _BlockBuffer) -> None:
    write_block_arrays(ctx, buffer)
    tracker.mark_done(block_id)


def write_block_arrays(ctx: NetworkContext, buffer: _BlockBuffer) -> None:
    """Write one block's rows (whole chunks along ``image``) of every per-image array."""
    rows = slice(buffer.start, buffer.stop)
    for (layer, q), array in buffer.arrays.items():
        ctx.store.write(f"{layer_group(ctx.network, layer)}/{q}", rows, array)
    ctx.store.write(f"{ctx.network}/image_error", rows, buffer.errors)


def unreadable_images(ctx: NetworkContext) -> list[tuple[str, str]]:
    """(path, reason) of the images the activations stage could not read."""
    errors = ctx.store.read(f"{ctx.network}/image_error")
    bad = np.flatnonzero(errors != "")
    paths = ctx.image_paths()
    return [(str(paths[i]), str(errors[i])) for i in bad]


# -- on a Dask cluster -------------------------------------------------------------
def activations_task(store_path: str, network: str, config: Any, generation: str, block: tuple[int, int, int],
                     units: dict[str, int], map_shapes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Worker: compute one block of images and write its rows; returns (block id, images)."""
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


# -- the stage ---------------------------------------------------------------------------
def _run(job: Job) -> ActivationsResult:
    progress = None
    if job.progress is not None:
        def progress(batches: Iterator, total: int) -> Iterator:
            return counted(batches, job.ticker("activations", total, "img"), lambda batch: len(batch[0]))
    return run_activations(job.ctx, job.config, job.force, progress=progress, client=job.client)


def summary(result: ActivationsResult, ctx: NetworkContext) -> list[str]:
    """What the stage did, and the images it could not read."""
    lines = ["activations: already complete with these settings; nothing to do" if result.plan is Plan.SKIP
             else f"activations: {result.images_done} images processed"]
    if result.unreadable:
        lines.append(f"activations: {len(result.unreadable)} image(s) could not be read and were left out:")
        lines += [f"  {path}: {reason}" for path, reason in result.unreadable[:20]]
        if len(result.unreadable) > 20:
            lines.append(f"  ... and {len(result.unreadable) - 20} more ('rfstore status' lists them all)")
    return lines


def changed(ctx: NetworkContext, config: ActivationsConfig) -> bool:
    return not is_current(ctx.store, ctx.network, "activations", STAGE_VERSION, config.params(),
                          {None: ctx.attrs.get("init_fingerprint")})


STAGE = Stage("activations", ("init",), ActivationsConfig, _run, summary, changed, distributed=True)
