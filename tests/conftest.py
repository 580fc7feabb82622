"""Shared fixtures: small generated image folders and stores initialised on them."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

HAND_CNN = f"{TESTS / 'tiny_nets.py'}:hand_cnn"
BACKENDS = ["zarr", "h5"]


def write_tiny_folder(root: Path, n_per_class: int = 5, size: int = 8, seed: int = 0) -> Path:
    """Random 8x8 RGB PNGs in two class folders, for the hand-weighted network."""
    rng = np.random.default_rng(seed)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / label / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("tiny") / "images")


@pytest.fixture(scope="session")
def scene_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rfstore.demo.scenes import write_scene_folder

    root = tmp_path_factory.mktemp("scenes") / "images"
    write_scene_folder(root, per_class=3, seed=1)
    return root


@pytest.fixture(params=BACKENDS)
def store_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A stage test's store path, once per backend (the store's own contract: store_contract.py)."""
    return tmp_path / f"store.{'zarr' if request.param == 'zarr' else 'h5'}"
