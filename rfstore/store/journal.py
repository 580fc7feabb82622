"""A rollback (undo) journal for one file: every change since the last commit can be undone.

HDF5 updates its file in place (B-trees, object headers, heaps, the superblock,
rewritten chunks), and a process killed in the middle of that leaves a file that
may not open again, losing finished data with it. :class:`JournaledFile` is the
file object the HDF5 backend hands to h5py (h5py's ``fileobj`` driver), so every
byte HDF5 writes passes through it. It follows SQLite's rollback journal:

* **Transaction**: the writes between two commits. At its first write the journal
  ``STORE-journal`` gets a header recording the file's committed length.
* **Undo record**: before the first overwrite of a 4 KiB page that existed at the
  last commit, the page's old bytes are appended to the journal (offset, length,
  CRC-32, bytes) and, in durable mode, fsync'd; only then does the overwrite reach
  the file. Bytes appended past the committed length need no record: rollback cuts
  them off. A page is copied at most once per transaction, so a transaction costs
  the pages it rewrites, never the whole file.
* **Commit** (:meth:`JournaledFile.commit`, after ``h5py.File.flush``, when the file
  is a complete, consistent HDF5 file): fsync the file, then truncate the journal
  to zero bytes, the single atomic step that makes the new state the committed one.
* **Rollback** (:func:`rollback`): copy every complete record back, cut the file
  to the committed length, fsync, delete the journal. It is idempotent (a crash
  during rollback is repaired by the next one), and a torn last record (the
  process died while appending it) is ignored, because its overwrite never started.

A non-empty journal is the *dirty marker*: it exists exactly while a transaction
is open or after one was abandoned by a killed process. Whoever next opens the
store with the writer lock rolls it back (:func:`rollback`), restoring the file
byte for byte to its last commit.
"""
from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

PAGE = 4096
_MAGIC = b"RFSUNDO1"
_HEADER = struct.Struct("<8sQI")  # magic, committed length, crc32(magic + length)
_RECORD = struct.Struct("<QII")  # offset, length, crc32(offset + length + data)


def journal_path(path: str | os.PathLike[str]) -> Path:
    """``STORE-journal``, next to the store (SQLite's naming)."""
    path = Path(path)
    return path.with_name(path.name + "-journal")


def is_hot(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has an uncommitted (open or abandoned) transaction."""
    try:
        return journal_path(path).stat().st_size > 0
    except FileNotFoundError:
        return False


def _header(length: int) -> bytes:
    packed = _MAGIC + struct.pack("<Q", length)
    return _HEADER.pack(_MAGIC, length, zlib.crc32(packed))


def _records(data: bytes) -> tuple[int | None, list[tuple[int, bytes]]]:
    """The committed length and the complete records of a journal's bytes (None: no valid header)."""
    if len(data) < _HEADER.size:
        return None, []
    magic, length, crc = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC or zlib.crc32(magic + struct.pack("<Q", length)) != crc:
        return None, []
    records = []
    pos = _HEADER.size
    while pos + _RECORD.size <= len(data):
        offset, size, crc = _RECORD.unpack_from(data, pos)
        body = data[pos + _RECORD.size:pos + _RECORD.size + size]
        if len(body) != size or zlib.crc32(struct.pack("<QI", offset, size) + body) != crc:
            break  # torn tail: its overwrite never started
        records.append((offset, body))
        pos += _RECORD.size + size
    return length, records


def rollback(path: str | os.PathLike[str]) -> int | None:
    """Undo an abandoned transaction of ``path``: the file returns to its last commit.

    Call only while holding the store's writer lock.

    Returns
    -------
    int or None
        The number of bytes restored, or None when there was nothing to undo.
    """
    path, journal = Path(path), journal_path(path)
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return None
    length, records = _records(data)
    if length is None:  # empty or torn header: the file was not touched yet
        journal.unlink(missing_ok=True)
        return None
    restored = 0
    if length == 0:  # the transaction created the file: it did not exist before
        path.unlink(missing_ok=True)
    elif path.exists():
        fd = os.open(path, os.O_RDWR)
        try:
            for offset, body in records:
                os.pwrite(fd, body, offset)
                restored += len(body)
            os.ftruncate(fd, length)
            os.fsync(fd)
        finally:
            os.close(fd)
    journal.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return restored


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class JournaledFile:
    """A read/write binary file object whose changes are undoable until :meth:`commit`.

    Parameters
    ----------
    path : Path
        The file (created if missing). Any abandoned journal must have been rolled
        back first (:func:`rollback`).
    durable : bool
        fsync the journal before each overwrite and the file at each commit, so that
        a power loss, not only a killed process, leaves a recoverable file.

    Notes
    -----
    After a failed write (disk full, I/O error), the error is kept in :attr:`error`
    and the object switches to *discard* mode: later writes are dropped, so closing
    the HDF5 file cannot put a half-written state on disk; :meth:`abort` then
    restores the last commit.
    """

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self.durable = durable
        self.error: OSError | None = None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        self._jfd: int | None = None
        self._pos = 0
        self._base = os.fstat(self._fd).st_size  # committed length
        self._saved: set[int] = set()  # pages with an undo record in this transaction
        self._jlen = 0  # bytes in the journal (0: no transaction open)

    # -- the file object h5py's fileobj driver uses -------------------------------
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = os.fstat(self._fd).st_size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:
        view = memoryview(buffer).cast("B")
        n = os.preadv(self._fd, [view], self._pos)
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, os.fstat(self._fd).st_size - self._pos)
        data = os.pread(self._fd, size, self._pos)
        self._pos += len(data)
        return data

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self.error is None:
            try:
                self._save(self._pos, self._pos + size)
                done = 0
                while done < size:
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as err:
                self.error = err
                raise
        self._pos += size
        return size

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                self._save(size, self._base)
                os.ftruncate(self._fd, size)
            except OSError as err:
                self.error = err
                raise
        return size

    def flush(self) -> None:
        """Nothing to do: writes go straight to the kernel; :meth:`commit` makes them durable."""

    # -- transactions ---------------------------------------------------------------
    def _journal_append(self, data: bytes) -> None:
        if self._jfd is None:
            self._jfd = os.open(self.journal, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            if self.durable:
                _fsync_directory(self.journal.parent)
        written = 0
        while written < len(data):
            written += os.pwrite(self._jfd, data[written:], self._jlen + written)
        self._jlen += len(data)

    def _begin(self) -> None:
        if self._jlen == 0:
            self._journal_append(_header(self._base))
            if self.durable:
                os.fsync(self._jfd)

    def _save(self, start: int, stop: int) -> None:
        """Journal the committed bytes in [start, stop) not yet journaled in this transaction."""
        self._begin()
        stop = min(stop, self._base)
        if start >= stop:
            return
        pages = [p for p in range(start // PAGE, (stop - 1) // PAGE + 1) if p not in self._saved]
        if not pages:
            return
        runs: list[list[int]] = []
        for page in pages:
            if runs and runs[-1][-1] == page - 1:
                runs[-1].append(page)
            else:
                runs.append([page])
        for run in runs:
            offset = run[0] * PAGE
            body = os.pread(self._fd, min((run[-1] + 1) * PAGE, self._base) - offset, offset)
            self._journal_append(_RECORD.pack(offset, len(body), zlib.crc32(struct.pack("<QI", offset, len(body)) + body))
                                 + body)
            self._saved.update(run)
        if self.durable:
            os.fsync(self._jfd)

    @property
    def dirty(self) -> bool:
        """Whether a transaction is open (something was written since the last commit)."""
        return self._jlen > 0

    def commit(self) -> None:
        """Make everything written so far the state a crash returns to."""
        if self.error is not None:
            raise OSError(self.error.errno, f"cannot commit {self.path} after a failed write: {self.error.strerror}")
        if self._jlen == 0:
            return
        if self.durable:
            os.fsync(self._fd)
        os.ftruncate(self._jfd, 0)
        if self.durable:
            os.fsync(self._jfd)
        self._jlen = 0
        self._saved.clear()
        self._base = os.fstat(self._fd).st_size

    def close(self) -> None:
        """Commit, close and delete the (then empty) journal."""
        if self.closed:
            return
        self.commit()
        self._release()
        self.journal.unlink(missing_ok=True)

    def abort(self) -> int | None:
        """Close without committing and undo the open transaction (see :func:`rollback`)."""
        if self.closed:
            return None
        self._release()
        return rollback(self.path)

    def _release(self) -> None:
        if self._jfd is not None:
            os.close(self._jfd)
            self._jfd = None
        os.close(self._fd)
        self._fd = -1

    def discard_writes(self) -> None:
        """Drop every later write (used before closing HDF5 after a failure)."""
        if self.error is None:
            self.error = OSError(errno.ECANCELED, "writes discarded")
