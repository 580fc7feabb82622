"""Comparing whole stores: every array bit for bit and every attribute, but what differs between two runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rfstore.store import open_store

#: attributes that legitimately differ between two runs: timestamps and per-run tokens (a stage's
#: fingerprint includes its upstream's generation token; netdissect's results name their tally's token)
VOLATILE_ATTRS = {"created", "generation", "fingerprint", "tally_token"}


def store_contents(path: Path) -> dict[str, Any]:
    """Every array (dtype, shape, bytes) and attribute of a store, without the volatile attributes."""
    found: dict[str, Any] = {}
    with open_store(path, "r") as store:
        def walk(group: str) -> None:
            found[f"{group}/@attrs"] = {k: v for k, v in store.attrs(group).items() if k not in VOLATILE_ATTRS}
            groups, arrays = store.children(group)
            for name in arrays:
                full = f"{group}/{name}".strip("/")
                values = store.read(full)
                data = values.tolist() if values.dtype == object else values.tobytes()
                found[full] = (values.dtype.str, values.shape, data)
                found[f"{full}/@attrs"] = store.attrs(full)
            for name in groups:
                walk(f"{group}/{name}".strip("/"))

        walk("")
    return found


def assert_same_store(reference: Path, other: Path) -> None:
    """``other`` holds what ``reference`` holds (see :func:`store_contents`)."""
    expected, actual = store_contents(reference), store_contents(other)
    assert sorted(actual) == sorted(expected), set(actual) ^ set(expected)
    differ = [key for key in expected if actual[key] != expected[key]]
    assert not differ, f"{other} differs from {reference} in {differ}"
