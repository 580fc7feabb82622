"""HDF5 backend (h5py), laid out so that h5netcdf/xarray read every group, and crash-safe.

Every dimension of a group is an HDF5 dimension scale (a 1-D coordinate array
named like the dimension), attached to the axes of the arrays that use it: this
is the netCDF-4 convention that ``xarray.open_dataset(..., engine="h5netcdf")``
reads. Attributes that HDF5 cannot hold natively (dicts, mixed lists) are stored
as JSON strings prefixed with ``json:`` and decoded on read.

Crash safety
------------
HDF5 is not crash-safe by itself: it updates B-trees, object headers, heaps and
the superblock in place, partly from its metadata cache at times of its own
choosing, and a process killed during such an update (or while flushing) can
leave a file that no longer opens, losing finished arrays with it. HDF5's own
tools do not help: SWMR writing (``libver="latest"``, ordered metadata flushes)
forbids creating datasets and changing attributes once started, which every
stage does, and ``h5clear`` only clears the "open for writing" status flag; it
is documented as not being a repair tool. Copying the file before each stage
costs its whole size (gigabytes) per run.

So a writer never lets HDF5 touch the file directly. It opens it through
:class:`~rfstore.store.journal.JournaledFile` (h5py's ``fileobj`` driver), an
undo journal in the manner of SQLite's rollback journal, kept next to the store
as ``STORE.h5-journal``:

1. Before HDF5 first overwrites a 4 KiB page that existed at the last commit, the
   page's old bytes are appended to the journal (with a CRC) and fsync'd; appends
   past the committed end need no copy. Cost: the pages a checkpoint rewrites
   (metadata, rewritten chunks), never the whole file.
2. :meth:`HDF5Store.flush`, which every stage calls after writing a block and
   again after flagging it done (:mod:`rfstore.recorded.progress`), flushes HDF5
   (the file is then complete and consistent), fsyncs it and truncates the journal
   to zero bytes: that truncation is the atomic commit.
3. A non-empty journal is the dirty marker. The next process that opens the store
   for writing (it holds the writer lock, so the killed writer is gone) rolls the
   file back to its last commit, byte for byte, before HDF5 opens it; a reader
   (``status``, :func:`rfstore.open`) does the same when no writer holds the lock.
   The stage then resumes from the done flags of that commit, so the rerun ends
   with the arrays of an uninterrupted run.

A write that fails (a full disk, an I/O error) puts the journal file in discard
mode, HDF5 is closed without writing anything more, and the file is rolled back
to its last commit: the run stops with :class:`StoreWriteError` and what was
finished stays readable and resumable. Set ``RFSTORE_FSYNC=0`` to skip the
fsyncs: a killed process is still harmless, a power cut no longer is.
Readers open the file directly (``locking=False``): while a writer is between two
commits they see its last flushed state, possibly mid-update; reopen after its
checkpoint (or use Zarr, whose chunks are replaced atomically).
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from rfstore.store.base import (ArraySpec, Selection, Store, StoreError, StoreWriteError, split_path,
                                to_json_safe)
from rfstore.store.journal import JournaledFile, is_hot, rollback
from rfstore.store.lock import StoreLock, StoreLockedError

_JSON_PREFIX = "json:"
_STR_DTYPE = h5py.string_dtype("utf-8")


def _encode_attr(value: Any) -> Any:
    value = to_json_safe(value)
    if isinstance(value, (str, bool, int, float)):
        return value
    if value is None:
        return _JSON_PREFIX + "null"
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return np.asarray(value)
    return _JSON_PREFIX + json.dumps(value)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        return json.loads(value[len(_JSON_PREFIX):]) if value.startswith(_JSON_PREFIX) else value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


_F = TypeVar("_F", bound=Callable[..., Any])


def _writes(method: _F) -> _F:
    """Report a failed write of the journaled file (disk full, I/O error) as a :class:`StoreWriteError`."""

    @functools.wraps(method)
    def wrapper(self: HDF5Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StoreWriteError:
            raise
        except Exception as err:
            failure = self._raw.error if self._raw is not None else None
            if failure is None:
                raise
            raise StoreWriteError(self.path, failure) from err

    return wrapper  # type: ignore[return-value]


def recover_abandoned(path: Path) -> int | None:
    """Roll back a transaction abandoned by a killed writer, if no writer holds the store now.

    Returns the bytes restored (None if nothing was done). A live writer's open
    transaction is left alone; so is a store this process may not lock (read-only
    location): then the file is read as it is.
    """
    if not is_hot(path):
        return None
    lock = StoreLock(path)
    try:
        lock.acquire()
    except (StoreLockedError, OSError):
        return None
    try:
        return rollback(path)
    finally:
        lock.release()


class HDF5Store(Store):
    """A store in one HDF5 file (``.h5`` / ``.hdf5``); writers go through an undo journal (module docstring)."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        self.path = Path(path)
        self.mode = mode
        self._raw: JournaledFile | None = None
        #: bytes restored from an abandoned transaction when this store was opened (None: none)
        self.recovered: int | None = None
        if mode == "r":
            self.recovered = recover_abandoned(self.path)
            if not self.path.exists():
                raise StoreError(f"no store at {self.path}")
        try:
            self._file = self._open(mode)
        except OSError as err:
            raise StoreError(f"cannot open {self.path} as an HDF5 store: {err}") from err

    def _open(self, mode: str) -> h5py.File:
        if mode != "r":
            # the caller holds the writer lock: a journal left here belongs to a killed writer
            self.recovered = rollback(self.path)
            existed = self.path.exists() and self.path.stat().st_size > 0
            self._raw = JournaledFile(self.path, durable=os.environ.get("RFSTORE_FSYNC", "1") != "0")
            try:
                return h5py.File(self._raw, "r+" if existed else "w")
            except BaseException:
                self._raw.abort()
                if not existed:
                    self.path.unlink(missing_ok=True)
                raise
        # readers skip HDF5's own file locking, so that status/report/xarray are never
        # blocked by a stage writing the file (rfstore's lock keeps writers to one)...
        try:
            return h5py.File(self.path, "r", locking=False)
        except OSError as err:
            # ...unless this process already holds the file open with locking (HDF5
            # refuses mixed flags within one process): then open it the same way
            if "locking flag" not in str(err):
                raise
            return h5py.File(self.path, "r")

    # -- groups and attributes -------------------------------------------------
    def _node(self, path: str) -> h5py.Group | h5py.Dataset:
        path = path.strip("/")
        return self._file if not path else self._file[path]

    @_writes
    def require_group(self, group: str) -> None:
        if group.strip("/"):
            self._file.require_group(group.strip("/"))

    def has(self, path: str) -> bool:
        path = path.strip("/")
        return not path or path in self._file

    def is_array(self, path: str) -> bool:
        return self.has(path) and isinstance(self._node(path), h5py.Dataset)

    def children(self, group: str) -> tuple[list[str], list[str]]:
        node = self._node(group)
        groups = [k for k, v in node.items() if isinstance(v, h5py.Group)]
        arrays = [k for k, v in node.items() if isinstance(v, h5py.Dataset)]
        return sorted(groups), sorted(arrays)

    def attrs(self, path: str) -> dict[str, Any]:
        node = self._node(path)
        skip = {"CLASS", "NAME", "DIMENSION_LIST", "REFERENCE_LIST", "_Netcdf4Dimid", "_FillValue", "rfstore_dims", "rfstore_fill"}
        return {k: _decode_attr(v) for k, v in node.attrs.items() if k not in skip}

    @_writes
    def update_attrs(self, path: str, values: dict[str, Any]) -> None:
        node = self._node(path)
        for key, value in values.items():
            node.attrs[key] = _encode_attr(value)

    @_writes
    def delete(self, path: str) -> None:
        path = path.strip("/")
        if path and path in self._file:
            del self._file[path]

    # -- arrays ----------------------------------------------------------------
    @_writes
    def create_array(self, path: str, spec: ArraySpec, data: np.ndarray | None = None) -> None:
        parent, name = split_path(path)
        self.require_group(parent)
        self.delete(path)
        group = self._node(parent)
        is_str = spec.dtype == "str"
        dtype = _STR_DTYPE if is_str else np.dtype(spec.dtype)
        fill = "" if is_str else np.asarray(spec.fill, dtype=dtype)
        chunks = tuple(max(1, min(c, s)) for c, s in zip(spec.chunks, spec.shape)) if all(spec.shape) else None
        dataset = group.create_dataset(
            name,
            shape=spec.shape,
            dtype=dtype,
            chunks=chunks,
            fillvalue=None if is_str else fill,
            compression="gzip" if chunks else None,
            compression_opts=1 if chunks else None,
            shuffle=bool(chunks) and not is_str,
            data=None if data is None else (np.asarray(data, dtype=object) if is_str else data),
        )
        dataset.attrs["rfstore_fill"] = _encode_attr(spec.fill if not (isinstance(spec.fill, float) and np.isnan(spec.fill)) else "NaN")
        dataset.attrs["rfstore_dims"] = _encode_attr(list(spec.dims))
        if spec.dims == (name,):
            dataset.make_scale(name)
            self._reattach(group, name)
            return
        for axis, (dim, length) in enumerate(zip(spec.dims, spec.shape)):
            scale = group.get(dim)
            if scale is None:
                scale = group.create_dataset(dim, data=np.arange(length, dtype=np.int64))
                scale.make_scale(dim)
            elif scale.shape != (length,):
                raise StoreError(f"dimension {dim!r} of {path} has length {length}, but {parent}/{dim} has {scale.shape[0]}")
            dataset.dims[axis].attach_scale(scale)

    def _reattach(self, group: h5py.Group, dim: str) -> None:
        """Re-attach a re-created dimension scale to the arrays that use ``dim``."""
        scale = group[dim]
        for name, node in group.items():
            if name == dim or not isinstance(node, h5py.Dataset):
                continue
            dims = node.attrs.get("rfstore_dims")
            if dims is not None:
                for axis, d in enumerate(_decode_attr(dims)):
                    if d == dim:
                        node.dims[axis].attach_scale(scale)

    def array_spec(self, path: str) -> ArraySpec:
        node = self._node(path)
        if not isinstance(node, h5py.Dataset):
            raise StoreError(f"{path} is not an array")
        is_str = h5py.check_string_dtype(node.dtype) is not None
        dims = tuple(_decode_attr(node.attrs["rfstore_dims"]))
        fill = _decode_attr(node.attrs.get("rfstore_fill", 0))
        return ArraySpec(
            shape=tuple(node.shape),
            dtype="str" if is_str else node.dtype.name,
            dims=dims,
            chunks=tuple(node.chunks or node.shape),
            fill=float("nan") if fill == "NaN" else fill,
        )

    def read(self, path: str, selection: Selection = slice(None)) -> np.ndarray:
        node = self._node(path)
        if h5py.check_string_dtype(node.dtype) is not None:
            return np.asarray(node.asstr()[selection], dtype=object)
        return np.asarray(node[selection])

    @_writes
    def write(self, path: str, selection: Selection, values: np.ndarray) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.path} is open read-only")
        node = self._node(path)
        if h5py.check_string_dtype(node.dtype) is not None:
            values = np.asarray(values, dtype=object)
        node[selection] = values

    def flush(self) -> None:
        """Checkpoint: flush HDF5, then commit the journal (everything so far survives a kill)."""
        if self.mode != "r" and self._file.id.valid:
            self._flush()

    @_writes
    def _flush(self) -> None:
        self._file.flush()
        assert self._raw is not None
        self._raw.commit()

    def close(self) -> None:
        """Commit and close; after a failed write, roll back to the last commit instead."""
        try:
            if self._raw is None:
                if self._file.id.valid:
                    self._file.close()
                return
            failed = self._raw.error is not None
            if failed:
                self._raw.discard_writes()  # HDF5 closes without touching the file again
            try:
                if self._file.id.valid:
                    self._file.close()
            except Exception:
                self._raw.discard_writes()
                self._raw.abort()
                if not failed:
                    raise
                return
            if self._raw.error is not None:
                self._raw.abort()
            else:
                self._raw.close()
        finally:
            self.release_lock()
