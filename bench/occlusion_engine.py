"""Micro-benchmark: occlusion engine vs naive full re-inference on AlexNet.

Random-init AlexNet (seed 0, no weights downloaded), 224x224 random input,
occluder 11 px / stride 3 (72x72 positions), a few argmax targets per layer.

Usage::

    python bench/occlusion_engine.py [--images 1] [--per-layer 3] [--naive-full]

The naive cost is extrapolated from the measured time per occluded full image
(``naive_discrepancy_maps`` on a coarse stride); ``--naive-full`` also runs the
real 5,184-position naive pass for the first target (slow: minutes on 2 cores)
and checks the maps agree.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torchvision
from torch import nn

from rfstore.core.occlusion import (
    LayerGeometry,
    OcclusionTarget,
    discrepancy_maps,
    naive_discrepancy_maps,
)

LAYERS = ("features.1", "features.4", "features.7", "features.9", "features.11")


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--per-layer", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--naive-full", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    feats = model.features[: 1 + max(int(name.split(".")[1]) for name in LAYERS)]

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, mod in enumerate(feats):
            x = mod(x)
            if f"features.{i}" in LAYERS:
                out[f"features.{i}"] = x
        return out

    geo = sequential_geometry(model.features, "features.")
    images = torch.randn(args.images, 3, args.size, args.size)
    fill = torch.zeros(1, 3, 1, 1)
    with torch.inference_mode():
        acts = forward(images)
    targets = []
    gen = torch.Generator().manual_seed(1)
    for n in range(args.images):
        for layer in LAYERS:
            a = acts[layer][n]
            alive = torch.nonzero(a.flatten(1).amax(1) > 0).flatten()
            for u in alive[torch.randperm(alive.numel(), generator=gen)[: args.per_layer]].tolist():
                idx = int(a[u].argmax())
                targets.append(OcclusionTarget(n, layer, u, idx // a.shape[-1], idx % a.shape[-1]))

    # Per-input cost of naive full re-inference (same shapes, coarse stride).
    t0 = time.perf_counter()
    _, st_probe = naive_discrepancy_maps(forward, images[:1], fill, targets[:1], 11, 24, args.batch_size)
    per_input = (time.perf_counter() - t0) / (st_probe.occluded_inputs + st_probe.reference_inputs)

    breakdown = {}
    for layer in LAYERS:  # each layer alone (no sharing across layers)
        sub = [t for t in targets if t.layer == layer]
        t0 = time.perf_counter()
        _, s = discrepancy_maps(forward, images, fill, sub, geo, 11, 3, args.batch_size)
        wall = time.perf_counter() - t0
        breakdown[layer] = {
            "targets": len(sub),
            "wall_s": round(wall, 2),
            "occluded_inputs": s.occluded_inputs,
            "inputs_ratio": round(s.naive_inputs / max(s.occluded_inputs, 1), 1),
            "pixels_ratio": round(s.naive_pixels / max(s.input_pixels, 1), 1),
            "wall_speedup_est": round(per_input * (s.naive_inputs + len(sub)) / wall, 1),
            "groups": s.groups,
        }

    t0 = time.perf_counter()
    maps, st = discrepancy_maps(forward, images, fill, targets, geo, 11, 3, args.batch_size)
    t_engine = time.perf_counter() - t0

    naive_s = per_input * (st.naive_inputs + len(targets))
    shared_naive_inputs = args.images * st.n_positions
    report = {
        "targets": len(targets),
        "per_layer": {L: sum(t.layer == L for t in targets) for L in LAYERS},
        "per_layer_alone": breakdown,
        "engine_wall_s": round(t_engine, 2),
        "engine_stats": st.__dict__,
        "naive_inputs_per_target": st.naive_inputs,
        "naive_inputs_shared_per_image": shared_naive_inputs,
        "naive_wall_s_extrapolated": round(naive_s, 1),
        "naive_s_per_input": per_input,
        "inputs_ratio": st.naive_inputs / max(st.occluded_inputs, 1),
        "pixels_ratio": st.naive_pixels / max(st.input_pixels, 1),
        "wall_speedup": naive_s / t_engine,
        "threads": torch.get_num_threads(),
        "wall_speedup_vs_shared_naive": per_input * (shared_naive_inputs + args.images) / t_engine,
    }
    if args.naive_full:
        t0 = time.perf_counter()
        ref, _ = naive_discrepancy_maps(forward, images, fill, targets[:1], 11, 3, args.batch_size)
        report["naive_full_1_target_s"] = round(time.perf_counter() - t0, 1)
        report["naive_full_max_abs_err"] = float(np.abs(ref[0] - maps[0]).max())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
