"""rfstore's benchmark (``make bench``): the occlude stage against full re-inference, and the
activations stage against a bare ``model(x)`` loop. Not a test: it prints measurements.

Occlusion workload (the issue's): torchvision AlexNet, random init (seed 0), 24 generated
224x224 images, the five ReLU layers, units 0:4 of each, K=3, 11x11 occluder, stride 3,
fill zero. For each layer it prints rfstore's wall time; the time of full re-inference
of every occluded image (Captum ``Occlusion``, ``perturbations_per_eval=64``, on the
network truncated at the layer, measured on a sample of (unit, image) pairs in the same
run and scaled to all pairs); the speedup; the largest relative difference from Captum;
and the ideal speedup from counting multiply-adds (full re-inference vs. recomputing only
what the occluder changes inside the unit's dependency cone).

Activations: images/s of ``run_activations`` vs a bare ``model(x)`` loop over the same
DataLoader, and the peak memory (max RSS) of ``rfstore activations`` processes on two
dataset sizes, which must stay flat.

Usage: ``python bench/occlusion.py [--out bench-out] [--act-sizes 1000,10000] [--captum-pairs 1]``
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rfstore.datasets import Preprocessing
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.activations import ActivationsConfig, default_workers, run_activations
from rfstore.recorded.network import NetworkContext, load_images
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.occlude import OccludeConfig, run_occlude
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import open_store

LAYERS = ("features.1", "features.4", "features.7", "features.9", "features.11")
SIZE, STRIDE, K, UNITS = 11, 3, 3, slice(0, 4)


# -- multiply-add counting ----------------------------------------------------------------
def chain_costs(modules: list[nn.Module], input_hw: int) -> list[tuple[nn.Module, int, int]]:
    """(module, output length, multiply-adds per output position) along a sequential chain."""
    out, length, channels = [], input_hw, 3
    for module in modules:
        if isinstance(module, nn.Conv2d):
            k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
            length = (length + 2 * p - k) // s + 1
            cost = module.out_channels * module.in_channels * k * k
            channels = module.out_channels
        elif isinstance(module, nn.MaxPool2d):
            k, s = module.kernel_size, module.stride
            length = (length - k) // s + 1
            cost = channels * k * k
        else:
            cost = 0
        out.append((module, length, cost))
    return out


def _window(module: nn.Module) -> tuple[int, int, int]:
    if isinstance(module, nn.Conv2d):
        return module.kernel_size[0], module.stride[0], module.padding[0]
    if isinstance(module, nn.MaxPool2d):
        return module.kernel_size, module.stride, module.padding
    return 1, 1, 0


def minimal_macs(chain: list[tuple[nn.Module, int, int]], unit_yx: tuple[int, int], window: tuple[int, int],
                 input_hw: int) -> float:
    """Multiply-adds of recomputing, layer by layer, only the outputs that the occluder at
    ``window`` (top-left y, x) changes AND the target unit depends on."""
    per_axis = []
    for axis in range(2):
        # the unit's dependency cone, from the target back to the input
        lo = hi = unit_yx[axis]
        cones = [None] * len(chain)
        for i in range(len(chain) - 1, -1, -1):
            cones[i] = (lo, hi)
            k, s, p = _window(chain[i][0])
            prev_len = chain[i - 1][1] if i else input_hw
            lo, hi = max(0, lo * s - p), min(prev_len - 1, hi * s - p + k - 1)
        # what the occluder changes, forward
        c_lo, c_hi = window[axis], window[axis] + SIZE - 1
        changed = []
        for module, length, _ in chain:
            k, s, p = _window(module)
            c_lo, c_hi = max(0, -(-(c_lo + p - k + 1) // s)), min(length - 1, (c_hi + p) // s)
            changed.append((c_lo, c_hi))
        per_axis.append([max(0, min(h1, h2) - max(l1, l2) + 1) for (l1, h1), (l2, h2) in zip(cones, changed)])
    return float(sum(cost * ny * nx for (_, _, cost), ny, nx in zip(chain, *per_axis)))


def full_macs(chain: list[tuple[nn.Module, int, int]]) -> float:
    return float(sum(cost * length * length for _, length, cost in chain))


# -- the occlusion benchmark ---------------------------------------------------------------
def make_images(root: Path, n: int, size: int = 224, workers: int = 1) -> Path:
    from rfstore.demo.scenes import write_scene_folder

    if not root.exists():
        from rfstore.demo.scenes import CLASSES

        write_scene_folder(root, per_class=max(1, n // len(CLASSES)), seed=0, size=size, workers=workers)
    return root


def occlusion_benchmark(out: Path, captum_pairs: int) -> None:
    from captum.attr import Occlusion

    from rfstore.rf.attribution import pixel_attribution

    images = make_images(out / "images24", 24)
    store_path = out / "bench.zarr"
    shutil.rmtree(store_path, ignore_errors=True)
    with open_store(store_path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec("torchvision:alexnet", "none", 0), data=images,
                                   layers=",".join(LAYERS)))
        ctx = NetworkContext.open(store)
        run_activations(ctx, ActivationsConfig(batch_size=24, num_workers=0))
        run_topk(ctx, TopKConfig(k=K))
        model = ctx.load_model().module
        rows = []
        for layer in LAYERS:
            began = time.perf_counter()
            result = run_occlude(ctx, OccludeConfig(size=SIZE, stride=STRIDE, fill="zero", layers=(layer,),
                                                    units=UNITS, device="cpu"))
            ours = time.perf_counter() - began
            top = {n: store.read(f"alexnet/{layer}/topk_{n}") for n in ("image", "y", "x")}
            disc = store.read(f"alexnet/{layer}/discrepancy")
            index = int(layer.split(".")[1])
            truncated = model.features[: index + 1]
            pairs = [(u, r) for u in range(UNITS.start, UNITS.stop) for r in range(K) if top["image"][u, r] >= 0]
            captum_time, worst = 0.0, 0.0
            for unit, rank in pairs[:captum_pairs]:
                image = load_images(ctx, [int(top["image"][unit, rank])])
                y, x = int(top["y"][unit, rank]), int(top["x"][unit, rank])
                occ = Occlusion(lambda inp, u=unit, yy=y, xx=x: truncated(inp)[:, u, yy, xx])
                began = time.perf_counter()
                with torch.no_grad():
                    attr = occ.attribute(image, sliding_window_shapes=(3, SIZE, SIZE), strides=(3, STRIDE, STRIDE),
                                         baselines=0, perturbations_per_eval=64)
                captum_time += time.perf_counter() - began
                ref = attr[0, 0].numpy()
                mine = pixel_attribution(disc[unit, rank][None], 224, 224, SIZE, STRIDE)[0]
                worst = max(worst, float(np.abs(mine - ref).max() / max(np.abs(ref).max(), 1e-12)))
            full = captum_time / min(captum_pairs, len(pairs)) * len(pairs)
            chain = chain_costs(list(truncated), 224)
            positions = (224 - SIZE) // STRIDE + 1
            grid = [(oy * STRIDE, ox * STRIDE) for oy in range(positions) for ox in range(positions)]
            ideal_num, ideal_den = 0.0, 0.0
            for unit, rank in pairs:
                yx = (int(top["y"][unit, rank]), int(top["x"][unit, rank]))
                ideal_num += full_macs(chain) * len(grid)
                ideal_den += sum(minimal_macs(chain, yx, w, 224) for w in grid)
            rows.append((layer, ours, full, worst, ideal_num / max(ideal_den, 1.0), result.stats))
    print(f"\nocclusion: AlexNet (random init, seed 0), 24 images, units 0:4, K={K}, {SIZE}x{SIZE} stride {STRIDE}, "
          f"fill zero; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'layer':<13}{'rfstore s':>11}{'full re-inference s':>21}{'speedup':>9}{'max rel diff':>14}{'ideal':>9}")
    for layer, ours, full, worst, ideal, _ in rows:
        print(f"{layer:<13}{ours:>11.2f}{full:>21.1f}{full / ours:>8.1f}x{worst:>14.2e}{ideal:>8.0f}x")
    total_ours, total_full = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'total':<13}{total_ours:>11.2f}{total_full:>21.1f}{total_full / total_ours:>8.1f}x")


# -- the activations benchmark ---------------------------------------------------------------
def bare_loop_rate(ctx: NetworkContext, batch_size: int, workers: int, channels_last: bool = False) -> float:
    """images/s of ``model(x)`` over the stage's DataLoader, the model built and ready before the clock
    starts (the stage's own rate includes rebuilding and checking the model)."""
    from torch.utils.data import DataLoader

    from rfstore.datasets import ImageFolderDataset

    model = ctx.load_model().module
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    dataset = ImageFolderDataset(ctx.dataset_root, list(ctx.image_paths()), ctx.preprocessing)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=dataset.collate,
                        prefetch_factor=4 if workers else None)
    began = time.perf_counter()
    with torch.inference_mode():
        for _, batch, _ in loader:
            model(batch.contiguous(memory_format=fmt))
    return ctx.n_images / (time.perf_counter() - began)


def peak_rss_mb(command: list[str]) -> float:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return usage.ru_maxrss / 1024


def activations_benchmark(out: Path, sizes: list[int], rate_max: int, rounds: int) -> None:
    """Peak RSS of ``rfstore activations`` at every size; images/s against the bare loop at
    sizes up to ``rate_max``, alternating the three ``rounds`` times and keeping each one's best
    (the machine is shared: alternating keeps load changes from favouring either side).

    The stage runs channels_last on a CPU (its default, ``--memory-format auto``); the bare
    loop is timed both as written (contiguous ``model(x)``, the issue's baseline) and in the
    same channels_last format, which shows the stage's own overhead.
    """
    rfstore = str(Path(sys.executable).with_name("rfstore"))
    print(f"\nactivations: AlexNet (random init), generated 224x224 images, batch 64, {default_workers()} workers; "
          f"rates: best of {rounds} alternating rounds; the stage's time includes its start-up")
    print(f"{'images':>8}{'rfstore img/s':>15}{'bare model(x)':>15}{'ratio':>7}"
          f"{'bare, channels_last':>21}{'ratio':>7}{'peak RSS MB':>13}")
    for n in sizes:
        images = make_images(out / f"images{n}", n, workers=os.cpu_count() or 1)
        store_path = out / f"act{n}.zarr"
        shutil.rmtree(store_path, ignore_errors=True)
        subprocess.run([rfstore, "init", str(store_path), "--model", "torchvision:alexnet", "--weights", "none",
                        "--data", str(images)], check=True, capture_output=True)
        rss = peak_rss_mb([rfstore, "activations", str(store_path), "--batch-size", "64", "--device", "cpu"])
        if n > rate_max:
            print(f"{n:>8}{'-':>15}{'-':>15}{'-':>7}{'-':>21}{'-':>7}{rss:>13.0f}")
            continue
        ours = bare = bare_cl = 0.0
        with open_store(store_path, "a") as store:
            ctx = NetworkContext.open(store)
            for _ in range(rounds):
                began = time.perf_counter()
                run_activations(ctx, ActivationsConfig(batch_size=64, device="cpu"), force=True)
                ours = max(ours, ctx.n_images / (time.perf_counter() - began))
                bare = max(bare, bare_loop_rate(ctx, 64, default_workers()))
                bare_cl = max(bare_cl, bare_loop_rate(ctx, 64, default_workers(), channels_last=True))
        print(f"{n:>8}{ours:>15.1f}{bare:>15.1f}{ours / bare:>7.0%}{bare_cl:>21.1f}{ours / bare_cl:>7.0%}"
              f"{rss:>13.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--act-sizes", default="1000,10000", help="dataset sizes for the activations benchmark")
    parser.add_argument("--rate-max", type=int, default=1000,
                        help="measure images/s only on dataset sizes up to this (RSS on all)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the images/s comparison")
    parser.add_argument("--captum-pairs", type=int, default=1, help="(unit, image) pairs timed with Captum per layer")
    parser.add_argument("--skip", choices=("occlusion", "activations"), action="append", default=[])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"rfstore benchmark, torch {torch.__version__}, {os.cpu_count()} cores, "
          f"max RSS of this process so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if "occlusion" not in args.skip:
        occlusion_benchmark(args.out, args.captum_pairs)
    if "activations" not in args.skip:
        activations_benchmark(args.out, [int(v) for v in args.act_sizes.split(",")], args.rate_max, args.rounds)


if __name__ == "__main__":
    main()
