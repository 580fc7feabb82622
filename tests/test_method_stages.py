"""occlude, rf and segment: numbers worked out on paper, Captum as an oracle (skipping and resuming:
test_stage_contract.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TESTS
from rfstore.errors import UsageError
from rfstore.datasets import Preprocessing
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.occlude import OccludeConfig, run_occlude
from rfstore.pipeline.stages.rf import RFConfig, run_rf
from rfstore.pipeline.stages.segment import SegmentConfig, run_segment
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import open_store

BOX = f"{TESTS / 'tiny_nets.py'}:box_filter"
TINY_ALEXNET = "rfstore.demo.network:tiny_alexnet"


def prepared_store(path: Path, model: str, data: Path, layers: str, k: int) -> None:
    with open_store(path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec(model, None, 0), data=data, preprocessing=Preprocessing.tensor(),
                                   layers=layers, name="net"))
        ctx = NetworkContext.open(store)
        run_activations(ctx, ActivationsConfig(batch_size=8, num_workers=0))
        run_topk(ctx, TopKConfig(k=k))


def block_images(root: Path) -> Path:
    """10x10 black images with one 3x3 block of grey (100 and 200) centred on pixel (4, 4)."""
    for name, value in (("a.png", 100), ("b.png", 200)):
        pixels = np.zeros((10, 10, 3), dtype=np.uint8)
        pixels[3:6, 3:6] = value
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "RGB").save(root / name)
    return root


def test_box_filter_rf_map_worked_out_on_paper(tmp_path: Path) -> None:
    """One 3x3 conv of ones over 3 channels (no padding): unit (3, 3) sees exactly the grey block.

    A 2x2 zero occluder overlapping n block pixels lowers the unit by 3 * n * v. Spread over
    pixels (mean over the 4 windows covering a pixel), inside the 3x3 RF the map is
    [[6.75, 9, 6.75], [9, 12, 9], [6.75, 9, 6.75]] * v, and 0 outside the RF.
    """
    store = tmp_path / "box.zarr"
    prepared_store(store, BOX, block_images(tmp_path / "img"), "0", k=2)
    with open_store(store, "a") as st:
        ctx = NetworkContext.open(st)
        run_occlude(ctx, OccludeConfig(size=2, stride=1, fill="zero", device="cpu"))
        run_rf(ctx, RFConfig(threshold=0.5))
        disc = st.read("net/0/discrepancy")
        rf_map, rf_size = st.read("net/0/rf_map"), st.read("net/0/rf_size")
        assert st.read("net/0/topk_y").tolist() == [[3, 3]] and st.read("net/0/topk_x").tolist() == [[3, 3]]
        assert st.read("net/0/ry").tolist() == [-2, -1, 0, 1, 2]
        run_rf(ctx, RFConfig(threshold=0.6), force=True)
        size_06 = st.read("net/0/rf_size")
    v = np.float32(200 / 255), np.float32(100 / 255)  # rank 0 is the brighter image
    overlap = np.zeros((9, 9))
    for oy in range(9):
        for ox in range(9):
            rows = max(0, min(oy + 2, 6) - max(oy, 3))
            cols = max(0, min(ox + 2, 6) - max(ox, 3))
            overlap[oy, ox] = rows * cols
    for rank in range(2):
        np.testing.assert_allclose(disc[0, rank], 3 * overlap * v[rank], rtol=1e-6)
    pattern = np.zeros((5, 5))
    pattern[1:4, 1:4] = [[6.75, 9, 6.75], [9, 12, 9], [6.75, 9, 6.75]]
    np.testing.assert_allclose(rf_map[0], pattern * (v[0] + v[1]) / 2, rtol=1e-6)
    assert rf_size[0] == pytest.approx(3.0)  # 9 pixels >= half of the maximum
    assert size_06[0] == pytest.approx(np.sqrt(5))  # centre and edges >= 0.6 * 12 = 7.2


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, scene_folder: Path) -> Path:
    path = tmp_path_factory.mktemp("method") / "tiny.zarr"
    prepared_store(path, TINY_ALEXNET, scene_folder, "features.1,features.4,features.11,classifier.2", k=3)
    return path


def test_discrepancy_matches_captum_occlusion(tiny_store: Path, tmp_path: Path) -> None:
    captum = pytest.importorskip("captum.attr")
    from rfstore.rf.attribution import pixel_attribution
    from rfstore.demo.network import tiny_alexnet
    from rfstore.recorded.network import load_images

    path = tmp_path / "copy.zarr"
    import shutil

    shutil.copytree(tiny_store, path)
    with open_store(path, "a") as st:
        ctx = NetworkContext.open(st)
        run_occlude(ctx, OccludeConfig(size=8, stride=4, fill="zero", units=slice(0, 2), device="cpu",
                                       layers=("features.4", "features.11", "classifier.2")))
        torch.manual_seed(0)
        model = tiny_alexnet().eval()
        for layer, upto in (("features.4", 5), ("features.11", 12), ("classifier.2", None)):
            top = {n: st.read(f"net/{layer}/topk_{n}") for n in ("image", "y", "x")}
            disc = st.read(f"net/{layer}/discrepancy")
            for unit in range(2):
                rank = 0
                image = load_images(ctx, [int(top["image"][unit, rank])])
                y, x = int(top["y"][unit, rank]), int(top["x"][unit, rank])

                def unit_value(inp: torch.Tensor) -> torch.Tensor:
                    if upto is None:
                        flat = torch.flatten(model.avgpool(model.features(inp)), 1)
                        return model.classifier[:3](flat)[:, unit]
                    return model.features[:upto](inp)[:, unit, y, x]

                expected = captum.Occlusion(unit_value).attribute(
                    image, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=0, perturbations_per_eval=64)
                ours = pixel_attribution(disc[unit, rank][None], 96, 96, 8, 4)[0]
                for channel in range(3):  # Captum's window spans the 3 channels: same map on each
                    theirs = expected[0, channel].numpy()
                    scale = np.abs(theirs).max()
                    assert np.abs(ours - theirs).max() <= 1e-4 * max(scale, 1e-6), (layer, unit)


@pytest.mark.parametrize("dtype, tolerance", [
    ("bfloat16", 0.03),
    pytest.param("float16", 0.005, marks=pytest.mark.slow),  # float16 convolutions are slow on a CPU (50 s)
])
def test_half_precision_maps_are_close_to_float32(tiny_store: Path, tmp_path: Path, dtype: str,
                                                  tolerance: float) -> None:
    """--dtype bfloat16/float16 is documented as approximate: a discrepancy is a difference of two
    activations, each rounded like the layer's sums, so its error is a fraction (about the format's
    precision) of the layer's activations, not of the discrepancy; exact zeros stay zeros."""
    import shutil

    layers = ("features.4", "classifier.2")
    maps = {}
    for name in ("float32", dtype):
        path = tmp_path / f"{name}.zarr"
        shutil.copytree(tiny_store, path)
        with open_store(path, "a") as st:
            run_occlude(NetworkContext.open(st), OccludeConfig(size=8, stride=4, fill="zero", units=slice(0, 2),
                                                               device="cpu", layers=layers, dtype=name))
            maps[name] = {layer: st.read(f"net/{layer}/discrepancy")[:2] for layer in layers}
            scale = {layer: np.nanmax(np.abs(st.read(f"net/{layer}/topk_value"))) for layer in layers}
            record = st.attrs("net/_rfstore/occlude/classifier.2")
    for layer in layers:
        exact, approx = maps["float32"][layer], maps[dtype][layer]
        assert np.array_equal(np.isnan(exact), np.isnan(approx))
        assert (approx[exact == 0] == 0).all()
        error = np.nanmax(np.abs(approx - exact))
        assert 0 < error <= tolerance * scale[layer], (layer, error / scale[layer])
    assert record["params"]["dtype"] == dtype
    with pytest.raises(UsageError, match="dtype: must be one of"):
        OccludeConfig(dtype="float64")


def test_zero_outside_theoretical_rf_and_rf_within_it(tiny_store: Path, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, path)
    with open_store(path, "a") as st:
        ctx = NetworkContext.open(st)
        run_occlude(ctx, OccludeConfig(size=5, stride=3, fill="noise", units=slice(0, 4), layers=("features.4",),
                                       device="cpu"))
        run_rf(ctx, RFConfig(layers=("features.4",)))
        attrs = ctx.layer_attrs("features.4")
        size, jump, start = attrs["rf_theory_size"], attrs["rf_theory_jump"], attrs["rf_theory_start"]
        disc = st.read("net/features.4/discrepancy")
        oy = st.read("net/features.4/oy")
        top_y, top_x = st.read("net/features.4/topk_y"), st.read("net/features.4/topk_x")
        rf_map = st.read("net/features.4/rf_map")
        ry = st.read("net/features.4/ry")
    for unit in range(4):
        for rank in range(3):
            cy, cx = start[0] + top_y[unit, rank] * jump[0], start[1] + top_x[unit, rank] * jump[1]
            lo_y, hi_y = cy - (size[0] - 1) / 2, cy + (size[0] - 1) / 2
            lo_x, hi_x = cx - (size[1] - 1) / 2, cx + (size[1] - 1) / 2
            miss_y = (oy + 4 < lo_y) | (oy > hi_y)
            miss_x = (oy + 4 < lo_x) | (oy > hi_x)
            outside = miss_y[:, None] | miss_x[None, :]
            assert outside.any()
            assert (disc[unit, rank][outside] == 0).all()
            assert (disc[unit, rank][~outside] != 0).any()
        inside_box = np.abs(ry) <= (size[0] - 1) // 2
        nonzero = np.nan_to_num(rf_map[unit]) != 0
        assert not nonzero[~inside_box, :].any() and not nonzero[:, ~inside_box].any()


def test_segment_places_the_empirical_rf(tiny_store: Path, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, path)
    with open_store(path, "a") as st:
        ctx = NetworkContext.open(st)
        run_occlude(ctx, OccludeConfig(size=5, stride=3, fill="zero", units=slice(0, 3), layers=("features.4",),
                                       device="cpu"))
        run_rf(ctx, RFConfig(layers=("features.4",)))
        done = run_segment(ctx, SegmentConfig(layers=("features.4",)))
        assert done == {"features.4": 3}
        masks = st.read("net/features.4/seg_mask")
        rf_size = st.read("net/features.4/rf_size")
    for unit in range(3):
        for rank in range(3):
            area = int(masks[unit, rank].sum())
            assert 0 < area <= round(rf_size[unit] ** 2)  # clipped at the image border at most
    assert (masks[3:] == 255).all()


def test_gradient_method_cross_check(tiny_store: Path, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, path)
    with open_store(path, "a") as st:
        ctx = NetworkContext.open(st)
        run_rf(ctx, RFConfig(method="gradient", layers=("features.4",), device="cpu"))
        rf_map = st.read("net/features.4/rf_map")
        ry = st.read("net/features.4/ry")
        size = ctx.layer_attrs("features.4")["rf_theory_size"][0]
        assert st.attrs("net/features.4")["rf_method"] == "gradient"
    inside = np.abs(ry) <= (size - 1) // 2
    for unit in range(rf_map.shape[0]):
        m = np.nan_to_num(rf_map[unit])
        assert not m[~inside].any() and not m[:, ~inside].any()  # gradients vanish outside the theoretical RF


def test_netdissect_masks_where_maps_were_kept(tmp_path: Path, scene_folder: Path) -> None:
    """With --maps, seg_mask_dissect = upsampled activation map >= the unit's 99.5% quantile over the dataset."""
    import torch.nn.functional as F

    path = tmp_path / "maps.zarr"
    with open_store(path, "a") as st:
        run_init(st, InitConfig(model=ModelSpec(TINY_ALEXNET, None, 0), data=scene_folder,
                                preprocessing=Preprocessing.tensor(), layers="features.4", name="net"))
        ctx = NetworkContext.open(st)
        run_activations(ctx, ActivationsConfig(batch_size=8, num_workers=0, maps=("features.4",)))
        run_topk(ctx, TopKConfig(k=2))
        run_occlude(ctx, OccludeConfig(size=9, stride=3, fill="zero", units=slice(0, 2), device="cpu"))
        run_rf(ctx, RFConfig())
        run_segment(ctx, SegmentConfig())
        maps = st.read("net/features.4/act_map")
        masks = st.read("net/features.4/seg_mask_dissect")
        thresholds = st.read("net/features.4/seg_threshold_dissect")
        top = st.read("net/features.4/topk_image")
        act_max = st.read("net/features.4/act_max")
    np.testing.assert_allclose(maps.astype(np.float32).max(axis=(2, 3)), act_max, rtol=1e-3, atol=1e-3)  # float16 copy
    for unit in range(2):
        level = np.quantile(maps[:, unit].astype(np.float32), 0.995)
        assert thresholds[unit] == pytest.approx(level)
        for rank in range(2):
            act = torch.as_tensor(maps[top[unit, rank], unit].astype(np.float32))
            up = F.interpolate(act[None, None], size=(96, 96), mode="bilinear", align_corners=False)[0, 0].numpy()
            np.testing.assert_array_equal(masks[unit, rank], (up >= level).astype(np.uint8))
            assert masks[unit, rank].any()  # a top image reaches its unit's top quantile somewhere
    assert (masks[2:] == 255).all()
