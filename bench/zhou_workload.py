"""The whole default workload, timed stage by stage: the GPU target of the image-major occlusion.

AlexNet (torchvision, random init seed 0 unless ``--weights``), a folder of generated
224x224 scenes, every default layer (the five conv ReLUs and the two classifier ReLUs:
9,344 units), K=10, an 11x11 occluder at stride 3, noise fill: ``init``,
``activations``, ``topk``, ``occlude`` each timed, ``rfstore plan``'s estimate printed
first, then a sample of the discrepancy maps re-computed by full re-inference (every
occluded full image through the network, on the same device) to print the largest
difference relative to each map's layer activations. The target is ``occlude`` under
10 minutes on one H100/H200-class card over the top images of a 10k-image folder.

Small runs work anywhere (``--images 60 --layers features.11 --k 3 --device cpu`` takes a
few minutes on two cores); the full run is for a GPU::

    python bench/zhou_workload.py --images 10000 --device cuda --out /tmp/zhou

Not a test: it prints measurements. Exit status 1 if the sampled maps differ by more than
1e-4 (float32).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rfstore.models import FeatureExtractor, ModelSpec
from rfstore.occlusion import OcclusionTarget, plain_maps
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext, load_images
from rfstore.pipeline.devices import exact_float32, resolve_device
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.occlude import MapMaker, OccludeConfig, group_by_image, layer_work, run_occlude
from rfstore.pipeline.plan import format_plan, plan_run
from rfstore.recorded.progress import StageProgress
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import open_store

def parse_units(text: str | None) -> slice | None:
    if not text:
        return None
    start, stop = (int(v) if v else None for v in text.split(":"))
    return slice(start, stop)


def timed(label: str, call, times: dict[str, float]):
    began = time.perf_counter()
    result = call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times[label] = time.perf_counter() - began
    print(f"  {label:<26}{times[label]:>9.1f} s", flush=True)
    return result


def progress_printer():
    """A ``run_occlude`` progress callback printing images done, elapsed and projected time at each ~5%."""
    def start(total: int):
        began, done, shown = time.perf_counter(), 0, 0

        def tick(n: int) -> None:
            nonlocal done, shown
            done += n
            if done * 20 // total > shown or done == total:
                shown = done * 20 // total
                spent = time.perf_counter() - began
                print(f"    occlude: {done}/{total} images, {spent:.1f} s, projected {spent * total / done:.1f} s",
                      flush=True)
        return tick
    return start


def profile_image(ctx: NetworkContext, config: OccludeConfig, path: Path) -> None:
    """torch.profiler tables of the engine on the busiest top image (nothing is written)."""
    from torch.profiler import ProfilerActivity, profile

    work = []
    for layer in ctx.layers:
        work += layer_work(ctx, layer, StageProgress(ctx.store, ctx.network, "occlude", layer),
                           np.arange(ctx.n_units(layer)))
    by_image = group_by_image(work)
    image = max(by_image, key=lambda i: len(by_image[i]))
    maker = MapMaker(ctx, config, ctx.layers)
    maker.maps(image, by_image[image][:8])  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    began = time.perf_counter()
    with profile(activities=activities) as prof:
        maker.maps(image, by_image[image])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    wall = time.perf_counter() - began
    print(f"  profiled image {image}: {len(by_image[image])} maps in {wall:.2f} s (under the profiler)", flush=True)
    with path.open("w") as out:
        out.write(f"## image {image}: {len(by_image[image])} maps, {wall:.3f} s wall under the profiler\n")
        for key in ("self_cpu_time_total", "self_cuda_time_total" if torch.cuda.is_available() else None):
            if key:
                out.write(prof.key_averages().table(sort_by=key, row_limit=25) + "\n")


def check_sample(ctx: NetworkContext, config: OccludeConfig, pairs: int, device: torch.device) -> float:
    """Largest |ours - plain| relative to the layer's largest activation on the image, over ``pairs`` maps per layer."""
    store, worst = ctx.store, 0.0
    model = ctx.load_model().module.to(device)
    rng = np.random.default_rng(0)
    for layer in ctx.layers:
        extractor = FeatureExtractor(model, [layer])  # stops the pass at the layer
        top = {n: store.read(f"{ctx.network}/{layer}/topk_{n}") for n in ("image", "y", "x")}
        linear = ctx.layer_attrs(layer)["kind"] == "linear"
        for unit, rank in rng.permutation(np.argwhere(top["image"] >= 0))[:pairs]:
            image_id = int(top["image"][unit, rank])
            pixels = load_images(ctx, [image_id])[0].to(device)
            fill = config.occluder.content(pixels.cpu(), image_id, ctx.preprocessing.from_pixels).to(device)
            target = OcclusionTarget(0, layer, int(unit), 0 if linear else int(top["y"][unit, rank]),
                                     0 if linear else int(top["x"][unit, rank]))
            with exact_float32(), torch.inference_mode():
                plain = plain_maps(extractor, pixels, fill, [target], config.occluder, batch_size=256)[0]
                scale = float(extractor(torch.stack([pixels, pixels]))[layer][0].abs().max())
            ours = store.read(f"{ctx.network}/{layer}/discrepancy", (int(unit), int(rank)))
            worst = max(worst, float(np.abs(ours - plain).max() / max(scale, 1e-12)))
        extractor.close()
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--units", default=None, help="START:STOP units of each layer (default: all 9,344)")
    parser.add_argument("--layers", default=None, help="comma-separated layers (default: every activation layer)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--weights", default="none", help="torchvision weights (default: random init, seed 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="occluder positions per incremental batch")
    parser.add_argument("--fill", default="noise")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes drawing the images")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write torch.profiler tables of the engine on the busiest top image here first")
    parser.add_argument("--check-pairs", type=int, default=1,
                        help="maps per layer re-computed by the plain path (5,041 full passes each; 0: none)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/zhou"))
    args = parser.parse_args()

    from occlusion import make_images  # bench/occlusion.py, next to this file

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"Zhou workload: AlexNet ({args.weights}), {args.images} images, units {args.units or 'all'}, "
          f"K={args.k}, 11x11 stride 3, fill {args.fill}, {args.dtype}, on {name}, torch {torch.__version__}")
    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    images = timed("generate images",
                   lambda: make_images(args.out / f"images{args.images}", args.images, workers=args.workers), times)
    store_path = args.out / "zhou.zarr"
    shutil.rmtree(store_path, ignore_errors=True)
    config = OccludeConfig(size=11, stride=3, fill=args.fill, units=parse_units(args.units), device=args.device,
                           batch_size=args.batch_size, dtype=args.dtype)
    with open_store(store_path, "a") as store:
        timed("init", lambda: run_init(store, InitConfig(model=ModelSpec("torchvision:alexnet", args.weights, 0),
                                                         data=images, layers=args.layers)), times)
        ctx = NetworkContext.open(store)
        timed("activations", lambda: run_activations(ctx, ActivationsConfig(device=args.device)), times)
        timed("topk", lambda: run_topk(ctx, TopKConfig(k=args.k)), times)
        print(format_plan(plan_run(ctx, config, args.k)), flush=True)
        if args.profile:
            profile_image(ctx, config, args.profile)
        timed("occlude", lambda: run_occlude(ctx, config, progress=progress_printer()), times)
        print(f"  (target: occlude < 600 s for all 9,344 units, K=10, 10k images, on one H100/H200-class GPU)")
        worst = check_sample(ctx, config, args.check_pairs, device)
    print(f"  largest relative difference from the plain path on the sampled maps: {worst:.2e}"
          f"{'' if args.dtype == 'float32' else ' (half precision: approximate by design)'}")
    return 0 if args.dtype != "float32" or worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
