"""Commands of the method proper: ``occlude``, ``rf``, ``segment``."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from rfstore.cli import options as opt
from rfstore.cli.app import app, handle_errors, say

Size = Annotated[int, typer.Option(min=1, help="Occluder side in pixels (the paper's 11).")]
Stride = Annotated[int, typer.Option(min=1, help="Occluder stride in pixels (the paper's 3).")]
Fill = Annotated[str, typer.Option(help="Occluder content: noise (seeded uniform RGB) | zero | mean | a number.")]
OccSeed = Annotated[int, typer.Option("--seed", help="Seed of the noise fill.")]
Dtype = Annotated[str, typer.Option(help="float32 (exact, the default) | bfloat16 | float16: "
                                          "faster on a GPU, approximate (errors ~0.3% | ~0.05% of the layer's top activation).")]
Units = Annotated[str | None, typer.Option(help="START:STOP[:STEP] units of each layer (default: all).")]
Threshold = Annotated[float, typer.Option(help="Empirical RF = where rf_map >= threshold * max (half-maximum).")]
Method = Annotated[str, typer.Option(help="occlusion (Zhou et al.) | gradient (Luo et al. 2016).")]
Summary = Annotated[bool, typer.Option("--summary", help="Print Zhou's Table 1: theoretical vs empirical RF sizes.")]
OccBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Occluded inputs per forward pass.")]


def unit_ticker(description: str, unit: str = "unit") -> Callable[[int], Callable[[int], None]]:
    from tqdm import tqdm

    def start(total: int) -> Callable[[int], None]:
        bar = tqdm(total=total, desc=description, unit=unit, disable=None, file=sys.stderr)

        def tick(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return tick

    return start


def occlude_config(layers: str | None, units: str | None, size: int, stride: int, fill: str, seed: int,
                   device: str, batch_size: int, dtype: str = "float32"):
    from rfstore.pipeline.stages.occlude import OccludeConfig

    return OccludeConfig(size=size, stride=stride, fill=fill, seed=seed, layers=tuple(opt.split_list(layers)),
                         units=opt.parse_units(units), device=device, batch_size=batch_size, dtype=dtype)


def do_occlude(store_path: Path, network: str | None, config, force: bool, client=None) -> None:
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.occlude import run_occlude
    from rfstore.store import open_store

    with open_store(store_path, "a") as store:
        result = run_occlude(NetworkContext.open(store, network), config, force,
                             progress=unit_ticker("occlude", "img"), client=client)
    for layer, n in result.maps_done.items():
        say(f"occlude: {layer}: {n} map(s) computed, {result.units_done.get(layer, 0)} unit(s) complete")
    if result.skipped_layers:
        say(f"occlude: already complete for {', '.join(result.skipped_layers)}; nothing to do there")
    if not result.maps_done and not result.skipped_layers:
        say("occlude: the selected units were already done")


def do_rf(store_path: Path, network: str | None, config, force: bool, summary: bool) -> None:
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.rf import run_rf
    from rfstore.results.table import format_table1
    from rfstore.store import open_store

    with open_store(store_path, "a") as store:
        ctx = NetworkContext.open(store, network)
        result = run_rf(ctx, config, force)
        for layer, n in result.units_done.items():
            say(f"rf: {layer}: {n} unit(s) done")
        for layer, n in result.waiting.items():
            say(f"rf: {layer}: {n} unit(s) wait for their discrepancy maps ('rfstore occlude')")
        if result.missing:
            say(f"rf: no discrepancy maps yet for {', '.join(result.missing)} ('rfstore occlude')")
        if summary:
            typer.echo(format_table1(ctx))


def do_segment(store_path: Path, network: str | None, config, force: bool) -> None:
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.segment import run_segment
    from rfstore.store import open_store

    with open_store(store_path, "a") as store:
        done = run_segment(NetworkContext.open(store, network), config, force)
    say("segment: " + (", ".join(f"{layer}: {n} unit(s)" for layer, n in done.items() if n) or "nothing to do"))


@app.command()
@handle_errors
def occlude(
    store: opt.StorePath,
    layers: opt.Layers = None,
    units: Units = None,
    size: Size = 11,
    stride: Stride = 3,
    fill: Fill = "noise",
    seed: OccSeed = 0,
    device: opt.Device = "auto",
    batch_size: OccBatch = 256,
    dtype: Dtype = "float32",
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
    cluster: opt.Cluster = None,
    scheduler: opt.Scheduler = None,
) -> None:
    """Discrepancy maps: slide an occluder over each unit's top images, record the activation drop."""
    config = occlude_config(layers, units, size, stride, fill, seed, device, batch_size, dtype)
    with opt.cluster_session(store, cluster, scheduler) as client:
        do_occlude(store, network, config, force, client)


@app.command()
@handle_errors
def rf(
    store: opt.StorePath,
    threshold: Threshold = 0.5,
    method: Method = "occlusion",
    layers: opt.Layers = None,
    summary: Summary = False,
    device: opt.Device = "auto",
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
) -> None:
    """Empirical receptive fields: re-centre and average each unit's maps; their sizes."""
    from rfstore.pipeline.stages.rf import RFConfig

    do_rf(store, network, RFConfig(threshold=threshold, method=method, layers=tuple(opt.split_list(layers)),
                                   device=device), force, summary)


@app.command()
@handle_errors
def segment(
    store: opt.StorePath,
    layers: opt.Layers = None,
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
) -> None:
    """Segmentations: each unit's empirical RF placed on its top images (and NetDissect masks with --maps)."""
    from rfstore.pipeline.stages.segment import SegmentConfig

    do_segment(store, network, SegmentConfig(layers=tuple(opt.split_list(layers))), force)
