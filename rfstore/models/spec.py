"""Model specs: how a network is named on the CLI, recorded in a store, and rebuilt.

A :class:`ModelSpec` is a small JSON-able value (:meth:`ModelSpec.to_dict`) that
:func:`load_model` turns into a :class:`LoadedModel`.  Spec forms:

``torchvision:NAME``
    Any torchvision classification model (``torchvision.models.list_models``).
``pkg.module:factory`` / ``path/to/file.py:factory``
    A callable building the model with no arguments.
``torchscript:PATH``
    A TorchScript archive (``torch.jit.save``).
``pickle:PATH``
    A whole pickled model (``torch.save(model)``); needs ``trust_pickle=True``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ._common import finalize_module, last_linear
from ._custom import load_factory, load_pickle, load_torchscript
from ._errors import ModelLoadError, UntrustedPickleError
from ._torchvision import load_torchvision

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "ModelSpec",
    "UntrustedPickleError",
    "load_model",
]

_PREFIXED = ("torchvision", "torchscript", "pickle")
_FORMS = (
    "torchvision:NAME, pkg.module:factory, path/to/file.py:factory, "
    "torchscript:PATH or pickle:PATH"
)
_FIELDS = ("spec", "weights", "seed", "trust_pickle")


@dataclass(frozen=True)
class _Parsed:
    """A spec split into its parts.

    `kind` is one of ``torchvision``, ``module``, ``file``, ``torchscript``,
    ``pickle``; `target` is the model name, module name or path; `attr` is the
    factory attribute path (empty for prefixed forms).
    """

    kind: str
    target: str
    attr: str = ""


def _is_dotted_identifier(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _parse(spec: str) -> _Parsed:
    text = spec.strip()
    head, sep, rest = text.partition(":")
    if sep and head in _PREFIXED:
        if not rest.strip():
            raise ModelLoadError(
                f"model spec {spec!r} has nothing after '{head}:'; use {_FORMS}"
            )
        return _Parsed(head, rest.strip())
    target, sep, attr = text.rpartition(":")
    if not sep or not target or not _is_dotted_identifier(attr):
        raise ModelLoadError(f"model spec {spec!r} is not understood; use {_FORMS}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return _Parsed("file", target, attr)
    if not _is_dotted_identifier(target):
        raise ModelLoadError(
            f"model spec {spec!r}: {target!r} is neither a module name nor a .py file; "
            f"use {_FORMS}"
        )
    return _Parsed("module", target, attr)


@dataclass(frozen=True)
class ModelSpec:
    """How to build a network, recordable in a store.

    Parameters
    ----------
    spec : str
        ``"torchvision:alexnet"``, ``"pkg.module:factory"``,
        ``"path/to/file.py:factory"``, ``"torchscript:PATH"`` or ``"pickle:PATH"``.
    weights : str or None
        torchvision: ``"DEFAULT"``, a weights enum member name (``"IMAGENET1K_V1"``),
        ``"none"`` (or None: random init) or a path to a state_dict file.
        Factories: a state_dict path, or None/``"none"`` to keep the factory's
        weights.  Ignored for ``torchscript:`` and ``pickle:``.
    seed : int or None
        ``torch.manual_seed(seed)`` runs right before the model is constructed
        (torchvision: default 0 when None; factories: no seeding when None).  The
        caller's random state is restored afterwards.
    trust_pickle : bool
        Allow ``pickle:PATH`` specs, which execute code stored in the file.

    Raises
    ------
    ModelLoadError
        If `spec` has none of the forms above.
    """

    spec: str
    weights: str | None = None
    seed: int | None = None
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str):
            raise ModelLoadError(
                f"model spec must be a string, got {type(self.spec).__name__}; use {_FORMS}"
            )
        if self.weights is not None and not isinstance(self.weights, str):
            raise ModelLoadError(
                f"weights must be a string or None, got {type(self.weights).__name__}; "
                "pass a weights name or a file path"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ModelLoadError(
                f"seed must be an int or None, got {self.seed!r}; pass an integer"
            )
        _parse(self.spec)

    @property
    def kind(self) -> str:
        """``torchvision``, ``module``, ``file``, ``torchscript`` or ``pickle``."""
        return _parse(self.spec).kind

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, the inverse of :meth:`from_dict`."""
        return {
            "spec": self.spec,
            "weights": self.weights,
            "seed": self.seed,
            "trust_pickle": self.trust_pickle,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Rebuild a spec recorded with :meth:`to_dict`.

        Raises
        ------
        ValueError
            If ``"spec"`` is missing or unknown keys are present.
        """
        unknown = sorted(set(data) - set(_FIELDS))
        if "spec" not in data or unknown:
            raise ModelLoadError(
                f"model spec record {data!r} needs the key 'spec' and only the keys "
                f"{', '.join(_FIELDS)}; it was probably written by another rfstore version"
            )
        return cls(
            spec=data["spec"],
            weights=data.get("weights"),
            seed=data.get("seed"),
            trust_pickle=bool(data.get("trust_pickle", False)),
        )

    def default_name(self) -> str:
        """Key for the model in a store.

        The torchvision model name (``"alexnet"``), the factory's name
        (``"build"`` for ``"pkg.mod:build"``), or the file stem for TorchScript and
        pickle files.
        """
        parsed = _parse(self.spec)
        if parsed.kind == "torchvision":
            return parsed.target
        if parsed.kind in ("module", "file"):
            return parsed.attr.rsplit(".", 1)[-1]
        return Path(parsed.target).stem

    def default_preprocessing(self) -> str:
        """``"imagenet"`` for torchvision models, ``"tensor"`` otherwise."""
        return "imagenet" if _parse(self.spec).kind == "torchvision" else "tensor"


@dataclass(frozen=True)
class LoadedModel:
    """A built network and what was loaded into it.

    Attributes
    ----------
    module : torch.nn.Module
        In eval mode, on CPU, every parameter with ``requires_grad=False``.
    weights_sha256 : str or None
        SHA-256 of the weights file actually loaded (state_dict, TorchScript or
        pickle file, or torchvision's cached checkpoint); None for random init.
    num_classes : int or None
        ``out_features`` of the last linear layer (registration order), if any.
    """

    module: nn.Module
    weights_sha256: str | None
    num_classes: int | None


def load_model(spec: ModelSpec, expected_weights_sha256: str | None = None) -> LoadedModel:
    """Build the network described by `spec`.

    Parameters
    ----------
    spec : ModelSpec
        What to build; see :class:`ModelSpec`.
    expected_weights_sha256 : str, optional
        For ``pickle:`` specs, the sha256 the file must have before it is unpickled
        (what ``init`` recorded): a store never makes rfstore unpickle another file.

    Returns
    -------
    LoadedModel
        The model in eval mode on CPU with frozen parameters.

    Raises
    ------
    UntrustedPickleError
        For ``pickle:`` specs without ``trust_pickle``.
    ModelLoadError
        For anything else that fails; the message says what to do.

    Notes
    -----
    Pretrained torchvision weights go through torchvision's own cache
    (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``).
    ``torch.hub`` checks the hash prefix in the file name only while downloading;
    a file already in the cache is loaded as is.  :func:`load_model` therefore
    hashes it and emits a :class:`RuntimeWarning` when the hash does not match
    the prefix in its name.
    """
    parsed = _parse(spec.spec)
    if parsed.kind == "torchvision":
        module, digest = load_torchvision(parsed.target, spec.weights, spec.seed, spec.spec)
    elif parsed.kind in ("module", "file"):
        module, digest = load_factory(
            parsed.kind, parsed.target, parsed.attr, spec.weights, spec.seed, spec.spec
        )
    elif parsed.kind == "torchscript":
        module, digest = load_torchscript(parsed.target, spec.spec)
    else:
        module, digest = load_pickle(parsed.target, spec.trust_pickle, spec.spec, expected_weights_sha256)
    module = finalize_module(module)
    found = last_linear(module)
    num_classes = None
    if found is not None and hasattr(found[1], "out_features"):
        num_classes = int(found[1].out_features)
    return LoadedModel(module=module, weights_sha256=digest, num_classes=num_classes)
