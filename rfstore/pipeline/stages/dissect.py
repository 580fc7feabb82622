"""Stage ``dissect``: which concept each unit detects, scored against the dataset's concept masks.

Network Dissection (Bau et al. 2017) applied to the segment stage's masks (``masks``
``rf``: ``seg_mask``, the empirical RF placed on each top image, Zhou et al.'s
segmentation; ``activation``: ``seg_mask_dissect``, the upsampled activation map
above the unit's 99.5% quantile, Bau et al.'s, written when the activations kept
their maps): for
every unit and every concept, the IoU between the unit's segmentations of its
top-K images and the concept's pixels in those images, counts summed over the
images, with a chance baseline (:mod:`rfstore.stats.iou` defines both).
A unit's label is its eligible concept of highest IoU (never index 0, "no
concept"), kept only when that IoU beats its chance baseline and reaches
``min_iou``.

The dataset carries concept masks by the convention documented in
:mod:`rfstore.demo.scenes`: ``DIR/masks/<image path relative to DIR, suffix
.png>`` (one concept index per pixel) and ``DIR/concepts.json``. Masks are
brought to the network's input grid with the store's preprocessing geometry
(resize with nearest neighbour, centre crop), like their images.

Reads: ``DIR/concepts.json`` and the masks under ``DIR/masks/``; network attrs
``dataset_root``, ``preprocessing``, ``input_size``; ``image_path`` (image);
per layer ``seg_mask`` or ``seg_mask_dissect`` (unit, rank, py, px), ``topk_image``
(unit, rank) and the segment stage's bookkeeping.
Writes, per layer: ``concept_name`` (concept_name) str coordinate; ``concept``
(unit) str, the label ("" if none); ``iou`` (unit) float32, the IoU of the best
eligible concept (labelled or not); ``concept_iou`` and ``iou_chance`` (unit,
concept_name) float32; attrs ``dissect_min_iou``, ``dissect_masks`` and
``dissect_images_without_mask`` (top images of the units scored in the last run
that have no mask file). Units not scored hold NaN and "".

The stage's fingerprint covers ``concepts.json`` and ``min_iou``, not the mask
files: after changing masks, rerun with ``--force``.
"""
from __future__ import annotations

from collections import Counter

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from rfstore.pipeline import defaults
from rfstore.recorded.progress import complete_token, is_current
from rfstore.pipeline.stage import Job, Stage, unit_mask
from rfstore.stats.iou import DEFAULT_MIN_IOU, concept_counts, label_units
from rfstore.errors import MissingInputError, RfstoreError, UsageError
from rfstore.recorded.network import NetworkContext
from rfstore.recorded.progress import Plan, StageProgress, fingerprint
from rfstore.store.layout import DISSECT_UNIT_BLOCK, concept_name_spec, dissect_specs, layer_group

STAGE_VERSION = 1
CONCEPTS_FILE = "concepts.json"
MASKS_DIR = "masks"
_CACHE_LIMIT = 4096  # concept maps kept in memory per layer
MASK_ARRAYS = {"rf": "seg_mask", "activation": "seg_mask_dissect"}  # --masks: the segment stage's array it scores


class NoConceptsError(MissingInputError):
    """The dataset has no ``concepts.json``: there is nothing to dissect against."""


@dataclass(frozen=True)
class DissectConfig:
    """Parameters of the dissect stage.

    Parameters
    ----------
    layers : tuple of str
        Layers to dissect (default: every layer with segmentations).
    min_iou : float
        Smallest IoU for a label (NetDissect's 0.04).
    masks : str
        Which segmentations to score: ``rf`` (``seg_mask``) or ``activation``
        (``seg_mask_dissect``); see the module docstring.
    """

    layers: tuple[str, ...] = ()
    units: slice | None = None
    min_iou: float = defaults.MIN_IOU
    masks: str = defaults.MASKS

    def __post_init__(self) -> None:
        if self.masks not in MASK_ARRAYS:
            raise UsageError(f"must be one of {', '.join(MASK_ARRAYS)}, not {self.masks!r}", "masks")

    @property
    def mask_array(self) -> str:
        """The segment stage's array these masks are read from."""
        return MASK_ARRAYS[self.masks]

    def params(self, concepts: tuple[str, ...]) -> dict[str, object]:
        return {"min_iou": self.min_iou, "concepts": list(concepts), "masks": self.mask_array}


@dataclass
class DissectResult:
    """What :func:`run_dissect` did, per layer."""

    units_done: dict[str, int] = field(default_factory=dict)
    skipped_layers: list[str] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    without_masks: list[str] = field(default_factory=list)  # segmented, but without the --masks array
    images_without_mask: int = 0
    mask_array: str = "seg_mask"


def concepts_file(root: Path) -> Path:
    return Path(root) / CONCEPTS_FILE


def has_concepts(ctx: NetworkContext) -> bool:
    """Whether the store's dataset carries concept masks (a ``concepts.json``)."""
    return concepts_file(ctx.dataset_root).is_file()


def read_concepts(root: Path) -> tuple[str, ...]:
    """Concept names by index from ``root/concepts.json`` (keys ``"0" .. "n-1"``)."""
    path = concepts_file(root)
    if not path.is_file():
        raise NoConceptsError(
            f"the dataset {root} has no {CONCEPTS_FILE}, so there are no concept masks to dissect against; "
            f"dissect needs {root}/{CONCEPTS_FILE} ({{\"0\": \"background\", \"1\": \"...\"}}) and one mask per "
            f"image at {root}/{MASKS_DIR}/<image path>.png")
    try:
        raw = json.loads(path.read_text())
        names = {int(key): str(value) for key, value in raw.items()}
    except (ValueError, AttributeError) as err:
        raise RfstoreError(f"{path} must be a JSON object mapping concept indices to names: {err}") from err
    if sorted(names) != list(range(len(names))) or not names:
        raise RfstoreError(f"{path} must name the concept indices 0 .. n-1 without gaps; it has {sorted(names)}")
    return tuple(names[i] for i in range(len(names)))


def mask_path(root: Path, relative: str) -> Path:
    """Where the concept mask of image ``relative`` (relative to ``root``) lives."""
    return Path(root) / MASKS_DIR / Path(relative).with_suffix(".png")


def load_concept_map(ctx: NetworkContext, relative: str) -> np.ndarray | None:
    """``(H, W)`` int64 concept indices of one image on the input grid, or None without a mask file."""
    root = ctx.dataset_root
    path = mask_path(root, relative)
    if not path.is_file():
        return None
    with Image.open(path) as mask, Image.open(root / relative) as image:
        if mask.mode not in ("L", "P", "I;16", "I"):
            raise RfstoreError(f"concept mask {path} has mode {mask.mode}; it must be one channel of indices "
                               f"(8-bit L or P, or 16-bit)")
        if mask.size != image.size:
            raise RfstoreError(f"concept mask {path} is {mask.size[0]}x{mask.size[1]} but its image is "
                               f"{image.size[0]}x{image.size[1]}")
        mask.load()
        mask = _to_input_grid(mask, ctx)
    values = np.asarray(mask).astype(np.int64)
    if values.shape != ctx.input_size:
        raise RfstoreError(f"concept mask {path} becomes {values.shape} after preprocessing, "
                           f"not the input size {ctx.input_size}")
    return values


def _to_input_grid(mask: Image.Image, ctx: NetworkContext) -> Image.Image:
    """The preprocessing's geometry (resize, centre crop), with nearest-neighbour resampling."""
    pre = ctx.attrs["preprocessing"]
    if pre.get("resize") is None and pre.get("crop") is None:
        return mask
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    if mask.mode == "P":
        mask = Image.fromarray(np.asarray(mask), "L")
    if pre.get("resize") is not None:
        mask = TF.resize(mask, int(pre["resize"]), interpolation=InterpolationMode.NEAREST)
    if pre.get("crop") is not None:
        mask = TF.center_crop(mask, [int(pre["crop"])] * 2)
    return mask


def run_dissect(ctx: NetworkContext, config: DissectConfig, force: bool = False) -> DissectResult:
    """Score the segmented units of each layer against every concept; see the module docstring."""
    concepts = read_concepts(ctx.dataset_root)
    result = DissectResult(mask_array=config.mask_array)
    cache: dict[int, np.ndarray | None] = {}  # concept maps by image, shared by the layers
    all_without_mask: set[int] = set()
    for layer in ctx.check_layers(list(config.layers)):
        seg_tracker = StageProgress(ctx.store, ctx.network, "segment", layer)
        seg_record = seg_tracker.record()
        if seg_record is None:
            if config.layers:
                raise MissingInputError(f"dissect needs the segment results of layer {layer}: "
                                        f"run 'rfstore segment {ctx.store.path}' first")
            result.missing.append(layer)
            continue
        group = layer_group(ctx.network, layer)
        if not ctx.store.is_array(f"{group}/{config.mask_array}"):
            if config.layers:
                raise _no_masks_error(ctx, config, [layer])
            result.without_masks.append(layer)
            continue
        n_units = ctx.n_units(layer)
        tracker = StageProgress(ctx.store, ctx.network, "dissect", layer)
        params = config.params(concepts)
        plan = tracker.begin(params, fingerprint("dissect", STAGE_VERSION, params, [seg_record.token]), n_units, force,
                             upstream=("segment",))
        if plan is Plan.SKIP:
            result.skipped_layers.append(layer)
            continue
        if plan is Plan.FRESH:
            ctx.store.create_array(f"{group}/concept_name", concept_name_spec(len(concepts)),
                                   data=np.asarray(concepts, dtype=object))
            for name, spec in dissect_specs(n_units, len(concepts)).items():
                ctx.store.create_array(f"{group}/{name}", spec)
            ctx.store.update_attrs(group, {"dissect_min_iou": config.min_iou, "dissect_masks": config.masks})
        ready = seg_tracker.done_mask()
        selected = unit_mask(n_units, config.units)
        todo = np.flatnonzero(ready & selected & ~tracker.done_mask())
        without_mask: set[int] = set()
        for start in range(0, n_units, DISSECT_UNIT_BLOCK):
            units = todo[(todo >= start) & (todo < start + DISSECT_UNIT_BLOCK)]
            if units.size:
                _dissect_block(ctx, layer, concepts, config, slice(start, min(n_units, start + DISSECT_UNIT_BLOCK)),
                               units, cache, without_mask)
                tracker.mark_done(units)
        result.units_done[layer] = int(todo.size)
        waiting = int((~ready & selected).sum())
        if waiting:
            result.waiting[layer] = waiting
        if todo.size:
            ctx.store.update_attrs(group, {"dissect_images_without_mask": len(without_mask)})
        all_without_mask |= without_mask
        if tracker.done_mask().all():
            tracker.complete()
    if not result.units_done and not result.skipped_layers:
        if result.without_masks:
            raise _no_masks_error(ctx, config, result.without_masks)
        raise MissingInputError(f"dissect needs segmentations: run 'rfstore segment {ctx.store.path}' first")
    result.images_without_mask = len(all_without_mask)
    return result


def _no_masks_error(ctx: NetworkContext, config: DissectConfig, layers: list[str]) -> MissingInputError:
    names = ",".join(layers)
    return MissingInputError(
        f"dissect --masks {config.masks} needs {config.mask_array}, which segment writes only for layers whose "
        f"activation maps were kept, and layer(s) {names} have none: run 'rfstore activations {ctx.store.path} "
        f"--maps {names} --force' and the later stages again, or score --masks rf")


def _dissect_block(ctx: NetworkContext, layer: str, concepts: tuple[str, ...], config: DissectConfig,
                   block: slice, units: np.ndarray, cache: dict[int, np.ndarray | None],
                   without_mask: set[int]) -> None:
    """Score ``units`` (all inside ``block``) and write the block's rows of every output."""
    group = layer_group(ctx.network, layer)
    paths = ctx.image_paths()
    top = ctx.store.read(f"{group}/topk_image")
    rows = {name: ctx.store.read(f"{group}/{name}", block) for name in ("concept", "iou", "concept_iou", "iou_chance")}
    for unit in units:
        seg = ctx.store.read(f"{group}/{config.mask_array}", int(unit))
        masks, maps = [], []
        for rank, image in enumerate(top[unit]):
            if image < 0 or (seg[rank] == 255).any():
                continue
            if int(image) not in cache:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[int(image)] = load_concept_map(ctx, str(paths[image]))
            concept_map = cache[int(image)]
            if concept_map is None:
                without_mask.add(int(image))
                continue
            masks.append(seg[rank] == 1)
            maps.append(concept_map)
        row = int(unit) - block.start
        if not masks:
            continue
        counts = concept_counts(np.stack(masks), np.stack(maps), len(concepts))
        rows["concept_iou"][row] = counts.iou()
        rows["iou_chance"][row] = counts.iou_chance()
    eligible = np.arange(len(concepts)) > 0
    best, labelled = label_units(rows["concept_iou"], rows["iou_chance"], eligible, config.min_iou)
    scored = best >= 0
    index = np.flatnonzero(scored)
    rows["iou"][:] = np.nan
    rows["iou"][index] = rows["concept_iou"][index, best[index]]
    rows["concept"][:] = ""
    for i in np.flatnonzero(labelled):
        rows["concept"][i] = concepts[best[i]]
    for name, values in rows.items():
        ctx.store.write(f"{group}/{name}", block, values)


# -- the stage ---------------------------------------------------------------------------
def _run(job: Job) -> DissectResult:
    return run_dissect(job.ctx, job.config, job.force)


def summary(result: DissectResult, ctx: NetworkContext) -> list[str]:
    lines = []
    for layer, n in ((layer, n) for layer, n in result.units_done.items() if n):
        labels = ctx.store.read(f"{layer_group(ctx.network, layer)}/concept")
        found = Counter(str(name) for name in labels if name)
        named = ", ".join(f"{name} {count}" for name, count in found.most_common())
        lines.append(f"dissect: {layer}: {n} unit(s) scored; {sum(found.values())}/{labels.size} labelled"
                     + (f" ({named})" if named else ""))
    lines += [f"dissect: {layer}: {n} unit(s) wait for their segmentations ('rfstore segment')"
              for layer, n in result.waiting.items()]
    if result.skipped_layers:
        lines.append(f"dissect: already complete for {', '.join(result.skipped_layers)}; nothing to do there")
    if result.missing:
        lines.append(f"dissect: no segmentations yet for {', '.join(result.missing)} ('rfstore segment')")
    if result.without_masks:
        lines.append(f"dissect: no {result.mask_array} for {', '.join(result.without_masks)} (their activation maps "
                     f"were not kept: 'rfstore activations --maps'); left out")
    if result.images_without_mask:
        lines.append(f"dissect: {result.images_without_mask} top image(s) have no mask file and were left out")
    return lines or ["dissect: nothing new to score for the units selected"]


def changed(ctx: NetworkContext, config: DissectConfig) -> bool:
    if not has_concepts(ctx):
        return True  # running says why it cannot
    params = config.params(read_concepts(ctx.dataset_root))
    layers = ctx.check_layers(list(config.layers))
    return not is_current(ctx.store, ctx.network, "dissect", STAGE_VERSION, params,
                          {layer: complete_token(ctx.store, ctx.network, "segment", layer) for layer in layers})


def skip(ctx: NetworkContext) -> str | None:
    """A dataset without concept masks is no reason for a whole run to fail."""
    if has_concepts(ctx):
        return None
    return f"the dataset {ctx.dataset_root} has no concepts.json (no concept masks)"


def recorded(params: dict) -> dict:
    """The recorded parameters as config values (the record names the mask array, the config its kind)."""
    kinds = {array: kind for kind, array in MASK_ARRAYS.items()}
    values = {"min_iou": params.get("min_iou"), "masks": kinds.get(params.get("masks"))}
    return {key: value for key, value in values.items() if value is not None}


STAGE = Stage("dissect", ("segment",), DissectConfig, _run, summary, changed, skip=skip, recorded=recorded)
