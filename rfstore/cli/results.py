"""Commands that read a store: ``status``, ``report``, ``show``, ``compare``, ``export``, and ``rf-theory`` (no store).

They open the store read-only (``compare --match`` writes its pairings), so they run while another process writes it.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Annotated

import typer

from rfstore.cli import options as opt
from rfstore.cli.app import RESULTS, app, check_store_path, handle_errors, progress, say
Out = Annotated[Path, typer.Option("--out", help="Folder to write the report into (created if missing).")]
ReportLayers = Annotated[str | None, typer.Option(help="Comma list of layers to give pages (default: all).")]
ReportUnits = Annotated[str | None, typer.Option(
    help="START:STOP[:STEP] units of each layer to give pages (default: all; for big layers).")]
ReportNetwork = Annotated[str | None, typer.Option(help="Only this network (default: every network in the store).")]
ReportForce = Annotated[bool, typer.Option(
    "--force", help="Write into a non-empty folder that holds no earlier report.")]
Picture = Annotated[Path, typer.Option("--out", help="Picture to write: .png (or .jpg, .pdf, .tiff, .webp).")]
Layer = Annotated[str, typer.Argument(help="Layer (module name, e.g. features.4).")]
Unit = Annotated[int, typer.Argument(min=0, help="Unit (channel) index in the layer.")]
Scale = Annotated[float | None, typer.Option(min=0.05, help="Zoom of each image (default: about 256 px per image).")]


Networks = Annotated[list[str] | None, typer.Argument(
    help="Networks to compare, in the order to show them (default: every network in the store).")]
Match = Annotated[bool, typer.Option(
    "--match", help="Pair each unit with its best-correlated unit of the other network (Pearson over the "
                    "images' act_max, per aligned layer pair) and store the pairing; the networks must have "
                    "been run on the same image folder.")]
Top = Annotated[int, typer.Option(min=0, help="Mutual best pairs listed per layer pair.")]
BlockImages = Annotated[int | None, typer.Option(
    min=1, help="Images read at a time by --match (default: the store's activations block, 1024).")]



@app.command(rich_help_panel=RESULTS)
@handle_errors
def status(store: opt.StorePath, network: opt.Network = None) -> None:
    """What the store holds: networks, layers, stages done, unreadable images."""
    from rfstore.results.status import format_status
    from rfstore.store import open_store

    check_store_path(store, must_exist=True)
    with open_store(store, "r") as st:
        typer.echo(format_status(st, network))

@app.command(rich_help_panel=RESULTS)
@handle_errors
def report(
    store: opt.StorePath,
    out: Out,
    layers: ReportLayers = None,
    units: ReportUnits = None,
    network: ReportNetwork = None,
    force: ReportForce = False,
) -> None:
    """Static HTML report (opens from disk): per network Table 1 and RF-vs-depth, a page per layer and per unit."""
    from rfstore.report.build import ReportConfig, run_report
    from rfstore.store import open_store

    config = ReportConfig(out=out, network=network, layers=tuple(opt.split_list(layers)),
                          units=opt.parse_units(units))
    with open_store(store, "r") as st:
        result = run_report(st, config, force, progress=lambda total: progress("report", total, "unit"))
    if result.unreadable_images:
        say(f"report: {len(result.unreadable_images)} top image(s) could not be read again and are drawn blank:")
        for line in result.unreadable_images[:10]:
            say(f"  {line}")
    say(f"report: {result.layer_pages} layer page(s), {result.unit_pages} unit page(s), "
        f"{result.figures} figure(s) in {result.seconds:.1f} s")
    typer.echo(str(result.index))


@app.command(rich_help_panel=RESULTS)
@handle_errors
def show(
    store: opt.StorePath,
    layer: Layer,
    unit: Unit,
    out: Picture,
    network: opt.Network = None,
    scale: Scale = None,
) -> None:
    """One unit's picture for papers: top-K montage with overlays, discrepancy maps, empirical RF."""
    from rfstore.report.build import ShowConfig, run_show
    from rfstore.store import open_store

    with open_store(store, "r") as st:
        path = run_show(st, ShowConfig(layer=layer, unit=unit, out=out, network=network, scale=scale))
    say(f"show: wrote {path}")


def _match(store_path: Path, names: list[str], force: bool, block: int | None) -> None:
    from rfstore.pipeline.stages.compare import run_match
    from rfstore.recorded.progress import Plan
    from rfstore.store import open_store

    with open_store(store_path, "a") as st:
        for a, b in combinations(names, 2):
            result = run_match(st, a, b, force, block, progress=lambda total: progress(f"match {a} {b}", total, "img"))
            done = "already current; nothing to do" if result.plan is Plan.SKIP else "stored"
            say(f"compare: {a} <-> {b}: {len(result.pairs)} layer pair(s) over {result.n_images} images {done}")


@app.command(rich_help_panel=RESULTS)
@handle_errors
def compare(
    store: opt.StorePath,
    networks: Networks = None,
    match: Match = False,
    top: Top = 10,
    block_images: BlockImages = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
) -> None:
    """Zhou's Table 1 of several networks side by side, layers aligned by relative depth; --match pairs units."""
    from rfstore.results.compare import compare_networks, format_comparison, network_names
    from rfstore.results.matches import format_pairs, pair_summaries
    from rfstore.store import open_store

    with open_store(store, "r") as st:
        names = network_names(st, networks or [])
    if match:
        if len(names) < 2:
            raise typer.BadParameter(f"--match needs two or more networks, not only {', '.join(names)} "
                                     f"(the store holds networks that 'rfstore status' lists)")
        _match(store, names, force, block_images)
    with open_store(store, "r") as st:
        typer.echo(format_comparison(compare_networks(st, names)))
        for a, b in combinations(names, 2):
            summaries = pair_summaries(st, a, b)
            if summaries:
                typer.echo(f"\nBest-matched units of {a} and {b} "
                           f"(Pearson r of act_max; mutual best pairs, best first):")
                typer.echo(format_pairs(summaries, top))


@app.command(rich_help_panel=RESULTS)
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


@app.command("rf-theory", rich_help_panel=RESULTS)
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
