"""Fault injection for the test suite: hooks in the store's write layer, installed by the tests themselves.

Production rfstore carries no fault hook. This module wraps the change methods of the
store backends (:class:`~rfstore.store.hdf5_.HDF5Store` and
:class:`~rfstore.store.zarr_.ZarrStore`, at class level, so every store this process
opens for writing while the hooks are installed is affected) and replaces the HDF5
backend's undo journal (:class:`~rfstore.store.journal.JournaledFile`) by a subclass
that counts the bytes it writes. It drives rfstore into the failures it must survive,
at known points, without sleeping blindly:

``trace``
    After each change a writer makes to a store (``write``, ``create_array``,
    ``update_attrs``, ``delete``, ``flush``), append the line ``OPERATION PATH`` to a
    file (progress markers that a test waits for before ``kill -9``) and to
    :attr:`Faults.events` (for checks in this process).
``delay``
    Sleep that long after each traced change, so that a test can kill a fast stage in
    the middle of its work.
``enospc_after``
    Simulate a full disk: once this process has written that many bytes through stores
    (HDF5: bytes of the file and its journal; Zarr: bytes of array values), every later
    write raises ``OSError(errno.ENOSPC)`` as the kernel would (:class:`StoreWriteError`
    for Zarr, as the backend reports a failed write of its own).
``interrupt``
    Interrupt the process (:class:`KeyboardInterrupt`, as Ctrl-C would) just before a
    chosen change, e.g. the second ``done`` flag a stage writes, in this process.

In a test: ``with Faults(enospc_after=3000) as faults: ...`` (``faults.written`` counts the
bytes). In a child process (a real rfstore process that a test kills),
:func:`install_from_env` reads the settings from ``RFSTORE_TEST_TRACE_FILE``,
``RFSTORE_TEST_TRACE_DELAY`` and ``RFSTORE_TEST_ENOSPC_AFTER_BYTES``: only test code reads
them (``tests/support/launch.py`` is the ``rfstore`` command with them installed; the fork
server of ``tests/test_kill.py`` installs them in each child).
"""
from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfstore.store import hdf5_, journal
from rfstore.store.base import StoreWriteError
from rfstore.store.hdf5_ import HDF5Store
from rfstore.store.zarr_ import ZarrStore

ENOSPC_AFTER = "RFSTORE_TEST_ENOSPC_AFTER_BYTES"
TRACE_FILE = "RFSTORE_TEST_TRACE_FILE"
TRACE_DELAY = "RFSTORE_TEST_TRACE_DELAY"
#: the store methods that change a store, in the trace's names
CHANGES = ("write", "create_array", "update_attrs", "delete", "flush")
BACKENDS = (HDF5Store, ZarrStore)


@dataclass
class Faults:
    """One set of hooks; :meth:`install` puts it in place for the whole process until :meth:`uninstall`.

    Attributes
    ----------
    trace : Path, optional
        File that gets one line per change (see the module docstring).
    delay : float
        Seconds to sleep after each traced change.
    enospc_after : int, optional
        Bytes this process may write through stores before every write fails with ENOSPC.
    written : int
        Bytes written through stores since :meth:`install` (counted while ``enospc_after`` is set).
    interrupt : str, optional
        A regular expression of ``OPERATION PATH`` lines: the change that matches it for the
        ``interrupt_at``-th time raises :class:`KeyboardInterrupt` instead of happening.
    interrupt_at : int
        Which match is interrupted (1: the first).
    interrupted : str, optional
        The line of the change that was interrupted (None while none was).
    events : list of str
        ``OPERATION PATH`` of every change made while installed (recorded in any case).
    """

    trace: Path | None = None
    delay: float = 0.0
    enospc_after: int | None = None
    interrupt: str | None = None
    interrupt_at: int = 1
    written: int = 0
    matches: int = 0
    interrupted: str | None = None
    events: list[str] = field(default_factory=list)
    _undo: list[tuple[Any, str, Any]] = field(default_factory=list, repr=False)

    # -- the hooks ------------------------------------------------------------------------
    def spend(self, size: int, where: str | None = None) -> None:
        """Count ``size`` bytes about to be written; ENOSPC once the budget would be exceeded."""
        if self.enospc_after is None:
            return
        if self.written + size > self.enospc_after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
        self.written += size

    def _before(self, store: Any, name: str, args: tuple[Any, ...], line: str) -> None:
        """What happens before a change: the interruption asked for, then the Zarr byte budget (HDF5
        spends through its journal, :meth:`_budgeted_journal`)."""
        if self.interrupt is not None and re.fullmatch(self.interrupt, line):
            self.matches += 1
            if self.matches == self.interrupt_at:
                self.interrupted = line
                raise KeyboardInterrupt(f"interrupted before {line}")
        if isinstance(store, ZarrStore) and name != "flush":
            values = args[2] if name == "write" and len(args) > 2 else None
            try:
                self.spend(int(getattr(values, "nbytes", 0)) or 1, str(store.path))
            except OSError as err:
                raise StoreWriteError(store.path, err) from err

    def _after(self, line: str) -> None:
        """What happens after a change: the event, the trace line, the delay."""
        self.events.append(line)
        if self.trace is not None:
            with open(self.trace, "a", encoding="utf-8") as log:
                log.write(line + "\n")
            if self.delay:
                time.sleep(self.delay)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(store: Any, *args: Any, **kwargs: Any) -> Any:
            if store.mode == "r":
                return method(store, *args, **kwargs)
            line = f"{name} {args[0] if args else ''}"
            self._before(store, name, args, line)
            result = method(store, *args, **kwargs)
            self._after(line)
            return result

        call.__wrapped__ = method  # type: ignore[attr-defined]
        return call

    def _budgeted_journal(self) -> type[journal.JournaledFile]:
        """The HDF5 backend's undo journal with every write (to the file or to its journal) paid
        from :meth:`spend` first: a refused write fails as the operating system's would."""
        spend = self.spend

        class BudgetedJournaledFile(journal.JournaledFile):
            def write(self, data: bytes | memoryview) -> int:
                if self.error is None:
                    size = memoryview(data).nbytes
                    try:
                        self._save(self._pos, self._pos + size)  # the undo record first, as write does
                        spend(size, str(self.path))
                    except OSError as err:
                        self.error = err
                        raise
                return super().write(data)  # its own _save finds the pages journaled already

            def _journal_append(self, data: bytes) -> None:
                spend(len(data), str(self.journal))
                super()._journal_append(data)

        return BudgetedJournaledFile

    # -- installing -----------------------------------------------------------------------
    def install(self) -> Faults:
        """Wrap every backend's change methods (and the HDF5 journal) in this process; returns self."""
        if self._undo:
            raise RuntimeError("these faults are installed already")
        for cls in BACKENDS:
            for name in CHANGES:
                original = cls.__dict__[name]
                self._undo.append((cls, name, original))
                setattr(cls, name, self._wrap(name, original))
        self._undo.append((hdf5_, "JournaledFile", hdf5_.JournaledFile))
        hdf5_.JournaledFile = self._budgeted_journal()  # type: ignore[misc]
        return self

    def uninstall(self) -> None:
        """Put every wrapped method back."""
        while self._undo:
            owner, name, original = self._undo.pop()
            setattr(owner, name, original)

    def __enter__(self) -> Faults:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def from_env(environ: dict[str, str] | None = None) -> Faults | None:
    """The hooks that ``RFSTORE_TEST_*`` variables ask for (None when none is set)."""
    env = os.environ if environ is None else environ
    trace, budget = env.get(TRACE_FILE), env.get(ENOSPC_AFTER)
    if not (trace or budget):
        return None
    return Faults(trace=Path(trace) if trace else None, delay=float(env.get(TRACE_DELAY) or 0),
                  enospc_after=int(budget) if budget else None)


def install_from_env() -> Faults | None:
    """Install the hooks the environment asks for in this process (a child started by a test)."""
    faults = from_env()
    return faults.install() if faults is not None else None


def env(trace: Path | None = None, delay: float = 0.0, enospc_after: int | None = None) -> dict[str, str]:
    """The ``RFSTORE_TEST_*`` variables that make :func:`install_from_env` install these hooks."""
    found: dict[str, str] = {}
    if trace is not None:
        found |= {TRACE_FILE: str(trace), TRACE_DELAY: str(delay)}
    if enospc_after is not None:
        found[ENOSPC_AFTER] = str(enospc_after)
    return found
