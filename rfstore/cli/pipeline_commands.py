"""``rfstore run`` (every stage, skipping what is done) and ``rfstore demo`` (the embedded default)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

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
) -> None:
    """Run every stage in order (init, activations, topk, occlude, rf, segment), skipping what is done."""
    from rfstore.stages.rf import RFConfig
    from rfstore.stages.segment import SegmentConfig
    from rfstore.stages.topk import TopKConfig

    if model is not None or data is not None:
        if model is None or data is None:
            raise typer.BadParameter("run needs both --model and --data to initialise a store")
        sc.do_init(store, sc.init_config(model, data, weights, seed, trust_pickle, name, preprocess,
                                         resize, crop, mean, std, layers), force)
        network = network or name
    elif not _recorded(store):
        raise typer.BadParameter(f"{store} is not initialised: give --model and --data")
    sc.do_activations(store, network, sc.activations_config(batch_size, device, workers, maps), force)
    sc.do_topk(store, network, TopKConfig(k=k, measure=measure), force)
    mc.do_occlude(store, network, mc.occlude_config(None, units, size, stride, fill, noise_seed, device,
                                                    occlude_batch_size), force)
    mc.do_rf(store, network, RFConfig(threshold=threshold, method=method, device=device), force, summary=True)
    mc.do_segment(store, network, SegmentConfig(), force)


@app.command()
@handle_errors
def demo(
    store: Annotated[Path, typer.Argument(help="Store to write (default: demo-out/demo.zarr).")] = Path("demo-out/demo.zarr"),
    per_class: Annotated[int, typer.Option(min=1, help="Generated images per class.")] = 16,
    seed: opt.Seed = 0,
    force: opt.Force = False,
) -> None:
    """The embedded default end to end: generated scenes, a small AlexNet-like network, every stage."""
    from rfstore.demo.scenes import write_scene_folder

    began = time.perf_counter()
    data = store.parent / "demo-scenes"
    if force or not data.exists():
        write_scene_folder(data, per_class=per_class, seed=seed)
        say(f"demo: wrote {per_class * 4} generated scenes to {data}")
    run(store=store, model="rfstore.demo.network:tiny_alexnet", data=data, weights=None, seed=seed,
        trust_pickle=False, name="tiny_alexnet", preprocess="tensor", resize=None, crop=None, mean=None, std=None,
        layers="features.1,features.4,features.7,features.9,features.11", batch_size=32, device="auto",
        workers=0, maps=None, k=5, measure="max", units=None, size=9, stride=3, fill="zero", noise_seed=0,
        occlude_batch_size=256, threshold=0.5, method="occlusion", network=None, force=force)
    say(f"demo: done in {time.perf_counter() - began:.1f} s; store at {store}; "
        f"inspect with 'rfstore status {store}'")
