"""Key layout and chunk shapes of an rfstore store (../shared/CONTRACT.md, schema v1).

::

    /                                   attrs: schema_version, created, rfstore_version
    /{network}/                         attrs: model, weights_sha256, preprocessing, input_size, dataset_root, ...
        image, image_path, image_label, image_error         (image)
    /{network}/{layer}/                 attrs: kind, rf_theory_size/jump/start, stage parameters
        act_max, act_mean, act_y, act_x                     (image, unit)
        act_map                                             (image, unit, map_y, map_x)   only with --maps
        topk_image, topk_value, topk_y, topk_x              (unit, rank)
        discrepancy                                         (unit, rank, oy, ox)
        rf_map                                              (unit, ry, rx)
        rf_size                                             (unit)
        seg_mask                                            (unit, rank, py, px)
        concept, iou                                        (unit)          dissect
        concept_iou, iou_chance                             (unit, concept_name)
    /{network}/{layer}/netdissect/      dissect --method netdissect (dataset-wide IoU): netdissect_specs
    /{network}/{layer}/match/{other}/{other_layer}/     compare --match: best_unit, best_corr (unit): match_specs
    /{network}/_rfstore/{stage}[/{layer}]                   stage bookkeeping: fingerprint, parameters, done flags

Every dimension used in a group has a coordinate array of the same name in that
group, so each group opens on its own as an :class:`xarray.Dataset`.
"""
from __future__ import annotations

import math
import os

import numpy as np

from rfstore.store.base import ArraySpec, Store

SCHEMA_VERSION = 1
NAN = float("nan")

#: images per chunk along the ``image`` axis: the activations stage writes and
#: checkpoints one such block of images at a time (``RFSTORE_IMAGE_BLOCK`` overrides
#: it for stores created afterwards; an existing store keeps its own).
IMAGE_BLOCK = int(os.environ.get("RFSTORE_IMAGE_BLOCK", "1024"))
#: units per chunk along the ``unit`` axis of per-image arrays.
UNIT_BLOCK = 512
#: bookkeeping group of each network (hidden from xarray's view of the layer groups).
INTERNAL = "_rfstore"


def network_group(network: str) -> str:
    return network


def layer_group(network: str, layer: str) -> str:
    return f"{network}/{layer}"


def progress_group(network: str, stage: str, layer: str | None = None) -> str:
    """Group holding a stage's fingerprint, parameters and done flags."""
    base = f"{network}/{INTERNAL}/{stage}"
    return base if layer is None else f"{base}/{layer}"


def write_coordinate(store: Store, group: str, dim: str, values: np.ndarray) -> None:
    """Create (or replace if different) the coordinate array ``group/dim``."""
    values = np.asarray(values)
    path = f"{group}/{dim}"
    if store.is_array(path) and store.array_spec(path).shape == values.shape:
        if np.array_equal(store.read(path), values):
            return
    dtype = "float32" if values.dtype.kind == "f" else "int64"
    store.create_array(path, ArraySpec(values.shape, dtype, (dim,), (max(1, len(values)),), 0), data=values.astype(dtype))


# -- per-network arrays ------------------------------------------------------------
def image_specs(n_images: int, image_block: int | None = None) -> dict[str, ArraySpec]:
    """Per-image arrays; ``image_error``'s chunk is the activations stage's block of images."""
    chunk = (min(max(n_images, 1), 65536),)
    return {
        "image_path": ArraySpec((n_images,), "str", ("image",), chunk, ""),
        "image_label": ArraySpec((n_images,), "int64", ("image",), chunk, -1),
        "image_error": ArraySpec((n_images,), "str", ("image",), (image_block or IMAGE_BLOCK,), ""),
    }


# -- per-layer arrays --------------------------------------------------------------
def activation_specs(n_images: int, n_units: int, image_block: int) -> dict[str, ArraySpec]:
    shape = (n_images, n_units)
    chunks = (image_block, UNIT_BLOCK)
    dims = ("image", "unit")
    return {
        "act_max": ArraySpec(shape, "float32", dims, chunks, NAN),
        "act_mean": ArraySpec(shape, "float32", dims, chunks, NAN),
        "act_y": ArraySpec(shape, "int32", dims, chunks, -1),
        "act_x": ArraySpec(shape, "int32", dims, chunks, -1),
    }


def activation_map_spec(n_images: int, n_units: int, map_hw: tuple[int, int], image_block: int) -> ArraySpec:
    """Full activation maps in float16, chunked a few images by all units (about 2 MB).

    The images per chunk divide ``image_block``, so that every chunk lies in one
    block of images: tasks that each own whole blocks never share a chunk.
    """
    per_image = n_units * map_hw[0] * map_hw[1] * 2
    limit = max(1, min(image_block, (2 << 20) // max(per_image, 1)))
    images_per_chunk = max(d for d in range(1, limit + 1) if image_block % d == 0)
    return ArraySpec(
        (n_images, n_units, *map_hw), "float16", ("image", "unit", "map_y", "map_x"),
        (images_per_chunk, n_units, *map_hw), NAN,
    )


def topk_specs(n_units: int, k: int) -> dict[str, ArraySpec]:
    shape = (n_units, k)
    dims = ("unit", "rank")
    chunks = (min(n_units, 4096), k)
    return {
        "topk_image": ArraySpec(shape, "int64", dims, chunks, -1),
        "topk_value": ArraySpec(shape, "float32", dims, chunks, NAN),
        "topk_y": ArraySpec(shape, "int32", dims, chunks, -1),
        "topk_x": ArraySpec(shape, "int32", dims, chunks, -1),
    }


def discrepancy_spec(n_units: int, k: int, n_oy: int, n_ox: int) -> ArraySpec:
    """One chunk per (unit, rank): the occlude stage computes image by image and writes each map whole."""
    return ArraySpec((n_units, k, n_oy, n_ox), "float32", ("unit", "rank", "oy", "ox"), (1, 1, n_oy, n_ox), NAN)


def rf_specs(n_units: int, window: tuple[int, int]) -> dict[str, ArraySpec]:
    unit_chunk = max(1, min(n_units, (4 << 20) // max(4 * window[0] * window[1], 1)))
    return {
        "rf_map": ArraySpec((n_units, *window), "float32", ("unit", "ry", "rx"), (unit_chunk, *window), NAN),
        "rf_size": ArraySpec((n_units,), "float32", ("unit",), (n_units,), NAN),
    }


def segmentation_spec(n_units: int, k: int, input_hw: tuple[int, int]) -> ArraySpec:
    """Masks (1 = inside, 0 = outside, 255 = not computed) on the preprocessed input's pixel grid."""
    return ArraySpec((n_units, k, *input_hw), "uint8", ("unit", "rank", "py", "px"), (1, k, *input_hw), 255)


#: units per chunk of the dissect stage's arrays (it writes and checkpoints whole chunks).
DISSECT_UNIT_BLOCK = 256


def concept_name_spec(n_concepts: int) -> ArraySpec:
    """The ``concept_name`` coordinate (str) of the dissect stage; create it before :func:`dissect_specs`."""
    return ArraySpec((n_concepts,), "str", ("concept_name",), (max(n_concepts, 1),), "")


def dissect_specs(n_units: int, n_concepts: int) -> dict[str, ArraySpec]:
    """Dissect stage: best ``concept`` (unit) and its ``iou``; ``concept_iou``, ``iou_chance`` (unit, concept_name)."""
    chunk = max(1, min(n_units, DISSECT_UNIT_BLOCK))
    dims = ("unit", "concept_name")
    return {
        "concept": ArraySpec((n_units,), "str", ("unit",), (chunk,), ""),
        "iou": ArraySpec((n_units,), "float32", ("unit",), (chunk,), NAN),
        "concept_iou": ArraySpec((n_units, n_concepts), "float32", dims, (chunk, max(n_concepts, 1)), NAN),
        "iou_chance": ArraySpec((n_units, n_concepts), "float32", dims, (chunk, max(n_concepts, 1)), NAN),
    }


#: subgroup of a layer group holding the results of ``dissect --method netdissect``.
NETDISSECT_GROUP = "netdissect"


def netdissect_group(network: str, layer: str) -> str:
    return f"{network}/{layer}/{NETDISSECT_GROUP}"


def whole(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One chunk for the whole array (results written at once)."""
    return tuple(max(1, n) for n in shape)


def netdissect_specs(n_units: int, n_labels: int, n_categories: int) -> dict[str, ArraySpec]:
    """``dissect --method netdissect``, per layer; coordinates ``concept`` (label numbers), ``category`` (names).

    Counts over the dataset (:mod:`rfstore.stats.netdissect`): ``threshold`` (unit), ``truth`` (concept),
    ``intersect`` (unit, concept), ``activation`` (unit, category); scores: ``iou`` (unit, concept),
    per category ``category_concept`` / ``category_label`` / ``category_iou`` (unit, category), and the
    unit's best ``label_concept`` / ``label`` / ``label_category`` / ``score`` / ``detector`` (unit).
    """
    u, uc, uk = (n_units,), (n_units, n_labels), (n_units, n_categories)
    one, two_c, two_k = ("unit",), ("unit", "concept"), ("unit", "category")
    return {
        "concept_label": ArraySpec((n_labels,), "str", ("concept",), whole((n_labels,)), ""),
        "concept_category": ArraySpec((n_labels,), "str", ("concept",), whole((n_labels,)), ""),
        "threshold": ArraySpec(u, "float64", one, whole(u), NAN),
        "truth": ArraySpec((n_labels,), "int64", ("concept",), whole((n_labels,)), 0),
        "intersect": ArraySpec(uc, "int64", two_c, whole(uc), 0),
        "activation": ArraySpec(uk, "int64", two_k, whole(uk), 0),
        "iou": ArraySpec(uc, "float64", two_c, whole(uc), NAN),
        "category_concept": ArraySpec(uk, "int64", two_k, whole(uk), -1),
        "category_label": ArraySpec(uk, "str", two_k, whole(uk), ""),
        "category_iou": ArraySpec(uk, "float64", two_k, whole(uk), NAN),
        "label_concept": ArraySpec(u, "int64", one, whole(u), -1),
        "label": ArraySpec(u, "str", one, whole(u), ""),
        "label_category": ArraySpec(u, "str", one, whole(u), ""),
        "score": ArraySpec(u, "float64", one, whole(u), NAN),
        "detector": ArraySpec(u, "uint8", one, whole(u), 0),
    }


#: subgroup of a layer group holding ``compare --match``'s pairings with the layers of other networks.
MATCH_GROUP = "match"


def match_group(network: str, layer: str, other: str, other_layer: str) -> str:
    """Where the units of ``network``'s ``layer`` record their best match in ``other``'s ``other_layer``."""
    return f"{network}/{layer}/{MATCH_GROUP}/{other}/{other_layer}"


def match_specs(n_units: int) -> dict[str, ArraySpec]:
    """``compare --match``, per layer pair and direction: for each unit of the layer, ``best_unit`` (unit)
    is the other layer's unit of highest Pearson correlation over the images' ``act_max`` (-1: none, e.g.
    a unit constant over the images), ``best_corr`` (unit) that correlation (NaN: none)."""
    one = (n_units,)
    return {
        "best_unit": ArraySpec(one, "int64", ("unit",), whole(one), -1),
        "best_corr": ArraySpec(one, "float32", ("unit",), whole(one), NAN),
    }


def n_blocks(length: int, block: int) -> int:
    return math.ceil(length / block) if length else 0
