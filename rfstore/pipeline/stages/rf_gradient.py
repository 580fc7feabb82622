"""``rf --method gradient``: the unit's mean |input gradient| over its top images (Luo et al. 2016).

Reads, per layer: ``topk_image``, ``topk_y``, ``topk_x``; the ``rf_theory_*`` attrs;
the top images from the dataset. Returns maps for :mod:`rfstore.pipeline.stages.rf` to write.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from rfstore.rf.gradient import input_gradient_maps
from rfstore.rf.empirical import mean_over_images, recentre, rf_centre_pixels
from rfstore.models import FeatureExtractor
from rfstore.recorded.network import NetworkContext, load_images
from rfstore.pipeline.devices import resolve_device
from rfstore.store.layout import layer_group


def gradient_rf_maps(ctx: NetworkContext, layer: str, units: np.ndarray, radius: tuple[int, int],
                     device: str = "auto") -> Iterator[np.ndarray]:
    """Yield the ``(2ry+1, 2rx+1)`` gradient RF map of each unit."""
    if not len(units):
        return
    group = layer_group(ctx.network, layer)
    attrs = ctx.layer_attrs(layer)
    start, jump = tuple(attrs["rf_theory_start"]), tuple(attrs["rf_theory_jump"])
    top = {name: ctx.store.read(f"{group}/topk_{name}") for name in ("image", "y", "x")}
    dev = resolve_device(device)
    extractor = FeatureExtractor(ctx.load_model().module.to(dev), [layer])
    for unit in units:
        ranks = np.flatnonzero(top["image"][unit] >= 0)
        if not len(ranks):
            yield np.full((2 * radius[0] + 1, 2 * radius[1] + 1), np.nan, dtype=np.float32)
            continue
        images = load_images(ctx, [int(i) for i in top["image"][unit, ranks]]).to(dev)
        ys, xs = top["y"][unit, ranks], top["x"][unit, ranks]
        targets = [(n, layer, int(unit), int(ys[n]), int(xs[n])) for n in range(len(ranks))]
        maps = input_gradient_maps(extractor, images, targets).numpy()
        cy, cx = rf_centre_pixels(start, jump, ys, xs)
        yield mean_over_images(recentre(maps, cy, cx, radius))
