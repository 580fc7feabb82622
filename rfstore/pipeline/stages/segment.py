"""Stage ``segment``: what each unit detects in each of its top images, as a pixel mask.

Reads, per layer: ``rf_map`` (unit, ry, rx) and the ``rf_threshold`` attr;
``topk_image``, ``topk_y``, ``topk_x``; the ``rf_theory_*`` attrs; ``act_map``
(image, unit, map_y, map_x) where ``activations --maps`` kept it.
Writes, per layer: ``seg_mask`` (unit, rank, py, px), uint8 1 inside / 0 outside /
255 not computed: the unit's empirical RF (``rf_map >= threshold * max``) placed on
the unit's RF centre in that image (Zhou et al. 2015, Fig. 6); and, for layers
with activation maps, ``seg_mask_dissect`` (same dims): the activation map
upsampled (bilinear) to the input and thresholded at the unit's top 0.5%
quantile over the dataset (Bau et al. 2017, Network Dissection); attr
``seg_quantile_level`` and ``seg_threshold_dissect`` (unit).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rfstore.recorded.progress import complete_token, is_current
from rfstore.pipeline.stage import Job, Stage, unit_mask
from rfstore.rf.empirical import rf_centre_pixels, rf_mask
from rfstore.errors import MissingInputError
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import Plan, StageProgress, fingerprint
from rfstore.store import ArraySpec
from rfstore.store.layout import IMAGE_BLOCK, layer_group, segmentation_spec

STAGE_VERSION = 1
DISSECT_QUANTILE = 0.995
CHECKPOINT_SECONDS = 2.0
"""Segmented units are flagged done at least this often (and at the end of each layer)."""


@dataclass(frozen=True)
class SegmentConfig:
    layers: tuple[str, ...] = ()
    units: slice | None = None

    def params(self) -> dict[str, object]:
        return {"dissect_quantile": DISSECT_QUANTILE}


def place_mask(window: np.ndarray, centre: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """Put a ``(2ry+1, 2rx+1)`` boolean window centred at pixel ``centre`` on an ``(H, W)`` grid."""
    height, width = input_hw
    ry, rx = window.shape[0] // 2, window.shape[1] // 2
    out = np.zeros((height, width), dtype=np.uint8)
    top, left = centre[0] - ry, centre[1] - rx
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(height, top + window.shape[0]), min(width, left + window.shape[1])
    if y0 < y1 and x0 < x1:
        out[y0:y1, x0:x1] = window[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


class ChunkReader:
    """Rows of an array read a whole chunk of the first axis at a time (each chunk read once while the
    rows asked for increase)."""

    def __init__(self, ctx: NetworkContext, path: str) -> None:
        self.ctx, self.path = ctx, path
        self.spec = ctx.store.array_spec(path)
        self.start, self.block = -1, np.zeros(0)

    def get(self, row: int) -> np.ndarray:
        chunk = self.spec.chunks[0]
        if not self.start <= row < self.start + len(self.block):
            self.start = row // chunk * chunk
            self.block = self.ctx.store.read(self.path, slice(self.start, min(self.start + chunk, self.spec.shape[0])))
        return self.block[row - self.start]


def unit_quantile(ctx: NetworkContext, layer: str, unit: int, level: float) -> float:
    """The ``level`` quantile of all the unit's activation-map values over the dataset."""
    path = f"{layer_group(ctx.network, layer)}/act_map"
    values = []
    for start in range(0, ctx.n_images, IMAGE_BLOCK):
        block = ctx.store.read(path, (slice(start, min(ctx.n_images, start + IMAGE_BLOCK)), unit))
        values.append(block[~np.isnan(block)].astype(np.float32).ravel())
    joined = np.concatenate(values) if values else np.zeros(0, np.float32)
    return float(np.quantile(joined, level)) if joined.size else float("nan")


def run_segment(ctx: NetworkContext, config: SegmentConfig, force: bool = False) -> dict[str, int]:
    """Segment the units of the layers with empirical RFs (all named layers must have them)."""
    done_units: dict[str, int] = {}
    for layer in ctx.check_layers(list(config.layers)):
        rf_tracker = StageProgress(ctx.store, ctx.network, "rf", layer)
        rf_record = rf_tracker.record()
        if rf_record is None:
            if config.layers:
                raise MissingInputError(f"segment needs the rf results of layer {layer}: run 'rfstore rf' first")
            continue
        group = layer_group(ctx.network, layer)
        n_units = ctx.n_units(layer)
        k = int(ctx.layer_attrs(layer)["topk_k"])
        tracker = StageProgress(ctx.store, ctx.network, "segment", layer)
        plan = tracker.begin(config.params(), fingerprint("segment", STAGE_VERSION, config.params(), [rf_record.token]),
                             n_units, force, upstream=("rf",))
        if plan is Plan.SKIP:
            continue
        has_maps = ctx.store.is_array(f"{group}/act_map")
        if plan is Plan.FRESH:
            ctx.store.create_array(f"{group}/seg_mask", segmentation_spec(n_units, k, ctx.input_size))
            if has_maps:
                ctx.store.create_array(f"{group}/seg_mask_dissect", segmentation_spec(n_units, k, ctx.input_size))
                ctx.store.create_array(f"{group}/seg_threshold_dissect",
                                       ArraySpec((n_units,), "float32", ("unit",), (n_units,), float("nan")))
                ctx.store.update_attrs(group, {"seg_quantile_level": DISSECT_QUANTILE})
        attrs = ctx.layer_attrs(layer)
        threshold = float(attrs["rf_threshold"])
        top = {name: ctx.store.read(f"{group}/topk_{name}") for name in ("image", "y", "x")}
        todo = np.flatnonzero(rf_tracker.done_mask() & unit_mask(n_units, config.units) & ~tracker.done_mask())
        rf_maps = ChunkReader(ctx, f"{group}/rf_map")
        pending: list[int] = []
        last = time.monotonic()
        for unit in todo:
            window = rf_mask(rf_maps.get(int(unit)), threshold).astype(np.uint8)
            cy, cx = rf_centre_pixels(tuple(attrs["rf_theory_start"]), tuple(attrs["rf_theory_jump"]),
                                      top["y"][unit], top["x"][unit])
            masks = np.full((k, *ctx.input_size), 255, dtype=np.uint8)
            for rank in np.flatnonzero(top["image"][unit] >= 0):
                masks[rank] = place_mask(window, (int(cy[rank]), int(cx[rank])), ctx.input_size)
            ctx.store.write(f"{group}/seg_mask", int(unit), masks)
            if has_maps:
                _dissect_masks(ctx, layer, int(unit), top["image"][unit], k)
            pending.append(int(unit))
            if time.monotonic() - last >= CHECKPOINT_SECONDS:
                tracker.mark_done(pending)
                pending, last = [], time.monotonic()
        if pending:
            tracker.mark_done(pending)
        done_units[layer] = len(todo)
        if tracker.done_mask().all():
            tracker.complete()
    if not done_units and not any(StageProgress(ctx.store, ctx.network, "rf", layer).record() for layer in ctx.layers):
        raise MissingInputError(f"segment needs rf results: run 'rfstore rf {ctx.store.path}' first")
    return done_units


def _dissect_masks(ctx: NetworkContext, layer: str, unit: int, images: np.ndarray, k: int) -> None:
    group = layer_group(ctx.network, layer)
    level = unit_quantile(ctx, layer, unit, DISSECT_QUANTILE)
    masks = np.full((k, *ctx.input_size), 255, dtype=np.uint8)
    for rank, image in enumerate(images):
        if image < 0:
            continue
        act = torch.as_tensor(ctx.store.read(f"{group}/act_map", (int(image), unit)).astype(np.float32))
        up = F.interpolate(act[None, None], size=ctx.input_size, mode="bilinear", align_corners=False)[0, 0]
        masks[rank] = (up.numpy() >= level).astype(np.uint8)
    ctx.store.write(f"{group}/seg_mask_dissect", unit, masks)
    ctx.store.write(f"{group}/seg_threshold_dissect", unit, np.float32(level))


# -- the stage ---------------------------------------------------------------------------
def _run(job: Job) -> dict[str, int]:
    return run_segment(job.ctx, job.config, job.force)


def summary(done: dict[str, int], ctx: NetworkContext) -> list[str]:
    return ["segment: " + (", ".join(f"{layer}: {n} unit(s)" for layer, n in done.items() if n) or "nothing to do")]


def changed(ctx: NetworkContext, config: SegmentConfig) -> bool:
    layers = ctx.check_layers(list(config.layers))
    return not is_current(ctx.store, ctx.network, "segment", STAGE_VERSION, config.params(),
                          {layer: complete_token(ctx.store, ctx.network, "rf", layer) for layer in layers})


STAGE = Stage("segment", ("rf",), SegmentConfig, _run, summary, changed)
