"""Stage ``occlude``: discrepancy maps of each unit's top-K images (Zhou et al. 2015, sec. 3.2).

Reads: ``/{network}`` attrs and ``image_path``; per layer ``topk_image``,
``topk_y``, ``topk_x`` (unit, rank) and the ``rf_theory_*`` attrs.
Writes, per layer: ``discrepancy`` (unit, rank, oy, ox) = activation(original) -
activation(occluded) of the unit at (topk_y, topk_x); coordinates ``oy``/``ox``
(top-left pixel of the occluder) and ``rank``; attrs ``occluder_size``,
``occluder_stride``, ``occluder_fill``, ``occluder_seed``.

Work is done a group of units at a time, mixing layers so that units that share
top images share occluded forward passes (:func:`rfstore.core.occlusion.discrepancy_maps`);
each unit is flagged done once its maps are written, so a killed run resumes
with the units not yet done. The ``noise`` fill is a function of (seed, image)
only, so the fill does not depend on grouping, batch size or resumption. The
numbers do not depend on ``batch_size`` either, but the groups decide which
targets share a batch, and a different grouping (``--units`` ranges that cut
groups differently) can change the last bits (measured: up to 3.7e-8 relative on
AlexNet features.9); groups are therefore fixed (``units_per_group`` units of the
layer's order), so a fresh run, a resumed run and a Dask run
(:mod:`rfstore.stages.distributed`, one task per group) give identical bits.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rfstore.core.occlusion import LayerGeometry, OcclusionTarget, discrepancy_maps, occluder_positions
from rfstore.datasets import Preprocessing
from rfstore.errors import RfstoreError
from rfstore.models import FeatureExtractor
from rfstore.stages.context import NetworkContext, load_images
from rfstore.stages.devices import exact_float32, resolve_device
from rfstore.stages.progress import Plan, StageProgress, fingerprint, upstream_token
from rfstore.store.layout import discrepancy_spec, layer_group, write_coordinate

STAGE_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class OccludeConfig:
    """Parameters of ``rfstore occlude``; size, stride, fill, seed and dtype define the results.

    ``dtype`` float32 (the default) is exact; bfloat16 and float16 run the
    network in that precision (fast on a GPU, slow on most CPUs) and give
    approximate maps: a discrepancy is a difference of two activations, so its
    error is a fraction of the layer's activations, not of the discrepancy
    (measured on the test network: 0.3% of the layer's largest top activation
    for bfloat16, 0.05% for float16).
    """

    size: int = 11
    stride: int = 3
    fill: str = "noise"
    seed: int = 0
    layers: tuple[str, ...] = ()
    units: slice | None = None
    device: str = "auto"
    batch_size: int = 256
    units_per_group: int = 8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise RfstoreError(f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.size < 1 or self.stride < 1:
            raise RfstoreError("--size and --stride must be at least 1")
        if self.fill not in ("noise", "zero", "mean"):
            try:
                float(self.fill)
            except ValueError:
                raise RfstoreError(f"--fill must be noise, zero, mean or a number, not {self.fill!r}") from None

    def params(self) -> dict[str, object]:
        params: dict[str, object] = {"size": self.size, "stride": self.stride, "fill": self.fill, "seed": self.seed}
        if self.dtype != "float32":  # float32 stores written before the option keep their fingerprint
            params["dtype"] = self.dtype
        return params

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def occluder_fill(config: OccludeConfig, image: torch.Tensor, image_index: int,
                  preprocessing: Preprocessing) -> torch.Tensor:
    """The (3, H, W) content an occluder puts over ``image``, in the network's input space.

    ``noise``: uniform RGB noise in [0, 1] pixel space, normalised like the images,
    drawn from a generator seeded by (seed, image index); ``zero``: 0 in input space;
    ``mean``: the image's per-channel mean; a number: that constant in input space.
    """
    if config.fill == "noise":
        generator = torch.Generator().manual_seed(hash_seed(config.seed, image_index))
        pixels = torch.rand(image.shape, generator=generator, dtype=torch.float32)
        return preprocessing.from_pixels(pixels)
    if config.fill == "zero":
        return torch.zeros_like(image)
    if config.fill == "mean":
        return image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
    return torch.full_like(image, float(config.fill))


def hash_seed(seed: int, image_index: int) -> int:
    """A 63-bit seed for one image, stable across runs and platforms."""
    return (int(seed) * 1_000_003 + int(image_index) * 7_919 + 0x5EED) % (2**63 - 1)


@dataclass
class OccludeResult:
    units_done: dict[str, int] = field(default_factory=dict)
    skipped_layers: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def layer_geometry(ctx: NetworkContext, layer: str) -> LayerGeometry:
    attrs = ctx.layer_attrs(layer)
    if "rf_theory_size" not in attrs:
        raise RfstoreError(f"layer {layer} has no theoretical receptive field ({attrs.get('rf_theory_error')}), "
                           f"which occlusion needs")
    return LayerGeometry(size=tuple(attrs["rf_theory_size"]), jump=tuple(attrs["rf_theory_jump"]),
                         start=tuple(attrs["rf_theory_start"]), kind=attrs["kind"])


def run_occlude(ctx: NetworkContext, config: OccludeConfig, force: bool = False,
                progress: Callable[[int], Callable[[int], None]] | None = None,
                client: Any = None) -> OccludeResult:
    """Compute the discrepancy maps of the selected units (see module docstring).

    With a ``distributed.Client`` each group of units runs as a task on its
    cluster (a Zarr store only); this process keeps the bookkeeping.
    """
    if client is not None:
        from rfstore.stages.cluster import require_zarr

        require_zarr(ctx.store.path)
    layers = ctx.check_layers(list(config.layers))
    height, width = ctx.input_size
    oy, ox = occluder_positions(height, config.size, config.stride), occluder_positions(width, config.size, config.stride)
    if not len(oy) or not len(ox):
        raise RfstoreError(f"an occluder of {config.size} px does not fit in the {height}x{width} input")
    result = OccludeResult()
    work: list[tuple[str, int]] = []
    trackers: dict[str, StageProgress] = {}
    for layer in layers:
        n_units = ctx.n_units(layer)
        units = np.arange(n_units)[config.units] if config.units is not None else np.arange(n_units)
        if config.units is not None and (config.units.start >= n_units or not len(units)):
            raise RfstoreError(f"--units {config.units.start}:{config.units.stop}: layer {layer} has units 0..{n_units - 1}")
        upstream = upstream_token(ctx.store, ctx.network, "topk", layer, needed_by="occlude")
        tracker = StageProgress(ctx.store, ctx.network, "occlude", layer)
        fp = fingerprint("occlude", STAGE_VERSION, config.params(), [upstream])
        plan = tracker.begin(config.params(), fp, n_units, force)
        if plan is Plan.SKIP:
            result.skipped_layers.append(layer)
            continue
        group = layer_group(ctx.network, layer)
        k = int(ctx.layer_attrs(layer)["topk_k"])
        if plan is Plan.FRESH:
            write_coordinate(ctx.store, group, "oy", oy)
            write_coordinate(ctx.store, group, "ox", ox)
            ctx.store.create_array(f"{group}/discrepancy", discrepancy_spec(n_units, k, len(oy), len(ox)))
            ctx.store.update_attrs(group, {"occluder_size": config.size, "occluder_stride": config.stride,
                                           "occluder_fill": config.fill, "occluder_seed": config.seed})
        done = tracker.done_mask()
        work += [(layer, int(u)) for u in units if not done[u]]
        trackers[layer] = tracker
        layer_geometry(ctx, layer)  # fail early, before any work, for a layer without RF
    if work and client is not None:
        from rfstore.stages.distributed import occlude_on_cluster

        occlude_on_cluster(client, ctx, config, work, trackers, progress, result)
    elif work:
        _compute(ctx, config, work, trackers, progress, result)
    for layer, tracker in trackers.items():
        if tracker.done_mask().all():
            tracker.complete()
    return result


def _compute(ctx: NetworkContext, config: OccludeConfig, work: list[tuple[str, int]],
             trackers: dict[str, StageProgress], progress: Callable | None, result: OccludeResult) -> None:
    runner = GroupRunner(ctx, config, sorted({layer for layer, _ in work}, key=ctx.layers.index))
    tick = progress(len(work)) if progress else None
    for start in range(0, len(work), config.units_per_group):
        group = work[start:start + config.units_per_group]
        maps, stats = runner.maps(group)
        write_unit_maps(ctx, maps)
        record_group(trackers, group, stats, result)
        if tick:
            tick(len(group))


def record_group(trackers: dict[str, StageProgress], group: list[tuple[str, int]], stats: dict[str, float],
                 result: OccludeResult) -> None:
    """Flag a written group's units done and add its counters to ``result``."""
    for layer in sorted({layer for layer, _ in group}):
        units = [unit for g_layer, unit in group if g_layer == layer]
        trackers[layer].mark_done(units)
        result.units_done[layer] = result.units_done.get(layer, 0) + len(units)
    for key, value in stats.items():
        result.stats[key] = result.stats.get(key, 0) + value


class GroupRunner:
    """The network and the top-K of some layers, ready to compute groups of units.

    Parameters
    ----------
    ctx : NetworkContext
        The open store's network.
    config : OccludeConfig
        Occluder and batching parameters.
    layers : list of str
        The layers whose units the groups will hold.
    """

    def __init__(self, ctx: NetworkContext, config: OccludeConfig, layers: list[str]) -> None:
        self.ctx, self.config = ctx, config
        self.device = resolve_device(config.device)
        model = ctx.load_model().module.to(self.device, config.torch_dtype)
        self.extractor = FeatureExtractor(model, layers)
        self.geometry = {layer: layer_geometry(ctx, layer) for layer in layers}
        self.topk = {layer: {name: ctx.store.read(f"{layer_group(ctx.network, layer)}/topk_{name}")
                             for name in ("image", "y", "x")} for layer in layers}
        self.preprocessing = ctx.preprocessing
        height, width = ctx.input_size
        self.map_shape = (len(occluder_positions(height, config.size, config.stride)),
                          len(occluder_positions(width, config.size, config.stride)))

    def maps(self, group: list[tuple[str, int]]) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, float]]:
        """``(K, n_oy, n_ox)`` float32 maps of each (layer, unit) of ``group`` (NaN for missing ranks), and counters."""
        ctx, config, topk, geometry = self.ctx, self.config, self.topk, self.geometry
        image_ids = sorted({int(i) for layer, unit in group for i in topk[layer]["image"][unit] if i >= 0})
        local = {image: n for n, image in enumerate(image_ids)}
        targets, owners = [], []
        for layer, unit in group:
            for rank, image in enumerate(topk[layer]["image"][unit]):
                if image < 0:
                    continue
                kind = geometry[layer].kind
                y = int(topk[layer]["y"][unit, rank]) if kind == "conv" else 0
                x = int(topk[layer]["x"][unit, rank]) if kind == "conv" else 0
                targets.append(OcclusionTarget(local[int(image)], layer, unit, y, x))
                owners.append((layer, unit, rank))
        images = load_images(ctx, image_ids)
        maps = np.zeros((0,))
        totals: dict[str, float] = {}
        if targets:
            fill = torch.stack([occluder_fill(config, images[n], i, self.preprocessing)
                                for n, i in enumerate(image_ids)])
            with exact_float32():
                maps, stats = discrepancy_maps(self.extractor, images, fill, targets, geometry, size=config.size,
                                               stride=config.stride, batch_size=config.batch_size,
                                               device=self.device, dtype=config.torch_dtype)
            for key, value in dataclasses.asdict(stats).items():
                if key not in ("image_pixels", "n_positions", "min_crop_extent"):
                    totals[key] = totals.get(key, 0) + value
        out: dict[tuple[str, int], np.ndarray] = {}
        for layer, unit in group:
            k = int(ctx.layer_attrs(layer)["topk_k"])
            unit_maps = np.full((k, *self.map_shape), np.nan, dtype=np.float32)
            for t, (o_layer, o_unit, rank) in enumerate(owners):
                if (o_layer, o_unit) == (layer, unit):
                    unit_maps[rank] = maps[t]
            out[layer, unit] = unit_maps
        return out, totals


def write_unit_maps(ctx: NetworkContext, maps: dict[tuple[str, int], np.ndarray]) -> None:
    """Write each unit's ``(K, n_oy, n_ox)`` maps: one whole chunk of ``discrepancy`` per unit."""
    for (layer, unit), unit_maps in maps.items():
        ctx.store.write(f"{layer_group(ctx.network, layer)}/discrepancy", unit, unit_maps)
