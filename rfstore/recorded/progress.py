"""Stage bookkeeping: fingerprints, parameters, done flags (DVC-style, kept in the store).

Each stage (per layer where it works per layer) records in
``/{network}/_rfstore/{stage}[/{layer}]``:

- ``fingerprint``: sha256 of the stage name, its version, its parameters and
  the fingerprints of the stages it reads from;
- ``params``: the parameters, to name what differs when they change;
- ``state``: ``"running"`` or ``"complete"``;
- ``done``: a uint8 flag per work block (image block, unit), set only after the
  block's data is written and flushed, so a killed run redoes at most the blocks
  in flight. (Zarr omits chunks that hold only the fill value, so the presence
  of data is never taken as a sign of completion.) A stage whose blocks are made
  of parts finished at different times (``occlude``: a unit's K top images) keeps
  one flag per part (``sub_blocks`` parts per block, attr ``sub_blocks``); a block
  is done when all its parts are.

Checks run cheapest first: a complete stage with the same fingerprint returns
at once without touching its data.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from rfstore.version import __version__
from rfstore.errors import MissingInputError, StageMismatchError
from rfstore.store import ArraySpec, Store
from rfstore.store.layout import INTERNAL, progress_group


def fingerprint(stage: str, version: int, params: dict[str, Any], upstream: list[str]) -> str:
    """Hex sha256 of a stage's identity, parameters and upstream fingerprints."""
    payload = json.dumps({"stage": stage, "version": version, "params": params, "upstream": upstream},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class Plan(Enum):
    """What a stage must do, decided by :meth:`StageProgress.begin`."""

    SKIP = "skip"      # complete with the same fingerprint: nothing to do
    RESUME = "resume"  # started with the same fingerprint: do the blocks not done
    FRESH = "fresh"    # nothing recorded (or --force): do everything


@dataclass(frozen=True)
class StageRecord:
    fingerprint: str
    params: dict[str, Any]
    state: str
    generation: str
    upstream: tuple[str, ...] = ()

    @property
    def token(self) -> str:
        """Identifies these results: changes whenever the stage is recomputed from scratch."""
        return f"{self.fingerprint}:{self.generation}"


class StageProgress:
    """Bookkeeping of one stage (optionally of one layer) of one network.

    Parameters
    ----------
    store : Store
        The open store.
    network : str
        Network key.
    stage : str
        Stage name (``"activations"``, ``"topk"``, ...).
    layer : str, optional
        Layer, for stages that keep one record per layer.
    """

    def __init__(self, store: Store, network: str, stage: str, layer: str | None = None) -> None:
        self.store = store
        self.network = network
        self.stage = stage
        self.layer = layer
        self.group = progress_group(network, stage, layer)

    @property
    def label(self) -> str:
        return self.stage if self.layer is None else f"{self.stage} of layer {self.layer}"

    def record(self) -> StageRecord | None:
        """What the store says about this stage, or None if it never ran."""
        if not self.store.has(self.group):
            return None
        attrs = self.store.attrs(self.group)
        if "fingerprint" not in attrs:
            return None
        return StageRecord(attrs["fingerprint"], attrs.get("params", {}), attrs.get("state", "running"),
                           attrs.get("generation", ""), tuple(attrs.get("upstream", ())))

    def is_complete(self, expected_fingerprint: str | None = None) -> bool:
        rec = self.record()
        return rec is not None and rec.state == "complete" and (
            expected_fingerprint is None or rec.fingerprint == expected_fingerprint)

    def begin(self, params: dict[str, Any], fp: str, n_blocks: int, force: bool = False, sub_blocks: int = 1,
              upstream: Sequence[str] = ()) -> Plan:
        """Decide what to do and prepare the bookkeeping for it (``sub_blocks`` flags per block).

        Complete with the same fingerprint: skip. Started with it: resume. Recorded with the same
        parameters on other upstream results (``upstream``, the stages it reads, were recomputed):
        start afresh. Recorded with other parameters: an error, unless ``force``. Starting afresh
        forgets every stage recorded as reading this one's results.

        Raises
        ------
        StageMismatchError
            The stage ran with other parameters and ``force`` is False.
        """
        rec = self.record()
        if rec is not None and not force:
            if rec.fingerprint == fp:
                if rec.state == "complete":
                    return Plan.SKIP
                # resume only once a block is done: a stage killed before that may not
                # have created all its arrays yet, so it starts afresh
                if self._done_length() == n_blocks * sub_blocks and self.done_parts().any():
                    return Plan.RESUME
            elif rec.params != params:
                raise StageMismatchError(self._mismatch_message(rec.params, params))
        if rec is not None:
            invalidate_downstream(self.store, self.network, self.stage, self.layer)
        self.store.delete(self.group)
        self.store.require_group(self.group)
        size = n_blocks * sub_blocks
        self.store.create_array(f"{self.group}/done", ArraySpec((size,), "uint8", ("block",), (max(size, 1),), 0))
        self.store.update_attrs(self.group, {"fingerprint": fp, "params": params, "state": "running",
                                             "generation": uuid.uuid4().hex, "sub_blocks": sub_blocks,
                                             "upstream": list(upstream), "rfstore_version": __version__})
        self.store.flush()
        return Plan.FRESH

    def _mismatch_message(self, old: dict[str, Any], new: dict[str, Any]) -> str:
        changed = [f"{key}: stored {old.get(key)!r}, asked {new.get(key)!r}"
                   for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
        what = "; ".join(changed) if changed else "the results it was computed from have changed since"
        return (f"{self.label} was computed with other parameters ({what}); "
                f"rerun with --force to recompute it and everything that depends on it")

    def _done_length(self) -> int:
        path = f"{self.group}/done"
        return self.store.array_spec(path).shape[0] if self.store.is_array(path) else -1

    def done_parts(self) -> np.ndarray:
        """``(n_blocks * sub_blocks,)`` bool: which parts are done (blocks, for a stage without parts)."""
        return self.store.read(f"{self.group}/done").astype(bool)

    def done_mask(self) -> np.ndarray:
        """``(n_blocks,)`` bool: which blocks are done (all their parts)."""
        parts = self.done_parts()
        sub = int(self.store.attrs(self.group).get("sub_blocks", 1))
        return parts.reshape(-1, sub).all(axis=1) if sub > 1 else parts

    def mark_done(self, blocks: np.ndarray | list[int] | int) -> None:
        """Flag blocks (or, with sub-blocks, parts ``block * sub_blocks + part``) done; only after their data is written."""
        self.store.flush()
        index = np.atleast_1d(np.asarray(blocks, dtype=np.int64))
        done = self.store.read(f"{self.group}/done")
        done[index] = 1
        self.store.write(f"{self.group}/done", slice(None), done)
        self.store.flush()

    def complete(self) -> None:
        self.store.update_attrs(self.group, {"state": "complete"})
        self.store.flush()

    def invalidate(self) -> None:
        """Forget this stage (its outputs must then be recomputed)."""
        self.store.delete(self.group)
        self.store.flush()


def invalidate_downstream(store: Store, network: str, stage: str, layer: str | None = None) -> None:
    """Forget every stage recorded as reading ``stage``'s results (of ``layer`` only, when the stage works per
    layer), and what reads theirs, transitively: their inputs are being redone."""
    for later, later_layer in _records(store, network):
        record = StageProgress(store, network, later, later_layer).record()
        if record is None or stage not in record.upstream or (layer is not None and later_layer != layer):
            continue
        store.delete(progress_group(network, later, later_layer))
        invalidate_downstream(store, network, later, later_layer)


def _records(store: Store, network: str) -> list[tuple[str, str | None]]:
    """Every (stage, layer) with bookkeeping in ``network`` (layer None for network-wide stages)."""
    base = f"{network}/{INTERNAL}"
    if not store.has(base):
        return []
    found: list[tuple[str, str | None]] = []
    for stage in store.children(base)[0]:
        if "fingerprint" in store.attrs(f"{base}/{stage}"):
            found.append((stage, None))
        found += [(stage, layer) for layer in store.children(f"{base}/{stage}")[0]
                  if "fingerprint" in store.attrs(f"{base}/{stage}/{layer}")]
    return found


def upstream_token(store: Store, network: str, stage: str, layer: str | None = None, *, needed_by: str) -> str:
    """The token of a complete upstream stage, or a clear error saying what to run first."""
    record = StageProgress(store, network, stage, layer).record()
    if record is None or record.state != "complete":
        what = stage if layer is None else f"{stage} for layer {layer}"
        raise MissingInputError(f"{needed_by} needs the {what} results: run 'rfstore {stage} {store.path}' first")
    return record.token


def complete_token(store: Store, network: str, stage: str, layer: str | None = None) -> str | None:
    """The token of a complete stage record, or None (not run, or not finished)."""
    record = StageProgress(store, network, stage, layer).record()
    return record.token if record is not None and record.state == "complete" else None


def is_current(store: Store, network: str, stage: str, version: int, params: dict[str, Any],
               upstream: dict[str | None, str | None]) -> bool:
    """Whether ``stage`` is complete, for every layer of ``upstream`` (``layer -> upstream token``, None for a
    network-wide stage), with the fingerprint these ``params`` give on those upstream results."""
    for layer, token in upstream.items():
        if token is None:
            return False
        tracker = StageProgress(store, network, stage, layer)
        if not tracker.is_complete(fingerprint(stage, version, params, [token])):
            return False
    return True
