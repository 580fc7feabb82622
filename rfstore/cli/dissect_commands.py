"""``rfstore dissect``: label units with the dataset's concepts (Network Dissection); ``rfstore export``.

``--method topk`` (the default) scores each unit's segmentations of its top-K
images against the dataset's concept masks (Zhou et al.'s measure);
``--method netdissect`` computes Bau et al.'s dataset-wide IoU on a Broden folder
(:mod:`rfstore.pipeline.stages.netdissect`); ``rfstore export --tally DIR`` writes its
results as NetDissect-Lite's ``tally.csv`` files.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from rfstore.cli import options as opt
from rfstore.cli.app import app, handle_errors, say

Layers = Annotated[str | None, typer.Option(help="Comma list of layers (default: every layer with segmentations).")]
MinIoU = Annotated[float, typer.Option(min=0.0, max=1.0, help="Smallest IoU for a label (NetDissect's 0.04).")]
Masks = Annotated[str, typer.Option(help="Segmentations to score: rf (the empirical RF on each top image, Zhou) or "
                                         "activation (the activation map above its 99.5% quantile, NetDissect; "
                                         "needs --maps layers).")]
Method = Annotated[str, typer.Option(help="topk: IoU over each unit's top-K images with the dataset's concept masks "
                                          "(after segment); netdissect: NetDissect's IoU over every image of a "
                                          "Broden folder (needs only init).")]
Split = Annotated[str | None, typer.Option(help="netdissect: dissect only the images of this Broden split "
                                                "(default: every image recorded at init).")]
Categories = Annotated[str | None, typer.Option(help="netdissect: comma list of Broden categories "
                                                     "(default: all of category.csv).")]
CheckpointSeconds = Annotated[float, typer.Option(
    min=0.0, help="netdissect: save the quantiles' state at most this often (seconds; 0: after every block).")]
METHODS = ("topk", "netdissect")


def dissect_config(layers: str | None = None, min_iou: float | None = None, masks: str = "rf"):
    from rfstore.stats.iou import DEFAULT_MIN_IOU
    from rfstore.pipeline.stages.dissect import DissectConfig

    return DissectConfig(layers=tuple(opt.split_list(layers)),
                         min_iou=DEFAULT_MIN_IOU if min_iou is None else min_iou, masks=masks)


def do_dissect(store_path: Path, network: str | None, config, force: bool, *, optional: bool = False) -> None:
    """Run the stage and say what it found; with ``optional``, a dataset without concepts is a note, not an error."""
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.dissect import has_concepts, run_dissect
    from rfstore.store import open_store
    from rfstore.store.layout import layer_group

    with open_store(store_path, "a") as store:
        ctx = NetworkContext.open(store, network)
        if optional and not has_concepts(ctx):
            say(f"dissect: skipped: the dataset {ctx.dataset_root} has no concepts.json (no concept masks)")
            return
        result = run_dissect(ctx, config, force)
        for layer, n in result.units_done.items():
            labels = store.read(f"{layer_group(ctx.network, layer)}/concept")
            found = Counter(str(name) for name in labels if name)
            named = ", ".join(f"{name} {count}" for name, count in found.most_common())
            say(f"dissect: {layer}: {n} unit(s) scored; {sum(found.values())}/{labels.size} labelled"
                + (f" ({named})" if named else ""))
        for layer, n in result.waiting.items():
            say(f"dissect: {layer}: {n} unit(s) wait for their segmentations ('rfstore segment')")
        if result.skipped_layers:
            say(f"dissect: already complete for {', '.join(result.skipped_layers)}; nothing to do there")
        if result.missing:
            say(f"dissect: no segmentations yet for {', '.join(result.missing)} ('rfstore segment')")
        if result.without_masks:
            say(f"dissect: no {config.mask_array} for {', '.join(result.without_masks)} (their activation maps "
                f"were not kept: 'rfstore activations --maps'); left out")
        if result.images_without_mask:
            say(f"dissect: {result.images_without_mask} top image(s) have no mask file and were left out")


def netdissect_config(layers: str | None, min_iou: float, split: str | None, categories: str | None, batch_size: int,
                      device: str, workers: int | None, checkpoint_seconds: float):
    from rfstore.pipeline.stages.netdissect import NetDissectConfig

    return NetDissectConfig(layers=tuple(opt.split_list(layers)), split=split,
                            categories=tuple(opt.split_list(categories)), min_iou=min_iou, batch_size=batch_size,
                            device=device, num_workers=workers, checkpoint_seconds=checkpoint_seconds)


def do_netdissect(store_path: Path, network: str | None, config, force: bool, client=None) -> None:
    """Run ``dissect --method netdissect`` and say what it found."""
    from rfstore.cli.app import progress_bar
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.netdissect import run_netdissect
    from rfstore.pipeline.stages.netdissect_export import detector_summary
    from rfstore.recorded.progress import Plan
    from rfstore.store import open_store
    from rfstore.store.layout import netdissect_group

    with open_store(store_path, "a") as store:
        ctx = NetworkContext.open(store, network)
        result = run_netdissect(ctx, config, force, progress=progress_bar, client=client)
        if result.tally_plan is Plan.SKIP:
            say("dissect: netdissect already complete with these settings; nothing to do")
        for layer, detectors in result.detectors.items():
            group = netdissect_group(ctx.network, layer)
            named = detector_summary(store.read(f"{group}/label"), store.read(f"{group}/detector"))
            say(f"dissect: {layer}: {detectors}/{ctx.n_units(layer)} units detect a concept (IoU >= {config.min_iou}) "
                f"over {result.images} images" + (f" ({named})" if named else ""))
    if result.unreadable:
        say(f"dissect: {len(result.unreadable)} image(s) could not be read and were left out, e.g. "
            f"{result.unreadable[0][0]}: {result.unreadable[0][1]}")


@app.command()
@handle_errors
def dissect(
    store: opt.StorePath,
    method: Method = "topk",
    layers: Layers = None,
    min_iou: MinIoU = 0.04,
    masks: Masks = "rf",
    split: Split = None,
    categories: Categories = None,
    batch_size: opt.BatchSize = 32,
    device: opt.Device = "auto",
    workers: opt.Workers = None,
    checkpoint_seconds: CheckpointSeconds = 60.0,
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
    cluster: opt.Cluster = None,
    scheduler: opt.Scheduler = None,
) -> None:
    """Concept labels (Bau et al. 2017): over each unit's top-K images (topk) or a whole Broden folder (netdissect)."""
    if method not in METHODS:
        raise typer.BadParameter(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "topk":
        given = [name for name, value in (("--split", split), ("--categories", categories), ("--cluster", cluster),
                                          ("--scheduler", scheduler)) if value is not None]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} only go with --method netdissect")
        do_dissect(store, network, dissect_config(layers, min_iou, masks), force)
        return
    if masks != "rf":
        raise typer.BadParameter("--masks goes with --method topk: netdissect thresholds every activation map itself")
    config = netdissect_config(layers, min_iou, split, categories, batch_size, device, workers, checkpoint_seconds)
    with opt.cluster_session(store, cluster, scheduler) as client:
        do_netdissect(store, network, config, force, client)


@app.command()
@handle_errors
def export(
    store: opt.StorePath,
    tally: Annotated[Path, typer.Option("--tally", help="Folder for NetDissect-Lite's tally.csv, one per layer: "
                                                          "DIR/{network}/{layer}/tally.csv.")],
    network: opt.Network = None,
) -> None:
    """Write the netdissect results as NetDissect-Lite's tally.csv files."""
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.netdissect_export import export_tally
    from rfstore.store import open_store

    with open_store(store, "r") as st:
        written = export_tally(NetworkContext.open(st, network), tally)
    for path in written:
        say(f"export: {path}")
