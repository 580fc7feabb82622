"""rfstore: empirical receptive fields of CNN units, computed into one chunked store.

The pipeline (Zhou et al. 2015, "Object Detectors Emerge in Deep Scene CNNs"):
``init -> activations -> topk -> occlude -> rf -> segment -> dissect``, one module each in
:mod:`rfstore.pipeline.stages`, reading and writing one HDF5 or Zarr store (:mod:`rfstore.store`).
:func:`rfstore.open` reads a store; :func:`rfstore.run_pipeline` computes one.
"""
from __future__ import annotations

from typing import Any

from rfstore.version import __version__

from rfstore.api import open  # noqa: E402,A001 - rfstore.open(path), the notebook entry point

__all__ = ["__version__", "open", "run_pipeline", "PipelineConfig"]


def __getattr__(name: str) -> Any:
    """``run_pipeline`` and ``PipelineConfig`` load the stages (torch) only when asked for."""
    if name in ("run_pipeline", "PipelineConfig"):
        from rfstore.pipeline import run

        return getattr(run, name)
    raise AttributeError(f"module 'rfstore' has no attribute {name!r}")
