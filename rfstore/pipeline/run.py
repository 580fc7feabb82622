"""``run_pipeline``: the one way to run stages, used by ``rfstore run``, every stage command, ``demo`` and notebooks.

Each stage named (default: a whole run, :data:`rfstore.pipeline.registry.RUN`) runs in pipeline
order with the config resolved from its defaults, then the parameters the store recorded for it,
then the values asked for: a value left out reuses what the store holds, and only a value given
explicitly can contradict it. A stage that would compute nothing is not started (its
``changed`` check, cheapest first); a stage that does not apply to the store (``dissect``
without concept masks) is left out with a note.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfstore.errors import UsageError
from rfstore.pipeline.cluster import ClusterSpec, require_zarr, session
from rfstore.pipeline.stage import Job, Progress, Stage, resolve_config
from rfstore.pipeline.stages.init import InitConfig, InitResult, prepare_init, run_init
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import StageProgress
from rfstore.results.status import describe_weights
from rfstore.store import open_store, remove_store

__all__ = ["PipelineConfig", "PipelineResult", "run_pipeline", "recorded_params", "initialised", "run_pipeline_asked"]

Say = Callable[[str], None]


@dataclass(frozen=True)
class PipelineConfig:
    """What :func:`run_pipeline` computes.

    Attributes
    ----------
    init : InitConfig, optional
        Record a network first (needed unless the store holds it already).
    network : str, optional
        The store's network (needed when it holds several; default: ``init``'s).
    stages : tuple of str, optional
        Stages to run, in any order (default: a whole run).
    options : mapping
        ``stage -> {option: value}``: values asked for explicitly (fields of the stage's
        config; None means not given).
    layers : tuple of str
        The layers to work on (default: every recorded layer).
    units : slice, optional
        ``occlude``: the units of each layer (default: all).
    force : bool
        Recompute the stages run, forgetting what depends on them.
    cluster : ClusterSpec, optional
        Run the stages with Dask tasks on this cluster (Zarr stores only).
    report : Path, optional
        Write the HTML report into this folder at the end, for the same layers and units.
    """

    init: InitConfig | None = None
    network: str | None = None
    stages: tuple[str, ...] | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    units: slice | None = None
    force: bool = False
    cluster: ClusterSpec | None = None
    report: Path | None = None


@dataclass
class PipelineResult:
    """What a run did: each stage's result and time, and the report's index page."""

    network: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None


def initialised(path: Path) -> bool:
    """Whether ``path`` is a store that records at least its schema (read-only, cheap)."""
    if not Path(path).exists():
        return False
    with open_store(path, "r") as store:
        return "schema_version" in store.attrs("")


def recorded_params(ctx: NetworkContext, name: str, layers: list[str]) -> dict[str, Any]:
    """The parameters the store recorded for stage ``name`` (its network-wide record, or its first layer's)."""
    for layer in [None, *layers]:
        record = StageProgress(ctx.store, ctx.network, name, layer).record()
        if record is not None:
            return dict(record.params)
    return {}


def run_pipeline_asked(stage: Stage, config: PipelineConfig) -> dict[str, Any]:
    """The values asked for ``stage``: its options, and the selection where its config takes one."""
    asked = dict(config.options.get(stage.name, {}))
    fields = stage.fields()
    if config.layers and "layers" in fields:
        asked.setdefault("layers", tuple(config.layers))
    if config.units is not None and "units" in fields:
        asked.setdefault("units", config.units)
    return asked


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_pipeline(store: str | Path, config: PipelineConfig | None = None, *, say: Say | None = None,
                 progress: Progress | None = None) -> PipelineResult:
    """Run stages on the store at ``store`` (created by ``config.init`` if needed); see the module docstring.

    ``say`` receives one line per thing done (default: standard error); ``progress`` starts
    progress displays (default: none). Returns each stage's result.
    """
    from rfstore.pipeline.registry import RUN, STAGES

    config = config or PipelineConfig()
    say = say or _stderr
    path = Path(store)
    names = config.stages if config.stages is not None else RUN
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise UsageError(f"no stage {', '.join(unknown)} (the stages: {', '.join(STAGES)})")
    if config.cluster is not None:
        require_zarr(path)  # before init: a distributed run stops before doing anything
    result = PipelineResult(network=config.network)
    weights_said = config.init is not None
    if config.init is not None:
        result.network = _init(path, config.init, config.force, say).network
    elif not initialised(path):
        raise UsageError(f"{path} is not an rfstore store yet: give the network and the images (rfstore init, "
                         f"or run with --model and --data)")
    stages = [stage for name, stage in STAGES.items() if name in names]
    with _client(path, config.cluster, any(s.distributed for s in stages), say) as client, \
            open_store(path, "a") as st:
        for n, stage in enumerate(stages):
            ctx = NetworkContext.open(st, result.network)
            result.network = ctx.network
            if n == 0 and not weights_said:
                say(f"{ctx.network}: {ctx.model_spec.spec}, {describe_weights(ctx.attrs['model'])}")
            reason = stage.skip(ctx) if stage.skip is not None and config.stages is None else None
            if reason is not None:
                say(f"{stage.name}: skipped: {reason}")
                continue
            resolved = resolve_config(stage, recorded_params(ctx, stage.record or stage.name, ctx.layers),
                                      run_pipeline_asked(stage, config))
            if not config.force and not stage.changed(ctx, resolved):
                say(f"{stage.name}: up to date; nothing to do")
                continue
            began = time.perf_counter()
            outcome = stage.run(Job(ctx, resolved, config.force, progress, client if stage.distributed else None))
            result.seconds[stage.name] = time.perf_counter() - began
            result.results[stage.name] = outcome
            for line in stage.summary(outcome, ctx):
                say(line)
    if "rf" in result.results:
        _table1(path, result.network, say)
    if config.report is not None:
        result.report = _report(path, config, result.network, say, progress)
    return result


def _init(path: Path, init: InitConfig, force: bool, say: Say) -> InitResult:
    """Record the network; a failed init leaves no store behind where there was none."""
    recording = prepare_init(init)  # every check of the model and the images, before anything is written
    model = init.model.to_dict()
    say(f"{recording.network}: {init.model.spec}, {describe_weights(model)}")
    existed = path.exists()
    try:
        with open_store(path, "a") as store:
            outcome = run_init(store, recording, force)
    except BaseException:
        if not existed:
            remove_store(path)
        raise
    if outcome.already_done:
        say(f"init: {outcome.network} already recorded in {path} with these settings; nothing to do")
    else:
        say(f"init: {outcome.network}: {outcome.n_images} images, {len(outcome.layers)} layers "
            f"({', '.join(outcome.layers)}) recorded in {path}")
        if outcome.skipped:
            say(f"init: {outcome.skipped} file(s) skipped; 'rfstore status {path}' lists them")
    return outcome


@contextlib.contextmanager
def _client(path: Path, spec: ClusterSpec | None, needed: bool, say: Say) -> Iterator[Any]:
    """A Dask client for the run (None without a cluster, or when no stage has tasks)."""
    if spec is None or not needed:
        yield None
        return
    with session(path, spec) as client:
        say(f"running on {spec.describe()}")
        yield client


def _table1(path: Path, network: str | None, say: Say) -> None:
    from rfstore.results.table import format_table1

    with open_store(path, "r") as store:
        for line in format_table1(NetworkContext.open(store, network)).splitlines():
            say(line)


def _report(path: Path, config: PipelineConfig, network: str | None, say: Say, progress: Progress | None) -> Path:
    from rfstore.report.build import ReportConfig, run_report

    report = ReportConfig(out=config.report, network=network, layers=tuple(config.layers), units=config.units)
    tick = None if progress is None else (lambda total: progress("report", total, "unit"))
    with open_store(path, "r") as store:
        outcome = run_report(store, report, progress=tick)
    say(f"report: {outcome.layer_pages} layer page(s), {outcome.unit_pages} unit page(s), "
        f"{outcome.figures} figure(s) in {outcome.seconds:.1f} s: {outcome.index}")
    return outcome.index
