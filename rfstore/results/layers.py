"""What the report shows, read from a store: per-layer tables and per-unit arrays.

Everything here reads through :class:`~rfstore.store.Store` (opened read-only by the
caller) and tolerates partial results: a stage run for only some layers or units
leaves NaN / -1 / 255 (``seg_mask``) or no array at all, which comes back as NaN,
-1, ``None`` or an empty string, never as an error.

Read, per network: ``image_path`` and the ``preprocessing``/``dataset_root``/
``input_size`` attrs; per layer: attrs ``kind``, ``num_units``, ``rf_theory_*``,
``topk_k``, ``occluder_size``/``_stride``, ``rf_threshold``; arrays ``topk_*``,
``discrepancy``, ``rf_map``, ``rf_size``, ``seg_mask``, ``seg_mask_dissect`` and the
dissect stage's ``concept``, ``iou``, ``concept_iou``/``iou_chance`` (unit,
concept_name) where present.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from rfstore.results.table import size_label
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import StageProgress
from rfstore.store.layout import layer_group


@dataclass(frozen=True)
class LayerInfo:
    """Geometry and stage settings of one layer.

    ``theory_size``/``theory_jump``/``theory_start`` are ``(y, x)`` in input pixels;
    ``k`` is None before ``topk``; ``occluder`` is ``(size, stride)`` or None before
    ``occlude``; ``rf_threshold`` is None before ``rf``; ``dissect_masks`` is the
    segmentations ``dissect`` scored (``rf`` or ``activation``), None before it.
    """

    network: str
    layer: str
    depth: int
    kind: str
    n_units: int
    input_hw: tuple[int, int]
    theory_size: tuple[int, int] | None
    theory_jump: tuple[int, int] | None
    theory_start: tuple[float, float] | None
    k: int | None
    occluder: tuple[int, int] | None
    rf_threshold: float | None
    dissect_masks: str | None = None

    @property
    def theory_label(self) -> str:
        """``"51"`` for a square theoretical RF, ``"51x43"`` otherwise, ``"-"`` when unknown."""
        return size_label(self.theory_size)


@dataclass(frozen=True)
class LayerTable:
    """One row per unit for the layer page; arrays of shape ``(n_units,)``.

    ``rf_size`` and ``top_value`` (the rank-0 activation) are NaN where not computed,
    ``concept`` is ``""`` and ``iou`` NaN where ``dissect`` has not labelled the unit;
    ``occluded``/``segmented`` say which units the ``occlude``/``segment`` stages finished.
    """

    info: LayerInfo
    rf_size: np.ndarray
    top_value: np.ndarray
    concept: np.ndarray
    iou: np.ndarray
    occluded: np.ndarray
    segmented: np.ndarray


@dataclass(frozen=True)
class UnitData:
    """Everything drawn for one unit.

    Attributes
    ----------
    image, value, y, x : np.ndarray
        ``(K,)`` top images (-1: none), activations, unit location in each.
    centres : np.ndarray
        ``(K, 2)`` float pixel ``(y, x)`` of the unit's RF centre in each top image.
    discrepancy : np.ndarray or None
        ``(K, n_oy, n_ox)``, NaN where not computed; None before ``occlude``.
    rf_map : np.ndarray or None
        ``(2*ry+1, 2*rx+1)``, re-centred empirical RF; None when not computed.
    seg_mask, seg_mask_dissect : np.ndarray or None
        ``(K, H, W)`` uint8 1/0; None when not computed.
    concepts : list of (str, float, float)
        ``(concept, iou, chance iou)`` sorted by IoU, best first; empty without ``dissect``.
    """

    info: LayerInfo
    unit: int
    image: np.ndarray
    value: np.ndarray
    y: np.ndarray
    x: np.ndarray
    centres: np.ndarray
    discrepancy: np.ndarray | None
    rf_map: np.ndarray | None
    rf_size: float
    seg_mask: np.ndarray | None
    seg_mask_dissect: np.ndarray | None
    concept: str
    iou: float
    concepts: list[tuple[str, float, float]]

    @property
    def ranks(self) -> np.ndarray:
        """Ranks that have an image."""
        return np.flatnonzero(self.image >= 0)


def _pair(value: object) -> tuple | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value, value]
    return tuple(values[:2])


def layer_info(ctx: NetworkContext, layer: str) -> LayerInfo:
    attrs = ctx.layer_attrs(layer)
    size = _pair(attrs.get("rf_theory_size"))
    occluder = (int(attrs["occluder_size"]), int(attrs["occluder_stride"])) if "occluder_size" in attrs else None
    return LayerInfo(
        network=ctx.network, layer=layer, depth=ctx.layers.index(layer) + 1, kind=str(attrs.get("kind", "?")),
        n_units=int(attrs["num_units"]), input_hw=ctx.input_size,
        theory_size=None if size is None else (int(size[0]), int(size[1])),
        theory_jump=_pair(attrs.get("rf_theory_jump")), theory_start=_pair(attrs.get("rf_theory_start")),
        k=int(attrs["topk_k"]) if "topk_k" in attrs else None, occluder=occluder,
        rf_threshold=float(attrs["rf_threshold"]) if "rf_threshold" in attrs else None,
        dissect_masks=str(attrs.get("dissect_masks", "rf")) if "dissect_min_iou" in attrs else None,
    )


def _done(ctx: NetworkContext, stage: str, layer: str, n_units: int) -> np.ndarray:
    tracker = StageProgress(ctx.store, ctx.network, stage, layer)
    record = tracker.record()
    if record is None:
        return np.zeros(n_units, dtype=bool)
    if record.state == "complete":
        return np.ones(n_units, dtype=bool)
    done = tracker.done_mask()
    return done if done.shape == (n_units,) else np.zeros(n_units, dtype=bool)


def _strings(values: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, "", dtype=object)
    return np.array(["" if v is None else (v.decode() if isinstance(v, bytes) else str(v)) for v in values],
                    dtype=object)


def _floats(values: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64)


class LayerReader:
    """Reads one layer for the report: small per-unit arrays once, big ones unit by unit.

    Parameters
    ----------
    ctx : NetworkContext
        The network, in a store opened read-only.
    layer : str
        A recorded layer.
    """

    #: arrays read whole, once: (unit,) or (unit, rank) and the re-centred RF maps
    SMALL = ("topk_image", "topk_value", "topk_y", "topk_x", "rf_size", "concept", "iou", "concept_name")
    #: units read together from the per-unit arrays (rf_map, discrepancy, seg_mask, ...)
    BLOCK = 32

    def __init__(self, ctx: NetworkContext, layer: str) -> None:
        self.ctx = ctx
        self.layer = layer
        self.group = layer_group(ctx.network, layer)
        self.info = layer_info(ctx, layer)
        _, arrays = ctx.store.children(self.group)
        self.arrays = set(arrays)
        self._small = {name: ctx.store.read(f"{self.group}/{name}") for name in self.SMALL if name in self.arrays}
        self._blocks: dict[str, tuple[int, np.ndarray]] = {}

    def read(self, name: str, selection: object = slice(None)) -> np.ndarray | None:
        """An array of the layer (or a selection of it), None when the layer does not have it."""
        if name in self._small:
            return self._small[name][selection]
        if name not in self.arrays:
            return None
        return self.ctx.store.read(f"{self.group}/{name}", selection)

    def table(self) -> LayerTable:
        """The per-unit summary of the layer page."""
        n = self.info.n_units
        top = self.read("topk_value", (slice(None), 0)) if "topk_value" in self._small else None
        return LayerTable(
            info=self.info, rf_size=_floats(self.read("rf_size"), n), top_value=_floats(top, n),
            concept=_strings(self.read("concept"), n), iou=_floats(self.read("iou"), n),
            occluded=_done(self.ctx, "occlude", self.layer, n), segmented=_done(self.ctx, "segment", self.layer, n),
        )

    def _blocked(self, name: str, unit: int) -> np.ndarray | None:
        """``name[unit]``, read with the next units of its block (one read per ``BLOCK`` units)."""
        if name not in self.arrays:
            return None
        start = unit - unit % self.BLOCK
        cached = self._blocks.get(name)
        if cached is None or cached[0] != start:
            stop = min(self.info.n_units, start + self.BLOCK)
            cached = (start, self.ctx.store.read(f"{self.group}/{name}", slice(start, stop)))
            self._blocks[name] = cached
        return cached[1][unit - start]

    def _rf_map(self, unit: int) -> np.ndarray | None:
        rf_map = self._blocked("rf_map", unit)
        return None if rf_map is None or np.isnan(rf_map).all() else rf_map

    def _mask(self, name: str, unit: int) -> np.ndarray | None:
        masks = self._blocked(name, unit)
        return None if masks is None or (masks == 255).all() else masks

    def _concepts(self, unit: int) -> list[tuple[str, float, float]]:
        names = self.read("concept_name")
        scores = self._blocked("concept_iou", unit)
        if names is None or scores is None:
            return []
        chance = self._blocked("iou_chance", unit)
        chance = np.full(len(names), np.nan) if chance is None else np.asarray(chance, dtype=np.float64)
        rows = [(name, float(s), float(c)) for name, s, c in zip(_strings(names, len(names)), scores, chance)
                if not np.isnan(s)]
        return sorted(rows, key=lambda row: -row[1])

    def unit(self, unit: int) -> UnitData:
        """Everything drawn for ``unit``."""
        info = self.info
        if not 0 <= unit < info.n_units:
            raise IndexError(f"layer {self.layer} has units 0..{info.n_units - 1}, not {unit}")
        k = info.k or 0
        image = self.read("topk_image", unit)
        image = np.full(k, -1, dtype=np.int64) if image is None else np.asarray(image, dtype=np.int64)
        ys = self.read("topk_y", unit)
        xs = self.read("topk_x", unit)
        ys = np.zeros(len(image), dtype=np.int64) if ys is None else np.asarray(ys)
        xs = np.zeros(len(image), dtype=np.int64) if xs is None else np.asarray(xs)
        if info.theory_start is not None and info.theory_jump is not None:
            centres = np.stack([info.theory_start[0] + ys * info.theory_jump[0],
                                info.theory_start[1] + xs * info.theory_jump[1]], axis=-1).astype(np.float64)
        else:
            centres = np.full((len(image), 2), np.nan)
        discrepancy = self._blocked("discrepancy", unit)
        if discrepancy is not None and np.isnan(discrepancy).all():
            discrepancy = None
        rf_size = self.read("rf_size", unit)
        concept = self.read("concept", slice(unit, unit + 1))
        iou = self.read("iou", unit)
        return UnitData(
            info=info, unit=unit, image=image, value=_floats(self.read("topk_value", unit), len(image)),
            y=ys, x=xs, centres=centres, discrepancy=discrepancy, rf_map=self._rf_map(unit),
            rf_size=float("nan") if rf_size is None else float(rf_size),
            seg_mask=self._mask("seg_mask", unit), seg_mask_dissect=self._mask("seg_mask_dissect", unit),
            concept=_strings(concept, 1)[0], iou=float("nan") if iou is None else float(iou),
            concepts=self._concepts(unit),
        )


def layer_table(ctx: NetworkContext, layer: str) -> LayerTable:
    """The per-unit summary of a layer (small arrays only)."""
    return LayerReader(ctx, layer).table()


def unit_data(ctx: NetworkContext, layer: str, unit: int) -> UnitData:
    """Everything drawn for one unit (use a :class:`LayerReader` for many units of a layer)."""
    return LayerReader(ctx, layer).unit(unit)


class ImageCache:
    """Top images as the network saw them: ``(H, W, 3)`` uint8, preprocessed then un-normalised.

    A grayscale network's images (one channel) are drawn gray: the channel repeated three times.

    Images come from the dataset through :func:`rfstore.datasets.load_rgb` and the
    store's recorded :class:`~rfstore.datasets.Preprocessing` (resize, crop), so they
    line up pixel for pixel with ``seg_mask`` and the RF geometry. The last
    ``capacity`` images are kept, so a report reads each image once.
    """

    def __init__(self, ctx: NetworkContext, capacity: int = 512) -> None:
        self.ctx = ctx
        self.capacity = capacity
        self.paths = ctx.image_paths()
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self.failures: dict[int, str] = {}

    def __call__(self, image: int) -> np.ndarray | None:
        """The pixels of image ``image``, or None when it cannot be read (reason in ``failures``)."""
        if image in self._cache:
            self._cache.move_to_end(image)
            return self._cache[image]
        pixels = self._load(image)
        self._cache[image] = pixels
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return pixels

    def _load(self, image: int) -> np.ndarray | None:
        import torch

        from rfstore.datasets import load_rgb

        relative = str(self.paths[image])
        try:
            preprocessing = self.ctx.preprocessing
            tensor = preprocessing.to_pixels(preprocessing(load_rgb(self.ctx.dataset_root / relative)))
        except Exception as err:  # noqa: BLE001 - a missing image is drawn as a blank tile, not fatal
            self.failures[image] = f"{relative}: {err}"
            return None
        pixels = (tensor.clamp(0, 1) * 255 + 0.5).to(dtype=torch.uint8)
        if pixels.shape[0] == 1:
            pixels = pixels.expand(3, -1, -1)
        return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())
