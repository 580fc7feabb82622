"""Loading networks reproducibly and capturing what their units respond to.

* :mod:`rfstore.models.spec`: :class:`ModelSpec`, :func:`load_model`.
* :mod:`rfstore.models.selection`: :func:`select_layers` (default layers, patterns, types).
* :mod:`rfstore.models.probe`: :func:`probe_layers`.
* :mod:`rfstore.models.inputs`: :func:`input_channels` (grayscale or RGB, from the model).
* :mod:`rfstore.models.outputs`: :func:`named_outputs`, :func:`choose_output` (several outputs).
* :mod:`rfstore.models.features`: :class:`FeatureExtractor`.
"""
from __future__ import annotations

from .features import FeatureExtractor
from .inputs import InputChannelsError, input_channels
from .layers import LayerSelectionError
from .probe import LayerInfo, probe_layers
from .outputs import OutputChoiceError, choose_output, named_outputs, pick_output
from .selection import ACTIVATION_TYPES, select_layers
from .spec import LoadedModel, ModelLoadError, ModelSpec, UntrustedPickleError, load_model

__all__ = [
    "ACTIVATION_TYPES",
    "FeatureExtractor",
    "InputChannelsError",
    "OutputChoiceError",
    "LayerInfo",
    "LayerSelectionError",
    "LoadedModel",
    "ModelLoadError",
    "ModelSpec",
    "UntrustedPickleError",
    "choose_output",
    "input_channels",
    "load_model",
    "named_outputs",
    "pick_output",
    "probe_layers",
    "select_layers",
]
