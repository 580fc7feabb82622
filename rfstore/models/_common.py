"""Helpers shared by the model loaders: hashing, seeding and state_dict loading."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._errors import ModelLoadError, short_error

__all__ = [
    "apply_state_dict",
    "finalize_module",
    "last_linear",
    "read_state_dict",
    "seeded",
    "sha256_file",
]

_MAX_LISTED = 5


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the body right after ``torch.manual_seed(seed)``; no-op when `seed` is None.

    The CPU random state of the caller is restored afterwards
    (:func:`torch.random.fork_rng`), so loading a model does not perturb the
    random stream of the surrounding program.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def finalize_module(module: nn.Module) -> nn.Module:
    """Move `module` to CPU, switch it to eval mode and freeze its parameters."""
    module = module.cpu()
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def last_linear(module: nn.Module) -> tuple[str, Any] | None:
    """The last linear layer in registration order, as ``(name, module)``.

    Eager :class:`torch.nn.Linear` modules and TorchScript modules whose
    ``original_name`` is ``"Linear"`` both count.  Returns None when there is none.
    """
    found: tuple[str, Any] | None = None
    for name, sub in module.named_modules():
        is_script_linear = (
            isinstance(sub, torch.jit.ScriptModule)
            and getattr(sub, "original_name", None) == "Linear"
        )
        if isinstance(sub, nn.Linear) or is_script_linear:
            found = (name, sub)
    return found


def read_state_dict(path: Path, spec: str) -> dict[str, Any]:
    """Load a state_dict file with ``torch.load(weights_only=True)`` on CPU.

    Parameters
    ----------
    path : Path
        File written by ``torch.save(model.state_dict(), path)``.
    spec : str
        The model spec, for error messages.

    Returns
    -------
    dict[str, Any]
        Mapping of parameter/buffer name to tensor.

    Raises
    ------
    ModelLoadError
        If the file is missing, unreadable as weights-only data, or not a mapping.
    """
    if not path.is_file():
        raise ModelLoadError(
            f"weights file {str(path)!r} for model {spec!r} does not exist; "
            "check the path given as weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise ModelLoadError(
            f"weights file {str(path)!r} for model {spec!r} could not be read as a "
            f"weights-only state_dict ({short_error(exc)}); save it with "
            "torch.save(model.state_dict(), path), or, if it is a whole pickled model "
            "from a source you trust, use the spec 'pickle:PATH' with --trust-pickle"
        ) from exc
    if not isinstance(state, Mapping):
        raise ModelLoadError(
            f"weights file {str(path)!r} for model {spec!r} holds a "
            f"{type(state).__name__}, not a state_dict; save it with "
            "torch.save(model.state_dict(), path)"
        )
    return dict(state)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" (+{more} more)" if more > 0 else "")


def apply_state_dict(model: nn.Module, state: Mapping[str, Any], path: Path, spec: str) -> None:
    """Load `state` into `model` strictly, explaining any mismatch.

    Raises
    ------
    ModelLoadError
        Listing (the first few) missing keys, unexpected keys and shape mismatches.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_listed(mismatched)}")
        hint = "make sure the file was saved from the same architecture as the spec"
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint = "the file looks saved from DataParallel; strip the 'module.' prefix"
        elif any(isinstance(v, Mapping) for v in state.values()):
            hint = "this looks like a training checkpoint; save its model state_dict alone"
        raise ModelLoadError(
            f"weights file {str(path)!r} does not match model {spec!r} "
            f"({'; '.join(parts)}); {hint}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelLoadError(
            f"weights file {str(path)!r} could not be loaded into model {spec!r} "
            f"({short_error(exc)}); make sure it was saved from the same architecture"
        ) from exc
