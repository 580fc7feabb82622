"""One command per stage: build the config, open the store, call the stage, report."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rfstore.cli import options as opt
from rfstore.cli.app import app, handle_errors, progress_bar, say


def _preprocessing(preprocess: str | None, resize: int | None, crop: int | None, mean: str | None, std: str | None):
    from rfstore.datasets import Preprocessing

    explicit = any(v is not None for v in (resize, crop, mean, std))
    if preprocess is None and not explicit:
        return None
    if preprocess not in (None, "imagenet", "tensor"):
        raise typer.BadParameter(f"--preprocess must be imagenet or tensor, not {preprocess!r}")
    base = Preprocessing.imagenet() if preprocess == "imagenet" else Preprocessing.tensor()
    if not explicit:
        return base
    mean_v, std_v = opt.parse_floats(mean, "--mean"), opt.parse_floats(std, "--std")
    if (mean_v is None) != (std_v is None) and preprocess is None:
        raise typer.BadParameter("--mean and --std go together")
    return Preprocessing(
        resize=resize if resize is not None else base.resize,
        crop=crop if crop is not None else base.crop,
        mean=mean_v if mean_v is not None else base.mean,
        std=std_v if std_v is not None else base.std,
    )


def init_config(model: str, data: Path, weights: str | None, seed: int, trust_pickle: bool, name: str | None,
                preprocess: str | None, resize: int | None, crop: int | None, mean: str | None, std: str | None,
                layers: str | None, channels: int | None = None, split: str | None = None):
    from rfstore.models import ModelSpec
    from rfstore.pipeline.stages.init import InitConfig

    spec = ModelSpec(model, weights, seed, trust_pickle)
    preprocessing = _preprocessing(preprocess, resize, crop, mean, std)
    return InitConfig(model=spec, data=data, name=name, preprocessing=preprocessing, layers=layers,
                      channels=channels, split=split)


def do_init(store_path: Path, config, force: bool) -> None:
    from rfstore.pipeline.stages.init import run_init
    from rfstore.store import open_store

    with open_store(store_path, "a") as store:
        result = run_init(store, config, force)
    if result.already_done:
        say(f"init: {result.network} already recorded in {store_path} with these settings; nothing to do")
        return
    say(f"init: {result.network}: {result.n_images} images, {len(result.layers)} layers "
        f"({', '.join(result.layers)}) recorded in {store_path}")
    if result.skipped:
        say(f"init: {result.skipped} file(s) skipped; 'rfstore status {store_path}' lists them")


def do_activations(store_path: Path, network: str | None, config, force: bool, client=None) -> None:
    from rfstore.pipeline.stages.activations import run_activations
    from rfstore.recorded.network import NetworkContext
    from rfstore.recorded.progress import Plan
    from rfstore.store import open_store

    with open_store(store_path, "a") as store:
        ctx = NetworkContext.open(store, network)
        result = run_activations(ctx, config, force, progress=progress_bar("activations"), client=client)
    if result.plan is Plan.SKIP:
        say("activations: already complete with these settings; nothing to do")
    else:
        say(f"activations: {result.images_done} images processed")
    if result.unreadable:
        say(f"activations: {len(result.unreadable)} image(s) could not be read and were left out:")
        for path, reason in result.unreadable[:20]:
            say(f"  {path}: {reason}")
        if len(result.unreadable) > 20:
            say(f"  ... and {len(result.unreadable) - 20} more ('rfstore status' lists them all)")


def do_topk(store_path: Path, network: str | None, config, force: bool, client=None) -> None:
    from rfstore.recorded.network import NetworkContext
    from rfstore.recorded.progress import Plan
    from rfstore.pipeline.stages.topk import run_topk
    from rfstore.store import open_store

    with open_store(store_path, "a") as store:
        plans = run_topk(NetworkContext.open(store, network), config, force, client=client)
    done = [layer for layer, plan in plans.items() if plan is not Plan.SKIP]
    say(f"topk: K={config.k} by {config.measure} for {len(done)} layer(s)"
        if done else "topk: already complete with these settings; nothing to do")


@app.command()
@handle_errors
def init(
    store: opt.StorePath,
    model: opt.Model,
    data: opt.Data,
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
    channels: opt.Channels = None,
    split: Annotated[str | None, typer.Option(
        help="With a Broden folder as --data: record only the images of this split (default: all).")] = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
) -> None:
    """Record the network, its preprocessing, the image folder (or Broden folder) and the layers of interest."""
    do_init(store, init_config(model, data, weights, seed, trust_pickle, name, preprocess,
                               resize, crop, mean, std, layers, channels, split), force)


def activations_config(batch_size: int, device: str, workers: int | None, maps: str | None,
                       memory_format: str = "auto"):
    from rfstore.pipeline.stages.activations import ActivationsConfig

    return ActivationsConfig(batch_size=batch_size, device=device, num_workers=workers,
                             maps=tuple(opt.split_list(maps)), memory_format=memory_format)


@app.command()
@handle_errors
def activations(
    store: opt.StorePath,
    batch_size: opt.BatchSize = 64,
    device: opt.Device = "auto",
    workers: opt.Workers = None,
    maps: opt.Maps = None,
    memory_format: opt.MemoryFormat = "auto",
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
    cluster: opt.Cluster = None,
    scheduler: opt.Scheduler = None,
) -> None:
    """Stream the images once; store each unit's spatial max, mean and argmax per image."""
    config = activations_config(batch_size, device, workers, maps, memory_format)
    with opt.cluster_session(store, cluster, scheduler) as client:
        do_activations(store, network, config, force, client)


@app.command()
@handle_errors
def topk(
    store: opt.StorePath,
    k: opt.K = 10,
    measure: opt.Measure = "max",
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
    cluster: opt.Cluster = None,
    scheduler: opt.Scheduler = None,
) -> None:
    """Each unit's K most activating images, with values and argmax positions."""
    from rfstore.pipeline.stages.topk import TopKConfig

    config = TopKConfig(k=k, measure=measure)
    with opt.cluster_session(store, cluster, scheduler) as client:
        do_topk(store, network, config, force, client)


@app.command()
@handle_errors
def validate(
    store: opt.StorePath,
    class_map: opt.ClassMap = None,
    output: opt.Output = None,
    batch_size: opt.BatchSize = 64,
    device: opt.Device = "auto",
    workers: opt.Workers = None,
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
) -> None:
    """Accuracy and confusion matrix of the network on the labelled image folder."""
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.validate import ValidateConfig, format_report, run_validate
    from rfstore.store import open_store

    config = ValidateConfig(class_map=opt.parse_class_map(class_map), output=output, batch_size=batch_size,
                            device=device, num_workers=workers)
    with open_store(store, "a") as st:
        report = run_validate(NetworkContext.open(st, network), config, force, progress=progress_bar("validate"))
    typer.echo(format_report(report))


@app.command()
@handle_errors
def status(store: opt.StorePath, network: opt.Network = None) -> None:
    """What the store holds: networks, layers, stages done, unreadable images."""
    from rfstore.results.status import format_status
    from rfstore.store import open_store

    with open_store(store, "r") as st:
        typer.echo(format_status(st, network))


@app.command("rf-theory")
@handle_errors
def rf_theory(
    model: opt.Model,
    weights: opt.Weights = "none",
    seed: opt.Seed = 0,
    trust_pickle: opt.TrustPickle = False,
    input_size: Annotated[int, typer.Option(min=1, help="Input height and width in pixels.")] = 224,
    layers: opt.Layers = None,
    channels: opt.Channels = None,
) -> None:
    """Print the theoretical receptive fields of a network's layers (no store needed)."""
    from rfstore.rf.theory import describe_table, theoretical_receptive_fields
    from rfstore.models import ModelSpec, input_channels, load_model, select_layers

    if channels is not None and channels not in (1, 3):
        raise typer.BadParameter(f"--channels must be 1 (grayscale) or 3 (RGB), not {channels}")
    module = load_model(ModelSpec(model, weights, seed, trust_pickle)).module
    hw = (input_size, input_size)
    n_channels = input_channels(module, hw, channels)
    names = select_layers(module, layers, (n_channels, *hw))
    typer.echo(describe_table(theoretical_receptive_fields(module, names, hw, in_channels=n_channels)))
