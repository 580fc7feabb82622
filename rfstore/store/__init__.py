"""The store: the only code that touches h5py or zarr.

:func:`open_store` picks the backend from the path's suffix; :mod:`rfstore.store.layout`
owns the key layout and chunk shapes of ../shared/CONTRACT.md.
"""
from __future__ import annotations

from pathlib import Path

from rfstore.store.journal import is_hot
from rfstore.store.base import ArraySpec, Store, StoreError, StoreWriteError
from rfstore.store.lock import StoreLock, StoreLockedError, default_wait

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


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_kind(path: Path, backend: str) -> None:
    """A :class:`StoreError` in one sentence when something else already lies at ``path``: a file where a Zarr
    directory should be, a file that is not HDF5, a folder that holds other files."""
    if not path.exists():
        return
    what = "an rfstore store is an HDF5 file (.h5, .hdf5) or a Zarr v3 directory (.zarr), made by 'rfstore init'"
    if backend == "hdf5":
        if path.is_dir():
            raise StoreError(f"{path} is a folder, not an HDF5 file; {what}")
        if is_hot(path):  # a writer died mid-transaction: opening rolls the file back to its last checkpoint
            return
        with open(path, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
        if head and head != HDF5_SIGNATURE:
            raise StoreError(f"{path} is not an HDF5 file (it does not start with HDF5's signature); {what}")
    elif not path.is_dir():
        raise StoreError(f"{path} is a file, not a Zarr directory; {what}")
    elif not (path / "zarr.json").exists() and any(path.iterdir()):
        raise StoreError(f"{path} is a folder without zarr.json that holds other files; {what}")


def open_store(path: str | Path, mode: str = "r", wait: bool | None = None) -> Store:
    """Open the store at ``path``, choosing the backend by suffix.

    ``mode`` ``"r"`` reads (never blocked, never blocking); ``"a"`` reads and writes,
    creating the store if missing, and holds the store's writer lock until closed:
    a second writer gets :class:`~rfstore.store.lock.StoreLockedError` naming the
    holder's PID, or waits for it with ``wait=True`` (default: this process's policy,
    :func:`~rfstore.store.lock.set_wait_policy`, which the CLI's ``--wait`` sets).
    """
    if mode not in ("r", "a"):
        raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
    backend = backend_for(path)
    check_kind(Path(path), backend)
    lock = None
    if mode == "a":
        lock = StoreLock(Path(path), wait=default_wait() if wait is None else wait)
        lock.acquire()
    try:
        if backend == "hdf5":
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


def remove_store(path: str | Path) -> None:
    """Delete the store at ``path`` with its lock and journal files (an HDF5 file or a Zarr directory)."""
    import shutil

    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    for extra in (path.with_name(path.name + ".lock"), path.with_name(path.name + "-journal")):
        extra.unlink(missing_ok=True)


def open_store_for_worker(path: str | Path) -> Store:
    """Open a Zarr store for a task of a distributed run, WITHOUT the writer lock.

    In a distributed run the coordinating process (the Dask client) holds the
    store's writer lock, creates every array and records progress; its workers
    run on other processes or hosts and write only the whole chunks their task
    owns, so they cooperate under the client's lock instead of taking it. Use
    this for nothing else: it must not create, delete or resize anything.
    """
    if backend_for(path) != "zarr":
        raise StoreError(f"{path}: only a Zarr store can be written by the workers of a distributed run")
    if not (Path(path) / "zarr.json").exists():
        raise StoreError(f"no Zarr store at {path} on this worker: the store must be on a filesystem "
                         f"that every worker shares with the client, at the same path")
    from rfstore.store.zarr_ import ZarrStore

    return ZarrStore(path, "a")


__all__ = ["ArraySpec", "Store", "StoreError", "StoreLockedError", "StoreWriteError", "backend_for", "open_store",
           "open_store_for_worker", "remove_store"]
