"""Micro-benchmark: the occlusion engine vs full re-inference, on the project's workload.

Workload (as ``bench/occlusion.py``, without the store): torchvision AlexNet,
random init (seed 0, no weights downloaded), 24 generated 224x224 scenes
(``rfstore.demo.scenes``, ImageNet preprocessing), the five ReLU layers, units
0:4 of each, their top-3 images (max activation) at the argmax location, 11x11
zero occluder, stride 3 (72 x 72 positions).  Each layer is one
``discrepancy_maps`` call through a :class:`~rfstore.models.FeatureExtractor`
stopping at that layer (as the ``occlude`` stage does per layer).

For each layer it reports the wall time of the engine in its default mode
(incremental inference where estimated cheaper, crops elsewhere) and, with
``--crop``, forced onto the crop path; the time of full re-inference (every
occluded image through the truncated network in batches of 64, as Captum's
``Occlusion`` with ``perturbations_per_eval=64`` does) measured on
``--naive-batches`` batches and scaled to all (unit, image) pairs; speedups; and
the largest difference between the modes relative to the unit's max |activation|.
``--captum N`` also runs Captum on N pairs per layer and compares the per-pixel
attributions (minutes per deep pair on 2 cores).

Usage::

    python bench/occlusion_engine.py [--images 24] [--batch-size 256] [--crop] [--captum 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import torchvision
from torch import nn

from rfstore.core.occlusion import (
    LayerGeometry,
    OcclusionTarget,
    discrepancy_maps,
    occluder_positions,
    pixel_attribution,
)
from rfstore.datasets import Preprocessing
from rfstore.demo.scenes import CLASSES, make_scene
from rfstore.models import FeatureExtractor

LAYERS = ("features.1", "features.4", "features.7", "features.9", "features.11")
SIZE, STRIDE, K, UNITS = 11, 3, 3, range(4)


def sequential_geometry(mods: nn.Sequential, prefix: str) -> dict[str, LayerGeometry]:
    """Theoretical RFs of every module of a plain conv/pool ``Sequential``."""
    geo: dict[str, LayerGeometry] = {}
    r, j, s = [1, 1], [1, 1], [0.0, 0.0]
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            def pair(v: int | tuple[int, int]) -> tuple[int, int]:
                return v if isinstance(v, tuple) else (v, v)

            k, st, p, d = map(pair, (m.kernel_size, m.stride, m.padding, m.dilation))
            for a in (0, 1):
                r[a] += (k[a] - 1) * d[a] * j[a]
                s[a] += ((k[a] - 1) * d[a] / 2 - p[a]) * j[a]
                j[a] *= st[a]
        geo[f"{prefix}{i}"] = LayerGeometry((r[0], r[1]), (j[0], j[1]), (s[0], s[1]), "conv")
    return geo


def scenes(n: int, size: int = 224) -> torch.Tensor:
    """(n, 3, size, size) preprocessed scenes, as ``write_scene_folder(per_class=n // 4)``."""
    per_class = max(1, n // len(CLASSES))
    prep = Preprocessing.imagenet()
    out = [
        prep(make_scene(c, c * 10_007 + k, size)[0])
        for c in range(len(CLASSES)) for k in range(per_class)
    ]
    return torch.stack(out[:n])


def top_targets(model: nn.Module, images: torch.Tensor, layer: str) -> list[tuple[int, int, int, int]]:
    """(image, unit, y, x) of the top-K images of units 0:4 (max over the map, argmax location)."""
    with FeatureExtractor(model, [layer]) as fe, torch.inference_mode():
        act = fe(images)[layer][:, list(UNITS)]  # (N, U, h, w)
    w = act.shape[-1]
    best, where = act.flatten(2).max(2)  # (N, U)
    out = []
    for u in range(act.shape[1]):
        for n in torch.argsort(best[:, u], descending=True, stable=True)[:K].tolist():
            idx = int(where[n, u])
            out.append((n, UNITS[u], idx // w, idx % w))
    return out


def naive_per_input(truncated: nn.Module, image: torch.Tensor, batches: int) -> float:
    """Seconds per occluded full image, batches of 64 (Captum's perturbations_per_eval)."""
    pos = occluder_positions(image.shape[-1], SIZE, STRIDE)
    grid = [(y, x) for y in pos for x in pos]
    with torch.no_grad():
        truncated(image.expand(64, -1, -1, -1).clone())  # warm-up
        began = time.perf_counter()
        for b in range(batches):
            batch = image.expand(64, -1, -1, -1).clone()
            for i, (y, x) in enumerate(grid[b * 64 : (b + 1) * 64]):
                batch[i, :, y : y + SIZE, x : x + SIZE] = 0
            truncated(batch)
    return (time.perf_counter() - began) / (64 * batches)


def captum_check(
    truncated: nn.Module, image: torch.Tensor, unit: int, y: int, x: int, disc: np.ndarray
) -> tuple[float, float]:
    """(seconds, max relative difference) of Captum's Occlusion vs our maps for one pair."""
    from captum.attr import Occlusion

    occ = Occlusion(lambda inp: truncated(inp)[:, unit, y, x])
    began = time.perf_counter()
    with torch.no_grad():
        attr = occ.attribute(image[None], sliding_window_shapes=(3, SIZE, SIZE), strides=(3, STRIDE, STRIDE),
                             baselines=0, perturbations_per_eval=64)[0, 0].double().numpy()
    took = time.perf_counter() - began
    mine = pixel_attribution(disc[None], image.shape[-2], image.shape[-1], SIZE, STRIDE)[0]
    return took, float(np.abs(mine - attr).max() / max(np.abs(attr).max(), 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--crop", action="store_true", help="also time the crop path alone and compare")
    ap.add_argument("--naive-batches", type=int, default=3)
    ap.add_argument("--captum", type=int, default=0, help="(unit, image) pairs per layer checked with Captum")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    geo = sequential_geometry(model.features, "features.")
    images = scenes(args.images)
    fill = torch.zeros(1, 3, 1, 1)
    n_pos = occluder_positions(images.shape[-1], SIZE, STRIDE).size ** 2
    rows, totals = {}, {"engine_s": 0.0, "naive_s": 0.0, "crop_s": 0.0}
    for layer in args.layers.split(","):
        picks = top_targets(model, images, layer)
        used = sorted({n for n, *_ in picks})
        local = {n: i for i, n in enumerate(used)}
        targets = [OcclusionTarget(local[n], layer, u, y, x) for n, u, y, x in picks]
        sub = images[used]
        row: dict[str, object] = {"targets": len(targets), "images": len(used)}
        with FeatureExtractor(model, [layer]) as fe:
            began = time.perf_counter()
            maps, st = discrepancy_maps(fe, sub, fill, targets, geo, SIZE, STRIDE, args.batch_size)
            row["engine_s"] = round(time.perf_counter() - began, 2)
            row["incremental_targets"] = st.incremental_targets
            row["incremental_positions"] = st.incremental_inputs
            row["crop_inputs"] = st.occluded_inputs
            with torch.inference_mode():
                act = fe(sub)[layer]
            scale = np.array([float(act[t.image, t.unit].abs().max()) for t in targets])
            if args.crop:
                began = time.perf_counter()
                ref, _ = discrepancy_maps(fe, sub, fill, targets, geo, SIZE, STRIDE, args.batch_size, incremental=False)
                row["crop_only_s"] = round(time.perf_counter() - began, 2)
                diff = np.abs(maps.astype(np.float64) - ref).reshape(len(targets), -1).max(1)
                row["max_rel_diff_vs_crop"] = float((diff / np.maximum(scale, 1e-12)).max())
                totals["crop_s"] += row["crop_only_s"]  # type: ignore[operator]
        truncated = model.features[: int(layer.split(".")[1]) + 1]
        per_input = naive_per_input(truncated, sub[0], args.naive_batches)
        naive = per_input * n_pos * len(targets)
        row["naive_s_est"] = round(naive, 1)
        row["speedup"] = round(naive / row["engine_s"], 1)  # type: ignore[operator]
        if args.crop:
            row["speedup_crop_only"] = round(naive / row["crop_only_s"], 1)  # type: ignore[operator]
        for i, t in enumerate(targets[: args.captum]):
            took, rel = captum_check(truncated, sub[t.image], t.unit, t.y, t.x, maps[i])
            row.setdefault("captum_s", []).append(round(took, 1))  # type: ignore[union-attr]
            row.setdefault("captum_max_rel_diff", []).append(rel)  # type: ignore[union-attr]
        totals["engine_s"] += row["engine_s"]  # type: ignore[operator]
        totals["naive_s"] += naive
        rows[layer] = row
        print(layer, json.dumps(row), flush=True)
    summary = {
        "total_engine_s": round(totals["engine_s"], 2),
        "total_naive_s_est": round(totals["naive_s"], 1),
        "total_speedup": round(totals["naive_s"] / totals["engine_s"], 1),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_avg_at_end": os.getloadavg(),
    }
    if args.crop:
        summary["total_speedup_crop_only"] = round(totals["naive_s"] / totals["crop_s"], 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
