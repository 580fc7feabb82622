"""init, activations and topk against independent computations (the rules every stage follows, skipping,
resuming, refusing other parameters and force, are in test_stage_contract.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HAND_CNN
from rfstore.datasets import Preprocessing, load_rgb
from rfstore.errors import MissingInputError, UsageError
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.recorded.progress import Plan
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import open_store

HAND_LAYERS = "0,1,2,3,6"


def init_hand(store_path: Path, folder: Path, **kwargs) -> None:
    with open_store(store_path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec(HAND_CNN, None, 0), data=folder, name="hand",
                                   preprocessing=Preprocessing.tensor(), layers=HAND_LAYERS), **kwargs)


def run_acts(store_path: Path, **kwargs) -> Plan:
    with open_store(store_path, "a") as store:
        return run_activations(NetworkContext.open(store), ActivationsConfig(batch_size=3, num_workers=0), **kwargs).plan


def read_all(store_path: Path, layer: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with open_store(store_path, "r") as store:
        return {n: store.read(f"hand/{layer}/{n}") for n in names}


def plain_forward(model: torch.nn.Module, images: torch.Tensor, upto: int) -> torch.Tensor:
    with torch.no_grad():
        out = images
        for module in list(model)[: upto + 1]:
            out = module(out.clone())
    return out


def test_activations_equal_plain_forward_of_hand_weighted_cnn(store_path: Path, tiny_folder: Path) -> None:
    from tiny_nets import hand_cnn

    init_hand(store_path, tiny_folder)
    run_acts(store_path)
    with open_store(store_path, "r") as store:
        paths = store.read("hand/image_path")
    images = torch.stack([Preprocessing.tensor()(load_rgb(tiny_folder / p)) for p in paths])
    model = hand_cnn()
    for index, layer in zip((0, 1, 2, 3, 6), HAND_LAYERS.split(",")):
        expected = plain_forward(model, images, index)
        got = read_all(store_path, layer, ("act_max", "act_mean", "act_y", "act_x"))
        if expected.dim() == 4:
            flat = expected.flatten(2)
            np.testing.assert_allclose(got["act_max"], flat.max(2).values.numpy(), rtol=1e-6)
            np.testing.assert_allclose(got["act_mean"], flat.mean(2).numpy(), rtol=1e-5, atol=1e-6)
            arg = flat.argmax(2).numpy()
            width = expected.shape[3]
            np.testing.assert_array_equal(got["act_y"], arg // width)
            np.testing.assert_array_equal(got["act_x"], arg % width)
        else:
            scale = np.abs(expected.numpy()).max()  # float32 rounding of 250-sized terms
            np.testing.assert_allclose(got["act_max"], expected.numpy(), rtol=1e-6, atol=1e-6 * scale)
            assert (got["act_y"] == 0).all()
    # the inplace ReLU after conv 0 must not have rectified the captured conv output
    assert (read_all(store_path, "0", ("act_mean",))["act_mean"][:, 1] < 0).any()
    ones = torch.ones(1, 3, 8, 8)
    assert plain_forward(model, ones, 6)[0, 0].item() == pytest.approx(486.0)  # 4 * 0.5 * 9 * 27, on paper


def test_activations_equal_plain_forward_of_random_alexnet(tmp_path: Path) -> None:
    from image_fixtures import make_mixed_image_folder

    folder = tmp_path / "mixed"
    make_mixed_image_folder(folder)
    store_path = tmp_path / "alex.zarr"
    with open_store(store_path, "a") as store:
        result = run_init(store, InitConfig(model=ModelSpec("torchvision:alexnet", "none", 0), data=folder))
        ctx = NetworkContext.open(store)
        run_activations(ctx, ActivationsConfig(batch_size=4, num_workers=0))
        paths = ctx.image_paths()
        errors = store.read("alexnet/image_error")
        got = {layer: store.read(f"alexnet/{layer}/act_max") for layer in result.layers}
    assert (errors == "").all(), errors  # every format of the mixed folder is read
    torch.manual_seed(0)
    import torchvision

    model = torchvision.models.alexnet(weights=None).eval()
    images = torch.stack([Preprocessing.imagenet()(load_rgb(folder / p)) for p in paths])
    relus = [f"features.{i}" for i in (1, 4, 7, 9, 11)] + ["classifier.2", "classifier.5"]
    assert result.layers == relus
    with torch.no_grad():
        feats = model.features[:2](images)
        expected = {"features.1": feats}
        for stop, name in ((5, "features.4"), (8, "features.7"), (10, "features.9"), (12, "features.11")):
            expected[name] = model.features[:stop](images)
        flat = torch.flatten(model.avgpool(model.features(images)), 1)
        expected["classifier.2"] = model.classifier[:3](flat)
        expected["classifier.5"] = model.classifier[:6](flat)
    for layer in relus:
        exp = expected[layer]
        exp = exp.flatten(2).max(2).values if exp.dim() == 4 else exp
        scale = np.abs(exp.numpy()).max()
        assert np.abs(got[layer] - exp.numpy()).max() <= 1e-4 * scale, layer


def test_topk_equals_a_sort(store_path: Path, tiny_folder: Path) -> None:
    init_hand(store_path, tiny_folder)
    run_acts(store_path)
    with open_store(store_path, "a") as store:
        run_topk(NetworkContext.open(store), TopKConfig(k=4))
    for layer in HAND_LAYERS.split(","):
        got = read_all(store_path, layer, ("act_max", "act_y", "topk_image", "topk_value", "topk_y"))
        values = got["act_max"]
        for unit in range(values.shape[1]):
            order = sorted(range(values.shape[0]), key=lambda i: (-values[i, unit], i))[:4]
            assert got["topk_image"][unit].tolist() == order
            np.testing.assert_array_equal(got["topk_value"][unit], values[order, unit])
            np.testing.assert_array_equal(got["topk_y"][unit], got["act_y"][order, unit])


def test_topk_by_mean_and_too_few_images(tmp_path: Path, tiny_folder: Path) -> None:
    store_path = tmp_path / "s.zarr"
    init_hand(store_path, tiny_folder)
    run_acts(store_path)
    with open_store(store_path, "a") as store:
        run_topk(NetworkContext.open(store), TopKConfig(k=12, measure="mean"))  # 10 images only
    got = read_all(store_path, "1", ("act_mean", "topk_image", "topk_value"))
    assert (got["topk_image"][:, 10:] == -1).all() and np.isnan(got["topk_value"][:, 10:]).all()
    best = np.argmax(got["act_mean"], axis=0)
    np.testing.assert_array_equal(got["topk_image"][:, 0], best)


def test_xarray_round_trip(tmp_path: Path, tiny_folder: Path) -> None:
    xr = pytest.importorskip("xarray")
    import warnings

    for suffix in ("zarr", "h5"):
        path = tmp_path / f"s.{suffix}"
        init_hand(path, tiny_folder)
        run_acts(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if suffix == "zarr":
                ds = xr.open_zarr(path, group="hand/1")
                net = xr.open_zarr(path, group="hand")
            else:
                ds = xr.open_dataset(path, group="hand/1", engine="h5netcdf")
                net = xr.open_dataset(path, group="hand", engine="h5netcdf")
        raw = read_all(path, "1", ("act_max", "act_y"))
        assert ds["act_max"].dims == ("image", "unit")
        np.testing.assert_array_equal(ds["act_max"].values, raw["act_max"])
        np.testing.assert_array_equal(ds["act_y"].values, raw["act_y"])
        assert ds.attrs["kind"] == "conv" and list(np.atleast_1d(ds.attrs["rf_theory_size"])) == [3, 3]
        assert net["image_path"].values.tolist()[0] == "a/img00.png"
        assert net["image_label"].values.tolist() == [0] * 5 + [1] * 5


def test_topk_before_activations_says_what_to_run(tmp_path: Path, tiny_folder: Path) -> None:
    path = tmp_path / "s.zarr"
    init_hand(path, tiny_folder)
    with open_store(path, "a") as store, pytest.raises(MissingInputError, match="rfstore activations"):
        run_topk(NetworkContext.open(store), TopKConfig())


def _init_and_run(store_path: Path, folder: Path, model: str, layers: str, config: ActivationsConfig) -> None:
    with open_store(store_path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec(model, None, 0), data=folder, name="hand",
                                   preprocessing=Preprocessing.tensor(), layers=layers))
        run_activations(NetworkContext.open(store), config)


@pytest.mark.parametrize("model, layers", [(HAND_CNN, HAND_LAYERS), (HAND_CNN.replace("hand_cnn", "viewing_cnn"),
                                                                      "features.0,features.2,head")])
def test_memory_formats_agree(tmp_path: Path, tiny_folder: Path, model: str, layers: str) -> None:
    """channels_last (the CPU default) gives the contiguous format's numbers (the hand weights are
    exact in both); a model whose ``view`` fails channels_last falls back to contiguous by itself."""
    results = {}
    for fmt in ("channels_last", "contiguous"):
        path = tmp_path / f"{fmt}.zarr"
        _init_and_run(path, tiny_folder, model, layers, ActivationsConfig(batch_size=4, num_workers=0,
                                                                          memory_format=fmt))
        results[fmt] = {layer: read_all(path, layer, ("act_max", "act_mean", "act_y", "act_x"))
                        for layer in layers.split(",")}
    for layer in layers.split(","):
        for name in ("act_max", "act_y", "act_x"):
            np.testing.assert_array_equal(results["channels_last"][layer][name], results["contiguous"][layer][name])
        np.testing.assert_allclose(results["channels_last"][layer]["act_mean"],
                                   results["contiguous"][layer]["act_mean"], rtol=1e-6)
    with pytest.raises(UsageError, match="memory_format: must be one of"):
        ActivationsConfig(memory_format="nhwc")


def test_changed_parameters_are_caught_before_anything_is_written(store_path: Path, tiny_folder: Path) -> None:
    """The parameter check runs in the background while the first block computes; it must
    still stop the run before that block is stored."""
    from rfstore.errors import RfstoreError

    init_hand(store_path, tiny_folder)
    with open_store(store_path, "a") as store:
        store.update_attrs("hand", {"parameters_sha256": "0" * 64})
        with pytest.raises(RfstoreError, match="no longer gives the network recorded at init"):
            run_activations(NetworkContext.open(store), ActivationsConfig(batch_size=3, num_workers=0))
        assert not store.read("hand/_rfstore/activations/done").any()
