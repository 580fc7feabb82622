"""The stage protocol: what every stage declares, and the order that follows from it.

A stage module ends with ``STAGE = Stage(...)``: its name, the stages whose results it
reads (``upstream``), its config dataclass (whose field defaults are the only place its
defaults are written), ``changed`` (the cheapest check: would running it compute anything?),
``run`` and ``summary`` (what it did, in a few lines). :func:`order` derives the pipeline's
order from the upstream declarations; nothing else lists the stages in order.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfstore.errors import UsageError
from rfstore.recorded.network import NetworkContext

__all__ = ["Stage", "Job", "Progress", "Ticker", "order", "counted", "resolve_config", "unit_mask"]

Ticker = Callable[[int], None]
"""Called with the amount of work just finished."""
Progress = Callable[[str, int, str], Ticker]
"""``progress(description, total, unit)`` starts a progress display and returns its ticker."""


@dataclass
class Job:
    """One run of one stage: what its ``run`` receives.

    Attributes
    ----------
    ctx : NetworkContext
        The store's network (open for writing).
    config : Any
        The stage's config, resolved (defaults, then what the store recorded, then what was asked).
    force : bool
        Recompute, invalidating what depends on the result.
    progress : Progress or None
    client : Any
        A ``distributed.Client`` for stages with Dask tasks, or None.
    """

    ctx: NetworkContext
    config: Any
    force: bool = False
    progress: Progress | None = None
    client: Any = None

    def ticker(self, description: str, total: int, unit: str) -> Ticker | None:
        return None if self.progress is None else self.progress(description, total, unit)


@dataclass(frozen=True)
class Stage:
    """A stage of the pipeline.

    Attributes
    ----------
    name : str
        Its command and record name (``occlude``).
    upstream : tuple of str
        Stages whose results it reads.
    config : type
        Its config dataclass (defaults declared there, once).
    run : callable
        ``run(job) -> result``.
    summary : callable
        ``summary(result, ctx) -> lines`` saying what was done.
    changed : callable
        ``changed(ctx, config) -> bool``: whether running would compute anything (False once
        the stage is complete with this config on its current inputs).
    skip : callable, optional
        ``skip(ctx) -> reason or None``: a stage that does not apply to this store (no concept
        masks) is left out of a whole run with the reason, instead of failing.
    distributed : bool
        Whether its work can run as Dask tasks.
    recorded : callable, optional
        ``recorded(params) -> config values``: the parameters the store records for the stage as
        values of its config's fields (default: the params whose names are fields).
    record : str, optional
        The bookkeeping record that holds its parameters (default: its name).
    """

    name: str
    upstream: tuple[str, ...]
    config: type
    run: Callable[[Job], Any]
    summary: Callable[[Any, NetworkContext], list[str]]
    changed: Callable[[NetworkContext, Any], bool]
    skip: Callable[[NetworkContext], str | None] | None = None
    distributed: bool = False
    recorded: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    record: str | None = None

    def fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.config)}


def order(stages: Iterable[Stage]) -> list[Stage]:
    """Stages in an order where each comes after its upstream stages (ties keep the given order)."""
    pending = list(stages)
    known = {s.name for s in pending}
    placed: list[Stage] = []
    done: set[str] = set()
    while pending:
        ready = next((s for s in pending if all(u in done or u not in known for u in s.upstream)), None)
        if ready is None:
            raise RuntimeError(f"the stages' upstream declarations form a cycle: {[s.name for s in pending]}")
        pending.remove(ready)
        placed.append(ready)
        done.add(ready.name)
    return placed


def resolve_config(stage: Stage, recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> Any:
    """The config to run ``stage`` with: its defaults, then ``recorded`` (the parameters the store holds
    for it), then ``asked`` (values given explicitly; None means not given)."""
    fields = {f.name: f for f in dataclasses.fields(stage.config)}
    unknown = sorted(set(k for k, v in asked.items() if v is not None) - set(fields))
    if unknown:
        raise UsageError(f"{stage.name} takes no option {', '.join(unknown)}")
    if stage.recorded is not None:
        recorded = stage.recorded(recorded)
    values = {k: _like(fields[k], v) for k, v in recorded.items() if k in fields and v is not None}
    values.update({k: v for k, v in asked.items() if v is not None})
    return stage.config(**values)


def _like(spec: dataclasses.Field, value: Any) -> Any:
    """A recorded (JSON) value in the field's type: lists become tuples for tuple fields."""
    if isinstance(value, list) and "tuple" in str(spec.type):
        return tuple(value)
    return value


def unit_mask(n_units: int, units: slice | None) -> np.ndarray:
    """``(n_units,)`` bool: the units a ``--units`` selection keeps (all without one)."""
    mask = np.zeros(n_units, dtype=bool)
    mask[slice(None) if units is None else units] = True
    return mask


def counted(items: Iterator, tick: Ticker | None, size: Callable[[Any], int]) -> Iterator:
    """``items`` passed through, ticking ``size(item)`` after each."""
    for item in items:
        yield item
        if tick is not None:
            tick(size(item))

