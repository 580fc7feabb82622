"""Dask distributed, the engine of distributed runs: connecting, and running tasks.

``--cluster local:N`` starts a :class:`distributed.LocalCluster` of N worker
processes with one thread each; ``--scheduler tcp://HOST:PORT`` joins a cluster
that is already running (``dask scheduler`` / ``dask worker``, dask-jobqueue,
dask-cuda). Dask is an optional extra (``pip install 'rfstore[dist]'``) and is
imported only here, only when a cluster is asked for.

Failures are Dask's to handle: a task whose worker dies is rescheduled on
another worker (up to the scheduler's ``distributed.scheduler.allowed-failures``
deaths, 3 by default); a task that raises is retried :data:`RETRIES` times. The
client (this process) records what finished after each task, so a run stopped
for any reason resumes with the tasks not finished.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfstore.errors import RfstoreError
from rfstore.store import backend_for

#: times a task that raised is submitted again before the run stops with its error.
RETRIES = 2
#: modules a local worker imports before it joins (torch and torchvision take seconds), so that
#: a worker restarted after a crash gets no task before it is ready.
WORKER_PRELOAD = ("rfstore.pipeline.worker", "rfstore.pipeline.stages.activations", "rfstore.pipeline.stages.occlude",
                  "rfstore.pipeline.stages.netdissect")
#: how long a local cluster waits for a crashed worker to come back before giving it up for good
#: (Dask's default, 15 s, is less than a loaded machine needs to restart a worker that imports torch).
LOST_WORKER_TIMEOUT = "10 minutes"


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: ``local_workers`` new local processes, or the cluster of ``scheduler``.

    Parameters
    ----------
    local_workers : int, optional
        Start a LocalCluster of this many worker processes (1 thread each).
    scheduler : str, optional
        Address of a running Dask scheduler, e.g. ``tcp://10.0.0.5:8786``.
    """

    local_workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if (self.local_workers is None) == (self.scheduler is None):
            raise ValueError("give exactly one of --cluster local:N and --scheduler ADDR")
        if self.local_workers is not None and self.local_workers < 1:
            raise ValueError(f"--cluster local:N needs N >= 1, not {self.local_workers}")

    @classmethod
    def from_options(cls, cluster: str | None, scheduler: str | None) -> ClusterSpec | None:
        """The spec of ``--cluster``/``--scheduler``, or None when neither is given."""
        if cluster is None and scheduler is None:
            return None
        if cluster is not None and scheduler is not None:
            raise ValueError("--cluster and --scheduler exclude each other: start a local cluster or join one")
        if cluster is not None:
            return cls(local_workers=parse_local(cluster))
        return cls(scheduler=scheduler)

    def describe(self) -> str:
        if self.scheduler is not None:
            return f"the Dask cluster of {self.scheduler}"
        return f"a local Dask cluster of {self.local_workers} worker process(es)"


def parse_local(text: str) -> int:
    """N of ``local:N`` (ValueError for anything else)."""
    kind, sep, count = text.partition(":")
    if kind != "local" or not sep or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"--cluster takes local:N with N >= 1 worker processes, not {text!r}")
    return int(count)


def require_zarr(store_path: str | Path) -> None:
    """Refuse a distributed run on anything but a Zarr store (one sentence, before any work)."""
    if backend_for(store_path) != "zarr":
        raise RfstoreError(f"a distributed run needs a Zarr store (.zarr) and {store_path} is HDF5: "
                           f"use a .zarr store or run without --cluster/--scheduler")


def import_distributed() -> Any:
    """The ``distributed`` package, or a clear error naming the extra to install."""
    try:
        import distributed
    except ImportError as err:
        raise RfstoreError("--cluster and --scheduler need Dask distributed, which is not installed: "
                           "pip install 'rfstore[dist]'") from err
    return distributed


@contextmanager
def session(store_path: str | Path, spec: ClusterSpec) -> Iterator[Any]:
    """A ``distributed.Client`` on the cluster of ``spec``, closed (and a local cluster stopped) on exit.

    The store is checked first, so an HDF5 store is refused before a cluster starts.
    """
    require_zarr(store_path)
    distributed = import_distributed()
    if spec.scheduler is not None:
        try:
            client = distributed.Client(spec.scheduler)
        except (OSError, TimeoutError) as err:
            raise RfstoreError(f"cannot reach the Dask scheduler at {spec.scheduler}: {err}") from err
        with client:
            yield client
        return
    import dask

    with dask.config.set({"distributed.deploy.lost-worker-timeout": LOST_WORKER_TIMEOUT}), \
            distributed.LocalCluster(n_workers=spec.local_workers, threads_per_worker=1, processes=True,
                                     dashboard_address=None, preload=list(WORKER_PRELOAD)) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@dataclass(frozen=True)
class Task:
    """One call to run on a worker: ``function(*args)``, named ``name`` in Dask's key."""

    name: str
    function: Callable[..., Any]
    args: tuple[Any, ...]


def completed(client: Any, tasks: Sequence[Task], retries: int = RETRIES) -> Iterator[Any]:
    """Submit ``tasks`` and yield their results as they finish (in any order).

    Tasks not finished when the caller stops (an error, an interrupt, a task that
    failed for good) are cancelled.

    Raises
    ------
    RfstoreError
        A task failed for good: its own rfstore error as it is, a task that killed
        too many workers, or any other exception, named with its task.
    """
    distributed = import_distributed()
    run_id = uuid.uuid4().hex[:8]
    futures = [client.submit(task.function, *task.args, key=f"rfstore-{task.name}-{run_id}", retries=retries)
               for task in tasks]
    names = {future.key: task.name for future, task in zip(futures, tasks)}
    remaining = set(futures)
    try:
        for future in distributed.as_completed(futures):
            remaining.discard(future)
            try:
                value = future.result()
            except Exception as err:  # noqa: BLE001 - re-raised as one clear error
                raise task_error(names[future.key], err) from err
            yield value
    finally:
        if remaining:
            client.cancel(list(remaining))


def task_error(name: str, err: BaseException) -> RfstoreError:
    """The error to report for a task that failed for good."""
    from distributed import KilledWorker

    if isinstance(err, RfstoreError):
        return err
    if isinstance(err, KilledWorker):
        return RfstoreError(f"Dask gave up on task {name}: each worker that ran it died ({err}); "
                            f"the work finished so far is kept: rerun the same command to resume")
    return RfstoreError(f"task {name} failed on a worker: {type(err).__name__}: {err}")
