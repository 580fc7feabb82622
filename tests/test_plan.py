"""``rfstore plan`` / ``run --dry-run``: counts and bytes worked out by hand on a tiny network, and the
default run (every activation layer, a linear one included) through the command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import TESTS
from rfstore.datasets import Preprocessing
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.occlude import OccludeConfig
from rfstore.pipeline.plan import format_plan, plan_run
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import open_store
from test_cli import cli

BOX = f"{TESTS / 'tiny_nets.py'}:box_filter"
FC = f"{TESTS / 'tiny_nets.py'}:fc_cnn"
OCCLUDER = OccludeConfig(size=2, stride=2, fill="zero", device="cpu")  # windows at 0, 2, 4, 6: 16 per 8x8 image


def rows(plan, stage: str) -> dict[str | None, object]:
    return {r.layer: r for r in plan.rows if r.stage == stage}


def test_counts_and_bytes_by_hand(tmp_path: Path, tiny_folder: Path) -> None:
    """box_filter: one 3x3 conv (1 unit) and its ReLU ("1"), a 6x6 map, on ten 8x8 images, K=2.

    A unit at (y, x) reads pixels [y, y+2] x [x, x+2]; of the windows [p, p+1], p even, exactly two per
    axis meet three consecutive pixels, so each map has 4 positions that can change it (the cone path).
    """
    with open_store(tmp_path / "box.zarr", "a") as store:
        run_init(store, InitConfig(model=ModelSpec(BOX, None, 0), data=tiny_folder, layers="1",
                                   preprocessing=Preprocessing.tensor()))
        ctx = NetworkContext.open(store)
        before = plan_run(ctx, OCCLUDER, k=2)
        run_activations(ctx, ActivationsConfig(batch_size=4, num_workers=0, device="cpu"))
        run_topk(ctx, TopKConfig(k=2))
        after = plan_run(ctx, OCCLUDER, k=2)
        top = {n: store.read(f"box_filter/1/topk_{n}")[0] for n in ("image", "y", "x")}
    act, topk = rows(before, "activations"), rows(before, "topk")
    assert act[None].images == 10 and act["1"].units == 1 and act["1"].nbytes == 10 * 1 * 4 * 4
    assert topk["1"].nbytes == 1 * 2 * (8 + 4 + 4 + 4)
    occ = rows(before, "occlude")
    # before topk, the cheaper bound: each of the 2 maps alone, its unit mid-map at (3, 3): 2 x 2 windows,
    # rather than 2 images of 16 windows each in a shared pass
    assert occ[None].bound and occ[None].units == 2 and occ[None].top_images == 2 and occ[None].passes == 2 * 4
    bound_macs = occ[None].macs
    assert occ["1"].nbytes == 1 * 2 * 16 * 4
    assert rows(before, "rf")["1"].nbytes == 5 * 5 * 4 + 4  # radius ceil(2/2) + 2 - 1 = 2 around the centre
    assert rows(before, "segment")["1"].nbytes == 1 * 2 * 8 * 8
    # after topk: the distinct top images, and the union of each image's 2x2 blocks of windows
    windows: dict[int, set[tuple[int, int]]] = {}
    for image, y, x in zip(top["image"], top["y"], top["x"]):
        ys, xs = [p for p in range(0, 8, 2) if p <= y + 2 and p + 1 >= y], [p for p in range(0, 8, 2)
                                                                          if p <= x + 2 and p + 1 >= x]
        assert len(ys) == len(xs) == 2
        windows.setdefault(int(image), set()).update((a, b) for a in ys for b in xs)
    occ = rows(after, "occlude")
    assert not occ[None].bound and occ[None].top_images == len(windows) == len(set(top["image"].tolist()))
    assert occ[None].passes == sum(len(w) for w in windows.values())
    assert occ[None].macs <= bound_macs  # the bound holds
    assert rows(after, "activations")[None].note == "done" and rows(after, "topk")[None].note == "done"
    assert after.seconds > 0 and "total: about" in format_plan(after)


def test_default_run_with_a_linear_layer_and_its_dry_run(tmp_path: Path, tiny_folder: Path) -> None:
    """Default layers (every activation: a conv ReLU and a linear ReLU) through 'run': plan first, then the run."""
    store = tmp_path / "fc.zarr"
    common = ["--model", FC, "--data", str(tiny_folder), "--preprocess", "tensor", "--k", "2", "--size", "3",
              "--stride", "2", "--fill", "zero", "--device", "cpu"]
    dry = cli("run", str(store), *common, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "plan: init would record 10 images and 2 layers" in dry.stderr and not store.exists()
    assert "occlude" in dry.stdout and "total: about" in dry.stdout
    for layer in ("1", "5"):
        assert f" {layer} " in dry.stdout
    done = cli("run", str(store), *common)
    assert done.returncode == 0, done.stderr
    with open_store(store, "r") as st:
        for layer, kind in (("1", "conv"), ("5", "linear")):
            assert st.attrs(f"fc_cnn/{layer}")["kind"] == kind
            maps = st.read(f"fc_cnn/{layer}/discrepancy")
            assert np.isfinite(maps).all() and np.abs(maps).max() > 0
        assert st.attrs("fc_cnn/_rfstore/occlude/5")["state"] == "complete"
    again = cli("plan", str(store), *common[4:])
    assert again.returncode == 0 and again.stdout.count("done") >= 4
