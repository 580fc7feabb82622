"""The store: the only code that touches h5py or zarr.

:func:`open_store` picks the backend from the path's suffix; :mod:`rfstore.store.layout`
owns the key layout and chunk shapes of ../shared/CONTRACT.md.
"""
from __future__ import annotations

from pathlib import Path

from rfstore.store.base import ArraySpec, Store, StoreError

HDF5_SUFFIXES = (".h5", ".hdf5")
ZARR_SUFFIXES = (".zarr",)


def backend_for(path: str | Path) -> str:
    """``"hdf5"`` or ``"zarr"`` from the path's suffix, or a :class:`StoreError`."""
    suffix = Path(path).suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    raise StoreError(f"store path {str(path)!r} must end in .zarr (Zarr v3 directory) or .h5/.hdf5 (HDF5 file)")


def open_store(path: str | Path, mode: str = "r") -> Store:
    """Open the store at ``path`` (``mode`` ``"r"`` or ``"a"``), choosing the backend by suffix."""
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
    if backend_for(path) == "hdf5":
        from rfstore.store.hdf5_ import HDF5Store

        return HDF5Store(path, mode)
    from rfstore.store.zarr_ import ZarrStore

    return ZarrStore(path, mode)


__all__ = ["ArraySpec", "Store", "StoreError", "backend_for", "open_store"]
