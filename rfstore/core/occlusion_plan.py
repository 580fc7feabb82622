"""Planning for the occlusion engine: RF bounds, aligned crops, work sharing.

Everything here is pure integer / numpy bookkeeping; no tensors are touched.
The executor lives in :mod:`rfstore.core.occlusion`.

Alignment argument (why a crop gives the same activation as the full image)
--------------------------------------------------------------------------
Let the layer have effective stride ``J`` and theoretical RF ``[lo, hi]`` (per
axis, unclipped).  Take the crop ``[a, b)`` with ``a = floor(max(lo, 0) / L) * L``
(``L`` a multiple of ``J``) and ``b >= min(H, ceil(hi) + 1)``.

* ``a`` is a multiple of every stride product ``J_l`` of the prefix, so the
  feature-map grid of every intermediate layer ``l`` computed on the crop is the
  full-image grid shifted by the integer ``a / J_l``; the unit sits at
  ``y - a / J`` in the crop's map.
* Every unit of the dependency cone has its own RF inside ``[lo, hi]``.  A
  left-padding cell of the crop at layer ``l`` stands for the full-image unit
  ``a / J_l - 1`` whose RF starts at ``a - J_l - P_l < a <= lo`` (``P_l >= 0`` is
  the accumulated left padding), so it is outside the cone -- unless ``a = 0``
  where the crop's padding *is* the image's padding.
* On the right, every cone unit's window touches only cells whose RF ends at
  ``<= hi <= b - 1``; by induction these exist in the crop (floor or ceil
  output sizes alike) and hold the full-image values.  If ``b = H`` the crop's
  right edge is the image's edge and right padding coincides too (output
  lengths shift by exactly ``a / J_l`` because ``a / J_{l-1}`` is a multiple of
  the next stride).

The executor still checks this at run time on the unoccluded crop (the guard)
and falls back to full images where it does not hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from numpy.typing import ArrayLike

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from rfstore.core.occlusion import LayerGeometry, OcclusionTarget

__all__ = [
    "Member",
    "Group",
    "rf_pixel_bounds",
    "overlap_mask",
    "aligned_crop",
    "make_member",
    "plan_image",
    "regroup",
    "full_group",
]


def rf_pixel_bounds(
    size: int, jump: int, start: float, index: int
) -> tuple[int, int]:
    """Conservative integer pixel bounds of one unit's RF along one axis.

    Parameters
    ----------
    size, jump, start
        RF size, effective stride and centre of unit 0 (pixel-centre coords).
    index
        Unit index along the axis.

    Returns
    -------
    (lo, hi) : tuple of int
        ``floor(centre - (size-1)/2)`` and ``ceil(centre + (size-1)/2)``;
        not clipped to the image, so they may be negative or ``>= length``.
    """
    centre = float(start) + index * jump
    half = (size - 1) / 2.0
    return int(math.floor(centre - half)), int(math.ceil(centre + half))


def overlap_mask(positions: np.ndarray, size: int, lo: int, hi: int) -> np.ndarray:
    """Which occluder windows ``[p, p + size - 1]`` intersect ``[lo, hi]``.

    Parameters
    ----------
    positions : np.ndarray, shape (n,)
        Top-left occluder positions along one axis.
    size : int
        Occluder size.
    lo, hi : int
        Inclusive pixel bounds of the RF (any integers).

    Returns
    -------
    np.ndarray, shape (n,), bool
    """
    return (positions <= hi) & (positions + size - 1 >= lo)


def aligned_crop(
    lo: ArrayLike, hi: ArrayLike, length: int, align: ArrayLike, min_extent: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``[a, b)`` covering ``[lo, hi]`` with ``a`` a multiple of ``align``.

    Works elementwise on integers or integer arrays (the planner scores many
    candidate merges at once).

    Parameters
    ----------
    lo, hi : int or np.ndarray, shape (G,)
        Inclusive RF pixel bounds (unclipped).
    length : int
        Image length along the axis.
    align : int or np.ndarray, shape (G,)
        Required alignment of ``a`` (the layer's jump, or an lcm of jumps).
    min_extent : int
        Smallest crop length the forward function accepts; the crop is grown
        to the right, then to the left (keeping alignment), to reach it.

    Returns
    -------
    (a, b) : np.ndarray, shape () or (G,), int64
        ``0 <= a < b <= length`` where ``lo <= length - 1`` and ``hi >= 0``.
    """
    lo, hi, align = (np.asarray(v, dtype=np.int64) for v in (lo, hi, align))
    a = (np.maximum(lo, 0) // align) * align
    b = np.minimum(length, np.maximum(hi, 0) + 1)
    need = min(min_extent, length)
    b = np.where(b - a < need, np.minimum(length, a + need), b)
    a = np.where(b - a < need, np.maximum(0, ((length - need) // align) * align), a)
    return a, b


@dataclass
class Member:
    """One target inside the planner (mutable bookkeeping, not a value object).

    Attributes
    ----------
    index : int
        Position of the target in the caller's sequence.
    target : OcclusionTarget
    linear : bool
        True for linear (fully connected) layers: no crop, no skipping.
    jump : tuple of int
        Effective stride per axis (1 for linear layers).
    lo, hi : tuple of int
        Inclusive RF pixel bounds per axis (whole image for linear layers).
    mask : np.ndarray, shape (n_oy, n_ox), bool
        Occluder positions overlapping the RF.
    """

    index: int
    target: OcclusionTarget
    linear: bool
    jump: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]
    mask: np.ndarray


@dataclass
class Group:
    """Targets of one image evaluated on the same occluded crops.

    Attributes
    ----------
    image : int
    members : list of Member
    crop : tuple of int
        ``(y0, y1, x0, x1)``, half-open, in image pixels.
    mask : np.ndarray, shape (n_oy, n_ox), bool
        Union of the members' position masks: the positions evaluated.
    full : bool
        True when the crop is the whole image (no alignment guard needed).
    """

    image: int
    members: list[Member]
    crop: tuple[int, int, int, int]
    mask: np.ndarray
    full: bool = field(default=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Crop shape ``(h, w)``."""
        return self.crop[1] - self.crop[0], self.crop[3] - self.crop[2]

    @property
    def cost(self) -> int:
        """Pixels evaluated: crop area x number of positions."""
        h, w = self.shape
        return h * w * int(self.mask.sum())

    def unit_index(self, member: Member) -> tuple[int, int]:
        """Location of ``member``'s unit in the crop's feature map."""
        t = member.target
        return t.y - self.crop[0] // member.jump[0], t.x - self.crop[2] // member.jump[1]


def make_member(
    index: int,
    target: OcclusionTarget,
    geometry: LayerGeometry,
    pos_y: np.ndarray,
    pos_x: np.ndarray,
    size: int,
    hw: tuple[int, int],
) -> Member:
    """Build the planner's view of one target.

    Parameters
    ----------
    index : int
        Target index.
    target, geometry
        The target and its layer's theoretical RF.
    pos_y, pos_x : np.ndarray, shapes (n_oy,), (n_ox,)
        Occluder positions.
    size : int
        Occluder size.
    hw : tuple of int
        Image shape ``(H, W)``.

    Returns
    -------
    Member
    """
    if geometry.kind == "linear":
        mask = np.ones((pos_y.size, pos_x.size), dtype=bool)
        return Member(index, target, True, (1, 1), (0, 0), (hw[0] - 1, hw[1] - 1), mask)
    if geometry.kind != "conv":
        raise ValueError(f"unknown layer kind {geometry.kind!r} for {target.layer!r}")
    lo_y, hi_y = rf_pixel_bounds(geometry.size[0], geometry.jump[0], geometry.start[0], target.y)
    lo_x, hi_x = rf_pixel_bounds(geometry.size[1], geometry.jump[1], geometry.start[1], target.x)
    my = overlap_mask(pos_y, size, lo_y, hi_y)
    mx = overlap_mask(pos_x, size, lo_x, hi_x)
    jump = (int(geometry.jump[0]), int(geometry.jump[1]))
    return Member(index, target, False, jump, (lo_y, lo_x), (hi_y, hi_x), np.outer(my, mx))


def _crops(
    lo: np.ndarray, hi: np.ndarray, align: np.ndarray, hw: tuple[int, int], min_extent: int
) -> np.ndarray:
    """Aligned crops ``(G, 4)`` = ``(y0, y1, x0, x1)`` from bounds/alignments ``(G, 2)``."""
    y0, y1 = aligned_crop(lo[:, 0], hi[:, 0], hw[0], align[:, 0], min_extent)
    x0, x1 = aligned_crop(lo[:, 1], hi[:, 1], hw[1], align[:, 1], min_extent)
    return np.stack([y0, y1, x0, x1], axis=1)


def _area(crops: np.ndarray) -> np.ndarray:
    return (crops[:, 1] - crops[:, 0]) * (crops[:, 3] - crops[:, 2])


def plan_image(
    image: int, members: Sequence[Member], hw: tuple[int, int], min_extent: int
) -> list[Group]:
    """Greedily merge one image's targets into groups sharing forward passes.

    Members are visited by decreasing stand-alone cost (crop area x positions);
    each joins the existing group whose merge saves the most
    (``cost(merged) <= cost(group) + cost(member)``), or opens a new group.  A
    group's crop covers its members' RFs, aligned to the lcm of their jumps.
    Members without any overlapping position are dropped (their maps are all
    zeros).  Candidate merges are scored for all groups at once.

    Parameters
    ----------
    image : int
        Image index.
    members : sequence of Member
        Targets on this image.
    hw : tuple of int
        Image shape ``(H, W)``.
    min_extent : int
        Smallest crop side the forward accepts.

    Returns
    -------
    list of Group
    """
    ms = [m for m in members if m.mask.any()]
    if not ms:
        return []
    lo = np.array([m.lo for m in ms], dtype=np.int64)
    hi = np.array([m.hi for m in ms], dtype=np.int64)
    al = np.array([m.jump for m in ms], dtype=np.int64)
    masks = np.stack([m.mask.ravel() for m in ms])
    cost = _area(_crops(lo, hi, al, hw, min_extent)) * masks.sum(1)
    order = np.argsort(-cost, kind="stable")
    g_lo, g_hi, g_al = lo[order].copy(), hi[order].copy(), al[order].copy()
    g_mask, g_cost = masks[order].copy(), cost[order].copy()
    g_members: list[list[Member]] = []
    n = 0  # groups live in rows [0, n)
    for k in order:
        if n:
            m_lo, m_hi = np.minimum(g_lo[:n], lo[k]), np.maximum(g_hi[:n], hi[k])
            m_al = np.lcm(g_al[:n], al[k])
            m_mask = g_mask[:n] | masks[k]
            m_cost = _area(_crops(m_lo, m_hi, m_al, hw, min_extent)) * m_mask.sum(1)
            saving = g_cost[:n] + cost[k] - m_cost
            best = int(np.argmax(saving))
            if saving[best] >= 0:
                g_lo[best], g_hi[best], g_al[best] = m_lo[best], m_hi[best], m_al[best]
                g_mask[best], g_cost[best] = m_mask[best], m_cost[best]
                g_members[best].append(ms[k])
                continue
        g_lo[n], g_hi[n], g_al[n], g_mask[n], g_cost[n] = lo[k], hi[k], al[k], masks[k], cost[k]
        g_members.append([ms[k]])
        n += 1
    crops = _crops(g_lo[:n], g_hi[:n], g_al[:n], hw, min_extent)
    shape = ms[0].mask.shape
    return [
        Group(image, g_members[i], (int(c[0]), int(c[1]), int(c[2]), int(c[3])),
              g_mask[i].reshape(shape), bool(c[0] == 0 and c[1] == hw[0] and c[2] == 0 and c[3] == hw[1]))
        for i, c in enumerate(crops)
    ]


def regroup(group: Group, keep: list[Member]) -> Group:
    """Same crop (already validated by the guard), fewer members."""
    mask = np.logical_or.reduce([m.mask for m in keep])
    return Group(group.image, keep, group.crop, mask, group.full)


def full_group(image: int, members: list[Member], hw: tuple[int, int]) -> Group:
    """Whole-image group (used for fallbacks)."""
    mask = np.logical_or.reduce([m.mask for m in members])
    return Group(image, members, (0, hw[0], 0, hw[1]), mask, True)
