"""Commands that show results: ``report`` (static HTML) and ``show`` (one unit's picture).

Both open the store read-only, so they run while another process writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rfstore.cli import options as opt
from rfstore.cli.app import app, handle_errors, say

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


@app.command()
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
    from rfstore.cli.method_commands import unit_ticker
    from rfstore.report.build import ReportConfig, run_report
    from rfstore.store import open_store

    config = ReportConfig(out=out, network=network, layers=tuple(opt.split_list(layers)),
                          units=opt.parse_units(units))
    with open_store(store, "r") as st:
        result = run_report(st, config, force, progress=unit_ticker("report"))
    if result.unreadable_images:
        say(f"report: {len(result.unreadable_images)} top image(s) could not be read again and are drawn blank:")
        for line in result.unreadable_images[:10]:
            say(f"  {line}")
    say(f"report: {result.layer_pages} layer page(s), {result.unit_pages} unit page(s), "
        f"{result.figures} figure(s) in {result.seconds:.1f} s")
    typer.echo(str(result.index))


@app.command()
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
