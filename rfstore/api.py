"""The Python API for notebooks: ``rfstore.open(path)`` and lazy xarray views of a store.

>>> import rfstore
>>> results = rfstore.open("alexnet.zarr")
>>> results.networks
['alexnet']
>>> ds = results["alexnet"]["features.4"]          # an xarray.Dataset, dask-backed for Zarr
>>> ds.rf_size.mean().item()

Nothing here writes: the store is opened read-only and every array is read lazily
(through ``xarray.open_zarr`` or ``xarray.open_dataset(engine="h5netcdf")``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfstore.store import backend_for, open_store
from rfstore.store.layout import INTERNAL


def _open_group(path: Path, group: str) -> Any:
    import xarray as xr

    if backend_for(path) == "zarr":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no consolidated metadata: expected
            return xr.open_zarr(path, group=group, consolidated=False)
    return xr.open_dataset(path, group=group, engine="h5netcdf", phony_dims="sort")


@dataclass(frozen=True)
class NetworkResults:
    """One network of a store: its attributes and one dataset per layer."""

    path: Path
    name: str
    attrs: dict[str, Any]
    layers: list[str]

    def __getitem__(self, layer: str) -> Any:
        """The ``xarray.Dataset`` of a layer (``act_*``, ``topk_*``, ``discrepancy``, ``rf_map``, ...)."""
        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} in {self.name}; it has {', '.join(self.layers)}")
        return _open_group(self.path, f"{self.name}/{layer}")

    def images(self) -> Any:
        """The ``xarray.Dataset`` of the network group: ``image_path``, ``image_label``, ``image_error``."""
        return _open_group(self.path, self.name)

    def __repr__(self) -> str:
        return f"NetworkResults({self.name!r}, {len(self.layers)} layers: {', '.join(self.layers)})"


@dataclass(frozen=True)
class StoreResults:
    """A store opened for reading: ``results[network][layer]`` is an ``xarray.Dataset``."""

    path: Path
    networks: list[str]
    _attrs: dict[str, dict[str, Any]]

    def __getitem__(self, network: str) -> NetworkResults:
        if network not in self.networks:
            raise KeyError(f"no network {network!r} in {self.path}; it has {', '.join(self.networks)}")
        attrs = self._attrs[network]
        return NetworkResults(self.path, network, attrs, list(attrs.get("layers", [])))

    def __repr__(self) -> str:
        return f"StoreResults({str(self.path)!r}, networks={self.networks})"


def open(path: str | Path) -> StoreResults:  # noqa: A001 - the API's name, as in xarray.open_dataset
    """Open an rfstore store for reading."""
    path = Path(path)
    with open_store(path, "r") as store:
        groups, _ = store.children("")
        attrs = {g: store.attrs(g) for g in groups if g != INTERNAL}
    networks = [g for g, a in attrs.items() if "model" in a]
    return StoreResults(path, networks, {n: attrs[n] for n in networks})
