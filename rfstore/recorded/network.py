"""What every stage after ``init`` needs: the network recorded in the store, rebuilt.

``init`` records the model spec, preprocessing, dataset and layers in the
network group's attributes; :class:`NetworkContext` reads them back, rebuilds
the model (checking that its weights are the ones recorded) and gives the
stages typed access to them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rfstore.errors import MissingInputError, RfstoreError
from rfstore.store import Store

if TYPE_CHECKING:  # torch and torchvision load in seconds: only stages that compute import them
    import torch

    from rfstore.datasets import Preprocessing
    from rfstore.models import LoadedModel, ModelSpec
from rfstore.store.layout import INTERNAL, SCHEMA_VERSION, layer_group, network_group


def find_network(store: Store, network: str | None) -> str:
    """The network to work on: the one named, or the only one in the store."""
    if not store.has("") or "schema_version" not in store.attrs(""):
        raise MissingInputError(f"{store.path} is not an rfstore store yet: run 'rfstore init' first")
    version = store.attrs("")["schema_version"]
    if version != SCHEMA_VERSION:
        raise RfstoreError(f"{store.path} has schema version {version}; this rfstore reads version {SCHEMA_VERSION}")
    groups, _ = store.children("")
    networks = [g for g in groups if "model" in store.attrs(g)]
    if network is not None:
        if network not in networks:
            raise MissingInputError(f"no network {network!r} in {store.path} (it has: {', '.join(networks) or 'none'})")
        return network
    if len(networks) != 1:
        raise RfstoreError(f"{store.path} holds {len(networks)} networks ({', '.join(networks) or 'none'}): "
                           f"choose one with --network")
    return networks[0]


@dataclass
class NetworkContext:
    """One network of an open store, as recorded by ``init``."""

    store: Store
    network: str

    @classmethod
    def open(cls, store: Store, network: str | None = None) -> NetworkContext:
        return cls(store, find_network(store, network))

    @cached_property
    def attrs(self) -> dict[str, Any]:
        return self.store.attrs(network_group(self.network))

    @property
    def model_spec(self) -> ModelSpec:
        from rfstore.models import ModelSpec

        return ModelSpec.from_dict(self.attrs["model"])

    @property
    def input_channels(self) -> int:
        """1 (grayscale) or 3 (RGB): attr ``input_channels``; stores written before it hold 3."""
        return int(self.attrs.get("input_channels", 3))

    @property
    def preprocessing(self) -> Preprocessing:
        """The recorded preprocessing, for :attr:`input_channels`-channel input."""
        from rfstore.datasets import Preprocessing

        recorded = Preprocessing.from_dict(self.attrs["preprocessing"])
        try:
            return recorded.with_channels(self.input_channels)
        except ValueError as err:
            raise RfstoreError(f"{self.store.path}: network {self.network!r} records a preprocessing that "
                               f"does not fit its {self.input_channels}-channel input ({err})") from None

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.attrs["input_size"]
        return int(height), int(width)

    @property
    def dataset_root(self) -> Path:
        return Path(self.attrs["dataset_root"])

    @property
    def layers(self) -> list[str]:
        return list(self.attrs["layers"])

    @cached_property
    def n_images(self) -> int:
        return self.store.array_spec(f"{self.network}/image_path").shape[0]

    def image_paths(self) -> np.ndarray:
        """``(N,)`` object array of image paths relative to the dataset root (checked: none leaves it)."""
        from rfstore.datasets.paths import UnsafeImagePathError, check_relative_paths

        paths = self.store.read(f"{self.network}/image_path")
        try:
            check_relative_paths(paths)
        except UnsafeImagePathError as err:
            raise RfstoreError(f"{self.store.path}: {err}") from None
        return paths

    def layer_attrs(self, layer: str) -> dict[str, Any]:
        return self.store.attrs(layer_group(self.network, layer))

    def n_units(self, layer: str) -> int:
        return int(self.layer_attrs(layer)["num_units"])

    def check_layers(self, selection: list[str] | None) -> list[str]:
        """The recorded layers, or those ``selection`` selects (names, shell patterns, ``type:NAME`` as at
        init), in recorded order; an item that selects none is an error naming the recorded layers."""
        if not selection:
            return self.layers
        from rfstore.models.selection import select_recorded

        types = {name: list(self.layer_attrs(name).get("module_types", [])) for name in self.layers}
        selected = select_recorded(list(selection), self.layers, types)
        unknown = [name for name in selected if name not in self.layers]
        if unknown:
            import difflib

            near = sorted({m for name in unknown for m in difflib.get_close_matches(name, self.layers, n=3, cutoff=0.5)})
            hint = f"near matches: {', '.join(near)}; " if near else ""
            raise RfstoreError(f"layer(s) {', '.join(unknown)} not in the store; {hint}"
                               f"it records: {', '.join(self.layers)}")
        return selected

    def load_model(self) -> LoadedModel:
        """Rebuild the recorded model and check its parameters are bit-identical to init's."""
        loaded = self.load_model_unchecked()
        self.check_parameters(parameters_digest(loaded.module))
        return loaded

    def load_model_unchecked(self) -> LoadedModel:
        """Rebuild the recorded model; the caller must pass its digest to :meth:`check_parameters`
        before storing anything computed with it (see :class:`ParameterCheck`)."""
        from rfstore.models import load_model

        return load_model(self.model_spec, expected_weights_sha256=self.attrs.get("weights_sha256") or None)

    def check_parameters(self, actual: str) -> None:
        """Raise unless ``actual`` (a :func:`parameters_digest`) is the one recorded at init."""
        recorded = self.attrs.get("parameters_sha256")
        if recorded != actual:
            raise RfstoreError(f"{self.model_spec.spec} no longer gives the network recorded at init "
                               f"(parameters sha256 {actual[:12]}..., recorded {str(recorded)[:12]}...): "
                               f"its weights file, seed or library version changed; "
                               f"rerun 'rfstore init --force' to start over")


class ParameterCheck:
    """:meth:`NetworkContext.check_parameters` on a background thread.

    Hashing a large network's parameters takes seconds; ``hashlib`` releases the GIL, so the check runs while the first
    batches compute. :meth:`result` waits for it and raises on a mismatch;
    call it before the first write. The tensors are captured at construction,
    so the module may then be moved or converted.
    """

    def __init__(self, ctx: NetworkContext, module: torch.nn.Module) -> None:
        import threading

        state = _parameter_tensors(module)
        self._error: BaseException | None = None

        def check() -> None:
            try:
                ctx.check_parameters(_digest(state))
            except BaseException as err:  # noqa: BLE001 - re-raised by result()
                self._error = err

        self._thread = threading.Thread(target=check, name="rfstore-parameter-check", daemon=True)
        self._thread.start()

    def result(self) -> None:
        """Wait for the check; raise its error (every call, so no caller can miss it)."""
        self._thread.join()
        if self._error is not None:
            raise self._error


def parameters_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, shapes, bytes), in state_dict order."""
    return _digest(_parameter_tensors(module))


def _parameter_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, tensor.detach().cpu().contiguous()) for name, tensor in module.state_dict().items()]


def _digest(state: list[tuple[str, torch.Tensor]]) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in state:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return digest.hexdigest()


def internal_group(network: str) -> str:
    return f"{network}/{INTERNAL}"


def load_images(ctx: NetworkContext, image_ids: list[int]) -> torch.Tensor:
    """``(len(image_ids), C, H, W)`` preprocessed images, read again from the dataset.

    C is :attr:`NetworkContext.input_channels`: 3 (RGB) or 1 (grayscale, PIL ``L``).
    """
    import torch

    from rfstore.datasets import load_rgb, resolve_inside

    paths = ctx.image_paths()
    preprocessing = ctx.preprocessing
    tensors = []
    for image in image_ids:
        relative = str(paths[image])
        try:
            tensors.append(preprocessing(load_rgb(resolve_inside(ctx.dataset_root, relative))))
        except Exception as err:
            raise MissingInputError(f"cannot read image {relative} again ({err}); "
                                    f"was the dataset changed since 'rfstore activations'?") from err
    if not tensors:
        height, width = ctx.input_size
        return torch.zeros(0, ctx.input_channels, height, width)
    return torch.stack(tensors)
