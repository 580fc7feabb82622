"""Loading factory (``module:factory``, ``file.py:factory``), TorchScript and pickle specs."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ._common import apply_state_dict, read_state_dict, seeded, sha256_file
from ._errors import ModelLoadError, UntrustedPickleError, short_error

__all__ = ["load_factory", "load_pickle", "load_torchscript"]


def _import_file(path: Path, spec: str) -> ModuleType:
    """Execute a Python file as a fresh module named after its absolute path."""
    resolved = path.resolve()
    tag = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_name = f"_rfstore_user_model_{tag}"
    import_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if import_spec is None or import_spec.loader is None:
        raise ModelLoadError(
            f"cannot import {str(path)!r} for model {spec!r}; pass a Python source file"
        )
    module = importlib.util.module_from_spec(import_spec)
    # Registered before execution so that dataclasses/pickling inside the file work.
    sys.modules[module_name] = module
    try:
        import_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(
            f"importing {str(path)!r} for model {spec!r} failed ({short_error(exc)}); "
            "fix the error in that file (its own directory is not added to sys.path)"
        ) from exc
    return module


def load_factory(
    kind: str, target: str, attr: str, weights: str | None, seed: int | None, spec: str
) -> tuple[nn.Module, str | None]:
    """Import a factory, call it with no arguments, optionally load a state_dict.

    Parameters
    ----------
    kind : str
        ``"module"`` (`target` is a dotted module name) or ``"file"`` (a .py path).
    target : str
        Module name or file path.
    attr : str
        Attribute path of the factory inside the module, e.g. ``"build"``.
    weights : str or None
        Path to a state_dict file, or None/``"none"`` to keep the factory's weights.
    seed : int or None
        When given, ``torch.manual_seed(seed)`` runs right before the factory call.
    spec : str
        The full model spec, for messages.

    Returns
    -------
    tuple[nn.Module, str or None]
        The model and the sha256 of the state_dict file (None without one).
    """
    if kind == "module":
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ModelLoadError(
                f"importing module {target!r} for model {spec!r} failed "
                f"({short_error(exc)}); make sure it is installed or on PYTHONPATH"
            ) from exc
    else:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"model file {target!r} of spec {spec!r} does not exist; check the path"
            )
        module = _import_file(path, spec)
    factory: object = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ModelLoadError(
                f"{target!r} has no attribute {attr!r} (model spec {spec!r}); "
                "name a function or class that builds the model"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelLoadError(
            f"{target}:{attr} is a {type(factory).__name__}, not callable (model spec "
            f"{spec!r}); name a function or class that builds the model"
        )
    try:
        with seeded(seed):
            model = factory()
    except Exception as exc:
        raise ModelLoadError(
            f"calling the factory of model {spec!r} with no arguments failed "
            f"({short_error(exc)}); it must build the model without arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"the factory of model {spec!r} returned a {type(model).__name__}, not a "
            "torch.nn.Module; make it return the model"
        )
    if weights is None or weights.strip().lower() == "none":
        return model, None
    path = Path(weights).expanduser()
    apply_state_dict(model, read_state_dict(path, spec), path, spec)
    return model, sha256_file(path)


def _existing(path_text: str, spec: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModelLoadError(
            f"model file {path_text!r} of spec {spec!r} does not exist; check the path"
        )
    return path


def load_torchscript(path_text: str, spec: str) -> tuple[nn.Module, str]:
    """Load a TorchScript archive on CPU; returns the module and the file's sha256."""
    path = _existing(path_text, spec)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"{str(path)!r} could not be loaded as TorchScript ({short_error(exc)}); "
            "save it with torch.jit.save, or use a factory spec with a state_dict"
        ) from exc
    return model, sha256_file(path)


def load_pickle(path_text: str, trust: bool, spec: str,
                expected_sha256: str | None = None) -> tuple[nn.Module, str]:
    """Unpickle a whole model (``torch.save(model)``) if the user trusts the file.

    ``expected_sha256`` (the digest recorded when the user trusted the file) must
    match the file's before anything is unpickled, so a store can only reload the
    very file that was trusted at ``init``.

    Raises
    ------
    UntrustedPickleError
        If `trust` is False, or the file is not the one with ``expected_sha256``.
    ModelLoadError
        If the file is unreadable or does not hold an ``nn.Module``.
    """
    path = _existing(path_text, spec)
    if not trust:
        raise UntrustedPickleError(
            f"refusing to unpickle {str(path)!r}: unpickling executes arbitrary code "
            "stored in the file, so pass --trust-pickle (trust_pickle=True) only for "
            "files you trust, or save a state_dict and use a 'module:factory' spec"
        )
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise UntrustedPickleError(
            f"refusing to unpickle {str(path)!r}: its sha256 {digest[:12]}... is not that of the "
            f"file trusted at init ({expected_sha256[:12]}...); rerun 'rfstore init --force "
            "--trust-pickle' if you trust the new file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(
            f"{str(path)!r} could not be unpickled ({short_error(exc)}); make sure it "
            "was written by torch.save(model) with compatible code importable"
        ) from exc
    if isinstance(obj, dict):
        raise ModelLoadError(
            f"{str(path)!r} holds a dict (probably a state_dict), not a model; use a "
            "'pkg.module:factory' or 'path/to/file.py:factory' spec that builds the "
            "architecture, with this file as weights"
        )
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a torch.nn.Module; "
            "save the model itself with torch.save(model, path)"
        )
    return obj, digest
