"""The HDF5 backend's undo journal: a kill at any write leaves the store at its last checkpoint.

A process killed with ``kill -9`` leaves exactly the bytes its ``write`` calls had
put in the file and the journal at that instant. The first test records those
bytes before every write (and half-way through every write, a torn write) of a
realistic sequence of store changes, then recovers each snapshot as the next
``rfstore`` process would and checks that the store opens and equals, array for
array and attribute for attribute, its state at the last checkpoint.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rfstore.store import ArraySpec, Store, StoreWriteError, open_store
from rfstore.store import journal as journal_module
from rfstore.store.journal import JournaledFile, is_hot, journal_path, rollback
from support.faults import Faults

NAN = float("nan")


def contents(store: Store) -> dict[str, Any]:
    """Every array (as bytes and dtype) and every attribute of a store, keyed by path."""
    found: dict[str, Any] = {}

    def walk(group: str) -> None:
        found[f"{group}@attrs"] = store.attrs(group)
        groups, arrays = store.children(group)
        for name in arrays:
            path = f"{group}/{name}".strip("/")
            values = store.read(path)
            found[path] = (values.dtype.str, values.shape, values.tolist() if values.dtype == object else values.tobytes())
            found[f"{path}@attrs"] = store.attrs(path)
        for name in groups:
            walk(f"{group}/{name}".strip("/"))

    walk("")
    return found


def workload(store: Store, rng: np.random.Generator) -> Iterator[None]:
    """Store changes like the stages make them, yielding after each checkpoint (flush)."""
    store.update_attrs("", {"schema_version": 1, "created": "now"})
    store.create_array("net/image_path", ArraySpec((20,), "str", ("image",), (20,), ""),
                       data=np.array([f"c/{i}.png" for i in range(20)], dtype=object))
    store.create_array("net/L/act_max", ArraySpec((20, 6), "float32", ("image", "unit"), (4, 6), NAN))
    store.create_array("net/_rfstore/activations/done", ArraySpec((3,), "uint8", ("block",), (3,), 0))
    store.update_attrs("net/_rfstore/activations", {"fingerprint": "f" * 64, "state": "running"})
    store.flush()
    yield
    for block in range(3):
        store.write("net/L/act_max", slice(4 * block, 4 * block + 4), rng.random((4, 6), dtype=np.float32))
        store.flush()
        yield
        done = store.read("net/_rfstore/activations/done")
        done[block] = 1
        store.write("net/_rfstore/activations/done", slice(None), done)
        store.flush()
        yield
    store.update_attrs("net/_rfstore/activations", {"state": "complete", "params": {"maps": []}})
    store.create_array("net/L/topk_image", ArraySpec((6, 3), "int64", ("unit", "rank"), (6, 3), -1),
                       data=rng.integers(0, 20, (6, 3)))
    store.delete("net/L/act_max")
    store.create_array("net/L/act_max", ArraySpec((20, 6), "float32", ("image", "unit"), (4, 6), NAN),
                       data=rng.random((20, 6), dtype=np.float32))
    store.flush()
    yield


def test_kill_at_every_write_recovers_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "live.h5"
    journal = journal_path(path)
    checkpoints: list[dict[str, Any]] = []
    snapshots: list[tuple[int, bytes | None, bytes | None]] = []

    def snapshot() -> None:
        snapshots.append((len(checkpoints), path.read_bytes() if path.exists() else None,
                          journal.read_bytes() if journal.exists() else None))

    real_pwrite, real_ftruncate = os.pwrite, os.ftruncate

    def pwrite(fd: int, data: Any, offset: int) -> int:
        snapshot()
        view = memoryview(data)
        if len(view) > 1:  # killed half-way through this write
            real_pwrite(fd, view[: len(view) // 2], offset)
            snapshot()
        return real_pwrite(fd, data, offset)

    def ftruncate(fd: int, length: int) -> None:
        snapshot()
        real_ftruncate(fd, length)

    monkeypatch.setattr(journal_module.os, "pwrite", pwrite)
    monkeypatch.setattr(journal_module.os, "ftruncate", ftruncate)
    monkeypatch.setenv("RFSTORE_FSYNC", "0")
    rng = np.random.default_rng(0)
    with open_store(path, "a") as store:
        for _ in workload(store, rng):
            checkpoints.append(contents(store))
    monkeypatch.undo()
    with open_store(path, "r") as store:
        assert contents(store) == checkpoints[-1]
    assert not journal.exists()

    assert len(snapshots) > 100
    hot = 0
    for n, (committed, main, undo) in enumerate(snapshots):
        crashed = tmp_path / f"crash{n}.h5"
        if main is not None:
            crashed.write_bytes(main)
        if undo is not None:
            journal_path(crashed).write_bytes(undo)
            hot += bool(undo)
        if committed == 0:  # killed while creating the store: no store (or an empty file) is left
            rollback(crashed)
            assert not crashed.exists() or crashed.stat().st_size == 0, f"snapshot {n}"
            continue
        with open_store(crashed, "r") as store:  # recovers like any rfstore process would
            assert contents(store) == checkpoints[committed - 1], f"snapshot {n} (after checkpoint {committed})"
        assert not is_hot(crashed)
        crashed.unlink()
    assert hot > 50  # most kills hit an open transaction


def test_writer_rolls_back_and_resumes_after_a_kill(tmp_path: Path) -> None:
    """A writer that opens a store with an abandoned journal starts from the last checkpoint."""
    path = tmp_path / "s.h5"
    spec = ArraySpec((8,), "float32", ("unit",), (8,), NAN)
    with open_store(path, "a") as store:
        store.create_array("a", spec)
        store.write("a", slice(0, 4), np.arange(4, dtype=np.float32))
    committed = path.read_bytes()
    raw = JournaledFile(path, durable=False)  # a writer that dies mid-transaction
    raw.seek(0)
    raw.write(b"\xff" * 100)  # superblock overwritten: the file no longer opens as HDF5
    raw.seek(len(committed) + 50)
    raw.write(b"tail")
    assert is_hot(path) and path.read_bytes() != committed
    os.close(raw._fd)  # killed: nothing more happens
    with open_store(path, "a") as store:
        assert store.recovered is not None and store.recovered >= 100
        np.testing.assert_array_equal(store.read("a")[:4], np.arange(4))
        store.write("a", slice(4, 8), np.arange(4, 8, dtype=np.float32))
    with open_store(path, "r") as store:
        np.testing.assert_array_equal(store.read("a"), np.arange(8))
    assert not journal_path(path).exists()


def test_failed_write_rolls_back_to_the_last_checkpoint(tmp_path: Path) -> None:
    """A full disk in the middle of a write: clear error, the file keeps its last checkpoint."""
    path = tmp_path / "s.h5"
    spec = ArraySpec((64, 64), "float32", ("image", "unit"), (8, 64), NAN)
    values = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    with open_store(path, "a") as store:
        store.create_array("a", spec)
        store.write("a", slice(0, 8), values[:8])
    size = path.stat().st_size
    with Faults(enospc_after=3000), pytest.raises(
            StoreWriteError, match="no space left on device while writing .*s.h5; finished work is kept"):
        with open_store(path, "a") as store:
            for block in range(1, 8):
                store.write("a", slice(8 * block, 8 * block + 8), values[8 * block:8 * block + 8])
                store.flush()
    assert not journal_path(path).exists()
    with open_store(path, "r") as store:
        stored = store.read("a")
    written = int((~np.isnan(stored[:, 0])).sum()) // 8
    assert 1 <= written < 8 and path.stat().st_size >= size
    np.testing.assert_array_equal(stored[: 8 * written], values[: 8 * written])
    assert np.isnan(stored[8 * written:]).all()
