"""The Python API for notebooks: ``rfstore.open(path)``, lazy xarray views and pictures of units.

>>> import rfstore
>>> results = rfstore.open("demo-out/demo.zarr")
>>> results.networks
['tiny_alexnet']
>>> net = results["tiny_alexnet"]
>>> ds = net["features.11"]                    # an xarray.Dataset, dask-backed for Zarr
>>> ds.rf_size.dims
('unit',)
>>> net.unit_montage("features.11", 3)         # doctest: +ELLIPSIS
<PIL.Image.Image image mode=RGB size=...>
>>> net.unit_rf("features.11", 3).save("rf.png")
>>> fig = net.rf_depth_plot()                  # a matplotlib Figure
>>> fig.savefig("rf_depth.png")

In Jupyter a ``PIL.Image`` shows inline when it is the cell's last value (or with
``display(...)``); a matplotlib ``Figure`` shows inline the same way.

Nothing here writes to the store: it is opened read-only and every array is read
lazily (through ``xarray.open_zarr`` or ``xarray.open_dataset(engine="h5netcdf")``);
the pictures read the unit's arrays and its top images from the dataset.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfstore.store import backend_for, open_store
from rfstore.store.layout import INTERNAL


#: what ``pip install 'rfstore[xarray]'`` adds: the modules the xarray views need, per backend.
_VIEW_MODULES = {"zarr": ("xarray",), "hdf5": ("xarray", "h5netcdf")}


def _require_view_modules(path: Path) -> None:
    """One line naming the extra to install when xarray (or, for HDF5 stores, h5netcdf) is missing."""
    import importlib.util

    needed = _VIEW_MODULES[backend_for(path)]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"rfstore.open(...)[network][layer] needs {' and '.join(missing)}: "
                                  f"pip install 'rfstore[xarray]'", name=missing[0])


def _open_group(path: Path, group: str) -> Any:
    _require_view_modules(path)
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

    def netdissect(self, layer: str) -> Any:
        """The ``xarray.Dataset`` of a layer's ``dissect --method netdissect`` results: ``iou`` (unit, concept),
        ``category_label`` (unit, category), ``label``, ``score`` (unit), ...
        (:func:`~rfstore.store.layout.netdissect_specs`)."""
        from rfstore.store.layout import netdissect_group

        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} in {self.name}; it has {', '.join(self.layers)}")
        return _open_group(self.path, netdissect_group(self.name, layer))

    def images(self) -> Any:
        """The ``xarray.Dataset`` of the network group: ``image_path``, ``image_label``, ``image_error``."""
        return _open_group(self.path, self.name)

    def _draw(self, layer: str, unit: int, draw: Callable[..., Any]) -> Any:
        from rfstore.results.layers import ImageCache, LayerReader
        from rfstore.recorded.network import NetworkContext

        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} in {self.name}; it has {', '.join(self.layers)}")
        with open_store(self.path, "r") as store:
            ctx = NetworkContext.open(store, self.name)
            return draw(LayerReader(ctx, layer).unit(int(unit)), ImageCache(ctx))

    def unit_montage(self, layer: str, unit: int, scale: float | None = None, labels: bool = True) -> Any:
        """The unit's top-K images in a row (Zhou's "top10" picture), each with its segmentation
        (outside dimmed, outlined in yellow), NetDissect mask (magenta) and theoretical RF (cyan box).

        Parameters
        ----------
        layer : str
            Layer name, e.g. ``"features.11"``.
        unit : int
            Unit (channel) index.
        scale : float, optional
            Zoom of each image (default: about 256 px per image).
        labels : bool
            Rank and activation above each image.

        Returns
        -------
        PIL.Image.Image or None
            RGB, ``K`` tiles wide; None when the layer has no top images yet (``rfstore topk``).
        """
        from rfstore.report import figures

        return self._draw(layer, unit, lambda data, images: figures.unit_montage(
            data, images, scale or figures.tile_scale(data.info.input_hw, 256), labels=labels))

    def unit_discrepancy(self, layer: str, unit: int, scale: float | None = None) -> Any:
        """The unit's discrepancy maps over its top images (``PIL.Image``; None before ``rfstore occlude``)."""
        from rfstore.report import figures

        return self._draw(layer, unit, lambda data, images: figures.discrepancy_montage(
            data, images, scale or figures.tile_scale(data.info.input_hw, 256)))

    def unit_rf(self, layer: str, unit: int) -> Any:
        """The unit's empirical RF heat map with its theoretical RF box (``PIL.Image``; None before ``rfstore rf``)."""
        from rfstore.report import figures

        return self._draw(layer, unit, lambda data, images: figures.rf_heatmap(data))

    def unit_picture(self, layer: str, unit: int, scale: float | None = None) -> Any:
        """Montage, discrepancy maps and RF heat map in one ``PIL.Image`` (what ``rfstore show`` writes)."""
        from rfstore.report import figures

        return self._draw(layer, unit, lambda data, images: figures.unit_sheet(
            data, images, scale or figures.tile_scale(data.info.input_hw, 256)))

    def rf_depth_plot(self) -> Any:
        """Empirical (per unit, and mean +- std) and theoretical RF size against depth: a matplotlib ``Figure``."""
        from rfstore.results.layers import LayerReader
        from rfstore.report.plots import rf_depth_figure
        from rfstore.recorded.network import NetworkContext

        with open_store(self.path, "r") as store:
            ctx = NetworkContext.open(store, self.name)
            tables = [LayerReader(ctx, layer).table() for layer in ctx.layers]
        return rf_depth_figure(tables, self.name)

    def __iter__(self) -> Iterator[str]:
        """The layer names, in recorded order (as a mapping of layer -> dataset)."""
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

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

    def __iter__(self) -> Iterator[str]:
        """The network names (as a mapping of network -> :class:`NetworkResults`)."""
        return iter(self.networks)

    def __len__(self) -> int:
        return len(self.networks)

    def __contains__(self, network: object) -> bool:
        return network in self.networks

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
