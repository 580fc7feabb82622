"""Loading ``torchvision:NAME`` model specs."""
from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from ._common import apply_state_dict, last_linear, read_state_dict, seeded, sha256_file
from ._errors import ModelLoadError, short_error

__all__ = ["classification_models", "load_torchvision"]

DEFAULT_SEED = 0


def classification_models() -> list[str]:
    """Names of all torchvision classification models, sorted."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_name(name: str) -> None:
    names = classification_models()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "no close matches"
    raise ModelLoadError(
        f"unknown torchvision classification model {name!r} ({hint}); "
        "see torchvision.models.list_models(module=torchvision.models) for all names"
    )


def _weights_member(name: str, weights: str) -> torchvision.models.WeightsEnum | None:
    """The weights enum member named by `weights`, or None if it names none."""
    enum_cls = torchvision.models.get_model_weights(name)
    key = weights
    prefix = enum_cls.__name__ + "."
    if key.startswith(prefix):
        key = key[len(prefix):]
    members = enum_cls.__members__
    if key in members:
        return members[key]
    if key.upper() in members:
        return members[key.upper()]
    return None


def checkpoint_path(url: str) -> Path:
    """Where torchvision caches the file downloaded from `url`.

    ``torch.hub.get_dir()/checkpoints/<file name of the URL>``; ``torch.hub.get_dir()``
    is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``).
    """
    filename = os.path.basename(urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _load_pretrained(
    name: str, member: torchvision.models.WeightsEnum
) -> tuple[nn.Module, str]:
    url = member.url
    cached = checkpoint_path(url)
    if not cached.exists():
        match = torch.hub.HASH_REGEX.search(cached.name)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # Same call and hash check that torchvision makes, so that a failure can
            # be reported precisely; torchvision then finds the file in its cache.
            torch.hub.download_url_to_file(
                url, str(cached), match.group(1) if match else None, progress=True
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not download the {member} weights of torchvision:{name} "
                f"({short_error(exc)}); on a machine with network access download "
                f"{url} and put the file {cached.name} at {cached} "
                "(torch.hub.get_dir()/checkpoints, by default $TORCH_HOME/hub/checkpoints)"
            ) from exc
    digest = sha256_file(cached)
    match = torch.hub.HASH_REGEX.search(cached.name)
    if match and match.group(1) and not digest.startswith(match.group(1)):
        # torch.hub only verifies the hash prefix while downloading, never for a file
        # already in the cache, so a replaced or corrupted file would load silently.
        warnings.warn(
            f"cached checkpoint {cached} has sha256 {digest[:12]}..., which does not "
            f"match the hash prefix {match.group(1)!r} in its name; it is used as is, "
            "delete it to download the official file again",
            RuntimeWarning,
            stacklevel=4,
        )
    try:
        model = torchvision.models.get_model(name, weights=member)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load the cached checkpoint {cached} for torchvision:{name} "
            f"({short_error(exc)}); delete it so that it is downloaded again, or "
            f"replace it with an intact copy of {url}"
        ) from exc
    return model, digest


def _infer_num_classes(model: nn.Module, state: dict[str, object]) -> int | None:
    """Number of classes of `state` when only the classifier's output size differs."""
    found = last_linear(model)
    if found is None:
        return None
    layer_name, layer = found
    weight = state.get(f"{layer_name}.weight")
    if (
        isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[1] == layer.in_features
        and weight.shape[0] != layer.out_features
    ):
        return int(weight.shape[0])
    return None


def load_torchvision(
    name: str, weights: str | None, seed: int | None, spec: str
) -> tuple[nn.Module, str | None]:
    """Build torchvision model `name` with the requested weights.

    Parameters
    ----------
    name : str
        A torchvision classification model name, e.g. ``"alexnet"``.
    weights : str or None
        ``"none"``/None (random init after ``torch.manual_seed(seed)``), ``"DEFAULT"``
        or a weights enum member name (torchvision download/cache), or a path to a
        state_dict file (loaded into the seeded random-init architecture; a
        classifier with a different number of classes is resized to match).
    seed : int or None
        Seed for random initialisation; 0 when None.
    spec : str
        The full model spec, for messages.

    Returns
    -------
    tuple[nn.Module, str or None]
        The model and the sha256 of the weights file loaded (None for random init).
    """
    _check_name(name)
    seed = DEFAULT_SEED if seed is None else seed
    if weights is None or weights.strip().lower() == "none":
        with seeded(seed):
            return torchvision.models.get_model(name, weights=None), None
    member = _weights_member(name, weights)
    if member is not None:
        return _load_pretrained(name, member)
    path = Path(weights).expanduser()
    if not path.is_file():
        available = ", ".join(torchvision.models.get_model_weights(name).__members__)
        raise ModelLoadError(
            f"weights {weights!r} for {spec!r} are neither 'none', a torchvision weights "
            f"name ({available}) nor an existing state_dict file; pass one of those"
        )
    state = read_state_dict(path, spec)
    with seeded(seed):
        model = torchvision.models.get_model(name, weights=None)
    num_classes = _infer_num_classes(model, state)
    if num_classes is not None:
        with seeded(seed):
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    apply_state_dict(model, state, path, spec)
    return model, sha256_file(path)
