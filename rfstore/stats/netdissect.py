"""Network Dissection's dataset-wide tally (Bau et al. 2017), as NetDissect-Lite counts it.

Per unit ``u`` with threshold ``t_u`` (its activations' 99.5% quantile over every
position of every image) and per image ``i`` with segmentation size ``sh x sw``:

* ``M_i`` = the unit's activation map resized to ``sh x sw`` as NetDissect-Lite
  did (``scipy.misc.imresize(map, (sh, sw), mode='F')``: PIL's bilinear resize of a
  float image, reproduced bit for bit by :func:`resize_bilinear_pil`), then ``> t_u``;
* the image's labels: pixel layers ``P_i`` (each ``sh x sw``; several layers per
  pixel are several labels; label 0 is no label) and image-level labels ``S_i``
  (covering the whole image).

Summed over the images (``[.]`` is 1 if true, ``cat(l)`` the label's category)::

    truth[l]        += sum_layers |P == l|                  + sh*sw * #{l in S_i}     (l != 0)
    intersect[u, l] += sum_layers |M & (P == l)|            + |M|   * #{l in S_i}     (l != 0)
    hit[u, c]        = some l != 0 with cat(l) = c has a pixel under M, or some l in S_i has cat(l) = c
    activation[u, c] += |M| * [hit[u, c]]
    IoU[u, l]        = intersect[u, l] / (activation[u, cat(l)] + truth[l] - intersect[u, l] + 1e-10)

so a unit's mask counts toward a label's union only on images where its
category is present under the mask. A label without a category has IoU 0. Each
category's best label is its label of highest IoU (lowest number among ties;
-1 when every IoU of the category is 0); a unit's label is the best of its
category bests (first category among ties), and the unit is a *detector* when
that IoU is at least :data:`DETECTOR_IOU`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
import numpy as np
import torch

#: NetDissect's IoU threshold for calling a unit a detector of its label.
DETECTOR_IOU = 0.04
#: NetDissect's activation quantile: a unit's mask is where it is in its top 0.5%.
TOP_QUANTILE = 0.995
#: NetDissect-Lite's term that keeps an empty union from dividing by zero.
IOU_EPSILON = 1e-10


@dataclass(frozen=True)
class Annotation:
    """The labels of one image.

    Attributes
    ----------
    pixels : numpy.ndarray
        ``(n_layers, sh, sw)`` integer: label per pixel and layer (0: none).
    image_labels : numpy.ndarray
        ``(n,)`` int64: image-level labels (each covers the whole image).
    size : tuple of int
        ``(sh, sw)``.
    """

    pixels: np.ndarray
    image_labels: np.ndarray
    size: tuple[int, int]


# -- PIL's bilinear resize ------------------------------------------------------------
@lru_cache(maxsize=64)
def _pil_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear filter coefficients (``precompute_coeffs``) for one axis.

    Returns ``(start (out,) int64, weights (out, taps) float64)``: output ``x`` is
    ``sum_t input[start[x] + t] * weights[x, t]``, summed in order of ``t``.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, inverse = 1.0 * filterscale, 1.0 / filterscale
    rows = []
    for x in range(out_size):
        center = (x + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        weights = [max(0.0, 1.0 - abs((i - center + 0.5) * inverse)) for i in range(xmin, xmax)]
        total = sum(weights)
        rows.append((xmin, [w / total for w in weights] if total != 0.0 else weights))
    taps = max(len(w) for _, w in rows)
    start = np.array([s for s, _ in rows], dtype=np.int64)
    weights = np.zeros((out_size, taps))
    for x, (_, w) in enumerate(rows):
        weights[x, :len(w)] = w
    return start, weights


def _resize_last_axis(values: torch.Tensor, out_size: int) -> torch.Tensor:
    """One Pillow resampling pass along the last axis: float64 sums, stored as float32."""
    in_size = values.shape[-1]
    if in_size == out_size:
        return values
    start, weights = _pil_taps(in_size, out_size)
    device = values.device
    index = torch.as_tensor(np.minimum(start[:, None] + np.arange(weights.shape[1]), in_size - 1), device=device)
    taps = torch.as_tensor(weights, dtype=torch.float64, device=device)
    total = values[..., index[:, 0]].double() * taps[:, 0]
    for t in range(1, weights.shape[1]):  # Pillow's order of summation
        total = total + values[..., index[:, t]].double() * taps[:, t]
    return total.float()


def resize_bilinear_pil(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(..., h, w)`` float32 maps resized to ``(..., sh, sw)`` exactly as ``PIL.Image.resize(BILINEAR)``
    resizes a mode ``F`` image: the horizontal pass, then the vertical one, each summed in float64 and
    stored as float32. (Float64 is not available on Apple's MPS: pass CPU tensors there.)

    This is the order of every Pillow NetDissect-Lite ran on. Pillow 13 does the vertical pass first
    when the height shrinks much more than the width (python-pillow/Pillow#9549), which changes the
    last bit of some values then; square maps resized to square segmentations (Broden's) are the same
    in every version."""
    wide = _resize_last_axis(maps.float(), size[1])
    return _resize_last_axis(wide.transpose(-1, -2), size[0]).transpose(-1, -2)


def unit_masks(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(U, sh, sw)`` bool: each of ``(U, h, w)`` maps resized to ``size`` and ``> thresholds`` ``(U,)`` float64."""
    return resize_bilinear_pil(maps, size).double() > thresholds.to(maps.device, torch.float64)[:, None, None]


# -- the tally ------------------------------------------------------------------------
def label_totals(annotation: Annotation, n_labels: int) -> np.ndarray:
    """``(n_labels,)`` int64: the image's ``truth`` counts (see the module docstring)."""
    pixels = np.asarray(annotation.pixels).ravel()
    _check_labels(pixels, n_labels)
    totals = np.bincount(pixels, minlength=n_labels).astype(np.int64)
    labels = _image_labels(annotation, n_labels)
    np.add.at(totals, labels, annotation.size[0] * annotation.size[1])
    totals[0] = 0
    return totals


def _check_labels(labels: np.ndarray, n_labels: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"label {int(labels.max()) if labels.max() >= n_labels else int(labels.min())} "
                         f"is not one of the {n_labels} labels of the dataset")


def _image_labels(annotation: Annotation, n_labels: int) -> np.ndarray:
    labels = np.asarray(annotation.image_labels, dtype=np.int64)
    _check_labels(labels, n_labels)
    return labels[labels != 0]


class Tally:
    """``intersect (U, L)`` and ``activation (U, C)`` int64 counts of one layer, image by image.

    Parameters
    ----------
    n_units : int
        Units U.
    label_category : numpy.ndarray
        ``(L,)`` int64: each label's category index (-1: none).
    n_categories : int
        Categories C.
    """

    def __init__(self, n_units: int, label_category: np.ndarray, n_categories: int) -> None:
        self.label_category = np.asarray(label_category, dtype=np.int64)
        self.n_categories = int(n_categories)
        self.intersect = np.zeros((n_units, self.label_category.size), dtype=np.int64)
        self.activation = np.zeros((n_units, self.n_categories), dtype=np.int64)

    def add(self, masks: torch.Tensor, annotation: Annotation) -> None:
        """Count one image: ``masks`` ``(U, sh, sw)`` bool (any device), its labels ``annotation``."""
        n_labels = self.label_category.size
        flat = masks.reshape(masks.shape[0], -1)
        area = flat.sum(dim=1).cpu().numpy().astype(np.int64)
        present, overlap = _pixel_overlap(flat, np.asarray(annotation.pixels), n_labels)
        hit = np.zeros((flat.shape[0], self.n_categories), dtype=bool)
        self.intersect[:, present] += overlap
        for column, label in enumerate(present):
            if self.label_category[label] >= 0:
                hit[:, self.label_category[label]] |= overlap[:, column] > 0
        for label in _image_labels(annotation, n_labels):
            self.intersect[:, label] += area
            if self.label_category[label] >= 0:
                hit[:, self.label_category[label]] = True
        self.activation += area[:, None] * hit


def _pixel_overlap(flat_masks: torch.Tensor, pixels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """The labels present in ``pixels`` ``(layers, sh, sw)`` and ``(U, P)`` int64 mask pixels on each.

    Counted as ``masks (U, S) @ one-hot (S, P)`` per layer in float32, which is exact for
    counts below 2**24 (and TF32 must be off: :func:`rfstore.pipeline.devices.exact_float32`).
    """
    layers = pixels.reshape(pixels.shape[0], flat_masks.shape[1])
    _check_labels(layers, n_labels)
    present = np.unique(layers[layers != 0])
    overlap = torch.zeros((flat_masks.shape[0], present.size), dtype=torch.float32, device=flat_masks.device)
    if present.size:
        masks = flat_masks.float()
        for layer in layers:
            labelled = np.flatnonzero(layer)
            onehot = torch.zeros((layer.size, present.size), dtype=torch.float32, device=flat_masks.device)
            columns = np.searchsorted(present, layer[labelled])
            onehot[torch.as_tensor(labelled, device=onehot.device), torch.as_tensor(columns, device=onehot.device)] = 1
            overlap += masks @ onehot
    return present, overlap.cpu().numpy().astype(np.int64)


# -- scores ---------------------------------------------------------------------------
def iou(intersect: np.ndarray, activation: np.ndarray, truth: np.ndarray, label_category: np.ndarray) -> np.ndarray:
    """``(U, L)`` float64 IoU from the counts (see the module docstring); 0 for labels without a category."""
    label_category = np.asarray(label_category)
    has = label_category >= 0
    union_activation = np.zeros(intersect.shape, dtype=np.float64)
    union_activation[:, has] = activation[:, label_category[has]]
    out = intersect / (union_activation + truth[None, :] - intersect + IOU_EPSILON)
    out[:, ~has] = 0.0
    return out


@dataclass(frozen=True)
class Labels:
    """Each unit's best label per category and overall.

    Attributes
    ----------
    category_label : numpy.ndarray
        ``(U, C)`` int64: best label number per category, -1 when every IoU of the category is 0.
    category_iou : numpy.ndarray
        ``(U, C)`` float64: its IoU (0 where none).
    label, category : numpy.ndarray
        ``(U,)`` int64: the unit's label (-1: none) and that label's category (-1: none).
    score : numpy.ndarray
        ``(U,)`` float64: its IoU.
    """

    category_label: np.ndarray
    category_iou: np.ndarray
    label: np.ndarray
    category: np.ndarray
    score: np.ndarray

    def detectors(self, min_iou: float = DETECTOR_IOU) -> np.ndarray:
        """``(U,)`` bool: units whose label's IoU reaches ``min_iou``."""
        return (self.label >= 0) & (self.score >= min_iou)


def best_labels(scores: np.ndarray, label_category: np.ndarray, n_categories: int) -> Labels:
    """Best label of each category and overall from ``(U, L)`` IoU (see the module docstring)."""
    n_units = scores.shape[0]
    category_label = np.full((n_units, n_categories), -1, dtype=np.int64)
    category_iou = np.zeros((n_units, n_categories))
    for c in range(n_categories):
        members = np.flatnonzero(np.asarray(label_category) == c)
        if members.size:
            column = scores[:, members].argmax(axis=1)
            value = scores[np.arange(n_units), members[column]]
            category_label[:, c] = np.where(value > 0, members[column], -1)
            category_iou[:, c] = np.where(value > 0, value, 0.0)
    category = category_iou.argmax(axis=1) if n_categories else np.zeros(n_units, dtype=np.int64)
    score = category_iou[np.arange(n_units), category] if n_categories else np.zeros(n_units)
    label = category_label[np.arange(n_units), category] if n_categories else np.full(n_units, -1)
    category = np.where(label >= 0, category, -1)
    return Labels(category_label, category_iou, label.astype(np.int64), category.astype(np.int64), score)
