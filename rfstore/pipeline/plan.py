"""``rfstore plan``: what a run would compute, how long it would take here and how much it would store.

Reads: everything the stages read (nothing is written).  For each stage and layer it
counts the work (images, units, distinct top images, occluded inputs, multiply-adds) and
the bytes each array takes (uncompressed), and estimates the time from a few seconds of
calibration on this machine (:class:`Machine`): the network's forward pass, a burst of the
occlusion engine's incremental passes, writes to a store of the same kind, and the
per-unit arithmetic of ``rf`` and ``segment``.  Before ``topk`` has run the occlusion
counts are upper bounds (every target on its own image, every image a whole shared pass).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rfstore.occlusion import OcclusionEngine, OcclusionTarget
from rfstore.occlusion.cost import FORWARD_COST, pass_cost
from rfstore.pipeline.calibration import Machine, calibrate
from rfstore.pipeline.registry import STAGES
from rfstore.pipeline.run import PipelineConfig, initialised, recorded_params, run_pipeline_asked
from rfstore.pipeline.stage import resolve_config
from rfstore.pipeline.stages.init import run_init
from rfstore.pipeline.stages.occlude import OccludeConfig, occluder_notes, selected_units
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import StageProgress
from rfstore.store import open_store
from rfstore.store.layout import layer_group, rf_specs

__all__ = ["PlanRow", "RunPlan", "plan_run", "plan_pipeline", "format_plan", "duration", "DAY"]

DAY = 86400.0
TOPK_SECONDS_PER_VALUE = 4e-9
"""Running top-K update, seconds per (image, unit) value: the cost model's prior for one CPU core."""
DISSECT_SECONDS_PER_MASK = 2e-4
"""Scoring one segmentation against every concept's mask, seconds at 224 x 224 px: the cost model's prior."""
LAYER_META_OPS = 12
"""Arrays created and attributes changed per layer by a stage (its bookkeeping included)."""
OVERLAP = 0.25
"""Share of the shorter of computing and writing that does not overlap the longer (the write thread
competes for the interpreter)."""


@dataclass
class PlanRow:
    """One line of the plan (``layer`` None for a stage's whole)."""

    stage: str
    layer: str | None = None
    units: int | None = None
    images: int | None = None
    top_images: int | None = None
    passes: int | None = None
    macs: float | None = None
    seconds: float | None = None
    nbytes: int = 0
    bound: bool = False
    note: str = ""


@dataclass
class RunPlan:
    rows: list[PlanRow]
    machine: Machine
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(r.seconds or 0.0 for r in self.rows if r.layer is None)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.rows if r.layer is not None or not any(
            o.stage == r.stage and o.layer is not None for o in self.rows))

    def stage_seconds(self) -> dict[str, float]:
        return {r.stage: r.seconds or 0.0 for r in self.rows if r.layer is None}


# -- the stages ----------------------------------------------------------------------------
def _done(ctx: NetworkContext, stage: str, layer: str | None = None) -> bool:
    return StageProgress(ctx.store, ctx.network, stage, layer).is_complete()


def _activations(ctx: NetworkContext, machine: Machine, maps: tuple[str, ...]) -> list[PlanRow]:
    n = ctx.n_images
    rows = []
    for layer in ctx.layers:
        units = ctx.n_units(layer)
        nbytes = n * units * 16
        shape = ctx.layer_attrs(layer).get("output_shape", [])
        if layer in maps and len(shape) == 3:
            nbytes += n * units * shape[1] * shape[2] * 2
        rows.append(PlanRow("activations", layer, units=units, images=n, nbytes=nbytes))
    done = _done(ctx, "activations")
    todo = 0 if done else n
    seconds = 0.0 if done else machine.model_load + todo * machine.forward_image + \
        sum(r.nbytes for r in rows) * machine.write
    return [PlanRow("activations", images=todo, seconds=seconds, note="done" if done else ""), *rows]


def _topk(ctx: NetworkContext, machine: Machine, k: int) -> list[PlanRow]:
    rows, seconds = [], 0.0
    for layer in ctx.layers:
        units = ctx.n_units(layer)
        done = _done(ctx, "topk", layer)
        values = ctx.n_images * units
        rows.append(PlanRow("topk", layer, units=units, images=ctx.n_images, nbytes=units * k * 20,
                            note="done" if done else ""))
        if not done:
            seconds += values * (12 * machine.write + TOPK_SECONDS_PER_VALUE) + LAYER_META_OPS * machine.meta
    return [PlanRow("topk", seconds=seconds, note="done" if all(r.note == "done" for r in rows) else ""), *rows]


def _occlusion_work(ctx: NetworkContext, layers: list[str], config: OccludeConfig,
                    k: int) -> tuple[dict[int, list[OcclusionTarget]], dict[str, int], bool]:
    """Targets by image (exact after ``topk``, else one synthetic target per unit), per-layer counts, and
    whether the counts are exact."""
    from rfstore.pipeline.stages.occlude import layer_work

    by_image: dict[int, list[OcclusionTarget]] = {}
    counts: dict[str, int] = {}
    exact = all(_done(ctx, "topk", layer) for layer in layers)
    for layer in layers:
        units = selected_units(ctx, layer, config.units)
        if exact:
            tracker = StageProgress(ctx.store, ctx.network, "occlude", layer)
            if tracker.is_complete():
                counts[layer] = 0
                continue
            work = _pending(ctx, layer, tracker, units)
            counts[layer] = len(work)
            for w in work:
                by_image.setdefault(w.image, []).append(OcclusionTarget(w.image, layer, w.unit, w.y, w.x))
        else:
            counts[layer] = len(units) * k
    return by_image, counts, exact


def _pending(ctx: NetworkContext, layer: str, tracker: StageProgress, units: np.ndarray) -> list:
    """The (unit, rank) maps of ``units`` still to compute (read only: nothing is flagged)."""
    from rfstore.pipeline.stages.occlude import Work

    group = layer_group(ctx.network, layer)
    images, ys, xs = (ctx.store.read(f"{group}/topk_{name}") for name in ("image", "y", "x"))
    kk = images.shape[1]
    record = tracker.record()
    done = tracker.done_parts().reshape(-1, kk) if record is not None and \
        tracker.done_parts().size == images.size else np.zeros(images.shape, dtype=bool)
    linear = ctx.layer_attrs(layer)["kind"] == "linear"
    return [Work(layer, int(u), r, int(images[u, r]), 0 if linear else int(ys[u, r]), 0 if linear else int(xs[u, r]))
            for u in units for r in range(kk) if images[u, r] >= 0 and not done[u, r]]


def _occlude(ctx: NetworkContext, machine: Machine, engine: OcclusionEngine, layers: list[str],
             config: OccludeConfig, k: int) -> list[PlanRow]:
    hw = ctx.input_size
    n_oy, n_ox = (config.occluder.positions(n).size for n in hw)
    map_bytes = n_oy * n_ox * 4
    by_image, counts, exact = _occlusion_work(ctx, layers, config, k)
    rows = [PlanRow("occlude", layer, units=len(selected_units(ctx, layer, config.units)), bound=not exact,
                    top_images=len({i for i, ts in by_image.items() if any(t.layer == layer for t in ts)}) if exact
                    else min(ctx.n_images, counts[layer]),
                    nbytes=ctx.n_units(layer) * k * map_bytes, note="" if counts[layer] else "done")
            for layer in layers]
    targets = sum(counts.values())
    if not targets:
        return [PlanRow("occlude", seconds=0.0, note="done"), *rows]
    if exact:
        cost = macs = 0.0
        passes = 0
        for image, ts in by_image.items():
            work, image_passes, image_macs = engine.estimate(ts, ctx.input_channels, hw)
            cost, macs, passes = cost + work.cost, macs + image_macs, passes + image_passes
        images = len(by_image)
    else:
        cost, macs, passes, images = _occlude_bound(ctx, machine, engine, layers, counts, hw, n_oy * n_ox)
    compute = machine.model_load + cost * machine.incremental + macs * machine.forward_mac + images * machine.image_load
    writes = machine.io(targets, targets * map_bytes)  # on a background thread while the next image computes
    seconds = max(compute, writes) + OVERLAP * min(compute, writes)
    return [PlanRow("occlude", images=images, top_images=images, passes=passes, macs=cost + macs, seconds=seconds,
                    bound=not exact, units=targets), *rows]


def _occlude_bound(ctx: NetworkContext, machine: Machine, engine: OcclusionEngine, layers: list[str],
                   counts: dict[str, int], hw: tuple[int, int], positions: int) -> tuple[float, float, int, int]:
    """Upper bounds before ``topk`` (cost units, multiply-adds, occluded inputs, images): the cheaper of every
    image one whole shared pass, and every map computed alone (the planner never does worse than either)."""
    shared = _shared_bound(ctx, engine, layers, counts, hw, positions)
    alone = _alone_bound(ctx, engine, layers, counts, hw)
    return min(shared, alone, key=lambda bound: bound[0] * machine.incremental + bound[1] * machine.forward_mac)


def _alone_bound(ctx: NetworkContext, engine: OcclusionEngine, layers: list[str], counts: dict[str, int],
                 hw: tuple[int, int]) -> tuple[float, float, int, int]:
    """Every map on its own image, its unit in the middle of the layer's map (where its cone is widest)."""
    cost = macs = 0.0
    passes = 0
    for layer in layers:
        if not counts[layer]:
            continue
        shape = ctx.layer_attrs(layer)["output_shape"]
        y, x = (shape[-2] // 2, shape[-1] // 2) if len(shape) == 3 else (0, 0)
        work, target_passes, target_macs = engine.estimate([OcclusionTarget(0, layer, 0, y, x)],
                                                           ctx.input_channels, hw)
        cost, macs = cost + counts[layer] * work.cost, macs + counts[layer] * target_macs
        passes += counts[layer] * target_passes
    return cost, macs, passes, min(ctx.n_images, sum(counts.values()))


def _shared_bound(ctx: NetworkContext, engine: OcclusionEngine, layers: list[str], counts: dict[str, int],
                  hw: tuple[int, int], positions: int) -> tuple[float, float, int, int]:
    """Every image a top image of some map, each image one whole shared pass to the deepest layer."""
    prefix = engine.prefix
    images = min(ctx.n_images, sum(counts.values()))
    steps = [prefix.layer_step[layer] + 1 for layer in layers if layer in prefix.layer_step]
    tail = [layer for layer in layers if layer not in prefix.layer_step]
    depth = max(steps + ([engine.tail_step + 1] if tail and engine.tail is not None else []), default=0)
    every = np.ones((prefix.changed.y.lo.shape[1] if depth else 1, prefix.changed.x.lo.shape[1] if depth else 1), bool)
    cost = images * pass_cost(prefix.steps, prefix.channels, prefix.full_regions(depth), every, engine.batch_size) \
        if depth else 0.0
    chain = prefix.chain
    per_image = chain.macs(engine.tail.index + 1) if tail and engine.tail is not None else (chain.macs() if tail else 0)
    macs = float(images) * per_image * (positions + 1)
    return cost, macs, images * positions, images


def _rf(ctx: NetworkContext, machine: Machine, layers: list[str], config: OccludeConfig, k: int) -> list[PlanRow]:
    from rfstore.rf.empirical import window_radius

    rows, seconds = [], 0.0
    n_maps = math.prod(config.occluder.positions(n).size for n in ctx.input_size)
    for layer in layers:
        attrs = ctx.layer_attrs(layer)
        if "rf_theory_size" not in attrs:
            continue
        units = ctx.n_units(layer)
        radius = window_radius(tuple(attrs["rf_theory_size"]), config.size)
        spec = rf_specs(units, (2 * radius[0] + 1, 2 * radius[1] + 1))["rf_map"]
        nbytes = math.prod(spec.shape) * 4 + units * 4
        done = _done(ctx, "rf", layer)
        rows.append(PlanRow("rf", layer, units=units, nbytes=nbytes, note="done" if done else ""))
        if not done:
            seconds += (units * machine.rf_unit.get(layer, 0.0) + machine.reads(units * k, units * k * n_maps * 4)
                        + machine.io(math.ceil(units / spec.chunks[0]), nbytes) + LAYER_META_OPS * machine.meta)
    return [PlanRow("rf", seconds=seconds, note="done" if all(r.note == "done" for r in rows) else ""), *rows]


def _segment(ctx: NetworkContext, machine: Machine, layers: list[str], k: int) -> list[PlanRow]:
    rows, seconds = [], 0.0
    pixels = ctx.input_size[0] * ctx.input_size[1]
    for layer in layers:
        if "rf_theory_size" not in ctx.layer_attrs(layer):
            continue
        units = ctx.n_units(layer)
        nbytes = units * k * pixels
        done = _done(ctx, "segment", layer)
        rows.append(PlanRow("segment", layer, units=units, nbytes=nbytes, note="done" if done else ""))
        if not done:
            seconds += (units * machine.segment_unit.get(layer, 0.0) + machine.io(units, nbytes)
                        + LAYER_META_OPS * machine.meta)
    return [PlanRow("segment", seconds=seconds, note="done" if all(r.note == "done" for r in rows) else ""), *rows]


def _dissect(ctx: NetworkContext, machine: Machine, layers: list[str], k: int) -> list[PlanRow]:
    """``dissect`` (top-K method), when the dataset has concept masks: each unit's segmentations read and scored."""
    from rfstore.pipeline.stages.dissect import has_concepts

    if not has_concepts(ctx):
        return []
    rows, seconds = [], 0.0
    pixels = ctx.input_size[0] * ctx.input_size[1]
    for layer in layers:
        if "rf_theory_size" not in ctx.layer_attrs(layer):
            continue
        units = ctx.n_units(layer)
        done = _done(ctx, "dissect", layer)
        rows.append(PlanRow("dissect", layer, units=units, note="done" if done else ""))
        if not done:
            seconds += (machine.reads(units, units * k * pixels) + units * k * DISSECT_SECONDS_PER_MASK
                        + LAYER_META_OPS * machine.meta)
    return [PlanRow("dissect", seconds=seconds, note="done" if all(r.note == "done" for r in rows) else ""), *rows]


def plan_run(ctx: NetworkContext, occlude: OccludeConfig, k: int, maps: tuple[str, ...] = ()) -> RunPlan:
    """The plan of ``rfstore run`` on ``ctx`` from where the store stands (see the module docstring)."""
    layers = ctx.check_layers(list(occlude.layers))
    if _done(ctx, "topk", layers[0]):
        k = int(ctx.layer_attrs(layers[0]).get("topk_k", k))
    machine, engine = calibrate(ctx, layers, occlude, k)
    rows = [*_activations(ctx, machine, maps), *_topk(ctx, machine, k),
            *_occlude(ctx, machine, engine, [layer for layer in layers if "rf_theory_size" in ctx.layer_attrs(layer)],
                      occlude, k),
            *_rf(ctx, machine, layers, occlude, k), *_segment(ctx, machine, layers, k),
            *_dissect(ctx, machine, layers, k)]
    occluded = [layer for layer in layers if "rf_theory_size" in ctx.layer_attrs(layer)]
    return RunPlan(rows, machine, occluder_notes(ctx, occlude, occluded))


def plan_pipeline(store: str | Path, config: PipelineConfig, say: Callable[[str], None]) -> RunPlan:
    """The plan of :func:`~rfstore.pipeline.run.run_pipeline` with ``config``, its stage configs resolved as
    the run would resolve them; before ``init``, on a scratch store of what init would record."""
    path = Path(store)
    scratch = None
    try:
        if config.init is not None and not initialised(path):
            scratch = Path(tempfile.mkdtemp(prefix="rfstore-plan-"))
            began = time.perf_counter()
            path = scratch / f"plan{Path(store).suffix}"
            with open_store(path, "a") as st:
                outcome = run_init(st, config.init)
            say(f"plan: init would record {outcome.n_images} images and {len(outcome.layers)} layers "
                f"({time.perf_counter() - began:.1f} s)")
        with open_store(path, "r") as st:
            ctx = NetworkContext.open(st, config.network)
            resolved = {name: resolve_config(STAGES[name], recorded_params(ctx, name, ctx.layers),
                                             run_pipeline_asked(STAGES[name], config))
                        for name in ("activations", "topk", "occlude")}
            return plan_run(ctx, resolved["occlude"], resolved["topk"].k, resolved["activations"].maps)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# -- text ----------------------------------------------------------------------------------
def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _count(n: float | None, bound: bool = False) -> str:
    if n is None:
        return "-"
    text = f"{n:,.0f}" if n < 1e6 else f"{n:.2e}"
    return f"<={text}" if bound else text


def duration(seconds: float) -> str:
    """``seconds`` in words a person reads at a glance: 42 s, 3 min 5 s, 2 h 10 min, 3.5 days."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < DAY:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{seconds / DAY:.1f} days"


def _rate(unit: float, seconds: float) -> str:
    """``unit / seconds`` to 3 significant digits, ``"-"`` when the time was too short to measure."""
    return f"{unit / seconds:.3g}" if seconds > 1e-12 else "-"


def format_plan(plan: RunPlan) -> str:
    """The plan as a table, with the total and a warning when it is over a day."""
    head = (f"{'stage':<12}{'layer':<14}{'units':>8}{'images':>9}{'top images':>12}{'occluded inputs':>17}"
            f"{'multiply-adds':>15}{'time':>14}{'bytes':>11}")
    lines = [head]
    for r in plan.rows:
        time_text = "-" if r.seconds is None else ("done" if r.note == "done" else
                                                   ("<=" if r.bound else "") + duration(r.seconds))
        lines.append(f"{r.stage if r.layer is None else '':<12}{r.layer or '(all)':<14}{_count(r.units):>8}"
                     f"{_count(r.images):>9}{_count(r.top_images, r.bound):>12}{_count(r.passes, r.bound):>17}"
                     f"{_count(r.macs, r.bound):>15}{time_text if r.layer is None else r.note:>14}"
                     f"{_size(r.nbytes) if r.nbytes else '':>11}")
    total = plan.seconds
    lines.append(f"total: about {duration(total)} on this machine; {_size(plan.nbytes)} in the store (uncompressed)")
    m = plan.machine
    lines.append(f"calibration: {m.forward_image * 1e3:.1f} ms per image forward, "
                 f"{1e-9 / m.forward_mac / FORWARD_COST:.3g} G multiply-adds/s in the network's modules, "
                 f"{1e-9 / max(m.incremental, 1e-30):.3g} G cost units/s incremental, "
                 f"{_rate(1e-6, m.write)} MB/s and {m.chunk * 1e3:.1f} ms per chunk store writes")
    lines += [f"note: {note}" for note in plan.notes]
    if total > DAY:
        lines.append(f"warning: this would take about {duration(total)}; select fewer layers (--layers) or units "
                     f"(--units), use a smaller K (--k), a larger --stride, or run on a GPU or a cluster")
    return "\n".join(lines)
