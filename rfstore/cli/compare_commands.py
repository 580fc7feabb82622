"""``rfstore compare STORE [NETWORK ...] [--match]``: Table 1 of several networks side by side; unit matching."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Annotated

import typer

from rfstore.cli import options as opt
from rfstore.cli.app import app, handle_errors, say

Networks = Annotated[list[str] | None, typer.Argument(
    help="Networks to compare, in the order to show them (default: every network in the store).")]
Match = Annotated[bool, typer.Option(
    "--match", help="Pair each unit with its best-correlated unit of the other network (Pearson over the "
                    "images' act_max, per aligned layer pair) and store the pairing; the networks must have "
                    "been run on the same image folder.")]
Top = Annotated[int, typer.Option(min=0, help="Mutual best pairs listed per layer pair.")]
BlockImages = Annotated[int | None, typer.Option(
    min=1, help="Images read at a time by --match (default: the store's activations block, 1024).")]


def _match(store_path: Path, names: list[str], force: bool, block: int | None) -> None:
    from rfstore.cli.method_commands import unit_ticker
    from rfstore.pipeline.stages.compare import run_match
    from rfstore.recorded.progress import Plan
    from rfstore.store import open_store

    with open_store(store_path, "a") as st:
        for a, b in combinations(names, 2):
            result = run_match(st, a, b, force, block, progress=unit_ticker(f"match {a} {b}", unit="img"))
            done = "already current; nothing to do" if result.plan is Plan.SKIP else "stored"
            say(f"compare: {a} <-> {b}: {len(result.pairs)} layer pair(s) over {result.n_images} images {done}")


@app.command()
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
