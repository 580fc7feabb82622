"""Stage ``rf``: each unit's empirical receptive field and its size.

Reads, per layer: ``discrepancy`` (unit, rank, oy, ox) with the ``occluder_*``
attrs (``--method occlusion``, the default), or the top images themselves
(``--method gradient``, Luo et al. 2016); ``topk_image``, ``topk_y``, ``topk_x``;
the ``rf_theory_*`` attrs.
Writes, per layer: ``rf_map`` (unit, ry, rx), the mean of the unit's K pixel
maps re-centred on its RF centre (``ry = rx = 0``), with ``ry``/``rx`` coordinates in
pixels; ``rf_size`` (unit), the side of the square with the area where
``rf_map >= threshold * max``; attrs ``rf_method``, ``rf_threshold``.

Units are done in the order their discrepancy maps were: a unit is computed once
its maps exist, so ``rf`` can follow a partial ``occlude --units`` run and pick up
the rest later.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rfstore.pipeline import defaults
from rfstore.recorded.progress import complete_token, is_current
from rfstore.pipeline.stage import Job, Stage, unit_mask
from rfstore.rf.empirical import DEFAULT_THRESHOLD, rf_size_from_map, unit_rf_map, window_radius
from rfstore.errors import MissingInputError, UsageError
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import Plan, StageProgress, fingerprint
from rfstore.store.layout import layer_group, rf_specs, write_coordinate

STAGE_VERSION = 1
READ_UNITS = 64
"""Units whose discrepancy maps are read in one call."""


@dataclass(frozen=True)
class RFConfig:
    threshold: float = defaults.RF_THRESHOLD
    method: str = defaults.RF_METHOD
    layers: tuple[str, ...] = ()
    device: str = defaults.DEVICE
    units: slice | None = None

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise UsageError(f"must be in (0, 1], not {self.threshold}", "threshold")
        if self.method not in ("occlusion", "gradient"):
            raise UsageError(f"must be occlusion or gradient, not {self.method!r}", "method")

    def params(self) -> dict[str, object]:
        return {"threshold": self.threshold, "method": self.method}


@dataclass
class RFResult:
    units_done: dict[str, int]
    waiting: dict[str, int]  # units whose discrepancy maps are not computed yet
    missing: list[str]  # layers (not named explicitly) with no upstream results at all


def _upstream(ctx: NetworkContext, layer: str, method: str) -> tuple[str, np.ndarray] | None:
    """Token of the stage rf reads from and which units it has finished; None if it never ran."""
    stage = "occlude" if method == "occlusion" else "topk"
    tracker = StageProgress(ctx.store, ctx.network, stage, layer)
    record = tracker.record()
    if record is None:
        return None
    return record.token, tracker.done_mask() if stage == "occlude" else np.ones(ctx.n_units(layer), dtype=bool)


def run_rf(ctx: NetworkContext, config: RFConfig, force: bool = False) -> RFResult:
    """Compute the empirical RFs of the layers whose inputs exist (all named layers must have them)."""
    result = RFResult({}, {}, [])
    stage = "occlude" if config.method == "occlusion" else "topk"
    for layer in ctx.check_layers(list(config.layers)):
        upstream = _upstream(ctx, layer, config.method)
        if upstream is None:
            if config.layers:
                raise MissingInputError(f"rf --method {config.method} needs {stage} results for layer {layer}: "
                                        f"run 'rfstore {stage} {ctx.store.path}' first")
            result.missing.append(layer)
            continue
        token, available = upstream
        n_units = ctx.n_units(layer)
        tracker = StageProgress(ctx.store, ctx.network, "rf", layer)
        plan = tracker.begin(config.params(), fingerprint("rf", STAGE_VERSION, config.params(), [token]), n_units, force,
                             upstream=(stage,))
        if plan is Plan.SKIP:
            continue
        group = layer_group(ctx.network, layer)
        attrs = ctx.layer_attrs(layer)
        size = tuple(attrs["rf_theory_size"])
        occluder = int(attrs.get("occluder_size", 1)) if config.method == "occlusion" else 1
        radius = window_radius(size, occluder)
        if plan is Plan.FRESH:
            write_coordinate(ctx.store, group, "ry", np.arange(-radius[0], radius[0] + 1))
            write_coordinate(ctx.store, group, "rx", np.arange(-radius[1], radius[1] + 1))
            for name, spec in rf_specs(n_units, (2 * radius[0] + 1, 2 * radius[1] + 1)).items():
                ctx.store.create_array(f"{group}/{name}", spec)
            ctx.store.update_attrs(group, {"rf_method": config.method, "rf_threshold": config.threshold})
        selected = unit_mask(n_units, config.units)
        todo = np.flatnonzero(available & selected & ~tracker.done_mask())
        if config.method == "occlusion":
            maps = _occlusion_maps(ctx, layer, todo)
        else:
            from rfstore.pipeline.stages.rf_gradient import gradient_rf_maps

            maps = gradient_rf_maps(ctx, layer, todo, radius, config.device)
        sizes = ctx.store.read(f"{group}/rf_size")
        _write_by_chunk(ctx, f"{group}/rf_map", todo, maps, sizes, config.threshold)
        ctx.store.write(f"{group}/rf_size", slice(None), sizes)
        if len(todo):
            tracker.mark_done(todo)
        result.units_done[layer] = len(todo)
        waiting = int((~available & selected).sum())
        if waiting:
            result.waiting[layer] = waiting
        elif tracker.done_mask().all():
            tracker.complete()
    if len(result.missing) == len(ctx.layers):
        raise MissingInputError(f"rf --method {config.method} needs {stage} results: "
                                f"run 'rfstore {stage} {ctx.store.path}' first")
    return result


def _write_by_chunk(ctx: NetworkContext, path: str, units: np.ndarray, maps, sizes: np.ndarray,
                    threshold: float) -> None:
    """Write the maps of ``units`` (increasing) a chunk of ``rf_map`` at a time, and their sizes into ``sizes``.

    Units of one chunk that are not in ``units`` keep their stored values (read with the chunk).
    """
    chunk = ctx.store.array_spec(path).chunks[0]
    pending: dict[int, np.ndarray] = {}

    def flush() -> None:
        first = min(pending) // chunk * chunk
        rows = slice(first, min(first + chunk, sizes.size))
        block = ctx.store.read(path, rows) if len(pending) < rows.stop - rows.start else \
            np.empty((rows.stop - rows.start, *next(iter(pending.values())).shape), dtype=np.float32)
        for unit, rf_map in pending.items():
            block[unit - first] = rf_map
        ctx.store.write(path, rows, block)
        pending.clear()

    for unit, rf_map in zip(units, maps):
        if pending and int(unit) // chunk != min(pending) // chunk:
            flush()
        pending[int(unit)] = rf_map
        sizes[unit] = rf_size_from_map(rf_map, threshold)
    if pending:
        flush()


def _occlusion_maps(ctx: NetworkContext, layer: str, units: np.ndarray):
    """Yield the ``(2ry+1, 2rx+1)`` rf_map of each unit from its discrepancy maps."""
    group = layer_group(ctx.network, layer)
    attrs = ctx.layer_attrs(layer)
    topk_y, topk_x = ctx.store.read(f"{group}/topk_y"), ctx.store.read(f"{group}/topk_x")
    for block in _unit_runs(units, READ_UNITS):  # one read of many chunks: the store reads them concurrently
        maps = ctx.store.read(f"{group}/discrepancy", slice(int(block[0]), int(block[-1]) + 1))
        for unit in block:
            yield unit_rf_map(maps[unit - block[0]], topk_y[unit], topk_x[unit], tuple(attrs["rf_theory_start"]),
                              tuple(attrs["rf_theory_jump"]), tuple(attrs["rf_theory_size"]),
                              int(attrs["occluder_size"]), int(attrs["occluder_stride"]), ctx.input_size)


def _unit_runs(units: np.ndarray, longest: int) -> list[np.ndarray]:
    """``units`` (increasing) cut into runs of consecutive units, each at most ``longest`` long."""
    cuts = np.flatnonzero(np.diff(units) != 1) + 1
    return [run[i: i + longest] for run in np.split(units, cuts) if run.size for i in range(0, run.size, longest)]


# -- the stage ---------------------------------------------------------------------------
def _run(job: Job) -> RFResult:
    return run_rf(job.ctx, job.config, job.force)


def summary(result: RFResult, ctx: NetworkContext) -> list[str]:
    lines = [f"rf: {layer}: {n} unit(s) done" for layer, n in result.units_done.items() if n]
    lines += [f"rf: {layer}: {n} unit(s) wait for their discrepancy maps ('rfstore occlude')"
              for layer, n in result.waiting.items()]
    if result.missing:
        lines.append(f"rf: no discrepancy maps yet for {', '.join(result.missing)} ('rfstore occlude')")
    return lines or ["rf: nothing new to compute for the units selected"]


def changed(ctx: NetworkContext, config: RFConfig) -> bool:
    stage = "occlude" if config.method == "occlusion" else "topk"
    layers = ctx.check_layers(list(config.layers))
    return not is_current(ctx.store, ctx.network, "rf", STAGE_VERSION, config.params(),
                          {layer: complete_token(ctx.store, ctx.network, stage, layer) for layer in layers})


STAGE = Stage("rf", ("occlude",), RFConfig, _run, summary, changed)
