"""``rfstore dissect``: label units with the dataset's concepts (Network Dissection)."""
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


def dissect_config(layers: str | None = None, min_iou: float | None = None, masks: str = "rf"):
    from rfstore.core.dissect import DEFAULT_MIN_IOU
    from rfstore.stages.dissect import DissectConfig

    with opt.usage_errors():
        return DissectConfig(layers=tuple(opt.split_list(layers)),
                             min_iou=DEFAULT_MIN_IOU if min_iou is None else min_iou, masks=masks)


def do_dissect(store_path: Path, network: str | None, config, force: bool, *, optional: bool = False) -> None:
    """Run the stage and say what it found; with ``optional``, a dataset without concepts is a note, not an error."""
    from rfstore.stages.context import NetworkContext
    from rfstore.stages.dissect import has_concepts, run_dissect
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


@app.command()
@handle_errors
def dissect(
    store: opt.StorePath,
    layers: Layers = None,
    min_iou: MinIoU = 0.04,
    masks: Masks = "rf",
    network: opt.Network = None,
    force: opt.Force = False,
    wait: opt.Wait = False,
) -> None:
    """Concept labels: IoU of each unit's segmentations with the dataset's concept masks (Bau et al. 2017)."""
    do_dissect(store, network, dissect_config(layers, min_iou, masks), force)
