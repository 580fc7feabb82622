"""The occlusion engine: discrepancy maps (Zhou et al. 2015, sec. 3.2), image by image, exact and shared.

One entry, :func:`occlusion_maps` (or an :class:`OcclusionEngine` kept across images);
the strategies are :mod:`~rfstore.occlusion.cone` (per-target cones),
:mod:`~rfstore.occlusion.shared` (one whole-map pass per image, then the rest of the
network), :mod:`~rfstore.occlusion.crop` (per-target crops beyond the prefix) and
:mod:`~rfstore.occlusion.plain` (full re-inference, the reference); the
:mod:`~rfstore.occlusion.planner` picks per image by :mod:`~rfstore.occlusion.cost`.
"""
from __future__ import annotations

from rfstore.occlusion.engine import OcclusionEngine, occlusion_maps
from rfstore.occlusion.plain import plain_maps
from rfstore.occlusion.types import (
    ImagePlan,
    LayerGeometry,
    Method,
    Occluder,
    OccluderError,
    OcclusionStats,
    OcclusionTarget,
)

__all__ = [
    "Occluder", "OccluderError", "LayerGeometry", "OcclusionTarget", "OcclusionStats", "Method", "ImagePlan",
    "OcclusionEngine", "occlusion_maps", "plain_maps",
]
