"""Test-only hooks in the store's write layer, switched on by environment variables.

They let the test suite drive real ``rfstore`` processes into the failures that
rfstore must survive, at known points, without sleeping blindly. None is set in
normal use, and then nothing here runs (:func:`install` returns at once).

``RFSTORE_TEST_ENOSPC_AFTER_BYTES=N``
    Simulate a full disk: once this process has written N bytes through the store
    (HDF5: bytes of the file and its journal; Zarr: bytes of array values), every
    later write raises ``OSError(errno.ENOSPC)``, as the kernel would.
``RFSTORE_TEST_TRACE_FILE=PATH``
    Append one line ``OPERATION ARRAY-OR-GROUP`` to PATH after each change the
    process makes to a store (``write``, ``create_array``, ``update_attrs``,
    ``delete``, ``flush``): progress markers that a test waits for before ``kill -9``.
``RFSTORE_TEST_TRACE_DELAY=SECONDS``
    Sleep that long after each traced change, so that a test can kill a fast stage
    in the middle of its work.
"""
from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

ENOSPC_AFTER = "RFSTORE_TEST_ENOSPC_AFTER_BYTES"
TRACE_FILE = "RFSTORE_TEST_TRACE_FILE"
TRACE_DELAY = "RFSTORE_TEST_TRACE_DELAY"

_written = [0]  # bytes written by this process while a budget is set


def _spend(size: int, where: str | None = None) -> None:
    budget = int(os.environ[ENOSPC_AFTER])
    if _written[0] + size > budget:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
    _written[0] += size


def raw_write_hook() -> Callable[[int], None] | None:
    """The byte-level hook for :class:`~rfstore.store.journal.JournaledFile` (None when unset)."""
    return _spend if os.environ.get(ENOSPC_AFTER) else None


def install(store: Any) -> None:
    """Wrap the change methods of one open store with the hooks that are set."""
    trace, delay = os.environ.get(TRACE_FILE), float(os.environ.get(TRACE_DELAY) or 0)
    budget = bool(os.environ.get(ENOSPC_AFTER)) and type(store).__name__ == "ZarrStore"  # HDF5: raw_write_hook
    if not (trace or budget) or store.mode == "r":
        return
    for name in ("write", "create_array", "update_attrs", "delete", "flush"):
        setattr(store, name, _wrapped(getattr(store, name), name, str(store.path), trace, delay, budget))


def _wrapped(method: Callable[..., Any], name: str, where: str, trace: str | None, delay: float,
             budget: bool) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if budget and name != "flush":
            values = args[2] if name == "write" and len(args) > 2 else None
            try:
                _spend(int(getattr(values, "nbytes", 0)) or 1, where)
            except OSError as err:  # as the store reports a failed write of its own
                from rfstore.store.base import StoreWriteError

                raise StoreWriteError(where, err) from err
        result = method(*args, **kwargs)
        if trace:
            with open(trace, "a", encoding="utf-8") as log:
                log.write(f"{name} {args[0] if args else ''}\n")
            if delay:
                time.sleep(delay)
        return result

    return call
