"""HDF5 backend (h5py), laid out so that h5netcdf/xarray read every group.

Every dimension of a group is an HDF5 dimension scale (a 1-D coordinate array
named like the dimension), attached to the axes of the arrays that use it: this
is the netCDF-4 convention that ``xarray.open_dataset(..., engine="h5netcdf")``
reads. Attributes that HDF5 cannot hold natively (dicts, mixed lists) are stored
as JSON strings prefixed with ``json:`` and decoded on read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rfstore.store.base import ArraySpec, Selection, Store, StoreError, split_path, to_json_safe

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


class HDF5Store(Store):
    """A store in one HDF5 file (``.h5`` / ``.hdf5``)."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        self.path = Path(path)
        self.mode = mode
        if mode == "r" and not self.path.exists():
            raise StoreError(f"no store at {self.path}")
        try:
            self._file = self._open(mode)
        except OSError as err:
            raise StoreError(f"cannot open {self.path} as an HDF5 store: {err}") from err

    def _open(self, mode: str) -> h5py.File:
        if mode != "r":
            return h5py.File(self.path, "a")
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

    def update_attrs(self, path: str, values: dict[str, Any]) -> None:
        node = self._node(path)
        for key, value in values.items():
            node.attrs[key] = _encode_attr(value)

    def delete(self, path: str) -> None:
        path = path.strip("/")
        if path and path in self._file:
            del self._file[path]

    # -- arrays ----------------------------------------------------------------
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

    def write(self, path: str, selection: Selection, values: np.ndarray) -> None:
        if self.mode == "r":
            raise StoreError(f"{self.path} is open read-only")
        node = self._node(path)
        if h5py.check_string_dtype(node.dtype) is not None:
            values = np.asarray(values, dtype=object)
        node[selection] = values

    def flush(self) -> None:
        if self._file.id.valid and self.mode != "r":
            self._file.flush()

    def close(self) -> None:
        try:
            if self._file.id.valid:
                self.flush()
                self._file.close()
        finally:
            self.release_lock()
