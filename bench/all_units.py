"""The all-units workload (``make bench``): the README's default run, timed stage by stage against ``rfstore plan``.

Workload: torchvision AlexNet (random init, seed 0), every default layer (the five conv
ReLUs and the two classifier ReLUs: 9,344 units), K=3, an 11x11 occluder at stride 3,
zero fill, over ``--images`` generated 224x224 scenes.  It prints

* each stage's time, beside ``rfstore plan``'s estimate made before ``init`` (upper
  bounds for ``occlude``) and after ``topk`` (exact counts);
* the occlusion's time beside one full forward pass per distinct (image, position),
  timed on a sample of occluded batches in the same run (the faster of the contiguous and
  channels_last memory formats, batch 64) and scaled to every distinct top image;
* the time today's per-target path would take: sampled maps of each layer computed alone
  (cones for conv units, full occluded images for linear units), scaled to all maps;
* the largest difference from full re-inference over every map of the image that is in
  the most top-K lists, per layer, relative to the layer's largest activation on the image,
  beside the difference between two full re-inferences (contiguous and channels_last
  memory formats): float32's own noise floor.

Usage: ``python bench/all_units.py [--images 30] [--out bench-out] [--sample-maps 2]``
"""
from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from rfstore.models import FeatureExtractor, ModelSpec
from rfstore.occlusion import Method, OcclusionEngine, OcclusionTarget, plain_maps
from rfstore.occlusion.plain import occluded_batch
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext, load_images
from rfstore.pipeline.stages.dissect import DissectConfig, run_dissect
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.occlude import OccludeConfig, layer_geometry, run_occlude
from rfstore.pipeline.plan import duration, format_plan, plan_run
from rfstore.pipeline.stages.rf import RFConfig, run_rf
from rfstore.pipeline.stages.segment import SegmentConfig, run_segment
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import open_store

K, OCCLUDE = 3, OccludeConfig(size=11, stride=3, fill="zero", device="cpu")


def make_images(root: Path, n: int) -> Path:
    from rfstore.demo.scenes import CLASSES, write_scene_folder

    if not root.exists():
        write_scene_folder(root, per_class=max(1, -(-n // len(CLASSES))), seed=0, size=224)
    return root


def full_forward_seconds(ctx: NetworkContext, image: int, batches: int = 3) -> float:
    """Seconds per occluded full image through the whole network: the better of two memory formats."""
    model = ctx.load_model().module.eval()
    pixels = load_images(ctx, [image])[0]
    pos = OCCLUDE.occluder.positions(224)
    tops, lefts = np.repeat(pos[:8], 8), np.tile(pos[:8], 8)
    batch = occluded_batch(pixels, torch.zeros_like(pixels), (0, 224, 0, 224), tops, lefts, 11)
    best = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=fmt)
        x = batch.contiguous(memory_format=fmt)
        with torch.inference_mode():
            model(x)
            began = time.perf_counter()
            for _ in range(batches):
                model(x)
        best.append((time.perf_counter() - began) / batches / x.shape[0])
    return min(best)


def per_target_seconds(ctx: NetworkContext, sample: int) -> tuple[float, int]:
    """Today's per-target path on ``sample`` maps of each layer, scaled to every map: (seconds, maps timed)."""
    model = ctx.load_model().module.eval()
    total, timed = 0.0, 0
    for layer in ctx.layers:
        group = f"{ctx.network}/{layer}"
        images, ys, xs = (ctx.store.read(f"{group}/topk_{n}") for n in ("image", "y", "x"))
        linear = ctx.layer_attrs(layer)["kind"] == "linear"
        engine = OcclusionEngine(FeatureExtractor(model, [layer]), {layer: layer_geometry(ctx, layer)},
                                 OCCLUDE.occluder, truncated=lambda name: FeatureExtractor(model, [name]),
                                 method=Method.PLAIN if linear else Method.CONE)
        spent = 0.0
        pairs = list(zip(*np.nonzero(images >= 0)))
        picked = [pairs[i] for i in np.linspace(0, len(pairs) - 1, sample).astype(int)]
        for unit, rank in picked:
            pixels = load_images(ctx, [int(images[unit, rank])])[0]
            target = OcclusionTarget(0, layer, int(unit), 0 if linear else int(ys[unit, rank]),
                                     0 if linear else int(xs[unit, rank]))
            began = time.perf_counter()
            engine.image_maps(pixels, torch.zeros_like(pixels), [target])
            spent += time.perf_counter() - began
        total += spent / len(picked) * len(pairs)
        timed += len(picked)
    return total, timed


def accuracy(ctx: NetworkContext) -> tuple[int, dict[str, tuple[float, float]], float]:
    """Every stored map of the busiest top image against full re-inference: (image, per layer (rfstore's largest
    difference, the largest difference between two full re-inferences in the two memory formats), seconds).

    Differences are relative to the layer's largest activation on the image: a unit's own activation can be
    0 or nearly so (a dead unit, a linear unit whose inputs cancel), where any float32 sum differs relatively.
    """
    counts: dict[int, int] = {}
    for layer in ctx.layers:
        for image in ctx.store.read(f"{ctx.network}/{layer}/topk_image").ravel():
            if image >= 0:
                counts[int(image)] = counts.get(int(image), 0) + 1
    image = max(counts, key=counts.get)
    model = ctx.load_model().module.eval()
    pixels = load_images(ctx, [image])[0]
    extractor = FeatureExtractor(model, ctx.layers)
    with torch.inference_mode():
        acts = extractor(torch.stack([pixels, pixels]))
    targets, stored = [], []
    for layer in ctx.layers:
        group = f"{ctx.network}/{layer}"
        top = {n: ctx.store.read(f"{group}/topk_{n}") for n in ("image", "y", "x")}
        linear = ctx.layer_attrs(layer)["kind"] == "linear"
        for unit, rank in zip(*np.nonzero(top["image"] == image)):
            targets.append(OcclusionTarget(0, layer, int(unit), 0 if linear else int(top["y"][unit, rank]),
                                           0 if linear else int(top["x"][unit, rank])))
            stored.append(ctx.store.read(f"{group}/discrepancy", (int(unit), int(rank))))
    began = time.perf_counter()
    reference = plain_maps(extractor, pixels, torch.zeros_like(pixels), targets, OCCLUDE.occluder)
    seconds = time.perf_counter() - began
    model.to(memory_format=torch.channels_last)
    other = plain_maps(FeatureExtractor(model, ctx.layers), pixels, torch.zeros_like(pixels), targets,
                       OCCLUDE.occluder)
    worst: dict[str, tuple[float, float]] = {}
    for t, got, ref, alt in zip(targets, stored, reference, other):
        scale = max(float(acts[t.layer][0].abs().max()), 1e-12)
        mine, floor = worst.get(t.layer, (0.0, 0.0))
        worst[t.layer] = (max(mine, float(np.abs(got - ref).max()) / scale),
                          max(floor, float(np.abs(alt - ref).max()) / scale))
    return image, worst, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--sample-maps", type=int, default=2, help="maps per layer timed on the per-target path")
    args = parser.parse_args()
    images = make_images(args.out / f"scenes{args.images}", args.images)
    path = args.out / "all_units.zarr"
    shutil.rmtree(path, ignore_errors=True)
    init = InitConfig(model=ModelSpec("torchvision:alexnet", "none", 0), data=images)
    times: dict[str, float] = {}
    with open_store(args.out / "plan_scratch.zarr", "a") as scratch:
        run_init(scratch, init)
        before = plan_run(NetworkContext.open(scratch), OCCLUDE, K)
    shutil.rmtree(args.out / "plan_scratch.zarr", ignore_errors=True)
    with open_store(path, "a") as store:
        began = time.perf_counter()
        run_init(store, init)
        times["init"] = time.perf_counter() - began
        ctx = NetworkContext.open(store)
        for stage, run in (("activations", lambda: run_activations(ctx, ActivationsConfig(device="cpu"))),
                           ("topk", lambda: run_topk(ctx, TopKConfig(k=K)))):
            began = time.perf_counter()
            run()
            times[stage] = time.perf_counter() - began
        after = plan_run(ctx, OCCLUDE, K)
        stages = (("occlude", lambda: run_occlude(ctx, OCCLUDE)), ("rf", lambda: run_rf(ctx, RFConfig())),
                  ("segment", lambda: run_segment(ctx, SegmentConfig())),
                  ("dissect", lambda: run_dissect(ctx, DissectConfig())))
        for stage, run in stages:
            began = time.perf_counter()
            run()
            times[stage] = time.perf_counter() - began
        distinct = len({int(i) for layer in ctx.layers
                        for i in store.read(f"{ctx.network}/{layer}/topk_image").ravel() if i >= 0})
        per_position = full_forward_seconds(ctx, 0)
        per_target, sampled = per_target_seconds(ctx, args.sample_maps)
        image, worst, plain_seconds = accuracy(ctx)
    positions = OCCLUDE.occluder.positions(224).size ** 2
    shared_forward = per_position * distinct * positions
    print(f"all-units workload: AlexNet (random init, seed 0), {ctx.n_images} generated 224x224 images, "
          f"{sum(ctx.n_units(layer) for layer in ctx.layers)} units in {len(ctx.layers)} layers, K={K}, "
          f"11x11 occluder, stride 3, zero fill; {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"\n{'stage':<13}{'measured':>12}{'plan before init':>18}{'plan after topk':>17}")
    for stage, seconds in times.items():
        b, a = before.stage_seconds().get(stage), after.stage_seconds().get(stage)
        print(f"{stage:<13}{duration(seconds):>12}{duration(b) if b is not None else '-':>18}"
              f"{duration(a) if a is not None and stage not in ('init', 'activations', 'topk') else '-':>17}")
    occlude = times["occlude"]
    print(f"\nocclusion: rfstore {duration(occlude)}; one full forward pass per distinct (image, position): "
          f"{duration(shared_forward)} ({distinct} images x {positions} positions x {per_position * 1e3:.2f} ms); "
          f"speedup {shared_forward / occlude:.1f}x")
    print(f"today's per-target path ({sampled} maps timed, scaled to all): {duration(per_target)} "
          f"({per_target / occlude:.0f}x rfstore's time)")
    print(f"full re-inference of image {image}'s {sum(1 for _ in worst)} layers' maps ({plain_seconds:.0f} s); largest "
          f"difference relative to the layer's largest activation on the image, rfstore (two full re-inferences, "
          f"contiguous vs channels_last): " + ", ".join(f"{layer} {a:.1e} ({b:.1e})" for layer, (a, b) in worst.items()))
    print("\nplan before init:\n" + format_plan(before) + "\n\nplan after topk:\n" + format_plan(after))


if __name__ == "__main__":
    main()
