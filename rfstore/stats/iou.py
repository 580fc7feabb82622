"""Network Dissection scores (Bau et al., CVPR 2017): how well a unit's masks match each concept.

For a unit ``u`` and a concept ``c``, over a set of images ``i`` (here: the unit's
top-K images), with ``M_i`` the unit's binary segmentation of image ``i`` and
``C_i`` the pixels labelled ``c`` in it::

    IoU(u, c) = sum_i |M_i & C_i| / sum_i |M_i | C_i|

(intersection and union counts are summed over the images before dividing, as
NetDissect does, so an image where the concept is absent adds the unit's mask
to the union only). A union of 0 (empty masks, absent concept) gives IoU 0.

Chance baseline. ``IoU_chance(u, c)`` is the same ratio with the intersection
replaced by its expectation if each of the unit's mask pixels fell on a
uniformly random pixel of its image, independently of where the concept is: a
mask of ``a_i`` pixels meets a concept covering ``c_i`` of the image's ``A_i``
pixels in ``a_i * c_i / A_i`` pixels on average, so::

    E_i = a_i * c_i / A_i
    IoU_chance(u, c) = sum_i E_i / sum_i (a_i + c_i - E_i)

It depends only on the mask and concept areas: a unit whose masks merely cover
much of the image scores high on large concepts (the background) by chance, and
the baseline says by how much. A unit is labelled with the concept of highest
IoU among the eligible ones (all but the "no concept" index 0), provided that IoU
is above its chance baseline and at least ``min_iou`` (NetDissect's 0.04).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: NetDissect's threshold for calling a unit a detector of a concept.
DEFAULT_MIN_IOU = 0.04


@dataclass(frozen=True)
class ConceptCounts:
    """Pixel counts of one unit against every concept, summed over images.

    Attributes
    ----------
    intersection, union : numpy.ndarray
        ``(n_concepts,)`` float64: summed ``|M & C|`` and ``|M | C|``.
    chance_intersection, chance_union : numpy.ndarray
        ``(n_concepts,)`` float64: summed ``a c / A`` and ``a + c - a c / A``.
    images : int
        Images counted.
    """

    intersection: np.ndarray
    union: np.ndarray
    chance_intersection: np.ndarray
    chance_union: np.ndarray
    images: int

    def iou(self) -> np.ndarray:
        """``(n_concepts,)`` IoU (0 where the union is empty)."""
        return _ratio(self.intersection, self.union)

    def iou_chance(self) -> np.ndarray:
        """``(n_concepts,)`` chance baseline (0 where the expected union is empty)."""
        return _ratio(self.chance_intersection, self.chance_union)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.shape(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def concept_areas(concept_map: np.ndarray, n_concepts: int) -> np.ndarray:
    """``(n_concepts,)`` int64: pixels of each concept in an ``(H, W)`` map of concept indices.

    Values outside ``0 .. n_concepts - 1`` belong to no concept.
    """
    flat = np.asarray(concept_map).ravel().astype(np.int64)
    flat = flat[(flat >= 0) & (flat < n_concepts)]
    return np.bincount(flat, minlength=n_concepts)


def concept_counts(unit_masks: np.ndarray, concept_maps: np.ndarray, n_concepts: int) -> ConceptCounts:
    """Count a unit's overlaps with every concept over a set of images.

    Parameters
    ----------
    unit_masks : numpy.ndarray
        ``(R, H, W)`` bool (or 0/1): the unit's segmentation of each of R images.
    concept_maps : numpy.ndarray
        ``(R, H, W)`` integer: the concept index of each pixel of the same images.
    n_concepts : int
        Number of concepts (indices ``0 .. n_concepts - 1``).

    Returns
    -------
    ConceptCounts
    """
    masks = np.asarray(unit_masks).astype(bool)
    maps = np.asarray(concept_maps)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"unit masks {masks.shape} and concept maps {maps.shape} must both be (R, H, W)")
    shape = (n_concepts,)
    inter, union = np.zeros(shape), np.zeros(shape)
    chance_inter, chance_union = np.zeros(shape), np.zeros(shape)
    for mask, cmap in zip(masks, maps, strict=True):
        area = float(mask.sum())
        pixels = float(mask.size)
        concept = concept_areas(cmap, n_concepts).astype(np.float64)
        overlap = concept_areas(cmap[mask], n_concepts).astype(np.float64)
        inter += overlap
        union += area + concept - overlap
        expected = area * concept / pixels if pixels else np.zeros(shape)
        chance_inter += expected
        chance_union += area + concept - expected
    return ConceptCounts(inter, union, chance_inter, chance_union, len(masks))


def label_units(iou: np.ndarray, chance: np.ndarray, eligible: np.ndarray,
                min_iou: float = DEFAULT_MIN_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's best concept and whether it counts as a detector of it.

    Parameters
    ----------
    iou, chance : numpy.ndarray
        ``(U, n_concepts)`` IoU and chance baseline; rows of NaN are units not scored.
    eligible : numpy.ndarray
        ``(n_concepts,)`` bool: the concepts a unit may be labelled with.
    min_iou : float
        Smallest IoU that counts.

    Returns
    -------
    best : numpy.ndarray
        ``(U,)`` int64: index of the eligible concept of highest IoU (the lowest
        index among ties), -1 for units not scored or with no eligible concept.
    labelled : numpy.ndarray
        ``(U,)`` bool: ``iou[best] > chance[best]`` and ``iou[best] >= min_iou``.
    """
    iou = np.asarray(iou, dtype=np.float64)
    chance = np.asarray(chance, dtype=np.float64)
    eligible = np.asarray(eligible, dtype=bool)
    n_units = iou.shape[0]
    best = np.full(n_units, -1, dtype=np.int64)
    labelled = np.zeros(n_units, dtype=bool)
    if not eligible.any() or n_units == 0:
        return best, labelled
    scored = ~np.isnan(iou).any(axis=1)
    masked = np.where(eligible[None, :], np.nan_to_num(iou, nan=-1.0), -np.inf)
    choice = masked.argmax(axis=1)
    best[scored] = choice[scored]
    rows = np.flatnonzero(scored)
    value, base = iou[rows, choice[rows]], chance[rows, choice[rows]]
    labelled[rows] = (value > base) & (value >= min_iou)
    return best, labelled
