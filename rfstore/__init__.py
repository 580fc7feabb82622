"""rfstore: empirical receptive fields of CNN units, computed into one chunked store.

The pipeline (Zhou et al. 2015, "Object Detectors Emerge in Deep Scene CNNs"):
``init -> activations -> topk -> occlude -> rf -> segment``, each stage a module of
:mod:`rfstore.stages`, reading and writing one HDF5 or Zarr store (:mod:`rfstore.store`).
"""
from __future__ import annotations

__version__ = "0.1.0"

from rfstore.api import open  # noqa: E402,A001 - rfstore.open(path), the notebook entry point

__all__ = ["__version__", "open"]
