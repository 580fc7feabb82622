"""``rfstore run`` (every stage, skipping what is done) and ``rfstore demo`` (the embedded default)."""
from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated

import typer

from rfstore.cli import dissect_commands as dc
from rfstore.cli import method_commands as mc
from rfstore.cli import options as opt
from rfstore.cli import stage_commands as sc
from rfstore.cli.app import app, handle_errors, say


def _recorded(store_path: Path) -> bool:
    from rfstore.store import open_store

    if not store_path.exists():
        return False
    with open_store(store_path, "r") as store:
        return "schema_version" in store.attrs("")


@app.command()
@handle_errors
def run(
    store: opt.StorePath,
    model: Annotated[str | None, typer.Option(help="As for init (needed unless the store is initialised).")] = None,
    data: Annotated[Path | None, typer.Option(help="As for init.")] = None,
    weights: opt.Weights = None,
    seed: opt.Seed = 0,
    trust_pickle: opt.TrustPickle = False,
    name: opt.Name = None,
    preprocess: opt.Preprocess = None,
    resize: opt.Resize = None,
    crop: opt.Crop = None,
    mean: opt.Mean = None,
    std: opt.Std = None,
    layers: opt.Layers = None,
    batch_size: opt.BatchSize = 64,
    device: opt.Device = "auto",
    workers: opt.Workers = None,
    maps: opt.Maps = None,
    k: opt.K = 10,
    measure: opt.Measure = "max",
    units: mc.Units = None,
    size: mc.Size = 11,
    stride: mc.Stride = 3,
    fill: mc.Fill = "noise",
    noise_seed: Annotated[int, typer.Option(help="Seed of occlude's noise fill.")] = 0,
    occlude_batch_size: Annotated[int, typer.Option(min=1, help="Occluded inputs per forward pass.")] = 256,
    threshold: mc.Threshold = 0.5,
    method: mc.Method = "occlusion",
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
    cluster: opt.Cluster = None,
    scheduler: opt.Scheduler = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the HTML report into this folder at the end (as 'rfstore report --out').")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Compute nothing: print what would be computed, its estimated time here and the bytes "
                          "it would store (as 'rfstore plan').")] = False,
) -> None:
    """Run every stage in order (init, activations, topk, occlude, rf, segment, dissect[, report]), skipping what is done."""
    from rfstore.pipeline.stages.rf import RFConfig
    from rfstore.pipeline.stages.segment import SegmentConfig
    from rfstore.pipeline.stages.topk import TopKConfig

    if dry_run:
        occlude = mc.occlude_config(None, units, size, stride, fill, noise_seed, device, occlude_batch_size)
        init = None if model is None and data is None else (
            sc.init_config(model, data, weights, seed, trust_pickle, name, preprocess, resize, crop, mean, std, layers)
            if model is not None and data is not None else None)
        if (model is None) != (data is None):
            raise typer.BadParameter("run needs both --model and --data to initialise a store")
        _plan(store, network, init, occlude, k, tuple(opt.split_list(maps)))
        return

    if cluster is not None or scheduler is not None:
        from rfstore.pipeline.cluster import require_zarr

        require_zarr(store)  # before init: a distributed run stops before doing anything
    if model is not None or data is not None:
        if model is None or data is None:
            raise typer.BadParameter("run needs both --model and --data to initialise a store")
        sc.do_init(store, sc.init_config(model, data, weights, seed, trust_pickle, name, preprocess,
                                         resize, crop, mean, std, layers), force)
        network = network or name
    elif not _recorded(store):
        raise typer.BadParameter(f"{store} is not initialised: give --model and --data")
    with opt.cluster_session(store, cluster, scheduler) as client:
        sc.do_activations(store, network, sc.activations_config(batch_size, device, workers, maps), force, client)
        sc.do_topk(store, network, TopKConfig(k=k, measure=measure), force, client)
        mc.do_occlude(store, network, mc.occlude_config(None, units, size, stride, fill, noise_seed, device,
                                                        occlude_batch_size), force, client)
    mc.do_rf(store, network, RFConfig(threshold=threshold, method=method, device=device), force, summary=True)
    mc.do_segment(store, network, SegmentConfig(), force)
    dc.do_dissect(store, network, dc.dissect_config(), force, optional=True)  # skipped without concepts.json
    if report is not None:
        _report(store, report, network)


def _plan(store: Path, network: str | None, init, occlude, k: int, maps: tuple[str, ...]) -> None:
    """Print the plan of a run: on the store as it stands, or, before ``init``, on a scratch copy of what init would record."""
    import shutil
    import tempfile

    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.init import run_init
    from rfstore.pipeline.plan import format_plan, plan_run
    from rfstore.store import open_store

    if init is None and not _recorded(store):
        raise typer.BadParameter(f"{store} is not initialised: give --model and --data")
    scratch = None
    try:
        if init is not None and not _recorded(store):
            scratch = Path(tempfile.mkdtemp(prefix="rfstore-plan-"))
            began = time.perf_counter()
            with open_store(scratch / f"plan{store.suffix}", "a") as st:
                result = run_init(st, init)
            say(f"plan: init would record {result.n_images} images and {len(result.layers)} layers "
                f"({time.perf_counter() - began:.1f} s)")
            path = scratch / f"plan{store.suffix}"
        else:
            path = store
        with open_store(path, "r") as st:
            typer.echo(format_plan(plan_run(NetworkContext.open(st, network), occlude, k, maps)))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _report(store: Path, out: Path, network: str | None) -> Path:
    from rfstore.cli.method_commands import unit_ticker
    from rfstore.report.build import ReportConfig, run_report
    from rfstore.store import open_store

    with open_store(store, "r") as st:
        result = run_report(st, ReportConfig(out=out, network=network), progress=unit_ticker("report"))
    say(f"report: {result.layer_pages} layer page(s), {result.unit_pages} unit page(s), "
        f"{result.figures} figure(s) in {result.seconds:.1f} s: {result.index}")
    return result.index


def plan(**options) -> None:
    """Compute nothing: what 'rfstore run' with these options would compute, its estimated time here and its bytes."""
    run(**options, dry_run=True)


_run_signature = inspect.signature(run, eval_str=True)  # plan takes exactly run's options but --dry-run
plan.__signature__ = _run_signature.replace(  # type: ignore[attr-defined]
    parameters=[p for p in _run_signature.parameters.values() if p.name != "dry_run"])
plan.__annotations__ = {p.name: p.annotation for p in plan.__signature__.parameters.values()}
app.command("plan")(handle_errors(plan))


#: the demo's settings: every stage on the trained network's five conv layers, sized to run in under
#: two minutes on a 2-core CPU (occlusion dominates: units x K x occluder positions).
DEMO_LAYERS = "features.1,features.4,features.7,features.9,features.11"
DEMO_PER_CLASS = 24
DEMO_K = 5
DEMO_OCCLUDER = (10, 5)  # size, stride in pixels: 18 x 18 positions on the 96 x 96 scenes


def _demo_network(store: Path, retrain: bool, weights_out: Path | None) -> tuple[str, str | None]:
    """The model spec and weights for the demo: the shipped ones, or freshly trained ones."""
    import json

    from rfstore.demo.network import WEIGHTS_INFO, shipped_weights

    shipped = json.loads((shipped_weights().parent / Path(WEIGHTS_INFO).name).read_text())
    if not retrain:
        say(f"demo: network trained on generated scenes (held-out accuracy {shipped['heldout_accuracy']:.3f}, "
            f"shipped with rfstore)")
        return "rfstore.demo.network:tiny_alexnet_trained", None
    from rfstore.demo.train import train

    out = weights_out if weights_out is not None else store.parent / "tiny_alexnet.pt"
    say(f"demo: retraining the network from scratch into {out} (a few minutes)")
    result = train(out, progress=lambda message: say(f"demo: train: {message}"))
    same = result.sha256 == shipped.get("sha256")
    say(f"demo: trained in {result.seconds:.0f} s: train accuracy {result.train_accuracy:.3f}, "
        f"held-out accuracy {result.heldout_accuracy:.3f}; sha256 {result.sha256[:12]}... "
        + ("(identical to the shipped weights)" if same else
           "(differs from the shipped weights: another CPU or torch version rounds differently)"))
    return "rfstore.demo.network:tiny_alexnet", str(out)


@app.command()
@handle_errors
def demo(
    store: Annotated[Path, typer.Argument(help="Store to write (default: demo-out/demo.zarr).")] = Path("demo-out/demo.zarr"),
    per_class: Annotated[int, typer.Option(min=1, help="Generated images per class.")] = DEMO_PER_CLASS,
    seed: Annotated[int, typer.Option(help="Seed of the generated scenes.")] = 0,
    layers: Annotated[str, typer.Option(help="Layers to analyse.")] = DEMO_LAYERS,
    retrain: Annotated[bool, typer.Option(
        "--retrain", help="Train the network again from scratch (a few minutes) and use those weights; "
                          "recomputes the store.")] = False,
    weights_out: Annotated[Path | None, typer.Option(
        help="Where --retrain writes the weights (default: tiny_alexnet.pt beside the store).")] = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
) -> None:
    """The embedded default end to end: generated scenes, a small trained AlexNet-like network, every stage."""
    from rfstore.demo.scenes import CLASSES, scene_folder_matches, write_scene_folder
    from rfstore.demo.train import deterministic_cpu

    began = time.perf_counter()
    model, weights = _demo_network(store, retrain, weights_out)
    force = force or retrain
    data = store.parent / "demo-scenes"
    if force or not scene_folder_matches(data, per_class=per_class, seed=seed):
        write_scene_folder(data, per_class=per_class, seed=seed, replace=True)
        say(f"demo: wrote {per_class * len(CLASSES)} generated scenes and their concept masks to {data}")
    size, stride = DEMO_OCCLUDER
    # one torch thread: as fast as two for this tiny network on an idle CPU, and 3x faster on a busy one
    # (torch's worker threads spin waiting for each other when they do not get a core)
    with deterministic_cpu():
        run(store=store, model=model, data=data, weights=weights, seed=0,
            trust_pickle=False, name="tiny_alexnet", preprocess="tensor", resize=None, crop=None, mean=None, std=None,
            layers=layers, batch_size=32, device="auto", workers=0, maps=None, k=DEMO_K, measure="max", units=None,
            size=size, stride=stride, fill="zero", noise_seed=0, occlude_batch_size=256, threshold=0.5,
            method="occlusion", network=None, force=force, report=store.parent / "report")
    say(f"demo: done in {time.perf_counter() - began:.1f} s; store at {store}; "
        f"inspect with 'rfstore status {store}'")
    say(f"demo: open the report: {(store.parent / 'report' / 'index.html').resolve()}")
