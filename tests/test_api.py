"""rfstore.open: the notebook API gives lazy xarray views equal to the raw arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rfstore
from test_foundation_stages import init_hand, read_all, run_acts


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_open_gives_layer_datasets(tmp_path: Path, tiny_folder: Path, suffix: str) -> None:
    path = tmp_path / f"s.{suffix}"
    init_hand(path, tiny_folder)
    run_acts(path)
    results = rfstore.open(path)
    assert results.networks == ["hand"]
    net = results["hand"]
    assert net.layers == ["0", "1", "2", "3", "6"]
    ds = net["1"]
    np.testing.assert_array_equal(ds["act_max"].values, read_all(path, "1", ("act_max",))["act_max"])
    assert ds["act_max"].dims == ("image", "unit")
    assert net.images()["image_path"].values.tolist()[0] == "a/img00.png"
    with pytest.raises(KeyError, match="no layer"):
        net["features.99"]
