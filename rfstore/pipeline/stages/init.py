"""Stage ``init``: record the network, its preprocessing, the dataset and the layers.

Reads: the model (``--model``/``--weights``/``--seed``), the image folder (``--data``): a
folder of images, or a Broden folder (:mod:`rfstore.datasets.broden`), whose images of
``--split`` (every split by default) are recorded in ``index.csv`` order.
Writes:
    ``/`` attrs ``schema_version``, ``created``, ``rfstore_version``;
    ``/{network}`` attrs ``model``, ``weights_sha256``, ``parameters_sha256``,
    ``preprocessing``, ``input_size``, ``input_channels``, ``dataset_root``,
    ``dataset_digest``, ``classes``, ``skipped_files``, ``layers``, library versions;
    ``/{network}/image_path``, ``image_label``, ``image_error`` (image);
    ``/{network}/{layer}`` attrs ``kind``, ``num_units``, ``output_shape``,
    ``rf_theory_size``, ``rf_theory_jump``, ``rf_theory_start`` (or ``rf_theory_error``);
    for a Broden folder also ``/{network}`` attrs ``dataset_kind`` ("broden"), ``broden_split``,
    ``broden_digest``, ``broden_categories`` and the arrays of
    :func:`rfstore.pipeline.stages.netdissect_store.write_broden_tables` (``image_split``, ``concept``, ...).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from rfstore.version import __version__
from rfstore.rf.theory import ReceptiveFieldError, theoretical_receptive_fields
from rfstore.datasets import BadImageError, ImageFolderIndex, Preprocessing, load_rgb, scan_image_folder
from rfstore.datasets.broden import BrodenDataset, is_broden, read_broden
from rfstore.datasets.preprocess import IMAGENET_MEAN, IMAGENET_STD
from rfstore.errors import InputError, RfstoreError, StageMismatchError, StoreError, UsageError
from rfstore.models import LayerInfo, ModelSpec, input_channels, load_model, probe_layers, select_layers
from rfstore.models.selection import module_types
from rfstore.recorded.network import parameters_digest
from rfstore.pipeline.stages.netdissect_store import write_broden_tables
from rfstore.recorded.progress import fingerprint
from rfstore.store import Store
from rfstore.store.layout import SCHEMA_VERSION, image_specs, layer_group, write_coordinate

log = logging.getLogger(__name__)
STAGE_VERSION = 1


@dataclass(frozen=True)
class InitConfig:
    """Everything ``rfstore init`` records.

    Parameters
    ----------
    model : ModelSpec
        The network.
    data : Path
        Root of the image folder.
    name : str, optional
        Network key in the store (default: ``model.default_name()``).
    preprocessing : Preprocessing, optional
        Default: ImageNet preprocessing for torchvision models, tensor otherwise.
    layers : str, optional
        Layer selection (``None``: every activation module; see
        :func:`rfstore.models.select_layers`).
    channels : int, optional
        Input channels, 1 (grayscale) or 3 (RGB); None: found from the model
        (:func:`rfstore.models.input_channels`).
    split : str, optional
        For a Broden folder, record only the images of this split (default: all).
    """

    model: ModelSpec
    data: Path
    name: str | None = None
    preprocessing: Preprocessing | None = None
    layers: str | None = None
    channels: int | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.channels is not None and self.channels not in (1, 3):
            raise UsageError(f"must be 1 (grayscale) or 3 (RGB), not {self.channels}", "channels")
        if self.model.spec.startswith("torchvision:") and self.model.weights is None:
            raise UsageError(f"{self.model.spec} needs a choice of weights: DEFAULT (the pretrained ones, from "
                             f"torchvision's cache or a download), another weights name, a state_dict PATH, or none "
                             f"(random initialisation, seeded by --seed)", "weights")

    def resolved_name(self) -> str:
        return self.name or self.model.default_name()

    def resolved_preprocessing(self, broden: bool = False) -> Preprocessing:
        """The preprocessing asked for, or the model's default; for a Broden folder the default keeps
        the images whole (no resize, no crop), as Network Dissection compares maps with whole-image
        segmentations."""
        if self.preprocessing is not None:
            return self.preprocessing
        imagenet = self.model.default_preprocessing() == "imagenet"
        if broden:
            return Preprocessing(None, None, IMAGENET_MEAN, IMAGENET_STD) if imagenet else Preprocessing.tensor()
        return Preprocessing.imagenet() if imagenet else Preprocessing.tensor()


@dataclass(frozen=True)
class InitResult:
    network: str
    n_images: int
    layers: list[str]
    skipped: int
    already_done: bool


def input_size_for(preprocessing: Preprocessing, index: ImageFolderIndex) -> tuple[int, int]:
    """The preprocessed input size: the crop, or the native size of the first readable image."""
    size = preprocessing.output_size()
    if size is not None:
        return size
    for rel in index.paths:
        try:
            tensor = preprocessing(load_rgb(index.root / rel))
        except BadImageError:
            continue
        return int(tensor.shape[1]), int(tensor.shape[2])
    raise RfstoreError(f"no readable image in {index.root}")


@dataclass
class Recording:
    """What init will record: everything read and checked, nothing written yet (see :func:`prepare_init`)."""

    config: InitConfig
    network: str
    root: Path
    broden: BrodenDataset | None
    loaded: Any
    index: ImageFolderIndex
    digest: str
    preprocessing: Preprocessing
    input_hw: tuple[int, int]
    channels: int
    layers: list[str]
    params: dict[str, Any]
    fingerprint: str


def prepare_init(config: InitConfig) -> Recording:
    """Load the network, scan the images and select the layers; every error comes before anything is written."""
    network = config.resolved_name()
    if "/" in network or network.startswith("_") or not network:
        raise UsageError(f"must be non-empty, without '/', not starting with '_', not {network!r}", "name")
    root = Path(config.data).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"--data {config.data} is not a directory")
    broden = read_broden(root) if is_broden(root) else None
    if config.split is not None and broden is None:
        raise UsageError(f"{config.split} chooses among the splits of a Broden folder, and {root} is not one (it has "
                         f"no index.csv, label.csv and category.csv)", "split")
    loaded = load_model(config.model)
    index = broden.image_index(config.split) if broden is not None else scan_image_folder(root)
    if not index.paths:
        raise InputError(f"no image files in {root}")
    digest = _dataset_digest(index, broden, config.split)
    preprocessing = config.resolved_preprocessing(broden is not None)
    input_hw = input_size_for(preprocessing, index)
    channels = input_channels(loaded.module, input_hw, config.channels)
    preprocessing = _for_channels(preprocessing, channels)
    layers = select_layers(loaded.module, config.layers, (channels, *input_hw))
    params = {"model": config.model.to_dict(), "preprocessing": preprocessing.to_dict(), "dataset_root": str(root),
              "dataset_digest": digest, "layers": layers}
    if broden is not None:
        params["split"] = config.split
    return Recording(config, network, root, broden, loaded, index, digest, preprocessing, input_hw, channels, layers,
                     params, fingerprint("init", STAGE_VERSION, params, []))


def run_init(store: Store, config: InitConfig | Recording, force: bool = False) -> InitResult:
    """Record the network, dataset and layers in ``store`` (see module docstring)."""
    rec = config if isinstance(config, Recording) else prepare_init(config)
    done = _recorded(store, rec, force)
    if done is not None:
        return done
    infos = probe_layers(rec.loaded.module, rec.layers, (rec.channels, *rec.input_hw))
    rfs, rf_errors = _theoretical_rfs(rec.loaded.module, rec.layers, rec.input_hw, rec.channels)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    _schema(store, now)
    _write_images(store, rec)
    for info in infos:
        _write_layer(store, rec, info, rfs.get(info.name), rf_errors.get(info.name))
    _write_network(store, rec, now)
    store.flush()
    return InitResult(rec.network, len(rec.index.paths), rec.layers, len(rec.index.skipped), already_done=False)


def _recorded(store: Store, rec: Recording, force: bool) -> InitResult | None:
    """The result when the network is recorded with these settings; an error for other settings unless ``force``
    (the network is then deleted, to be recorded again)."""
    network = rec.network
    if not (store.has(network) and "model" in store.attrs(network)):
        return None
    recorded = store.attrs(network)
    if recorded.get("init_fingerprint") == rec.fingerprint and not force:
        return InitResult(network, len(rec.index.paths), rec.layers, len(rec.index.skipped), already_done=True)
    if not force:
        old = recorded.get("init_params", {})
        changed = [k for k in sorted(rec.params) if old.get(k) != rec.params[k]]
        raise StageMismatchError(
            f"network {network!r} is already in {store.path} with other settings ({', '.join(changed)} differ"
            f"{'; the image folder changed' if 'dataset_digest' in changed else ''}); "
            f"use --force to start it over, or --name to add another network")
    store.delete(network)
    return None


def _schema(store: Store, now: str) -> None:
    root_attrs = store.attrs("")
    if "schema_version" not in root_attrs:
        store.update_attrs("", {"schema_version": SCHEMA_VERSION, "created": now, "rfstore_version": __version__})
    elif root_attrs["schema_version"] != SCHEMA_VERSION:
        raise StoreError(f"{store.path} has schema version {root_attrs['schema_version']}, "
                         f"this rfstore writes version {SCHEMA_VERSION}")


def _write_images(store: Store, rec: Recording) -> None:
    network, n_images = rec.network, len(rec.index.paths)
    store.require_group(network)
    write_coordinate(store, network, "image", np.arange(n_images))
    specs = image_specs(n_images)
    store.create_array(f"{network}/image_path", specs["image_path"], data=np.asarray(rec.index.paths, dtype=object))
    store.create_array(f"{network}/image_label", specs["image_label"],
                       data=np.asarray(rec.index.labels, dtype=np.int64))
    store.create_array(f"{network}/image_error", specs["image_error"])


def _write_layer(store: Store, rec: Recording, info: LayerInfo, rf: Any, rf_error: str | None) -> None:
    group = layer_group(rec.network, info.name)
    store.require_group(group)
    write_coordinate(store, group, "image", np.arange(len(rec.index.paths)))
    write_coordinate(store, group, "unit", np.arange(info.num_units))
    attrs: dict[str, object] = {"kind": info.kind, "num_units": info.num_units, "output_shape": list(info.output_shape)}
    module = dict(rec.loaded.module.named_modules()).get(info.name)
    if module is not None:
        attrs["module_types"] = module_types(module)
    if rf is not None:
        attrs |= {"rf_theory_size": list(rf.size), "rf_theory_jump": list(rf.jump), "rf_theory_start": list(rf.start)}
    else:
        attrs["rf_theory_error"] = rf_error
    store.update_attrs(group, attrs)


def _write_network(store: Store, rec: Recording, now: str) -> None:
    config, loaded = rec.config, rec.loaded
    store.update_attrs(rec.network, {
        "model": config.model.to_dict(), "model_spec": config.model.spec,
        "weights_sha256": loaded.weights_sha256 or "", "parameters_sha256": parameters_digest(loaded.module),
        "num_classes": loaded.num_classes if loaded.num_classes is not None else -1,
        "preprocessing": rec.preprocessing.to_dict(), "input_size": list(rec.input_hw),
        "input_channels": rec.channels, "dataset_root": str(rec.root), "dataset_digest": rec.digest,
        "classes": list(rec.index.classes), "skipped_files": [[s.path, s.reason] for s in rec.index.skipped],
        "layers": rec.layers, "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
        "rfstore_version": __version__, "created": now, "init_params": rec.params, "init_fingerprint": rec.fingerprint,
    })
    if rec.broden is not None:
        write_broden_tables(store, rec.network, rec.broden, config.split, rec.index.paths)


def _for_channels(preprocessing: Preprocessing, channels: int) -> Preprocessing:
    """The preprocessing for ``channels``-channel input; an RGB normalisation on a grayscale network is an error."""
    try:
        return preprocessing.with_channels(channels)
    except ValueError:
        raise RfstoreError(
            f"the network takes {channels} input channel(s) but the preprocessing normalises with "
            f"mean {list(preprocessing.mean or [])} and std {list(preprocessing.std or [])} (R, G, B); "
            f"give --mean and --std one value each, or --preprocess tensor") from None


def _dataset_digest(index: ImageFolderIndex, broden: BrodenDataset | None, split: str | None) -> str:
    """The image list's digest; for Broden, also of its tables and the split."""
    if broden is None:
        return index.digest()
    return hashlib.sha256(f"broden:{broden.digest}:{split}:{index.digest()}".encode()).hexdigest()


def _theoretical_rfs(model: torch.nn.Module, layers: list[str], input_hw: tuple[int, int],
                     channels: int) -> tuple[dict, dict[str, str]]:
    """Theoretical RFs of the layers that can be analysed, and the reason for each that cannot."""
    try:
        return theoretical_receptive_fields(model, layers, input_hw, in_channels=channels), {}
    except ReceptiveFieldError:
        pass
    rfs, errors = {}, {}
    for layer in layers:
        try:
            rfs |= theoretical_receptive_fields(model, [layer], input_hw, in_channels=channels)
        except ReceptiveFieldError as err:
            errors[layer] = str(err)
    return rfs, errors
