"""rfstore.open: the notebook API gives lazy xarray views equal to the raw arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rfstore
from rfstore.store import open_store
from test_foundation_stages import init_hand, read_all, run_acts


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_open_gives_layer_datasets(tmp_path: Path, tiny_folder: Path, suffix: str) -> None:
    path = tmp_path / f"s.{suffix}"
    init_hand(path, tiny_folder)
    run_acts(path)
    results = rfstore.open(path)
    assert results.networks == ["hand"] == list(results) and "hand" in results and len(results) == 1
    net = results["hand"]
    assert net.layers == ["0", "1", "2", "3", "6"] == list(net) and "1" in net and "9" not in net
    ds = net["1"]
    np.testing.assert_array_equal(ds["act_max"].values, read_all(path, "1", ("act_max",))["act_max"])
    assert ds["act_max"].dims == ("image", "unit")
    assert net.images()["image_path"].values.tolist()[0] == "a/img00.png"
    with pytest.raises(KeyError, match="no layer"):
        net["features.99"]
    assert net.unit_montage("1", 0) is None  # no top images before topk


@pytest.fixture(scope="module")
def hand_results(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Path:
    """The hand-weighted CNN on 8x8 images in HDF5, every stage up to segment."""
    from rfstore.recorded.network import NetworkContext
    from rfstore.pipeline.stages.occlude import OccludeConfig, run_occlude
    from rfstore.pipeline.stages.rf import RFConfig, run_rf
    from rfstore.pipeline.stages.segment import SegmentConfig, run_segment
    from rfstore.pipeline.stages.topk import TopKConfig, run_topk

    path = tmp_path_factory.mktemp("api") / "hand.h5"
    init_hand(path, tiny_folder)
    run_acts(path)
    with open_store(path, "a") as st:
        ctx = NetworkContext.open(st)
        run_topk(ctx, TopKConfig(k=2))
        run_occlude(ctx, OccludeConfig(size=3, stride=1, fill="zero", layers=("1", "3"), device="cpu"))
        run_rf(ctx, RFConfig(layers=("1", "3")))
        run_segment(ctx, SegmentConfig(layers=("1", "3")))
    return path


def test_unit_pictures_for_notebooks(hand_results: Path, tiny_folder: Path, tmp_path: Path) -> None:
    from matplotlib.figure import Figure
    from PIL import Image

    from rfstore.report.figures import GAP, LABEL_H

    net = rfstore.open(hand_results)["hand"]
    montage = net.unit_montage("1", 0)  # 8 px images, zoomed 32x by default
    assert isinstance(montage, Image.Image) and montage.size == (2 * 256 + 3 * GAP, LABEL_H + 256 + GAP)
    bare = np.asarray(net.unit_montage("1", 0, scale=1, labels=False))
    with open_store(hand_results, "r") as st:
        top_image = str(st.read("hand/image_path")[st.read("hand/1/topk_image")[0, 0]])
        mask = st.read("hand/1/seg_mask")[0, 0]
    original = np.asarray(Image.open(tiny_folder / top_image).convert("RGB"))
    tile = bare[:8, GAP:GAP + 8]
    inside = mask > 0
    assert inside.any()
    # away from the theoretical RF's box (cyan) the image is dimmed outside the segmentation
    free = (tile != (0, 200, 255)).any(axis=-1) & (tile != (255, 215, 0)).any(axis=-1)
    outside = ~inside & free
    assert outside.sum() >= 30
    np.testing.assert_array_equal(tile[outside], (original[outside] * 0.35).astype(np.uint8))
    np.testing.assert_array_equal(tile[inside & free], original[inside & free])
    assert isinstance(net.unit_discrepancy("3", 0), Image.Image)
    rf = net.unit_rf("3", 0)
    assert isinstance(rf, Image.Image) and rf.width >= 150
    assert net.unit_rf("0", 0) is None  # layer 0 was not occluded
    sheet = net.unit_picture("1", 1)
    assert sheet.width == montage.width and sheet.height > 2 * montage.height
    figure = net.rf_depth_plot()
    assert isinstance(figure, Figure)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == net.layers
    figure.savefig(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").size == (640, 360)
    with pytest.raises(KeyError, match="no layer"):
        net.unit_montage("features.9", 0)
