"""Loading networks reproducibly and capturing what their units respond to.

* :mod:`rfstore.models.spec`: :class:`ModelSpec`, :func:`load_model`.
* :mod:`rfstore.models.layers`: :func:`select_layers`, :func:`probe_layers`.
* :mod:`rfstore.models.features`: :class:`FeatureExtractor`.
"""
from __future__ import annotations

from .features import FeatureExtractor
from .layers import LayerInfo, LayerSelectionError, probe_layers, select_layers
from .spec import LoadedModel, ModelLoadError, ModelSpec, UntrustedPickleError, load_model

__all__ = [
    "FeatureExtractor",
    "LayerInfo",
    "LayerSelectionError",
    "LoadedModel",
    "ModelLoadError",
    "ModelSpec",
    "UntrustedPickleError",
    "load_model",
    "probe_layers",
    "select_layers",
]
