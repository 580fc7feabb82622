"""Occlusion discrepancy maps (Zhou et al. 2015, sec. 3.2), computed fast and exactly.

For a unit and an image, an occluder (``size`` x ``size`` px, ``stride``) slides over
the preprocessed image; the discrepancy at top-left position ``(oy, ox)`` is
``act(original) - act(occluded)`` of the unit at a fixed feature-map location.

:func:`discrepancy_maps` gives the same numbers as running every occluded full
image through the network (:func:`naive_discrepancy_maps`), but

1. skips positions whose window misses the unit's theoretical RF (exact 0.0),
2. runs the network on an RF-covering crop whose offset is a multiple of the
   layer's jump (argument in :mod:`rfstore.core.occlusion_plan`), checked at run
   time on the unoccluded crop, with a whole-image fallback,
3. shares occluded forward passes between targets of one image (greedy
   merge on crop area x positions) and packs equal-shape crops of several
   groups/images into batches of ``batch_size``, built with tensor ops,
4. evaluates conv targets in the forward's sequential prefix by *incremental
   inference* (Krypton, Nakandala et al., SIGMOD 2019) where estimated cheaper:
   the unoccluded maps are computed once per image and, per occluder
   position, only the outputs that the occluder changes inside the unit's
   dependency cone are recomputed, layer by layer, batched over positions
   (:mod:`rfstore.core.occlusion_dispatch` and the modules it names), with
   run-time checks and the crop path as fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from rfstore.core.occlusion_dispatch import incremental_maps
from rfstore.core.occlusion_exec import (
    Consumer,
    Runner,
    evaluate_groups,
    guard,
    min_extent,
    reference,
    unit_values,
)
from rfstore.core.occlusion_plan import Group, Member, full_group, make_member, plan_image

__all__ = [
    "LayerGeometry",
    "OcclusionTarget",
    "OcclusionStats",
    "occluder_positions",
    "discrepancy_maps",
    "naive_discrepancy_maps",
    "pixel_attribution",
]

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class LayerGeometry:
    """Theoretical RF of a layer, per axis ``(y, x)``, in input pixels.

    Attributes
    ----------
    size : tuple of int
        RF size.
    jump : tuple of int
        Effective stride (product of strides up to the layer).
    start : tuple of float
        Centre of unit ``(0, 0)`` in pixel-centre coordinates (may be negative
        or half-integer).
    kind : str
        ``"conv"`` or ``"linear"``.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]
    kind: str


@dataclass(frozen=True)
class OcclusionTarget:
    """One (image, unit, location) whose discrepancy map is wanted.

    Attributes
    ----------
    image : int
        Index into the ``images`` tensor.
    layer : str
        Key of the layer in the forward's output dict.
    unit : int
        Channel (conv) or feature (linear).
    y, x : int
        Location in the layer's feature map (0 for linear layers).
    """

    image: int
    layer: str
    unit: int
    y: int
    x: int


@dataclass(frozen=True)
class OcclusionStats:
    """Work done by one :func:`discrepancy_maps` / naive call.

    Attributes
    ----------
    n_targets, n_positions : int
        Targets and occluder positions per target (``n_oy * n_ox``).
    image_pixels : int
        ``H * W``.
    forward_calls : int
        Calls of ``forward`` (all kinds).
    occluded_inputs, occluded_pixels : int
        Occluded inputs evaluated and their total pixel count.
    reference_inputs, guard_inputs, probe_inputs : int
        Full unoccluded images, unoccluded crops (alignment guard), and
        zero inputs probing the smallest accepted input size.
    padded_inputs : int
        Duplicate inputs added so that no forward batch has size 1 (CPU conv
        kernels differ for N=1, which would break batch-size invariance).
    input_pixels : int
        Pixels of every input sent to ``forward`` (padding duplicates excluded).
    positions_skipped : int
        Target positions left at exact 0 because the window misses the RF.
    fallbacks : int
        Targets whose crop failed the guard and were recomputed on full images.
    groups : int
        Shared work groups (one crop + position set each).
    min_crop_extent : int
        Smallest crop side accepted by ``forward`` (``H`` if never probed).
    incremental_targets, incremental_inputs : int
        Targets evaluated incrementally (or found never changed by the
        occluder), and the occluder positions evaluated for them (patch
        recomputation, not counted in ``occluded_inputs``).
    incremental_rejected : int
        Targets whose incremental checks failed (recomputed on crops).
    """

    n_targets: int
    n_positions: int
    image_pixels: int
    forward_calls: int
    occluded_inputs: int
    occluded_pixels: int
    reference_inputs: int
    guard_inputs: int
    probe_inputs: int
    padded_inputs: int
    input_pixels: int
    positions_skipped: int
    fallbacks: int
    groups: int
    min_crop_extent: int
    incremental_targets: int = 0
    incremental_inputs: int = 0
    incremental_rejected: int = 0

    @property
    def naive_inputs(self) -> int:
        """Occluded full images a per-(unit, image) naive run evaluates."""
        return self.n_targets * self.n_positions

    @property
    def naive_pixels(self) -> int:
        """Input pixels of the per-(unit, image) naive run."""
        return self.naive_inputs * self.image_pixels


def occluder_positions(length: int, size: int, stride: int) -> np.ndarray:
    """Top-left occluder positions along one axis.

    Parameters
    ----------
    length, size, stride : int
        Image length, occluder size and stride.

    Returns
    -------
    np.ndarray, shape (n,), int64
        ``0, stride, 2*stride, ...`` while ``p + size <= length``.
    """
    if size < 1 or stride < 1 or size > length:
        raise ValueError(f"bad occluder: length={length}, size={size}, stride={stride}")
    return np.arange(0, length - size + 1, stride, dtype=np.int64)


def _check_inputs(
    images: torch.Tensor, fill: torch.Tensor, targets: Sequence[OcclusionTarget]
) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    fill_b = torch.broadcast_to(fill, images.shape)
    for t in targets:
        if not 0 <= t.image < images.shape[0]:
            raise IndexError(f"target image {t.image} out of range")
    return fill_b


def _writer(maps: np.ndarray, ref: np.ndarray) -> Consumer:
    """Consumer writing ``ref - act`` into ``maps`` at each member's own positions."""

    def consume(out: dict[str, torch.Tensor], flat: np.ndarray, rows: slice, g: Group) -> None:
        acts = unit_values(out, g, rows)  # one device->host copy per group and batch
        for m, act in zip(g.members, acts):
            sel = m.mask.ravel()[flat]
            maps[m.index].ravel()[flat[sel]] = ref[m.index] - act[sel]

    return consume


def discrepancy_maps(
    forward: Forward,
    images: torch.Tensor,
    fill: torch.Tensor,
    targets: Sequence[OcclusionTarget],
    geometry: Mapping[str, LayerGeometry],
    size: int = 11,
    stride: int = 3,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    guard_rtol: float = 1e-5,
    incremental: bool | None = None,
) -> tuple[np.ndarray, OcclusionStats]:
    """Discrepancy maps of many (image, unit, location) targets.

    Parameters
    ----------
    forward : callable
        Maps a batch ``(B, 3, h, w)`` to ``{layer: (B, C, h', w') or (B, C)}``;
        must accept crops (any ``h, w`` large enough) for conv layers.
    images : torch.Tensor, shape (N, 3, H, W)
        Preprocessed images.
    fill : torch.Tensor, broadcastable to (N, 3, H, W)
        Occluder content per image (e.g. ``zeros(1, 3, 1, 1)``).
    targets : sequence of OcclusionTarget, length T
    geometry : mapping
        ``layer -> LayerGeometry`` for every target layer.
    size, stride : int
        Occluder side and stride (positions from :func:`occluder_positions`).
    batch_size : int
        Inputs per forward call (bounds memory).
    device, dtype
        Where and in which precision ``forward`` runs.
    guard_rtol : float
        Crop guard and incremental check tolerance, relative to the unit's
        max |activation| on the full image.
    incremental : bool or None
        Incremental inference (:mod:`rfstore.core.occlusion_dispatch`) for conv
        targets in the forward's sequential prefix: None chooses per target by
        estimated work, True uses it wherever supported, False never.

    Returns
    -------
    maps : np.ndarray, shape (T, n_oy, n_ox), float32
        ``act(original) - act(occluded)``; exactly 0.0 where the window misses
        the unit's theoretical RF.
    stats : OcclusionStats
    """
    fill_b = _check_inputs(images, fill, targets)
    h, w = images.shape[-2:]
    pos_y, pos_x = occluder_positions(h, size, stride), occluder_positions(w, size, stride)
    maps = np.zeros((len(targets), pos_y.size, pos_x.size), dtype=np.float32)
    runner = Runner(forward, torch.device(device), dtype)
    members = [
        make_member(i, t, geometry[t.layer], pos_y, pos_x, size, (h, w))
        for i, t in enumerate(targets)
    ]
    with torch.inference_mode():
        ref, scale, linear = reference(runner, images, targets, batch_size)
        for m in members:
            if m.linear != linear[m.index]:
                raise ValueError(f"{m.target.layer!r}: geometry kind disagrees with output rank")
        by_img: dict[int, list[Member]] = {}
        for m in members:
            by_img.setdefault(m.target.image, []).append(m)
        counters: dict[str, int] = {}
        if incremental is not False:
            convs = [m for m in members if not m.linear and m.mask.any()]
            rest, counters = incremental_maps(
                runner, images, fill_b, convs, ref, scale, maps, (pos_y, pos_x), size,
                batch_size, incremental, guard_rtol,
            )
            done = {m.index for m in convs} - {m.index for m in rest}
            by_img = {i: [m for m in ms if m.index not in done] for i, ms in by_img.items()}
        probe_needed = any(
            not m.linear and (m.lo[0] > 0 or m.lo[1] > 0 or m.hi[0] < h - 1 or m.hi[1] < w - 1)
            for ms in by_img.values() for m in ms
        )
        extent = min_extent(runner, (h, w), images.shape[1]) if probe_needed else max(h, w)
        groups = [g for i, ms in by_img.items() for g in plan_image(i, ms, (h, w), extent)]
        groups, failed = guard(runner, images, groups, ref, scale, guard_rtol, batch_size)
        groups += [full_group(i, ms, (h, w)) for i, ms in failed.items()]
        evaluate_groups(runner, images, fill_b, groups, pos_y, pos_x, size, batch_size, _writer(maps, ref))
    stats = OcclusionStats(
        **runner.counters(),
        n_targets=len(targets),
        n_positions=pos_y.size * pos_x.size,
        image_pixels=h * w,
        positions_skipped=int(sum((~m.mask).sum() for m in members)),
        fallbacks=sum(len(ms) for ms in failed.values()),
        groups=len(groups),
        min_crop_extent=extent,
        **counters,
    )
    return maps, stats


def naive_discrepancy_maps(
    forward: Forward,
    images: torch.Tensor,
    fill: torch.Tensor,
    targets: Sequence[OcclusionTarget],
    size: int = 11,
    stride: int = 3,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, OcclusionStats]:
    """Reference: every occluded full image through ``forward`` (no skipping, no crops).

    Targets of one image share each forward pass; batches span images.  Same
    parameters and outputs as :func:`discrepancy_maps` (no geometry: outputs of
    shape (B, C) are read as linear features).  Positions outside the RF come
    out as computed (normally exactly 0).
    """
    fill_b = _check_inputs(images, fill, targets)
    h, w = images.shape[-2:]
    pos_y, pos_x = occluder_positions(h, size, stride), occluder_positions(w, size, stride)
    maps = np.zeros((len(targets), pos_y.size, pos_x.size), dtype=np.float32)
    runner = Runner(forward, torch.device(device), dtype)
    with torch.inference_mode():
        ref, _, linear = reference(runner, images, targets, batch_size)
        by_img: dict[int, list[Member]] = {}
        for i, t in enumerate(targets):
            every = np.ones((pos_y.size, pos_x.size), dtype=bool)
            m = Member(i, t, bool(linear[i]), (1, 1), (0, 0), (h - 1, w - 1), every)
            by_img.setdefault(t.image, []).append(m)
        groups = [full_group(i, ms, (h, w)) for i, ms in by_img.items()]
        evaluate_groups(runner, images, fill_b, groups, pos_y, pos_x, size, batch_size, _writer(maps, ref))
    stats = OcclusionStats(
        **runner.counters(),
        n_targets=len(targets), n_positions=pos_y.size * pos_x.size, image_pixels=h * w,
        positions_skipped=0, fallbacks=0, groups=len(groups), min_crop_extent=max(h, w),
    )
    return maps, stats


def pixel_attribution(
    maps: np.ndarray, height: int, width: int, size: int, stride: int
) -> np.ndarray:
    """Per-pixel mean of the discrepancies of the windows covering each pixel.

    This is Captum's ``Occlusion`` attribution when ``(H - size) % stride == 0``
    (Captum then places windows exactly at :func:`occluder_positions`).

    Parameters
    ----------
    maps : np.ndarray, shape (T, n_oy, n_ox)
    height, width, size, stride : int

    Returns
    -------
    np.ndarray, shape (T, height, width), float64
        0 where no window covers a pixel.
    """
    m = torch.from_numpy(np.asarray(maps, dtype=np.float64))[:, None]
    ones = torch.ones(1, 1, size, size, dtype=torch.float64)
    total = torch.nn.functional.conv_transpose2d(m, ones, stride=stride)[:, 0]
    count = torch.nn.functional.conv_transpose2d(torch.ones_like(m[:1]), ones, stride=stride)[:, 0]
    out = np.zeros((maps.shape[0], height, width), dtype=np.float64)
    th, tw = total.shape[-2:]
    out[:, :th, :tw] = (total / count).numpy()
    return out
