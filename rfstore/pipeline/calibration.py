"""How fast this machine runs a network's stages: a few seconds of measurements for ``rfstore plan``.

:func:`calibrate` times the network's forward pass, a burst of the occlusion engine's
incremental passes, writes and reads of a scratch store of the same kind, and the per-unit
arithmetic of ``rf`` and ``segment``.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rfstore.occlusion import OcclusionEngine
from rfstore.occlusion.cost import FORWARD_COST
from rfstore.pipeline.stages.occlude import OccludeConfig, layer_geometry
from rfstore.recorded.network import NetworkContext, load_images

__all__ = ["Machine", "calibrate"]


@dataclass(frozen=True)
class Machine:
    """Seconds per unit of work on this machine, for one network and store.

    Attributes
    ----------
    model_load : float
        Rebuilding the network and checking its parameters.
    forward_image : float
        One image through the network (a batch of 16).
    forward_mac : float
        One multiply-add of the network's own modules.
    incremental : float
        One cost unit of the occlusion engine's incremental passes.
    image_load : float
        Reading and preprocessing one image.
    chunk : float
        The fixed cost of writing one chunk of a store of this kind.
    read_chunk : float
        The fixed cost of reading one chunk, among many read in one call.
    meta : float
        Creating an array or updating attributes (a stage does a few per layer).
    write : float
        One byte written to a store of this kind (read assumed alike), beyond the chunk's fixed cost.
    rf_unit : dict
        ``layer -> rf`` arithmetic per unit (without I/O).
    segment_unit : dict
        ``layer -> segment`` arithmetic per unit (without I/O).
    """

    model_load: float
    forward_image: float
    forward_mac: float
    incremental: float
    image_load: float
    chunk: float
    read_chunk: float
    meta: float
    write: float
    rf_unit: dict[str, float] = field(default_factory=dict)
    segment_unit: dict[str, float] = field(default_factory=dict)

    def io(self, chunks: float, nbytes: float) -> float:
        """Seconds to write ``chunks`` whole chunks holding ``nbytes`` in all."""
        return chunks * self.chunk + nbytes * self.write

    def reads(self, chunks: float, nbytes: float) -> float:
        """Seconds to read ``chunks`` chunks holding ``nbytes``, many chunks per call."""
        return chunks * self.read_chunk + nbytes * self.write


def _timed(fn, *args, repeat: int = 2) -> float:
    best = math.inf
    for _ in range(repeat):
        began = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - began)
    return best


def _engine(ctx: NetworkContext, model: torch.nn.Module, layers: list[str], config: OccludeConfig) -> OcclusionEngine:
    from rfstore.models import FeatureExtractor

    geometry = {layer: layer_geometry(ctx, layer) for layer in layers}
    return OcclusionEngine(FeatureExtractor(model, layers), geometry, config.occluder,
                           truncated=lambda layer: FeatureExtractor(model, [layer]), batch_size=config.batch_size)


def calibrate(ctx: NetworkContext, layers: list[str], config: OccludeConfig, k: int) -> tuple[Machine, OcclusionEngine]:
    """Measure :class:`Machine` (a few seconds) and return the prepared occlusion engine too."""
    from rfstore.models import FeatureExtractor

    began = time.perf_counter()
    model = ctx.load_model().module.eval()
    model_load = time.perf_counter() - began
    channels, (height, width) = ctx.input_channels, ctx.input_size
    batch = torch.randn(16, channels, height, width, generator=torch.Generator().manual_seed(0))
    extractor = FeatureExtractor(model, ctx.layers)
    with torch.inference_mode():
        forward = _timed(extractor, batch) / 16
    engine = _engine(ctx, model, [layer for layer in layers if "rf_theory_size" in ctx.layer_attrs(layer)], config)
    engine.prepare(batch[0])
    incremental = engine.calibrate(batch[0], torch.zeros_like(batch[0]), seconds=1.5)
    macs = max(engine.prefix.chain.macs(), 1)
    image_load = _timed(load_images, ctx, [0]) if ctx.n_images else 0.0
    chunk, read_chunk, meta, write = _io_seconds(ctx)
    return Machine(model_load, forward, forward / macs / FORWARD_COST, incremental, image_load, chunk, read_chunk,
                   meta, write,
                   _rf_seconds(ctx, layers, config, k), _segment_seconds(ctx, layers, k)), engine


def _io_seconds(ctx: NetworkContext) -> tuple[float, float, float, float]:
    """Seconds per chunk written, per chunk read (many per call), per metadata change and per byte, measured on
    incompressible floats in a scratch store of the same kind as ``ctx.store``."""
    from rfstore.store import ArraySpec, open_store

    suffix = Path(ctx.store.path).suffix
    rng = np.random.default_rng(0)
    times = []
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp) / f"probe{suffix}", "a") as store:
        began = time.perf_counter()
        for width in (16, 65536):
            store.create_array(f"probe{width}", ArraySpec((64, width), "float32", (f"a{width}", f"b{width}"),
                                                          (1, width), float("nan")))
            store.update_attrs(f"probe{width}", {"probe": width})
        meta = (time.perf_counter() - began) / 4
        for rows, width in ((64, 16), (16, 65536)):
            data = rng.standard_normal((rows, width)).astype(np.float32)
            began = time.perf_counter()
            for row in range(rows):
                store.write(f"probe{width}", row, data[row])
            store.flush()
            times.append((time.perf_counter() - began) / rows)
        began = time.perf_counter()
        store.read("probe16", slice(0, 64))
        read_chunk = (time.perf_counter() - began) / 64
    chunk = times[0]
    return chunk, read_chunk, meta, max(times[1] - chunk, 0.0) / (65536 * 4)


def _rf_seconds(ctx: NetworkContext, layers: list[str], config: OccludeConfig, k: int) -> dict[str, float]:
    from rfstore.rf.empirical import unit_rf_map

    hw = ctx.input_size
    n_oy, n_ox = (config.occluder.positions(n).size for n in hw)
    out = {}
    for layer in layers:
        attrs = ctx.layer_attrs(layer)
        if "rf_theory_size" not in attrs:
            continue
        maps = np.random.default_rng(0).standard_normal((k, n_oy, n_ox)).astype(np.float32)
        ys = np.zeros(k, dtype=np.int64)
        out[layer] = _timed(unit_rf_map, maps, ys, ys, tuple(attrs["rf_theory_start"]), tuple(attrs["rf_theory_jump"]),
                            tuple(attrs["rf_theory_size"]), config.size, config.stride, hw)
    return out


def _segment_seconds(ctx: NetworkContext, layers: list[str], k: int) -> dict[str, float]:
    from rfstore.rf.empirical import rf_mask, window_radius
    from rfstore.pipeline.stages.segment import place_mask

    out = {}
    for layer in layers:
        attrs = ctx.layer_attrs(layer)
        if "rf_theory_size" not in attrs:
            continue
        radius = window_radius(tuple(attrs["rf_theory_size"]), int(attrs.get("occluder_size", 11)))
        rf_map = np.random.default_rng(0).random((2 * radius[0] + 1, 2 * radius[1] + 1)).astype(np.float32)

        def unit() -> None:
            window = rf_mask(rf_map, 0.5).astype(np.uint8)
            for _ in range(k):
                place_mask(window, (ctx.input_size[0] // 2, ctx.input_size[1] // 2), ctx.input_size)

        out[layer] = _timed(unit)
    return out
