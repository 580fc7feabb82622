"""The stages on a CUDA GPU give the CPU's numbers (float32, TF32 off); run where CUDA exists.

Skipped on machines without CUDA (``make test`` here); ``make bench-gpu`` runs them with the
whole-workload benchmark on a GPU machine.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rfstore.datasets import Preprocessing
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.pipeline.stages.occlude import OccludeConfig, run_occlude
from rfstore.pipeline.stages.topk import TopKConfig, run_topk
from rfstore.store import open_store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY_ALEXNET = "rfstore.demo.network:tiny_alexnet"
LAYERS = ("features.1", "features.4", "features.11", "classifier.2")


def _store(path: Path, folder: Path, device: str) -> Path:
    with open_store(path, "a") as store:
        run_init(store, InitConfig(model=ModelSpec(TINY_ALEXNET, None, 0), data=folder,
                                   preprocessing=Preprocessing.tensor(), layers=",".join(LAYERS), name="net"))
        ctx = NetworkContext.open(store)
        run_activations(ctx, ActivationsConfig(batch_size=8, num_workers=0, device=device))
        run_topk(ctx, TopKConfig(k=3))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, scene_folder: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu")
    return {device: _store(root / f"{device}.zarr", scene_folder, device) for device in ("cpu", "cuda")}


def test_activations_on_cuda_equal_the_cpu(stores: dict[str, Path]) -> None:
    with open_store(stores["cpu"], "r") as cpu, open_store(stores["cuda"], "r") as gpu:
        for layer in LAYERS:
            a, b = cpu.read(f"net/{layer}/act_max"), gpu.read(f"net/{layer}/act_max")
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
            np.testing.assert_array_equal(cpu.read(f"net/{layer}/topk_image"), gpu.read(f"net/{layer}/topk_image"))


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 0.03), ("float16", 0.005)])
def test_occlusion_on_cuda_matches_the_cpu(stores: dict[str, Path], tmp_path: Path, dtype: str,
                                           tolerance: float) -> None:
    maps = {}
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.zarr"
        shutil.copytree(stores["cpu"], path)  # the same top images on both devices
        with open_store(path, "a") as st:
            run_occlude(NetworkContext.open(st), OccludeConfig(
                size=8, stride=4, fill="noise", units=slice(0, 4), device=device,
                layers=LAYERS, dtype="float32" if device == "cpu" else dtype))
            maps[device] = {layer: st.read(f"net/{layer}/discrepancy")[:4] for layer in LAYERS}
            scale = {layer: np.nanmax(np.abs(st.read(f"net/{layer}/topk_value"))) for layer in LAYERS}
    for layer in LAYERS:
        cpu, gpu = maps["cpu"][layer], maps["cuda"][layer]
        assert np.array_equal(np.isnan(cpu), np.isnan(gpu))
        error = np.nan_to_num(np.abs(gpu - cpu)).max(axis=(2, 3))
        assert (error <= tolerance * scale[layer]).all(), (layer, error.max() / scale[layer])
