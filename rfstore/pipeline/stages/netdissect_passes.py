"""The two passes of ``dissect --method netdissect`` over a block of images, in one process.

:func:`run_blocks` streams the images of some blocks through the network and
yields each block's result as soon as the block is complete; what is computed
per batch is a :class:`QuantileWork` (pass 1: each unit's largest activations,
the candidates of its top quantile) or a :class:`TallyWork` (pass 2: the block's
:class:`~rfstore.stats.netdissect.Tally` of every layer). Batches never straddle
two blocks and a block's images always form the same batches, so a block gives
the same numbers in a fresh run, a resumed run and a cluster task.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rfstore.stats.netdissect import TOP_QUANTILE, Annotation, Tally, label_totals, unit_masks
from rfstore.stats.quantile import TopQuantile, kept
from rfstore.datasets import ImageFolderDataset
from rfstore.datasets.broden import BrodenDataset, BrodenRow
from rfstore.errors import RfstoreError
from rfstore.models import FeatureExtractor
from rfstore.pipeline.stages.activations import block_batches, default_workers
from rfstore.recorded.network import NetworkContext, ParameterCheck
from rfstore.pipeline.devices import exact_float32, resolve_device

Block = tuple[int, int, int]  # (block id, first image position, stop)


@dataclass(frozen=True)
class DissectionPlan:
    """The images, layers and labels of one dissection.

    Attributes
    ----------
    dataset : BrodenDataset
        The Broden folder's tables.
    chosen : list of int
        Indices of the categories dissected (into ``dataset.categories``).
    label_category : numpy.ndarray
        ``(L,)`` int64: each label's category as a position in ``chosen`` (-1: none).
    images : numpy.ndarray
        ``(N,)`` int64, ascending: the store's image indices dissected ("image positions" index it).
    rows : tuple of BrodenRow
        The ``index.csv`` row of each of the N images.
    layers : list of str
        Layers dissected (conv layers).
    units, map_shapes : dict
        Per layer, its units and its activation map's ``(h, w)``.
    block : int
        Images per block.
    """

    dataset: BrodenDataset
    chosen: list[int]
    label_category: np.ndarray
    images: np.ndarray
    rows: tuple[BrodenRow, ...]
    layers: list[str]
    units: dict[str, int]
    map_shapes: dict[str, tuple[int, int]]
    block: int

    @property
    def categories(self) -> list[str]:
        return [self.dataset.categories[c] for c in self.chosen]

    @property
    def n_blocks(self) -> int:
        return -(-len(self.images) // self.block)

    def blocks(self, ids: np.ndarray) -> list[Block]:
        return [(int(b), int(b) * self.block, min(len(self.images), (int(b) + 1) * self.block)) for b in ids]

    def max_count(self, layer: str) -> int:
        """Activation values per unit over every image: the bound of its quantile."""
        height, width = self.map_shapes[layer]
        return len(self.images) * height * width

    def empty_quantiles(self) -> dict[str, TopQuantile]:
        return {layer: TopQuantile(self.units[layer], TOP_QUANTILE, self.max_count(layer), "float32")
                for layer in self.layers}

    def capacity(self) -> dict[str, tuple[int, int]]:
        """Per layer, the shape ``(units, kept)`` of its quantile's state."""
        return {layer: (self.units[layer], kept(TOP_QUANTILE, self.max_count(layer))) for layer in self.layers}


class _Items(Dataset):
    """The plan's images by position; with ``annotate``, each good image's Broden annotation too."""

    def __init__(self, ctx: NetworkContext, plan: DissectionPlan, positions: list[int], annotate: bool) -> None:
        self.images = ImageFolderDataset(ctx.dataset_root, list(ctx.image_paths()), ctx.preprocessing,
                                         plan.images[positions])
        self.positions = np.asarray(positions, dtype=np.int64)
        self.plan = plan if annotate else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str, Annotation | None]:
        _, tensor, error = self.images[i]
        position = int(self.positions[i])
        if self.plan is None or error:
            return position, tensor, error, None
        return position, tensor, error, self.plan.dataset.annotation(self.plan.rows[position], self.plan.chosen)

    def collate(self, batch: list[tuple[int, torch.Tensor, str, Annotation | None]]) -> tuple[Any, ...]:
        """``(positions (B,), good images (G, 3, H, W), [(position, reason)], [G annotations or None])``."""
        collated = self.images.collate([item[:3] for item in batch])
        return collated.indices.numpy(), collated.images, collated.errors, [item[3] for item in batch if not item[2]]


@dataclass
class BlockResult:
    """What one pass computed for one block: ``values`` per layer, images counted, unreadable ones."""

    values: dict[str, Any]
    truth: np.ndarray | None = None
    images: int = 0
    errors: dict[int, str] = field(default_factory=dict)


class QuantileWork:
    """Pass 1: per block and layer, a :class:`TopQuantile` of the block's activations."""

    annotate = False

    def __init__(self, plan: DissectionPlan) -> None:
        self.plan = plan
        self.capacity = {layer: shape[1] for layer, shape in plan.capacity().items()}

    def reduce(self, layer: str, act: torch.Tensor) -> tuple[np.ndarray, int]:
        """``(B, U, h, w)`` activations -> ``(U, m)`` their largest values per unit (m >= capacity), count."""
        if not torch.isfinite(act).all():
            raise RfstoreError(f"layer {layer} gave NaN or infinite activations; a quantile of them means nothing")
        flat = act.transpose(0, 1).reshape(act.shape[1], -1)
        count = flat.shape[1]
        if self.capacity[layer] < count:
            flat = torch.topk(flat, self.capacity[layer], dim=1, sorted=False).values
        return flat.float().cpu().numpy(), count

    def new(self) -> BlockResult:
        return BlockResult(self.plan.empty_quantiles())

    def add(self, result: BlockResult, outputs: dict[str, Any], annotations: list[Annotation | None]) -> None:
        for layer, (top, count) in outputs.items():
            result.values[layer].add_candidates(top, count)
        result.images += len(annotations)


class TallyWork:
    """Pass 2: per block, the :class:`Tally` of every layer and the labels' totals."""

    annotate = True

    def __init__(self, plan: DissectionPlan, thresholds: dict[str, np.ndarray], device: torch.device) -> None:
        self.plan = plan
        self.device = torch.device("cpu") if device.type == "mps" else device  # no float64 on MPS
        self.thresholds = {layer: torch.as_tensor(t, dtype=torch.float64, device=self.device)
                           for layer, t in thresholds.items()}

    def reduce(self, layer: str, act: torch.Tensor) -> torch.Tensor:
        return act.detach().to(self.device, torch.float32, copy=True)

    def new(self) -> BlockResult:
        n_categories = len(self.plan.chosen)
        return BlockResult({layer: Tally(self.plan.units[layer], self.plan.label_category, n_categories)
                            for layer in self.plan.layers}, np.zeros(self.plan.dataset.n_labels, dtype=np.int64))

    def add(self, result: BlockResult, outputs: dict[str, Any], annotations: list[Annotation | None]) -> None:
        for j, annotation in enumerate(annotations):
            result.truth += label_totals(annotation, self.plan.dataset.n_labels)
            for layer, maps in outputs.items():
                result.values[layer].add(unit_masks(maps[j], self.thresholds[layer], annotation.size), annotation)
        result.images += len(annotations)


def run_blocks(ctx: NetworkContext, plan: DissectionPlan, work: QuantileWork | TallyWork, blocks: list[Block],
               batch_size: int, device_name: str, num_workers: int | None,
               progress: Callable[[Iterator, int], Iterator] | None = None) -> Iterator[tuple[int, BlockResult]]:
    """Compute ``blocks`` with ``work``; yield ``(block id, result)`` as each block completes."""
    if not blocks:
        return
    device = resolve_device(device_name)
    positions = [p for _, start, stop in blocks for p in range(start, stop)]
    items = _Items(ctx, plan, positions, work.annotate)
    workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(items, batch_sampler=block_batches(blocks, batch_size), num_workers=workers,
                        collate_fn=items.collate, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    batches = iter(loader)
    if progress is not None:
        batches = progress(batches, len(positions))
    module = ctx.load_model_unchecked().module.eval()
    parameters = ParameterCheck(ctx, module)
    extractor = FeatureExtractor(module.to(device), plan.layers, reduce=work.reduce)
    pending = {block_id: (stop - start, work.new()) for block_id, start, stop in blocks}
    with torch.inference_mode(), exact_float32():
        for positions_, images, errors, annotations in batches:
            block_id = int(positions_[0]) // plan.block
            size, result = pending[block_id]
            if images.shape[0]:
                work.add(result, extractor(images.to(device, non_blocking=True)), annotations)
            result.errors.update(errors)
            if result.images + len(result.errors) == size:
                parameters.result()  # nothing computed by a model other than init's is kept
                del pending[block_id]
                yield block_id, result
