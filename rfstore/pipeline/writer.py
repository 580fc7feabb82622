"""Store writes on a background thread, so that a stage computes the next piece while the last one is written."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Runs writes on one background thread, one at a time, in order.

    ``submit`` first waits for the previous write (so at most two pieces are in memory
    and a piece is flagged done only after every earlier one), and any error of a write
    (a full disk, an interrupt) is raised in the caller's thread by the next ``submit``
    or by ``close``.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rfstore-write")
        self._pending: Future | None = None

    def submit(self, write: Callable[..., None], *args: Any) -> None:
        self._wait()
        self._pending = self._executor.submit(write, *args)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last write and raise its error."""
        try:
            self._wait()
        finally:
            self._executor.shutdown(wait=True)

    def abandon(self) -> None:
        """Let the write in flight finish (a piece is never left half written), ignoring its error:
        the caller is already raising one."""
        if self._pending is not None:
            futures_wait([self._pending])
        self._executor.shutdown(wait=True)
