"""The store: the only code that touches h5py or zarr.

:func:`open_store` picks the backend from the path's suffix; :mod:`rfstore.store.layout`
owns the key layout and chunk shapes of ../shared/CONTRACT.md.
"""
from __future__ import annotations

from pathlib import Path

from rfstore.store.base import ArraySpec, Store, StoreError
from rfstore.store.lock import StoreLock, StoreLockedError

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


def open_store(path: str | Path, mode: str = "r", wait: bool = False) -> Store:
    """Open the store at ``path``, choosing the backend by suffix.

    ``mode`` ``"r"`` reads (never blocked, never blocking); ``"a"`` reads and writes,
    creating the store if missing, and holds the store's writer lock until closed:
    a second writer gets :class:`~rfstore.store.lock.StoreLockedError` naming the
    holder's PID, or waits for it with ``wait=True``.
    """
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
    lock = None
    if mode == "a":
        lock = StoreLock(Path(path), wait=wait)
        lock.acquire()
    try:
        if backend_for(path) == "hdf5":
            from rfstore.store.hdf5_ import HDF5Store

            store: Store = HDF5Store(path, mode)
        else:
            from rfstore.store.zarr_ import ZarrStore

            store = ZarrStore(path, mode)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    store.lock = lock
    return store


__all__ = ["ArraySpec", "Store", "StoreError", "StoreLockedError", "backend_for", "open_store"]
