"""A store holding two networks run on the same images, with hand-written RF sizes and concept labels.

``tiny``: the demo's TinyAlexNet, layers features.1, features.4, features.11 (relative depths 0, 0.5, 1);
``twoclass``: :class:`compare_nets.TwoClassAlexNet`, its four ReLUs features.1, features.4, features.7,
classifier.2 (0, 1/3, 2/3, 1). Both on the same generated scenes with ``init`` and ``activations`` run;
``rf_size`` and ``concept`` are written here (:data:`RF_MEASURED`, :data:`LABELS`) so that the tables have
every case: a layer with no ``rf_size`` array, one whose every unit is NaN, partial and full ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rfstore.datasets import Preprocessing
from rfstore.models import ModelSpec
from rfstore.pipeline.stages.activations import ActivationsConfig, run_activations
from rfstore.recorded.network import NetworkContext
from rfstore.pipeline.stages.init import InitConfig, run_init
from rfstore.store import ArraySpec, open_store

TESTS = Path(__file__).resolve().parent
TINY = ("tiny", "rfstore.demo.network:tiny_alexnet", "features.1,features.4,features.11")
TWOCLASS = ("twoclass", f"{TESTS / 'compare_nets.py'}:two_class_alexnet", None)
#: units given an rf_size per (network, layer); None: no rf_size array at all; an empty range: all NaN
RF_MEASURED = {("tiny", "features.1"): range(0, 5), ("tiny", "features.4"): None, ("tiny", "features.11"): range(32),
               ("twoclass", "features.1"): range(3, 6), ("twoclass", "features.4"): range(0),
               ("twoclass", "features.7"): range(10, 14), ("twoclass", "classifier.2"): range(0)}
#: hand-written dissect labels: (network, layer) -> {unit: concept}
LABELS = {("tiny", "features.11"): {0: "disk", 1: "disk", 2: "bar"}, ("twoclass", "features.7"): {5: "square"}}


def write_rf_and_labels(store, network: str, layer: str, n_units: int, rng: np.random.Generator) -> None:
    """What the rf and dissect stages would write: ``rf_size`` (:data:`RF_MEASURED`), ``concept`` (:data:`LABELS`)."""
    group = f"{network}/{layer}"
    measured = RF_MEASURED[(network, layer)]
    if measured is not None:
        sizes = np.full(n_units, np.nan, dtype=np.float32)
        sizes[list(measured)] = rng.uniform(3, 60, len(measured)).round(1)
        store.create_array(f"{group}/rf_size", ArraySpec((n_units,), "float32", ("unit",), (n_units,), np.nan),
                           data=sizes)
    labels = LABELS.get((network, layer))
    if labels:
        concept = np.array([labels.get(u, "") for u in range(n_units)], dtype=object)
        store.create_array(f"{group}/concept", ArraySpec((n_units,), "str", ("unit",), (n_units,), ""), data=concept)


def build_two_network_store(path: Path, images: Path) -> Path:
    """Init and activations of both networks on ``images`` (tensor preprocessing), then the hand-written results."""
    rng = np.random.default_rng(7)
    with open_store(path, "a") as st:
        for name, model, layers in (TINY, TWOCLASS):
            run_init(st, InitConfig(model=ModelSpec(model, None, 0), data=images, preprocessing=Preprocessing.tensor(),
                                    layers=layers, name=name))
            ctx = NetworkContext.open(st, name)
            run_activations(ctx, ActivationsConfig(batch_size=32, num_workers=0))
            for layer in ctx.layers:
                write_rf_and_labels(st, name, layer, ctx.n_units(layer), rng)
    return path
