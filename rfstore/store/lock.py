"""One writer per store: an advisory lock file next to the store (``STORE.lock``).

The lock is an ``fcntl.flock`` on that file, which the kernel releases when the
holding process exits in any way (kill -9 included), so a stale lock from a dead
process is simply taken over. The file records the holder's PID and host, for the
error message. Readers never take the lock.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from rfstore.errors import StoreError


class StoreLockedError(StoreError):
    """Another process is writing the store."""


#: what :func:`~rfstore.store.open_store` does when its ``wait`` is not given (the CLI's ``--wait``)
_policy: dict[str, object] = {"wait": False, "notify": None}


def set_wait_policy(wait: bool, notify: Callable[[str], None] | None = None) -> None:
    """Make this process's later writers wait for the lock (``wait=True``) or fail at once.

    ``notify`` is called once with a sentence when a writer starts waiting.
    """
    _policy["wait"], _policy["notify"] = bool(wait), notify


def default_wait() -> bool:
    return bool(_policy["wait"])


def lock_path_for(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".lock")


class StoreLock:
    """Exclusive writer lock of one store.

    Parameters
    ----------
    store_path : Path
        The store (``.zarr`` directory or ``.h5`` file).
    wait : bool
        Wait for the holder to finish instead of failing at once.
    poll_seconds : float
        How often to retry while waiting.
    """

    def __init__(self, store_path: Path, wait: bool = False, poll_seconds: float = 0.5) -> None:
        self.path = lock_path_for(Path(store_path))
        self.store_path = Path(store_path)
        self.wait = wait
        self.poll_seconds = poll_seconds
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not self.wait:
                    holder = self.holder()
                    handle.close()
                    raise StoreLockedError(
                        f"store {self.store_path} is in use by {holder}; wait for it to finish "
                        f"(or pass --wait to queue behind it)") from None
                notify = _policy["notify"]
                if not told and callable(notify):
                    notify(f"store {self.store_path} is in use by {self.holder()}; waiting for it to finish")
                    told = True
                time.sleep(self.poll_seconds)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {socket.gethostname()}\n")
        handle.flush()
        self._file = handle

    def holder(self) -> str:
        """``process PID on HOST`` of the current holder, as it recorded itself."""
        try:
            pid, _, host = self.path.read_text(encoding="utf-8").strip().partition(" ")
        except OSError:
            return "another process"
        return f"process {pid} on {host}" if pid else "another process"

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
