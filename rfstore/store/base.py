"""The abstract store contract shared by the HDF5 and Zarr backends.

A store is a tree of groups (``"alexnet"``, ``"alexnet/features.4"``) holding
attributes (JSON values) and named n-dimensional arrays whose axes carry
dimension names, so that every group opens as an :class:`xarray.Dataset`.
Paths are POSIX-like, relative to the root, without a leading slash.

Backends implement the small set of abstract methods below; everything the
pipeline needs is expressed in those terms (see :mod:`rfstore.store.layout`).
"""
from __future__ import annotations

import errno
import functools
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np

from rfstore.errors import StoreError

Selection = tuple[slice | int | np.ndarray, ...] | slice | int




NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: operating-system failures of a write that say nothing about the store's content
WRITE_FAILURE_ERRNOS = (*NO_SPACE_ERRNOS, errno.EIO, errno.EROFS, errno.EFBIG)


def write_failure_message(path: str | Path, err: OSError) -> str:
    """One sentence for a write that failed at the operating system (full disk, I/O error).

    ``path`` may be a file inside the store (a Zarr chunk): the store itself is named.
    """
    path = Path(path)
    path = next((p for p in (path, *path.parents) if p.suffix.lower() in (".zarr", ".h5", ".hdf5")), path)
    if err.errno in NO_SPACE_ERRNOS:
        return (f"no space left on device while writing {path}; finished work is kept: "
                f"free some space and rerun the same command to resume")
    return (f"cannot write {path} ({err.strerror or err}); finished work is kept: "
            f"rerun the same command to resume once that is fixed")


class StoreWriteError(StoreError):
    """The operating system refused a write to the store (``errno`` says why, e.g. ENOSPC).

    Raised after the store was brought back to its last checkpoint, so that what
    was finished stays readable and a rerun resumes.
    """

    def __init__(self, path: str | Path, cause: OSError) -> None:
        super().__init__(write_failure_message(path, cause))
        self.errno = cause.errno
        self.path = Path(path)


@dataclass(frozen=True)
class ArraySpec:
    """Shape, type and on-disk layout of one array.

    Parameters
    ----------
    shape : tuple of int
        Array shape.
    dtype : str
        NumPy dtype string (``"float32"``, ``"int64"``, ``"uint8"``, ``"float16"``)
        or ``"str"`` for variable-length UTF-8 strings.
    dims : tuple of str
        One dimension name per axis (xarray's dimension names).
    chunks : tuple of int
        Chunk shape; each stage writes whole chunks.
    fill : float, int or str
        Value of elements never written (NaN for floats, -1 for indices).
    """

    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    chunks: tuple[int, ...]
    fill: float | int | str

    def __post_init__(self) -> None:
        if not (len(self.shape) == len(self.dims) == len(self.chunks)):
            raise ValueError(f"shape {self.shape}, dims {self.dims} and chunks {self.chunks} differ in rank")


def to_json_safe(value: Any) -> Any:
    """Convert NumPy scalars/arrays and tuples into plain JSON values."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} as an attribute")


def _reporting_write_failures(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            if err.errno not in WRITE_FAILURE_ERRNOS:
                raise
            raise StoreWriteError(self.path, err) from err

    return wrapper


class Store(ABC):
    """One rfstore store (an HDF5 file or a Zarr v3 directory).

    Use as a context manager; ``mode`` is ``"r"`` (read only) or ``"a"``
    (read/write, created if missing). Every backend's change methods report an
    operating-system failure (full disk, I/O error) as :class:`StoreWriteError`,
    one sentence naming the store.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("require_group", "update_attrs", "delete", "create_array", "write", "flush"):
            if name in cls.__dict__:
                setattr(cls, name, _reporting_write_failures(cls.__dict__[name]))

    path: Path
    mode: str
    lock: Any = None  # the writer lock held while open for writing (set by open_store)

    # -- groups and attributes -------------------------------------------------
    @abstractmethod
    def require_group(self, group: str) -> None:
        """Create ``group`` (and its parents) if missing."""

    @abstractmethod
    def has(self, path: str) -> bool:
        """Whether a group or an array exists at ``path``."""

    @abstractmethod
    def is_array(self, path: str) -> bool:
        """Whether ``path`` is an array (False for groups and missing paths)."""

    @abstractmethod
    def children(self, group: str) -> tuple[list[str], list[str]]:
        """Names of the sub-groups and of the arrays directly in ``group``."""

    @abstractmethod
    def attrs(self, path: str) -> dict[str, Any]:
        """The attributes of a group or array, as plain JSON values."""

    @abstractmethod
    def update_attrs(self, path: str, values: dict[str, Any]) -> None:
        """Set (overwrite) some attributes of a group or array."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove a group or array and everything under it; no error if missing."""

    # -- arrays ----------------------------------------------------------------
    @abstractmethod
    def create_array(self, path: str, spec: ArraySpec, data: np.ndarray | None = None) -> None:
        """Create (replacing any existing) array at ``path``, optionally with its full data."""

    @abstractmethod
    def array_spec(self, path: str) -> ArraySpec:
        """The :class:`ArraySpec` of an existing array."""

    @abstractmethod
    def read(self, path: str, selection: Selection = slice(None)) -> np.ndarray:
        """Read ``array[selection]`` (basic slicing; strings come back as ``object`` arrays of str)."""

    @abstractmethod
    def write(self, path: str, selection: Selection, values: np.ndarray) -> None:
        """Write ``array[selection] = values``."""

    @abstractmethod
    def flush(self) -> None:
        """Make everything written so far durable on disk."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the store."""

    # -- conveniences built on the contract -------------------------------------
    def require_array(self, path: str, spec: ArraySpec) -> bool:
        """Create ``path`` unless an array with the same spec exists; True if created."""
        if self.is_array(path):
            existing = self.array_spec(path)
            if (existing.shape, existing.dtype, existing.dims) == (spec.shape, spec.dtype, spec.dims):
                return False
        self.create_array(path, spec)
        return True

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def release_lock(self) -> None:
        """Give up the writer lock (backends call this last in :meth:`close`)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, mode={self.mode!r})"


def split_path(path: str) -> tuple[str, str]:
    """Split ``"a/b/c"`` into ``("a/b", "c")``."""
    path = path.strip("/")
    if "/" not in path:
        return "", path
    parent, name = path.rsplit("/", 1)
    return parent, name
