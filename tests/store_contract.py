"""The store contract, written once: what every backend of :class:`rfstore.store.Store` must do.

A backend's test class inherits :class:`StoreContract` and says how to make its store
(``store_class``, ``suffix`` and, where opening differs, :meth:`StoreContract.make_store`);
every test below then runs on it (``tests/test_store_backends.py``: ``TestHDF5Store``,
``TestZarrStore``). The contract:

* a store opened read-only must exist, and refuses every change;
* groups hold JSON attributes; arrays keep their shape, dtype, dimension names and fill
  value (elements never written read as the fill), strings included;
* ``delete`` removes an array or a group with everything under it (a missing path is no
  error), and an array can be created again where one was deleted;
* a coordinate created again where arrays use it keeps them, with their dimensions and values;
* every group opens in xarray with the arrays' dimension names;
* one writer at a time: a second writer gets :class:`StoreLockedError` naming the holder,
  readers are never blocked, a killed holder's lock is taken over, a closed one released;
* a write the operating system refuses (full disk) is a :class:`StoreWriteError` in one
  sentence naming the store, and what was flushed before stays readable;
* something else at the store's path (a file, a foreign folder) is refused, untouched;
* :func:`remove_store` deletes the store with its lock (and journal) files.
"""
from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from rfstore.store import ArraySpec, Store, StoreError, StoreLockedError, StoreWriteError, open_store, remove_store
from rfstore.store.layout import write_coordinate
from support.faults import Faults

NAN = float("nan")


class StoreContract:
    """Base class of a backend's tests (not collected itself: its name does not start with ``Test``)."""

    #: the backend's class, which :func:`open_store` must return for a path with :attr:`suffix`
    store_class: ClassVar[type[Store]]
    #: the path suffix that selects the backend
    suffix: ClassVar[str]

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        """Where a test's store lives (nothing there yet)."""
        return tmp_path / f"store{self.suffix}"

    def make_store(self, path: Path, mode: str = "a") -> Store:
        """Open the backend's store at ``path`` as rfstore does (the hook a backend may override)."""
        store = open_store(path, mode)
        assert isinstance(store, self.store_class), f"{path} opened as {type(store).__name__}"
        return store

    def test_read_only_store_must_exist(self, path: Path) -> None:
        with pytest.raises(StoreError, match="no"):
            self.make_store(path, "r")

    def test_arrays_attrs_and_fill(self, path: Path) -> None:
        with self.make_store(path) as store:
            store.update_attrs("", {"schema_version": 1, "nested": {"a": [1, "b"]}, "sizes": [51, 51], "none": None})
            write_coordinate(store, "net/layer", "image", np.arange(5))
            write_coordinate(store, "net/layer", "unit", np.arange(3))
            store.create_array("net/layer/act", ArraySpec((5, 3), "float32", ("image", "unit"), (2, 3), NAN))
            store.create_array("net/layer/idx", ArraySpec((5, 3), "int32", ("image", "unit"), (2, 3), -1))
            store.create_array("net/names", ArraySpec((3,), "str", ("name",), (2,), ""),
                               data=np.array(["a/b.jpg", "é ü.png", ""], dtype=object))
            store.write("net/layer/act", slice(2, 4), np.ones((2, 3), np.float32))
            store.write("net/layer/idx", (slice(0, 1), slice(None)), np.array([[7, 8, 9]], np.int32))
        with self.make_store(path, "r") as store:
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

    def test_delete_and_recreate(self, path: Path) -> None:
        with self.make_store(path) as store:
            write_coordinate(store, "g", "unit", np.arange(4))
            store.create_array("g/x", ArraySpec((4,), "float32", ("unit",), (4,), NAN),
                               data=np.arange(4, dtype=np.float32))
            store.delete("g/x")
            assert not store.has("g/x") and store.has("g")
            store.create_array("g/x", ArraySpec((4,), "float32", ("unit",), (4,), NAN))
            assert np.isnan(store.read("g/x")).all()
            store.delete("g")
            assert not store.has("g")
            store.delete("never/there")

    def test_a_coordinate_created_again_keeps_its_arrays(self, path: Path) -> None:
        """A coordinate (an array named after its one dimension) created again where arrays use it, as a stage
        started afresh does (dissect's ``concept_name``): the arrays keep their dimensions and values."""
        names = ArraySpec((3,), "str", ("concept",), (3,), "")
        with self.make_store(path) as store:
            write_coordinate(store, "g", "unit", np.arange(2))
            store.create_array("g/concept", names, data=np.array(["a", "b", "c"], dtype=object))
            store.create_array("g/score", ArraySpec((2, 3), "float32", ("unit", "concept"), (2, 3), NAN),
                               data=np.ones((2, 3), np.float32))
            store.create_array("g/best", ArraySpec((2,), "float32", ("unit",), (2,), NAN))
            store.create_array("g/concept", names, data=np.array(["c", "b", "a"], dtype=object))
        with self.make_store(path, "r") as store:
            assert store.read("g/concept").tolist() == ["c", "b", "a"]
            assert store.array_spec("g/score").dims == ("unit", "concept") and (store.read("g/score") == 1).all()
            assert store.children("g") == ([], ["best", "concept", "score", "unit"])

    def test_groups_open_in_xarray_with_dimension_names(self, path: Path) -> None:
        xr = pytest.importorskip("xarray")
        with self.make_store(path) as store:
            write_coordinate(store, "alexnet/features.4", "unit", np.arange(3))
            write_coordinate(store, "alexnet/features.4", "rank", np.arange(2))
            store.create_array("alexnet/features.4/topk_image",
                               ArraySpec((3, 2), "int64", ("unit", "rank"), (3, 2), -1),
                               data=np.array([[0, 1], [2, -1], [4, 5]]))
            store.update_attrs("alexnet/features.4", {"kind": "conv", "rf_theory_size": [51, 51]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".zarr":
                ds = xr.open_zarr(path, group="alexnet/features.4")
            else:
                ds = xr.open_dataset(path, group="alexnet/features.4", engine="h5netcdf")
        with ds:
            assert ds["topk_image"].dims == ("unit", "rank")
            assert ds["topk_image"].values.tolist() == [[0, 1], [2, -1], [4, 5]]
            assert ds.attrs["kind"] == "conv"
            assert list(np.asarray(ds.attrs["rf_theory_size"])) == [51, 51]

    def test_one_writer_at_a_time_readers_never_blocked(self, path: Path) -> None:
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time; from rfstore.store import open_store\n"
             f"s = open_store({str(path)!r}, 'a'); s.update_attrs('', {{'x': 1}}); s.flush()\n"
             "print('ready', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            with pytest.raises(StoreLockedError, match=f"in use by process {holder.pid}"):
                self.make_store(path)
            with self.make_store(path, "r") as reader:  # not blocked by the writer
                assert reader.attrs("")["x"] == 1
        finally:
            holder.kill()  # kill -9: the lock dies with its holder
            holder.wait()
        with self.make_store(path) as store:  # the stale lock is taken over
            store.update_attrs("", {"x": 2})
        with self.make_store(path) as store:  # and released on close
            assert store.attrs("")["x"] == 2

    def test_full_disk_is_one_sentence_and_keeps_what_was_flushed(self, path: Path) -> None:
        """Blocks of 2 KiB, each flushed, until the disk is full (3,000 bytes may be written): every
        block reads back as written or as the fill value, the blocks flushed before all as written."""
        spec = ArraySpec((64, 64), "float32", ("image", "unit"), (8, 64), NAN)
        values = np.random.default_rng(0).random((64, 64), dtype=np.float32)
        with self.make_store(path) as store:
            store.create_array("a", spec)
            store.write("a", slice(0, 8), values[:8])
        flushed = 1
        with Faults(enospc_after=3000), pytest.raises(StoreWriteError) as failed:
            with self.make_store(path) as store:
                for block in range(1, 8):
                    store.write("a", slice(8 * block, 8 * block + 8), values[8 * block:8 * block + 8])
                    store.flush()
                    flushed += 1
        assert str(failed.value) == (f"no space left on device while writing {path}; finished work is kept: "
                                     f"free some space and rerun the same command to resume")
        with self.make_store(path, "r") as store:
            stored = store.read("a").reshape(8, 8, 64)
        written = [bool((block == value).all()) for block, value in zip(stored, values.reshape(8, 8, 64))]
        assert all(written[:flushed]) and flushed < 8
        assert all(ok or np.isnan(block).all() for ok, block in zip(written, stored))

    @pytest.mark.parametrize("kind", ["file", "folder"])
    def test_something_else_at_the_path_is_refused_untouched(self, path: Path, kind: str) -> None:
        if kind == "file":
            path.write_bytes(b"not a store at all")
        else:
            path.mkdir()
            (path / "notes.txt").write_text("someone else's")
        for mode in ("r", "a"):
            with pytest.raises(StoreError, match=str(path)):
                self.make_store(path, mode)
        if kind == "file":
            assert path.read_bytes() == b"not a store at all"
        else:
            assert [p.name for p in path.iterdir()] == ["notes.txt"]

    def test_remove_store_leaves_nothing_behind(self, path: Path) -> None:
        with self.make_store(path) as store:
            store.create_array("a", ArraySpec((2,), "int32", ("unit",), (2,), -1), data=np.arange(2, dtype=np.int32))
        assert path.exists() and path.with_name(path.name + ".lock").exists()
        path.with_name(path.name + "-journal").write_bytes(b"")  # as a killed HDF5 writer may leave one
        remove_store(path)
        assert list(path.parent.iterdir()) == []
        remove_store(path)  # nothing there: no error
