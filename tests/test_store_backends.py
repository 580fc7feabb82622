"""One contract, every backend: the same operations give the same results in HDF5 and Zarr."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from rfstore.store import ArraySpec, StoreError, backend_for, open_store
from rfstore.store.layout import write_coordinate

NAN = float("nan")


def test_backend_by_suffix(tmp_path: Path) -> None:
    assert backend_for("a.zarr") == "zarr"
    assert backend_for("a.H5") == "hdf5"
    assert backend_for("a.hdf5") == "hdf5"
    with pytest.raises(StoreError, match="must end in .zarr"):
        backend_for(tmp_path / "a.nc")


def test_read_only_store_must_exist(store_path: Path) -> None:
    with pytest.raises(StoreError, match="no"):
        open_store(store_path, "r")


def test_arrays_attrs_and_fill(store_path: Path) -> None:
    with open_store(store_path, "a") as store:
        store.update_attrs("", {"schema_version": 1, "nested": {"a": [1, "b"]}, "sizes": [51, 51], "none": None})
        write_coordinate(store, "net/layer", "image", np.arange(5))
        write_coordinate(store, "net/layer", "unit", np.arange(3))
        store.create_array("net/layer/act", ArraySpec((5, 3), "float32", ("image", "unit"), (2, 3), NAN))
        store.create_array("net/layer/idx", ArraySpec((5, 3), "int32", ("image", "unit"), (2, 3), -1))
        store.create_array("net/names", ArraySpec((3,), "str", ("name",), (2,), ""),
                           data=np.array(["a/b.jpg", "é ü.png", ""], dtype=object))
        store.write("net/layer/act", slice(2, 4), np.ones((2, 3), np.float32))
        store.write("net/layer/idx", (slice(0, 1), slice(None)), np.array([[7, 8, 9]], np.int32))
    with open_store(store_path, "r") as store:
        assert store.attrs("") == {"schema_version": 1, "nested": {"a": [1, "b"]}, "sizes": [51, 51], "none": None}
        act = store.read("net/layer/act")
        assert np.isnan(act[[0, 1, 4]]).all() and (act[2:4] == 1).all()
        assert store.read("net/layer/idx")[0].tolist() == [7, 8, 9]
        assert (store.read("net/layer/idx")[1:] == -1).all()
        assert store.read("net/names").tolist() == ["a/b.jpg", "é ü.png", ""]
        spec = store.array_spec("net/layer/act")
        assert spec.shape == (5, 3) and spec.dims == ("image", "unit") and spec.dtype == "float32"
        assert math.isnan(spec.fill)
        assert store.children("net") == (["layer"], ["name", "names"])  # a coordinate per dimension
        with pytest.raises(StoreError, match="read-only"):
            store.write("net/layer/act", slice(None), np.zeros((5, 3), np.float32))


def test_delete_and_recreate(store_path: Path) -> None:
    with open_store(store_path, "a") as store:
        write_coordinate(store, "g", "unit", np.arange(4))
        store.create_array("g/x", ArraySpec((4,), "float32", ("unit",), (4,), NAN), data=np.arange(4, dtype=np.float32))
        store.delete("g/x")
        assert not store.has("g/x") and store.has("g")
        store.create_array("g/x", ArraySpec((4,), "float32", ("unit",), (4,), NAN))
        assert np.isnan(store.read("g/x")).all()
        store.delete("g")
        assert not store.has("g")
        store.delete("never/there")


def test_both_backends_hold_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 5)).astype(np.float32)
    out = {}
    for suffix in ("zarr", "h5"):
        with open_store(tmp_path / f"s.{suffix}", "a") as store:
            write_coordinate(store, "n/l", "image", np.arange(7))
            write_coordinate(store, "n/l", "unit", np.arange(5))
            store.create_array("n/l/a", ArraySpec((7, 5), "float32", ("image", "unit"), (3, 5), NAN))
            store.write("n/l/a", slice(0, 6), data[:6])
            out[suffix] = store.read("n/l/a")
    np.testing.assert_array_equal(out["zarr"], out["h5"])


def test_groups_open_in_xarray_with_dimension_names(store_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    with open_store(store_path, "a") as store:
        write_coordinate(store, "alexnet/features.4", "unit", np.arange(3))
        write_coordinate(store, "alexnet/features.4", "rank", np.arange(2))
        store.create_array("alexnet/features.4/topk_image", ArraySpec((3, 2), "int64", ("unit", "rank"), (3, 2), -1),
                           data=np.array([[0, 1], [2, -1], [4, 5]]))
        store.update_attrs("alexnet/features.4", {"kind": "conv", "rf_theory_size": [51, 51]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if store_path.suffix == ".zarr":
            ds = xr.open_zarr(store_path, group="alexnet/features.4")
        else:
            ds = xr.open_dataset(store_path, group="alexnet/features.4", engine="h5netcdf")
    assert ds["topk_image"].dims == ("unit", "rank")
    assert ds["topk_image"].values.tolist() == [[0, 1], [2, -1], [4, 5]]
    assert ds.attrs["kind"] == "conv"
    assert list(np.asarray(ds.attrs["rf_theory_size"])) == [51, 51]


def test_one_writer_at_a_time_readers_never_blocked(store_path: Path) -> None:
    import subprocess
    import sys

    from rfstore.store import StoreLockedError

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from rfstore.store import open_store\n"
         f"s = open_store({str(store_path)!r}, 'a'); s.update_attrs('', {{'x': 1}}); s.flush()\n"
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=f"in use by process {holder.pid}"):
            open_store(store_path, "a")
        with open_store(store_path, "r") as reader:  # not blocked by the writer
            assert reader.attrs("")["x"] == 1
    finally:
        holder.kill()  # kill -9: the lock dies with its holder
        holder.wait()
    with open_store(store_path, "a") as store:  # the stale lock is taken over
        store.update_attrs("", {"x": 2})
    with open_store(store_path, "a") as store:  # and released on close
        assert store.attrs("")["x"] == 2
