"""``rfstore status``: a plain-text account of what a store holds (read only).

Reads: root and network attrs, every stage's bookkeeping, ``image_error``,
``rf_size`` and ``concept`` where present. Writes nothing.
"""
from __future__ import annotations

import numpy as np

from rfstore.recorded.network import NetworkContext, find_network
from rfstore.recorded.progress import StageProgress
from rfstore.store import Store
from rfstore.store.layout import layer_group

#: the per-layer stages whose state `status` shows, one column each
LAYER_STAGES = ("topk", "occlude", "rf", "segment", "dissect")


def stage_state(store: Store, network: str, stage: str, layer: str | None = None) -> str:
    """``complete``, ``running (d/n blocks)`` or ``-``."""
    tracker = StageProgress(store, network, stage, layer)
    record = tracker.record()
    if record is None:
        return "-"
    if record.state == "complete":
        return "complete"
    done = tracker.done_mask()
    return f"partial {int(done.sum())}/{done.size}"


def format_status(store: Store, network: str | None = None) -> str:
    """The status report of one network (or of every network when several and none named)."""
    root = store.attrs("")
    lines = [f"store {store.path} (schema v{root.get('schema_version', '?')}, rfstore {root.get('rfstore_version', '?')})"]
    groups, _ = store.children("")
    networks = [network] if network else [g for g in groups if "model" in store.attrs(g)]
    if network is None and len(networks) == 1:
        find_network(store, None)
    for name in networks:
        lines += _network_status(NetworkContext.open(store, name))
    if not networks:
        lines.append("no network yet: run 'rfstore init'")
    return "\n".join(lines)


def _network_status(ctx: NetworkContext) -> list[str]:
    attrs = ctx.attrs
    lines = [
        f"network {ctx.network}: {attrs['model_spec']} ({describe_weights(attrs['model'])}), "
        f"input {attrs['input_size'][0]}x{attrs['input_size'][1]} {'grayscale' if ctx.input_channels == 1 else 'RGB'}",
        f"  images: {ctx.n_images} from {attrs['dataset_root']} ({len(attrs.get('classes', []))} classes)",
        f"  activations: {stage_state(ctx.store, ctx.network, 'activations')}",
    ]
    if attrs.get("dataset_kind") == "broden":
        lines.append(f"  netdissect (Broden, split {attrs.get('broden_split') or 'all'}): quantiles "
                     f"{stage_state(ctx.store, ctx.network, 'netdissect-quantile')}, tally "
                     f"{stage_state(ctx.store, ctx.network, 'netdissect-tally')}")
    header = f"  {'layer':<16}{'kind':<7}{'units':>6}  {'RF theory':>10}" + "".join(
        f"{stage:>15}" for stage in LAYER_STAGES) + f"{'RF empirical':>16}{'labelled':>10}"
    lines.append(header)
    for layer in ctx.layers:
        la = ctx.layer_attrs(layer)
        rf = "x".join(str(v) for v in la["rf_theory_size"]) if "rf_theory_size" in la else "n/a"
        states = "".join(f"{stage_state(ctx.store, ctx.network, stage, layer):>15}" for stage in LAYER_STAGES)
        lines.append(f"  {layer:<16}{la['kind']:<7}{la['num_units']:>6}  {rf:>10}{states}{_empirical(ctx, layer):>16}"
                     f"{_labelled(ctx, layer):>10}")
    skipped = attrs.get("skipped_files", [])
    unreadable = _unreadable(ctx)
    if skipped or unreadable:
        lines.append(f"  files left out: {len(skipped)} at init, {len(unreadable)} unreadable at activations")
        for path, reason in list(skipped) + unreadable:
            lines.append(f"    {path}: {reason}")
    return lines


def _unreadable(ctx: NetworkContext) -> list[tuple[str, str]]:
    errors = ctx.store.read(f"{ctx.network}/image_error")
    paths = ctx.image_paths()
    return [(str(paths[i]), str(errors[i])) for i in np.flatnonzero(errors != "")]


def _empirical(ctx: NetworkContext, layer: str) -> str:
    path = f"{layer_group(ctx.network, layer)}/rf_size"
    if not ctx.store.is_array(path):
        return "-"
    sizes = ctx.store.read(path)
    sizes = sizes[~np.isnan(sizes)]
    if not sizes.size:
        return "-"
    return f"{sizes.mean():.1f} +- {sizes.std():.1f}"


def _labelled(ctx: NetworkContext, layer: str) -> str:
    """Units with a concept label (dissect stage) out of the layer's units, or ``-``."""
    path = f"{layer_group(ctx.network, layer)}/concept"
    if not ctx.store.is_array(path):
        return "-"
    labels = ctx.store.read(path)
    return f"{int((labels != '').sum())}/{labels.size}"


def describe_weights(model: dict) -> str:
    """Where the recorded model's weights come from, in words (``model``: the network's ``model`` attr)."""
    weights = model.get("weights")
    if weights in (None, "none"):
        seed = model.get("seed") if model.get("seed") is not None else 0
        if not str(model.get("spec", "")).startswith("torchvision:"):  # a factory may load its own weights
            return f"the factory's weights, seed {seed}"
        return f"random init, seed {seed}"
    return f"weights {weights}"
